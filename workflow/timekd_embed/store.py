"""Files out: the one module that writes the product's files, each with its sha256 record.

Every write goes to a hidden temporary name beside its target and is renamed over it
only when complete, so a crash, kill or full disk never leaves a file under a final name
that looks complete. Files are created like any other file of the user's (mode 0666 less
the umask), so a shared results folder stays readable by the group when the umask says so.

Each written file gets its sha256 record beside it (records.py says why and who checks it).
The record is renamed into place just before its file, so a kill between the two renames
leaves a record that matches no file under that name, never a new file without its record.

A full disk, a read-only folder or a write the permissions forbid ends any write in an
OSError naming the final file (never the hidden temporary one), also where the writer
(safetensors, pyarrow, h5py, matplotlib) raised an error of its own type; jobs.job() turns
it into one sentence.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import shutil
import stat
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

# record_path and sha256_file are used here. The rest moved to records.py and can still be imported
# from here, for code written before the move (manifest.py); new code imports them from records.
from .records import (  # noqa: F401
    RECORD_SUFFIX,
    check_record,
    forget_record,
    is_record,
    read_header,
    read_json,
    read_metadata,
    read_tensors,
    record_path,
    recorded_file,
    rerun_advice,
    sha256_file,
)

# The errors a full disk or an exhausted quota give; the native writers' own exceptions carry
# only the operating system's text ("No space left on device (os error 28)" from safetensors).
_DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_DISK_FULL_TEXTS = ("No space left on device", "Disk quota exceeded", "os error 28", "errno = 28")
_REFUSED_ERRNOS = (errno.EROFS, errno.EACCES, errno.EPERM)  # a read-only folder, or one the user may not write


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
    """Flush a file's or a folder's data to the disk."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def disk_full(error: BaseException) -> bool:
    """Whether an error means the disk (or the user's quota) is full, whatever its type: ENOSPC or
    EDQUOT as an OSError, or their text in another error (native writers raise their own types)."""
    if isinstance(error, OSError) and error.errno in _DISK_FULL_ERRNOS:
        return True
    return not isinstance(error, OSError) and any(text in str(error) for text in _DISK_FULL_TEXTS)


def refused_write(error: BaseException) -> str | None:
    """One sentence naming the file and what to do for a write the disk or the permissions refused
    (jobs.job and the CLI print it); None for any other error."""
    where = getattr(error, "filename", None) or "a file"
    if disk_full(error):
        return (f"no space left on the device while writing {where}; free some space and rerun (nothing partial "
                "was kept).")
    if isinstance(error, OSError) and error.errno in _REFUSED_ERRNOS:
        return (f"cannot write {where} ({error.strerror}): its folder is read-only or not yours to write; make it "
                "writable, or run in another working directory (snakemake -d), and rerun (nothing partial was kept).")
    return None


def _naming_the_final(error: BaseException, temps: list[Path], finals: list[Path]) -> BaseException:
    """The error to raise for a failed write: a full disk (whatever the writer raised) or another
    OSError about a temporary file, as an OSError naming the final file it was for; else `error`.

    Called before the temporary files are removed: without a file name in the error, the file
    being written is the one whose temporary file changed last.
    """
    if not (isinstance(error, OSError) or disk_full(error)):
        return error
    named = Path(error.filename) if isinstance(error, OSError) and error.filename is not None else None
    if named is not None:
        owners = [final for final in finals if named.parent == final.parent and named.name.endswith(".tmp")
                  and named.name.startswith((f".{final.name}.", f".{record_path(final).name}."))]
        if not owners:
            return error  # it names a folder or a file of its own (the parent folder's mkdir): keep it
        final = owners[0]
    else:
        changed = [(tmp.stat().st_mtime_ns, index) for index, tmp in enumerate(temps[:len(finals)]) if tmp.exists()]
        final = finals[max(changed)[1]] if changed else finals[0]
    code = errno.ENOSPC if disk_full(error) else error.errno
    return OSError(code, os.strerror(code) if code else str(error), str(final))


@contextmanager
def atomic_paths(*paths: str | os.PathLike, durable: bool = True, record: bool = True) -> Iterator[list[Path]]:
    """Temporary paths for `paths`, renamed over them together when the block succeeds.

    Args:
        paths: the final file paths; their folders are created.
        durable: fsync each file before its rename; False for callers that write many
            small files and fsync them in bulk afterwards (see export.py).
        record: write each file's sha256 record beside it (record_path), renamed into place
            just before the file; False for files that are no output of a job (a cache).

    Yields:
        One temporary path per final path, in order, each an existing empty file.

    Raises:
        Whatever the block raises; a full disk, also from a native writer, and any other
        OSError as an OSError naming the final path being written. Then, and when a
        rename fails, no temporary file is left and no final path (or record) of this
        call remains, so a set of files (one Parquet per split, say) is all new or absent,
        never half new.
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
        renames = []
        for tmp, final in zip(temps[:len(finals)], finals):
            if record:
                record_tmp = _temporary_beside(record_path(final))
                temps.append(record_tmp)
                record_tmp.write_text(f"{sha256_file(tmp)}  {final.name}\n", encoding="ascii")
                if durable:
                    fsync(record_tmp)
                # The record just before its file: a kill between leaves no new file without its record.
                renames.append((record_tmp, record_path(final)))
            renames.append((tmp, final))
        for tmp, final in renames:
            os.replace(tmp, final)
            replaced.append(final)
    except BaseException as error:
        named = _naming_the_final(error, temps, finals)
        for leftover in [temp for temp in temps if temp.exists()] + replaced:
            leftover.unlink(missing_ok=True)
        if named is error:
            raise
        raise named from error


@contextmanager
def atomic_path(path: str | os.PathLike, durable: bool = True, record: bool = True) -> Iterator[Path]:
    """One temporary path (an existing empty file) beside `path`, renamed over it if the block
    succeeds: atomic_paths for one file."""
    with atomic_paths(path, durable=durable, record=record) as (tmp,):
        yield tmp


def publish_dir(staging: str | os.PathLike, out_dir: str | os.PathLike) -> None:
    """Rename a finished staging folder (beside `out_dir`: a rename, not a copy) to `out_dir`, replacing
    what is there. A non-empty `out_dir` is moved aside first, so it never loses files it had while the
    staging folder is renamed; the old copy is removed afterwards."""
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


def write_bytes(path: str | os.PathLike, data: bytes, record: bool = True) -> None:
    """Write `data` to `path` atomically (atomic_path), with its sha256 record unless `record` is False."""
    with atomic_path(path, record=record) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str, record: bool = True) -> None:
    """Write `text` as UTF-8 to `path` atomically, with its sha256 record unless `record` is False."""
    write_bytes(path, text.encode("utf-8"), record)


def write_json(path: str | os.PathLike, data, record: bool = True) -> None:
    """JSON with sorted keys and a final newline, so equal data gives equal bytes, written as write_text."""
    write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n", record)


def write_tensors(path: str | os.PathLike, tensors: dict, metadata: dict) -> None:
    """A safetensors file, byte-reproducible, with its sha256 record: `tensors` name -> torch.Tensor
    (made contiguous); `metadata` values that are not str stored as JSON text (safetensors stores str -> str)."""
    from safetensors.torch import save_file  # here: the plan (common.smk) imports this module; torch loads slowly

    metadata = {name: value if isinstance(value, str) else json.dumps(value) for name, value in metadata.items()}
    with atomic_path(path) as tmp:
        save_file({name: tensor.contiguous() for name, tensor in tensors.items()}, str(tmp), metadata=metadata)
        _sort_header(tmp)


def _sort_header(path: Path) -> None:
    """Rewrite the JSON header with sorted keys, in place (the header: an 8-byte little-endian length,
    then that many bytes of JSON; github.com/huggingface/safetensors).

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


def unwritable_folder(paths: Iterable[str | os.PathLike]) -> tuple[Path, Path] | None:
    """(path, folder) for the first of `paths` whose nearest existing folder refuses writes, or None
    when all can be written. A read-only file system refuses every user, root included (os.access
    checks the mount)."""
    for path in paths:
        folder = Path(path).parent
        while not folder.exists():
            folder = folder.parent
        if not os.access(folder, os.W_OK):
            return Path(path), folder
    return None
