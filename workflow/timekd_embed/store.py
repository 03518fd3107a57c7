"""Files in and out: the one module that writes the product's files, hashes them and reads
safetensors headers.

Every write goes to a hidden temporary name beside its target and is renamed over it
only when complete, so a crash, kill or full disk never leaves a file under a final name
that looks complete. Files are created like any other file of the user's (mode 0666 less
the umask), so a shared results folder stays readable by the group when the umask says so.
Format: safetensors (github.com/huggingface/safetensors), whose header is an 8-byte
little-endian length, that many bytes of JSON, then the tensor data.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import stat
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import InputError

_HEADER_LIMIT = 100 * 1024 * 1024  # the format caps the JSON header at 100 MB; more means a damaged file


def _temporary_beside(path: Path) -> Path:
    """Create an empty, unique, hidden file beside `path`, with the umask's mode."""
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            # O_EXCL: never two writers on one name; 0o666 less the umask, as open() would give
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:  # pragma: no cover - a 48-bit collision
            continue


def fsync(path: str | os.PathLike) -> None:
    """Flush a file's or a folder's data to the disk.

    Args:
        path: a file or a folder.
    """
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


@contextmanager
def atomic_paths(*paths: str | os.PathLike, durable: bool = True) -> Iterator[list[Path]]:
    """Temporary paths for `paths`, renamed over them together when the block succeeds.

    Args:
        paths: the final file paths; their folders are created.
        durable: fsync each file before its rename; False for callers that write many
            small files and fsync them in bulk afterwards (see export.py).

    Yields:
        One temporary path per final path, in order, each an existing empty file.

    Raises:
        Whatever the block raises. Then, and when a rename fails, no temporary file is
        left and no final path of this call remains, so a set of files (one Parquet per
        split, say) is all new or absent, never half new.
    """
    finals = [Path(path) for path in paths]
    temps: list[Path] = []
    replaced: list[Path] = []
    try:
        temps.extend(_temporary_beside(path) for path in finals)
        # The mode the kernel gave the new files (0666 less the umask): a writer that
        # recreates its file (safetensors makes it 0600) gets it back before the rename.
        modes = [stat.S_IMODE(tmp.stat().st_mode) for tmp in temps]
        yield list(temps)
        for tmp, mode in zip(temps, modes):
            os.chmod(tmp, mode)
            if durable:
                fsync(tmp)
        for tmp, final in zip(temps, finals):
            os.replace(tmp, final)
            replaced.append(final)
    except BaseException:
        for leftover in [temp for temp in temps if temp.exists()] + replaced:
            leftover.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_path(path: str | os.PathLike, durable: bool = True) -> Iterator[Path]:
    """One temporary path beside `path`, renamed over it if the block succeeds (see atomic_paths).

    Args:
        path: the final file path; durable: fsync before the rename.
    Yields:
        The temporary path (an existing empty file).
    """
    with atomic_paths(path, durable=durable) as (tmp,):
        yield tmp


def publish_dir(staging: str | os.PathLike, out_dir: str | os.PathLike) -> None:
    """Rename a finished staging folder to `out_dir`, replacing what is there.

    A non-empty `out_dir` is moved aside first, so it never loses files it had while the
    staging folder is renamed; the old copy is removed afterwards.

    Args:
        staging: the finished folder, beside out_dir (a rename, not a copy).
        out_dir: the final folder.
    """
    staging, out_dir = Path(staging), Path(out_dir)
    old = None
    if out_dir.exists():
        if out_dir.is_dir() and not any(out_dir.iterdir()):
            out_dir.rmdir()
        else:
            old = out_dir.with_name(f".{out_dir.name}.old")
            if old.exists():
                shutil.rmtree(old)
            os.replace(out_dir, old)
    os.replace(staging, out_dir)
    fsync(out_dir.parent)
    if old is not None:
        shutil.rmtree(old)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` atomically (atomic_path).

    Args:
        path: the final path; data: the file's bytes.
    """
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` as UTF-8 to `path` atomically.

    Args:
        path: the final path; text: the file's text.
    """
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, data) -> None:
    """JSON with sorted keys and a final newline, so equal data gives equal bytes.

    Args:
        path: the final path; data: anything json.dumps takes.
    """
    write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def write_tensors(path: str | os.PathLike, tensors: dict, metadata: dict) -> None:
    """A safetensors file, byte-reproducible.

    Args:
        path: the final path.
        tensors: name -> torch.Tensor (any dtype and shape; made contiguous).
        metadata: name -> value; values that are not str are stored as JSON text, since
            safetensors only stores str -> str.
    """
    from safetensors.torch import save_file  # here: planning imports this module, and torch loads slowly

    metadata = {name: value if isinstance(value, str) else json.dumps(value) for name, value in metadata.items()}
    with atomic_path(path) as tmp:
        save_file({name: tensor.contiguous() for name, tensor in tensors.items()}, str(tmp), metadata=metadata)
        _sort_header(tmp)


def _sort_header(path: Path) -> None:
    """Rewrite the JSON header with sorted keys, in place.

    safetensors keeps the metadata in a hash map whose order changes from one write to
    the next, so the same tensors and metadata would give different bytes on every run.
    The sorted header holds the same keys and values, so it has the same length; the
    header's trailing-space padding absorbs any difference in escaping.
    """
    with open(path, "r+b") as stream:
        size = int.from_bytes(stream.read(8), "little")
        header = json.loads(stream.read(size))
        text = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
        if len(text) > size:  # cannot happen for the str -> str metadata written above
            raise ValueError(f"{path}: the sorted safetensors header is longer than the original")
        stream.seek(8)
        stream.write(text.ljust(size))



def read_header(path: str | os.PathLike) -> tuple[dict, int]:
    """The safetensors JSON header and the byte offset where the tensor data starts.

    Reads only the header, never the tensors: cheap for a multi-GB file.

    Args:
        path: a .safetensors file.
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
    """The str -> str metadata of a safetensors file, from its header alone.

    Args:
        path: a .safetensors file.
    Returns:
        The metadata; empty when the file has none.
    Raises:
        InputError: as read_header.
    """
    return dict(read_header(path)[0].get("__metadata__") or {})


def read_tensors(path: str | os.PathLike) -> tuple[dict, dict[str, str]]:
    """Every tensor (name -> torch.Tensor, as stored) and the metadata of a safetensors file.

    Args:
        path: a .safetensors file.
    Returns:
        (tensors, metadata): name -> torch.Tensor (dtype and shape as stored), str -> str.
    Raises:
        InputError: the file is missing or damaged.
    """
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as stream:
            return {name: stream.get_tensor(name) for name in stream.keys()}, dict(stream.metadata() or {})
    except FileNotFoundError:
        raise InputError(f"{path}: file not found; run the workflow to create it.") from None
    except Exception as exc:  # safetensors raises its own error types for damaged files
        raise InputError(f"{path}: not a readable safetensors file ({exc}); delete it and rerun the "
                         "workflow.") from None


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, read in blocks (constant memory).

    Args:
        path: the file; chunk: bytes per read (1 MiB).
    Returns:
        The 64-character lowercase hex digest.
    """

    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while block := stream.read(chunk):
            digest.update(block)
    return digest.hexdigest()
