"""The inputs a run needs from the network, fetched once: a known dataset's CSV and a hub model.

Both come from the Hugging Face hub through huggingface_hub (its cache, then a copy
written atomically through store.py), so `HF_HUB_OFFLINE=1` with a filled cache works
without any network, and cluster nodes never download (the rules are localrules).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from .errors import InputError
from .model_files import DOWNLOAD_FILES, RECORD, ModelSource

# The official copy of the Time-Series-Library datasets (THUML) on the Hugging Face hub.
DATA_REPO = "thuml/Time-Series-Library"
# name -> the file in DATA_REPO, the sha256 of the copy the forecasting literature uses,
# its data rows and variables (to plan the window ranges and estimates before the download).
KNOWN_DATASETS = {
    "weather": {"file": "weather/weather.csv", "rows": 52696, "variables": 21,
                "sha256": "34ee981d07313e51da2a50bb600072c8ae4a69cb4b0651f4cb93a069d7a2ba63"},
    "ETTh1": {"file": "ETT-small/ETTh1.csv", "rows": 17420, "variables": 7,
              "sha256": "f18de3ad269cef59bb07b5438d79bb3042d3be49bdeecf01c1cd6d29695ee066"},
    "ETTm1": {"file": "ETT-small/ETTm1.csv", "rows": 69680, "variables": 7,
              "sha256": "6ce1759b1a18e3328421d5d75fadcb316c449fcd7cec32820c8dafda71986c9e"},
}


# Seconds to wait for a TCP connection to the hub before calling it unreachable. Without this
# check huggingface_hub retries a failed request five times with backoff (about 25 s offline).
HUB_CONNECT_TIMEOUT = 5.0


def _hub_download(repo_id: str, filename: str, revision: str | None, repo_type: str | None) -> Path:
    """One file through the hub cache; huggingface_hub honours HF_HUB_OFFLINE and HF_HUB_CACHE.

    The cache answers first, without the network (the caller checks the pinned sha256, so a cached
    copy is as good as a fresh one); only a file missing there is downloaded, and only once the hub
    answers a TCP connection within HUB_CONNECT_TIMEOUT seconds.
    """
    import socket
    from urllib.parse import urlsplit

    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(hf_hub_download(repo_id, filename, revision=revision, repo_type=repo_type, local_files_only=True))
    except LocalEntryNotFoundError:
        if constants.is_offline_mode():
            raise
    endpoint = urlsplit(constants.ENDPOINT)
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((endpoint.hostname, port), timeout=HUB_CONNECT_TIMEOUT).close()
    except OSError as exc:
        raise ConnectionError(f"the hub {endpoint.hostname}:{port} cannot be reached: {exc}") from None
    return Path(hf_hub_download(repo_id, filename, revision=revision, repo_type=repo_type))


def _copy_atomically(source: Path, target: Path) -> None:
    from .store import atomic_path

    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def fetch_dataset(name: str, csv: str | os.PathLike) -> str:
    """Download dataset `name` from DATA_REPO, check its pinned sha256, write it to `csv`.

    Args:
        name: config key dataset.name, one of KNOWN_DATASETS.
        csv: config key dataset.csv, where the file goes (written atomically).

    Returns:
        The sha256 of the written file (hex).

    Raises:
        InputError: the name is not known, the hub cannot be reached (or HF_HUB_OFFLINE is
            set and the hub cache lacks the file), or the hub's file has another sha256
            than the pinned one; each says what to download and where to put it.
    """
    from .records import sha256_file

    if name not in KNOWN_DATASETS:
        raise InputError(f"{csv} not found and dataset {name!r} has no known download; put the {name} CSV there "
                         "or set dataset.csv in the config.")
    filename, pinned = KNOWN_DATASETS[name]["file"], KNOWN_DATASETS[name]["sha256"]
    where = f"https://huggingface.co/datasets/{DATA_REPO}/blob/main/{filename}"
    try:
        downloaded = _hub_download(DATA_REPO, filename, None, "dataset")
    except Exception as exc:  # offline, DNS, HTTP, a cache without the file: all mean the same to the user
        raise InputError(f"{csv} not found and {filename} could not be downloaded from the Hugging Face dataset "
                         f"{DATA_REPO} ({_first_line(exc)}); download {where} (sha256 {pinned}) and put it at "
                         f"{csv}.") from None
    actual = sha256_file(downloaded)
    if actual != pinned:
        raise InputError(f"{filename} from the Hugging Face dataset {DATA_REPO} has sha256 {actual}, not the "
                         f"pinned {pinned}; the published copy changed, so nothing was written: put the file "
                         f"with sha256 {pinned} at {csv}, or set dataset.sha256 to the new hash and dataset.csv "
                         "to a file you checked.")
    _copy_atomically(downloaded, Path(csv))
    return actual


def fetch_model(source: ModelSource) -> dict:
    """Download a hub model's DOWNLOAD_FILES at its pinned commit into source.folder.

    Only safetensors weights, config.json and the tokenizer files are fetched: no pickle
    weights, no code. Every file is written atomically; the record (RECORD: repo,
    commit, each file's sha256) last.

    Args:
        source: model_files.model_source of a hub id (source.hub is True).

    Returns:
        The record written to source.folder / RECORD.

    Raises:
        InputError: a file cannot be downloaded (offline without it in the hub cache, an
            unknown id or commit, a repository without model.safetensors).
    """
    from .records import sha256_file
    from .store import write_json

    files = {}
    for filename in DOWNLOAD_FILES:
        try:
            downloaded = _hub_download(source.name, filename, source.revision, None)
        except Exception as exc:  # offline, unknown id/commit, missing file
            raise InputError(f"model {source.name} (config key model.name_or_path) at commit {source.revision}: "
                             f"{filename} could not be downloaded ({_first_line(exc)}); allow network access for "
                             f"this first run, or put {', '.join(DOWNLOAD_FILES)} of that commit into a folder and "
                             "set model.name_or_path to it.") from None
        _copy_atomically(downloaded, source.folder / filename)
        files[filename] = sha256_file(source.folder / filename)
    record = {"repo": source.name, "revision": source.revision, "files": files}
    write_json(source.folder / RECORD, record)
    return record
