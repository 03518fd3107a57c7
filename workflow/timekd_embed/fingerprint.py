"""Content fingerprints of everything that decides an embedding, cheap enough for every dry run.

What decides an embedding: the CSV's bytes, the model's weights, config and tokenizer
files (a local folder's bytes, or a hub repository at a pinned commit), the package
version that computed it, and the output-affecting config keys (settings.py). The rules
carry these as params, so Snakemake reruns exactly the jobs whose fingerprint changed,
whatever the files' timestamps or locations say (the workflow profile turns Snakemake's
script-mtime "code" trigger and its "set of input files" trigger off, the CSV and model
files are `ancient` inputs, and no param holds a path). `current_inputs` is the one answer to
"what do the inputs hold now", for these params and for `timekd-embed verify`.

sha256 of a large file costs seconds (a 500 MB model: about 1-2 s of disk and CPU), so
every digest is cached in `.snakemake/timekd-embed/sha256.json`, keyed on the file's
absolute path, size, mtime, inode number and inode change time, and recomputed when one of
those changes or when it was hashed within a timestamp tick of its last change
(Sha256Cache): a `touch` costs one rehash, after which the params are the same as before,
and a same-size replacement that keeps the timestamp is hashed again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from . import __version__
from .errors import InputError
from .model_files import CONFIG, RECORD, ModelSource, downloaded_files, model_files, weight_files

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
        path: the cache file, relative to the working directory (Snakemake's --directory); None: no
            file, every file is hashed (`timekd-embed verify` rechecks everything).
    """

    RACY_NS = 2_000_000_000  # the coarsest timestamp resolution in common use (FAT: 2 s)
    _FIELDS = ("size", "mtime_ns", "ctime_ns", "inode", "hashed_ns")
    _SHA256 = re.compile(r"^[0-9a-f]{64}$")

    def __init__(self, path: str | os.PathLike | None = CACHE_PATH):
        self.path = None if path is None else Path(path)
        self._changed = False
        self.entries = {} if path is None else self._load()

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
        if self._changed and self.path is not None:
            from .store import write_json

            try:
                write_json(self.path, self.entries, record=False)
            except OSError as error:
                logging.getLogger(__name__).warning("%s: not saved (%s); the files are hashed again next time.",
                                                    self.path, error.strerror or error)
                return
            self._changed = False


def weights_sha256(files: list[Path], sha256_of=None) -> str:
    """The weights' identity as every embeddings file records it: one file's sha256, or for shards the
    sha256 of their "<sha256>  <name>" lines sorted by name, which is what `sha256sum model-*.safetensors
    | sha256sum` prints in the model folder.

    Args:
        files: model_files.weight_files' result; sha256_of: a file's sha256 (default: hash it).
    Returns:
        The hex digest.
    """
    from .records import sha256_file

    sha256_of = sha256_of or sha256_file
    if len(files) == 1:
        return sha256_of(files[0])
    listing = "".join(f"{sha256_of(path)}  {path.name}\n" for path in sorted(files, key=lambda path: path.name))
    return hashlib.sha256(listing.encode()).hexdigest()


def tracked_model_files(source: ModelSource) -> list[Path]:
    """Every file of the model that decides an embedding (config, index and every weights shard, tokenizer
    files): for a hub id those get_model's RECORD lists (none before the download), for a local folder
    those model_files.model_files finds there (a missing one is the loader's error)."""
    if source.hub:
        return [source.folder / name for name in downloaded_files(source.folder) or {}]
    return model_files(source.folder)


@dataclass(frozen=True)
class Inputs:
    """What the config's CSV and model hold now (current_inputs).

    Attributes:
        csv_sha256: the CSV's sha256, None when it is not there.
        model_files: {file name: sha256} of tracked_model_files ({} when none is there).
        weights_sha256: the weights' identity (weights_sha256), None when they are not there.
        weights: the weights files (model_files.weight_files), () when they are not there.
        notes: one sentence per input that is not there, so could not be compared.
        damaged: one sentence per file of a hub download that is missing or no longer has the
            sha256 get_model checked against the hub.
    """

    csv_sha256: str | None
    model_files: dict[str, str]
    weights_sha256: str | None
    weights: tuple[Path, ...] = ()
    notes: tuple[str, ...] = ()
    damaged: tuple[str, ...] = ()


def current_inputs(csv: str | os.PathLike | None, source: ModelSource, cache: Sha256Cache,
                   workdir: Path = Path()) -> Inputs:
    """The one answer to "did the inputs change": what the CSV and the model hold now, by content.

    The rules' params are made from it (common.smk: a changed sha256 reruns what follows) and
    `timekd-embed verify` compares it with what each embeddings file recorded.

    Args:
        csv: config key dataset.csv (None: not known, not compared);
        source: the model (model_files.model_source, with the same workdir);
        cache: the sha256 cache (Sha256Cache(None) hashes every file);
        workdir: the folder a relative CSV path is taken from (the workflow's working directory).
    Returns:
        Inputs.
    """
    notes, damaged = [], []
    csv_path = None if csv is None else Path(workdir) / csv
    csv_sha256 = cache.sha256(csv_path) if csv_path is not None and csv_path.is_file() else None
    if csv_path is not None and csv_sha256 is None:
        notes.append(f"{csv_path} (dataset.csv) is not on this machine, so the input was not rechecked.")
    files = {path.name: cache.sha256(path) for path in tracked_model_files(source) if path.is_file()}
    if source.hub:
        for name, recorded in (downloaded_files(source.folder) or {}).items():
            if files.get(name, recorded) != recorded or not (source.folder / name).is_file():
                damaged.append(f"{source.folder / name} is {'not there' if name not in files else 'changed'}: it is "
                               f"not the file get_model checked against the hub (sha256 {recorded}, listed in "
                               f"{source.folder / RECORD}); move it away (or delete it) and run `snakemake --cores 1 "
                               "fetch --forcerun get_model` to fetch it again.")
    try:
        weights = tuple(weight_files(source.folder)) if source.folder.is_dir() else ()
    except InputError:
        weights = ()
    if not weights:
        notes.append(f"the weights of model {source.name} (model.name_or_path) are not in {source.folder} on this "
                     "machine, so they were not rechecked.")
    identity = weights_sha256(list(weights), cache.sha256) if weights else None
    return Inputs(csv_sha256, files, identity, weights, tuple(notes), tuple(damaged))


def model_fingerprint(source: ModelSource, inputs: Inputs) -> dict:
    """What identifies the model's content, for the rules' params: a hub id's {"repo", "revision"} (a commit
    fixes every file's bytes, which get_model checks against the hub's hashes), a folder's {"files": {name:
    sha256}} from current_inputs (no path: moving the folder changes nothing)."""
    if source.hub:
        return {"repo": source.name, "revision": source.revision}
    return {"files": inputs.model_files}


def model_config_fingerprint(source: ModelSource, inputs: Inputs) -> dict:
    """What the SCA stage reads from the model (its width, from config.json): a hub id's {"repo",
    "revision"}, a folder's {"config.json": its sha256, or None when absent}."""
    if source.hub:
        return {"repo": source.name, "revision": source.revision}
    return {CONFIG: inputs.model_files.get(CONFIG)}


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


def csv_fingerprint(inputs: Inputs, windows_paths: list[str], pinned: str | None) -> str | None:
    """sha256 of the CSV the windows are (to be) made from.

    Args:
        inputs: current_inputs' result (the CSV's sha256 when it is there).
        windows_paths: the windows Parquet files; when the CSV is absent (results copied without
            it) their recorded input_sha256 stands in for it.
        pinned: the sha256 get_data verifies for a known dataset, used when neither exists.

    Returns:
        The hex sha256, or None when nothing says what the CSV holds.
    """
    if inputs.csv_sha256 is not None:
        return inputs.csv_sha256
    if windows_paths and all(Path(path).is_file() for path in windows_paths):
        return recorded_windows_metadata(windows_paths[0])["input_sha256"]
    return pinned
