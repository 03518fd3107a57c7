"""Files back in: the sha256 record beside every file the workflow writes, and the readers that
check a file before it is used.

Each written file gets a record of its sha256 (store.atomic_paths writes it): a hidden
`.<name>.sha256` beside it, in the format of `sha256sum` (so `sha256sum -c .<name>.sha256`
checks it in that folder). A file beside its file, not one record per results folder: every
job writes only the records of its own outputs, so concurrent jobs (also on other cluster
nodes, where file locks are not to be trusted) never write the same file, and a record
travels with its file through `rsync -a` or `cp -a`. Readers of the workflow's files
(read_tensors, read_json, windows.read_windows, the gather job) call check_record before
using one: a file damaged after it was written (a flipped byte, a truncated copy, another
file copied over it) stops the job with one sentence instead of being consumed.

Format: safetensors (github.com/huggingface/safetensors), whose header is an 8-byte
little-endian length, that many bytes of JSON, then the tensor data.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import time
from pathlib import Path

from .errors import InputError

_HEADER_LIMIT = 100 * 1024 * 1024  # the format caps the JSON header at 100 MB; more means a damaged file
RECORD_SUFFIX = ".sha256"
_RECORD_LINE = re.compile(r"([0-9a-f]{64})  (.+)\n?")  # sha256sum's "<digest>  <name>"
# A file verified by check_record in this process, by what a change would alter (as
# fingerprint.Sha256Cache): a second read (parity reads each embeddings file twice) costs no hash.
_VERIFIED: dict[str, tuple[tuple[int, int, int, int], str]] = {}
_RACY_NS = 2_000_000_000  # fingerprint.Sha256Cache.RACY_NS: only a file older than a timestamp tick is memoised


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, read in blocks of `chunk` bytes (constant memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while block := stream.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def record_path(path: str | os.PathLike) -> Path:
    """The sha256 record of a file the workflow wrote: the hidden `.<name>.sha256` beside it."""
    path = Path(path)
    return path.with_name(f".{path.name}{RECORD_SUFFIX}")


def is_record(name: str) -> bool:
    """Whether a file name (not a path) is that of a sha256 record, `.<name>.sha256` (record_path)."""
    return name.startswith(".") and name.endswith(RECORD_SUFFIX) and len(name) > len(RECORD_SUFFIX) + 1


def recorded_file(record: str | os.PathLike) -> Path:
    """The file a sha256 record belongs to, which may no longer exist (the inverse of record_path)."""
    record = Path(record)
    return record.with_name(record.name[1:-len(RECORD_SUFFIX)])


def forget_record(path: str | os.PathLike) -> None:
    """Remove the record of a file that is about to go (a temporary input Snakemake deletes next);
    the file itself is left alone."""
    record_path(path).unlink(missing_ok=True)


def rerun_advice(path: str | os.PathLike) -> str:
    """How to write a workflow file again, for a sentence: "rerun the workflow with --forcerun <path> ...",
    which also redoes what was made from it (deleting it is not enough: a missing file that only feeds
    jobs whose outputs are up to date is not made again). `path` as a target: relative to the current
    folder when it lies below it."""
    absolute, here = Path(os.path.abspath(path)), Path.cwd()
    target = absolute.relative_to(here).as_posix() if here in absolute.parents else str(path)  # a target is relative
    return f"rerun the workflow with --forcerun {target} to write it again (and what was made from it)"


def check_record(path: str | os.PathLike) -> str:
    """Stop unless a file still has the bytes its writer recorded (store.atomic_paths' record).

    A file verified before in this process and unchanged since (size, times, inode) is not
    hashed again. Hashing costs a read of the whole file (sha256 at about 1 GB/s).

    Returns:
        Its sha256 (hex), as recorded and found.
    Raises:
        InputError: the file is missing, has no record beside it or an unreadable one, or its
            bytes differ from the record; the sentence names the file and how to write it again.
    """
    path = Path(path)
    try:
        found = path.stat()
    except FileNotFoundError:
        raise InputError(f"{path}: file not found; run the workflow to create it.") from None
    key, identity = str(path.resolve()), (found.st_size, found.st_mtime_ns, found.st_ctime_ns, found.st_ino)
    if key in _VERIFIED and _VERIFIED[key][0] == identity:
        return _VERIFIED[key][1]
    record = record_path(path)
    try:
        match = _RECORD_LINE.fullmatch(record.read_text(encoding="ascii"))
    except FileNotFoundError:
        raise InputError(f"{path}: its sha256 record {record.name} is missing beside it, so its bytes cannot be "
                         "checked (a copy without hidden files, or a file the workflow did not write); copy the "
                         f"record along (rsync -a, cp -a), or {rerun_advice(path)}.") from None
    except (OSError, ValueError):
        match = None
    if match is None or match[2] != path.name:
        raise InputError(f"{record}: not the sha256 record of {path.name}, so its bytes cannot be checked; "
                         f"{rerun_advice(path)}.")
    began = time.time_ns()
    actual = sha256_file(path)
    if actual != match[1]:
        raise InputError(f"{path}: damaged: its sha256 is {actual}, not the {match[1]} recorded when it was written; "
                         f"{rerun_advice(path)}.")
    if began - max(found.st_mtime_ns, found.st_ctime_ns) > _RACY_NS:
        _VERIFIED[key] = (identity, actual)
    return actual


def read_json(path: str | os.PathLike):
    """The content of a JSON file the workflow wrote (store.write_json), checked against its record.

    Raises:
        InputError: the file is missing, not JSON, or not the bytes its record names (check_record).
    """
    try:
        data = json.loads(Path(path).read_bytes())
    except FileNotFoundError:
        raise InputError(f"{path}: file not found; run the workflow to create it.") from None
    except ValueError:
        raise InputError(f"{path}: not a readable JSON file; delete it and rerun the workflow.") from None
    check_record(path)
    return data


def read_header(path: str | os.PathLike) -> tuple[dict, int]:
    """The safetensors JSON header and the byte offset where the tensor data starts.

    Reads only the header, never the tensors: cheap for a multi-GB file. No record is checked:
    model files (checkpoint.py) have none.

    Returns:
        (header, data_start): header maps tensor name -> {dtype, shape, data_offsets}
        plus "__metadata__"; each tensor's data_offsets count from data_start.
    Raises:
        InputError: the file is missing, its header is damaged, or its size is not the one the
            header describes (a truncated copy: the header survives, the tensors do not).
    """
    path = Path(path)
    try:
        with open(path, "rb") as stream:
            prefix = stream.read(8)
            header_size = struct.unpack("<Q", prefix)[0] if len(prefix) == 8 else -1
            if not 0 < header_size <= _HEADER_LIMIT:
                raise ValueError("bad header length")
            header = json.loads(stream.read(header_size))
            size = os.fstat(stream.fileno()).st_size
        # the format's rule: the tensors' data fills the rest of the file exactly
        described = 8 + header_size + max((entry["data_offsets"][1] for name, entry in header.items()
                                           if name != "__metadata__"), default=0)
    except FileNotFoundError:
        raise InputError(f"{path}: file not found; run the workflow to create it.") from None
    except (ValueError, UnicodeDecodeError, AttributeError, KeyError, TypeError, IndexError):
        raise InputError(f"{path}: not a readable safetensors file (damaged header); delete it and rerun "
                         "the workflow.") from None
    if described != size:
        raise InputError(f"{path}: truncated or damaged safetensors file (its header describes {described:,} "
                         f"bytes, the file has {size:,}); delete it and rerun the workflow.")
    return header, 8 + header_size


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The str -> str metadata of a safetensors file (empty when it has none), from its header alone;
    InputError as read_header."""
    return dict(read_header(path)[0].get("__metadata__") or {})


def read_tensors(path: str | os.PathLike) -> tuple[dict, dict[str, str]]:
    """Every tensor (name -> torch.Tensor, dtype and shape as stored) and the str -> str metadata of a
    safetensors file the workflow wrote, checked against its record.

    Raises:
        InputError: the file is missing or damaged.
    """
    from safetensors import safe_open  # here: the plan (common.smk) imports this module; torch loads slowly

    try:
        with safe_open(str(path), framework="pt") as stream:
            tensors, metadata = {name: stream.get_tensor(name) for name in stream.keys()}, dict(stream.metadata() or {})
    except FileNotFoundError:
        raise InputError(f"{path}: file not found; run the workflow to create it.") from None
    except Exception as exc:  # safetensors raises its own error types for damaged files
        raise InputError(f"{path}: not a readable safetensors file ({exc}); delete it and rerun the "
                         "workflow.") from None
    check_record(path)  # after the format's own checks, whose sentences say more about a torn file
    return tensors, metadata
