"""The inputs a run needs from the network, fetched once: a known dataset's CSV and a hub model.

Both come from the Hugging Face hub through its cache (hub.py: every file checked against
the hub's own hash), then a copy written atomically through store.py, so `HF_HUB_OFFLINE=1`
with a filled cache works without any network, and cluster nodes never download (the rules
are localrules). Neither ever writes over a file that is there: a CSV or model file the user
put in place is an input, never an output, so no Snakemake command that forces, reruns or
cleans outputs can delete or replace it (rules/resources.smk).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from .errors import InputError
from .hub import first_line, hub_reachable, listing, verified_file
from .model_files import (
    CONFIG,
    PICKLE_PATTERNS,
    TOKENIZER_FILES,
    WEIGHTS,
    WEIGHTS_INDEX,
    ModelSource,
    index_shards,
    model_files,
    usable_tokenizer,
)

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


def _copy_new(source: Path, target: Path) -> None:
    """Copy a checked file to `target` (atomically, with its sha256 record), never over a file there."""
    from .store import atomic_path

    if target.exists():  # written meanwhile by someone else: theirs, never replaced
        raise InputError(f"{target} appeared while it was being downloaded; it is left as it is: rerun.")
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)


def fetch_dataset(name: str, csv: str | os.PathLike) -> dict:
    """Put dataset `name` from DATA_REPO at `csv`, checked against its pinned sha256, unless a file is there.

    A file at `csv` is never written over, replaced or deleted: it is the user's (or an earlier
    download), and the windows job checks it.

    Args:
        name: config key dataset.name, one of KNOWN_DATASETS.
        csv: config key dataset.csv, where the file goes (written atomically).

    Returns:
        The record: {"dataset", "csv", "sha256", "downloaded_from"} (None when the file was there).

    Raises:
        InputError: the name is not known, the hub cannot be reached (or HF_HUB_OFFLINE is
            set and the hub cache lacks the file), the cached file is damaged (hub.verified_file),
            or the hub's file has another sha256 than the pinned one; each says what to do.
    """
    from .records import sha256_file

    csv = Path(csv)
    if csv.exists():
        return {"dataset": name, "csv": str(csv), "sha256": sha256_file(csv), "downloaded_from": None}
    if name not in KNOWN_DATASETS:
        raise InputError(f"{csv} not found and dataset {name!r} has no known download; put the {name} CSV there "
                         "or set dataset.csv in the config.")
    filename, pinned = KNOWN_DATASETS[name]["file"], KNOWN_DATASETS[name]["sha256"]
    where = f"https://huggingface.co/datasets/{DATA_REPO}/blob/main/{filename}"
    try:
        downloaded = verified_file(DATA_REPO, filename, None, "dataset")
    except InputError:
        raise
    except Exception as exc:  # offline, DNS, HTTP, a cache without the file: all mean the same to the user
        raise InputError(f"{csv} not found and {filename} could not be downloaded from the Hugging Face dataset "
                         f"{DATA_REPO} ({first_line(exc)}); download {where} (sha256 {pinned}) and put it at "
                         f"{csv}.") from None
    actual = sha256_file(downloaded)
    if actual != pinned:
        raise InputError(f"{filename} from the Hugging Face dataset {DATA_REPO} has sha256 {actual}, not the "
                         f"pinned {pinned}; the published copy changed, so nothing was written: put the file "
                         f"with sha256 {pinned} at {csv}, or set dataset.sha256 to the new hash and dataset.csv "
                         "to a file you checked.")
    _copy_new(downloaded, csv)
    return {"dataset": name, "csv": str(csv), "sha256": actual, "downloaded_from": where}


def _checkpoint_names(source: ModelSource, hub: dict[str, str]) -> list[str]:
    """The files of the commit that make the model: config.json, the safetensors weights (the index and
    every shard it lists, or model.safetensors) and the tokenizer files the repository has."""
    names = [CONFIG]
    if WEIGHTS_INDEX in hub:
        index = verified_file(source.name, WEIGHTS_INDEX, source.revision, None, hub[WEIGHTS_INDEX])
        names += [WEIGHTS_INDEX, *index_shards(index)]
    elif WEIGHTS in hub:
        names.append(WEIGHTS)
    else:
        pickled = sorted(name for name in hub if any(Path(name).match(pattern) for pattern in PICKLE_PATTERNS))
        raise InputError(f"model {source.name} (config key model.name_or_path) at commit {source.revision} has no "
                         f"{WEIGHTS} nor {WEIGHTS_INDEX}" + (f", only pickle weights ({', '.join(pickled)}), which "
                                                              "are never loaded because unpickling can run code"
                                                              if pickled else "")
                         + "; choose a commit (or a model) with safetensors weights.")
    tokenizer = [name for name in TOKENIZER_FILES if name in hub]
    if not usable_tokenizer(tokenizer):
        raise InputError(f"model {source.name} at commit {source.revision} has no tokenizer (tokenizer.json, "
                         "vocab.json with merges.txt, or tokenizer.model); choose a model that ships its tokenizer.")
    missing = [name for name in names if name not in hub]
    if missing:
        raise InputError(f"model {source.name} at commit {source.revision}: {WEIGHTS_INDEX} lists "
                         f"{', '.join(missing[:3])}, which the repository does not hold; choose another commit.")
    return names + tokenizer


def _verified_before(folder: Path) -> dict[str, str]:
    """{name: sha256} of the model files get_model checked and wrote before (each still matching the
    sha256 record beside it), when neither the hub nor its cache can answer; {} if there are none."""
    from .records import check_record

    try:
        return {path.name: check_record(path) for path in model_files(folder)}
    except InputError:
        return {}


def _place(source: ModelSource, name: str, blob: Path) -> str:
    """The checked `blob` at source.folder / name: copied when absent; a file there is kept when it has the
    same bytes, and is never replaced when it has others (it is not that commit's file)."""
    from .records import record_path, sha256_file
    from .store import write_text

    digest = sha256_file(blob)
    target = source.folder / name
    if not target.exists():
        _copy_new(blob, target)
        return digest
    found = sha256_file(target)
    if found != digest:
        raise InputError(f"{target} has sha256 {found}, but {name} of {source.name} at commit {source.revision} has "
                         f"sha256 {digest} (the hub's own hash); it is not that commit's file, and is never replaced: "
                         "move it away (or delete it) and rerun to fetch the commit's file, or point "
                         "model.name_or_path at a folder of your own.")
    line = f"{digest}  {target.name}\n"
    record = record_path(target)
    if not record.is_file() or record.read_text(encoding="ascii", errors="replace") != line:
        write_text(record, line, record=False)  # the file is kept as it is; its record lets an offline rerun trust it
    return digest


def fetch_model(source: ModelSource) -> dict:
    """Put a hub model's files at its pinned commit into source.folder, each checked against the hub's hash.

    The files are those of the commit that make the model (_checkpoint_names): no pickle
    weights, no code. A file already in the folder is kept when it has the commit's bytes and
    never replaced when it does not. Offline, with the commit not in the hub cache, the files
    this function checked and wrote before (with their sha256 records) stand in.

    Args:
        source: model_files.model_source of a hub id (source.hub is True).

    Returns:
        The record (RECORD, written by the caller): {"repo", "revision", "files": {name: sha256}}.

    Raises:
        InputError: a file cannot be fetched (offline without it in the hub cache, an unknown
            id or commit), is damaged in the cache, or a different file is in its place.
    """
    advice = ("allow network access for this first run, or put the files of that commit (config.json, the "
              "safetensors weights, the tokenizer files) into a folder and set model.name_or_path to it")
    why = hub_reachable()
    try:
        hub = listing(source.name, source.revision, online=why is None)
    except Exception as exc:  # an unknown id or commit, HTTP errors
        raise InputError(f"model {source.name} (config key model.name_or_path) at commit {source.revision} could "
                         f"not be listed on the hub ({first_line(exc)}); {advice}.") from None
    if not hub:
        before = _verified_before(source.folder)
        if before:
            return {"repo": source.name, "revision": source.revision, "files": before}
        raise InputError(f"model {source.name} (config key model.name_or_path) at commit {source.revision} is not in "
                         f"the Hugging Face cache and the hub cannot be asked ({why}); {advice}.")
    files = {}
    for name in _checkpoint_names(source, hub):
        try:
            blob = verified_file(source.name, name, source.revision, None, hub[name])
        except InputError:
            raise
        except Exception as exc:  # offline, a file missing from the cache
            raise InputError(f"model {source.name} (config key model.name_or_path) at commit {source.revision}: "
                             f"{name} could not be downloaded ({first_line(exc)}); {advice}.") from None
        files[name] = _place(source, name, blob)
    return {"repo": source.name, "revision": source.revision, "files": files}
