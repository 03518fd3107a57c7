"""Content fingerprints of everything that decides an embedding, cheap enough for every dry run.

What decides an embedding: the CSV's bytes, the model's weights, config and tokenizer
files (a local folder's bytes, or a hub repository at a pinned commit), the package
version that computed it, and the output-affecting config keys (settings.py). The rules
carry these as params, so Snakemake reruns exactly the jobs whose fingerprint changed,
whatever the files' timestamps say (the workflow profile turns Snakemake's script-mtime
"code" trigger off, and the CSV and model files are `ancient` inputs).

sha256 of a large file costs seconds (a 500 MB model: about 1-2 s of disk and CPU), so
every digest is cached in `.snakemake/timekd-embed/sha256.json`, keyed on the file's
absolute path, size, mtime, inode number and inode change time, and recomputed when one of
those changes or when it was hashed within a timestamp tick of its last change
(Sha256Cache): a `touch` costs one rehash, after which the params are the same as before,
and a same-size replacement that keeps the timestamp is hashed again.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from pathlib import Path

from . import __version__
from .errors import InputError
from .model_files import CONFIG, DOWNLOAD_FILES, WEIGHTS, ModelSource, model_files, model_source

CACHE_PATH = Path(".snakemake") / "timekd-embed" / "sha256.json"


def package_version() -> str:
    """The version of the package that computes the outputs (numerics changes bump it).

    Returns:
        e.g. "timekd-embed 0.3.0"; tests/test_golden.py ties the numerics to it.
    """
    return f"timekd-embed {__version__}"


class Sha256Cache:
    """sha256 of files, remembered across Snakemake runs by what no same-size replacement keeps.

    An entry is trusted only while the file's size, mtime, inode number and inode change time
    (ctime) are those recorded. ctime is set by the kernel on every change of the file's bytes
    or times and cannot be set by any user command, so `cp -p`, `touch -r` or `rsync -t` over
    the file (same size, the old mtime put back) changes it; a replacement by rename changes
    the inode. A filesystem's timestamps have a resolution (1 s on some network and older
    filesystems, 2 s on FAT; the kernel's clock tick elsewhere), so a file written again within
    the tick it was hashed in keeps all four: as git does with its index ("racy git"), an entry
    hashed within RACY_NS of the file's last change is hashed again next time, and only an
    entry hashed later than that is trusted.

    Args:
        path: the cache file, relative to the working directory (Snakemake's --directory).
    """

    RACY_NS = 2_000_000_000  # the coarsest timestamp resolution in common use (FAT: 2 s)
    _FIELDS = ("size", "mtime_ns", "ctime_ns", "inode", "hashed_ns")
    _SHA256 = re.compile(r"^[0-9a-f]{64}$")

    def __init__(self, path: str | os.PathLike = CACHE_PATH):
        self.path = Path(path)
        self._changed = False
        self.entries = self._load()

    def _load(self) -> dict:
        """The entries of the cache file; {} (and one log line) when it is absent or not ours.

        It is only a cache: anything but a mapping of path -> well-formed entry (a truncated
        write, another program's file, junk) is dropped whole, and every file is hashed again.
        """
        try:
            entries = json.loads(self.path.read_bytes())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as error:  # unreadable, not UTF-8, not JSON
            problem = f"it cannot be read as JSON ({error.__class__.__name__})"
        else:
            if isinstance(entries, dict) and all(self._well_formed(entry) for entry in entries.values()):
                return entries
            problem = "it does not hold path -> {size, times, sha256} entries"
        logging.getLogger(__name__).warning("%s: %s; ignoring it and hashing the files again (it is only a cache).",
                                            self.path, problem)
        self._changed = True  # rewrite it whole on save
        return {}

    @classmethod
    def _well_formed(cls, entry) -> bool:
        return (isinstance(entry, dict) and isinstance(entry.get("sha256"), str) and cls._SHA256.match(entry["sha256"])
                is not None and all(type(entry.get(name)) is int for name in cls._FIELDS))

    def sha256(self, path: str | os.PathLike) -> str:
        """Hex sha256 of the file's bytes, hashed unless a trusted entry matches it.

        Args:
            path: the file (cached under its absolute path).
        Returns:
            The 64-character hex digest.
        Raises:
            FileNotFoundError: the file does not exist.
        """
        from .records import sha256_file

        path = Path(path).resolve()
        stat = path.stat()
        key = str(path)
        identity = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "ctime_ns": stat.st_ctime_ns,
                    "inode": stat.st_ino}
        entry = self.entries.get(key)
        if entry is not None and all(entry[name] == value for name, value in identity.items()) \
                and entry["hashed_ns"] - max(entry["mtime_ns"], entry["ctime_ns"]) > self.RACY_NS:
            return entry["sha256"]
        hashed_ns = time.time_ns()  # before reading: a write while hashing counts as after it
        digest = sha256_file(path)
        self.entries[key] = identity | {"hashed_ns": hashed_ns, "sha256": digest}
        self._changed = True
        return digest

    def save(self) -> None:
        """Write the cache (atomically, without a record: it is no output) if it changed since it was read.

        A cache that cannot be written (a full disk, a read-only folder) is one log line, never an error:
        the files are hashed again next time.
        """
        if self._changed:
            from .store import write_json

            try:
                write_json(self.path, self.entries, record=False)
            except OSError as error:
                logging.getLogger(__name__).warning("%s: not saved (%s); the files are hashed again next time.",
                                                    self.path, error.strerror or error)
                return
            self._changed = False


def tracked_model_files(source: ModelSource) -> list[Path]:
    """The model's files that decide an embedding (inputs of sca and extraction): for a hub id those
    get_model writes (maybe not there yet), for a local folder those model_files.model_files finds there."""
    if source.hub:
        return [source.folder / name for name in DOWNLOAD_FILES]
    return model_files(source.folder)


def model_fingerprint(source: ModelSource, cache: Sha256Cache) -> dict:
    """What identifies the model's content, for the rules' params: a hub id's {"repo", "revision"} (a
    commit fixes every file's bytes), a folder's {"files": {name: sha256}} (no path: moving it changes nothing)."""
    if source.hub:
        return {"repo": source.name, "revision": source.revision}
    return {"files": {path.name: cache.sha256(path) for path in tracked_model_files(source)}}


def model_config_fingerprint(source: ModelSource, cache: Sha256Cache) -> dict:
    """What the SCA stage reads from the model (its width, from config.json).

    Args:
        source: model_source's result; cache: the sha256 cache of this run.
    Returns:
        A hub id: {"repo", "revision"}; a local folder: {"config.json": its sha256, or None when absent}.
    """
    if source.hub:
        return {"repo": source.name, "revision": source.revision}
    config = source.folder / CONFIG
    return {CONFIG: cache.sha256(config) if config.is_file() else None}


def recorded_windows_metadata(path: str | os.PathLike) -> dict:
    """The timekd_embed metadata of a windows Parquet file, read from its footer only.

    Args:
        path: a windows Parquet file.
    Returns:
        The metadata dict write_windows stored.
    Raises:

        InputError: the file is not a readable windows file.
    """
    import pyarrow.parquet as pq

    from .windows import METADATA_KEY

    try:
        meta = json.loads((pq.read_schema(path).metadata or {}).get(METADATA_KEY))
        if not isinstance(meta, dict) or not isinstance(meta.get("input_sha256"), str):
            raise ValueError("not the metadata write_windows stores")
        return meta
    except Exception:  # pyarrow's own errors for a damaged file, or no metadata
        raise InputError(f"{path} is not a readable windows file; delete it and rerun the workflow.") from None


def csv_fingerprint(csv: str | os.PathLike, windows_paths: list[str], pinned: str | None,
                    cache: Sha256Cache) -> str | None:
    """sha256 of the CSV the windows are (to be) made from.

    Args:
        csv: config key dataset.csv.
        windows_paths: the windows Parquet files; when the CSV is absent (results copied without
            it) their recorded input_sha256 stands in for it.
        pinned: the sha256 get_data verifies for a known dataset, used when neither exists.
        cache: the sha256 cache.

    Returns:
        The hex sha256, or None when nothing says what the CSV holds.
    """
    if Path(csv).is_file():
        return cache.sha256(csv)
    if windows_paths and all(Path(path).is_file() for path in windows_paths):
        return recorded_windows_metadata(windows_paths[0])["input_sha256"]
    return pinned


def current_fingerprints(config: dict, cache_path: str | os.PathLike | None = CACHE_PATH) -> dict:
    """What the config points at now, to compare with what an embeddings file recorded.

    For `timekd-embed verify`: an embeddings file whose metadata input_sha256 or
    weights_sha256 differs from these was made from other data or weights than the config
    names today. Run from the directory the workflow runs in (paths in the config are
    relative to it).

    Args:
        config: the validated config (config.validate_config).
        cache_path: the sha256 cache to use and update (None: hash without a cache).

    Returns:
        {"input_sha256": str | None, "weights_sha256": str | None, "model": str,
        "revision": str | None, "package": str}; a None sha256 means the file is not
        there (a CSV not copied, a hub model not downloaded yet): nothing to compare.
    """
    cache = Sha256Cache(cache_path) if cache_path is not None else Sha256Cache(os.devnull)
    csv = Path(config["dataset"]["csv"])
    source = model_source(config["model"])
    weights = source.folder / WEIGHTS
    found = {
        "input_sha256": cache.sha256(csv) if csv.is_file() else None,
        "weights_sha256": cache.sha256(weights) if weights.is_file() else None,
        "model": source.name,
        "revision": source.revision,
        "package": package_version(),
    }
    if cache_path is not None:
        cache.save()
    return found
