"""Files in and out: the one module that writes the product's files, records and checks their
sha256, and reads safetensors headers.

Every write goes to a hidden temporary name beside its target and is renamed over it
only when complete, so a crash, kill or full disk never leaves a file under a final name
that looks complete. Files are created like any other file of the user's (mode 0666 less
the umask), so a shared results folder stays readable by the group when the umask says so.

Each written file gets a record of its sha256: a hidden `.<name>.sha256` beside it, in the
format of `sha256sum` (so `sha256sum -c .<name>.sha256` checks it in that folder). A file
beside its file, not one record per results folder: every job writes only the records of
its own outputs, so concurrent jobs (also on other cluster nodes, where file locks are not
to be trusted) never write the same file, and a record travels with its file through
`rsync -a` or `cp -a`. The record is renamed into place just before its file, so a kill
between the two renames leaves a record that matches no file under that name, never a new
file without its record. Readers of the workflow's files (read_tensors, windows.read_windows,
the jobs that read JSON) call check_record before using one: a file damaged after it was
written (a flipped byte, a truncated copy, another file copied over it) stops the job with
one sentence instead of being consumed.

A full disk, a read-only folder or a write the permissions forbid ends any write in an
OSError naming the final file (never the hidden temporary one), also where the writer
(safetensors, pyarrow, h5py, matplotlib) raised an error of its own type; jobs.job() turns
it into one sentence.

Format: safetensors (github.com/huggingface/safetensors), whose header is an 8-byte
little-endian length, that many bytes of JSON, then the tensor data.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import secrets
import shutil
import stat
import struct
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import InputError

_HEADER_LIMIT = 100 * 1024 * 1024  # the format caps the JSON header at 100 MB; more means a damaged file
RECORD_SUFFIX = ".sha256"
_RECORD_LINE = re.compile(r"([0-9a-f]{64})  (.+)\n?")  # sha256sum's "<digest>  <name>"
# The errors a full disk or an exhausted quota give; the native writers' own exceptions carry
# only the operating system's text ("No space left on device (os error 28)" from safetensors).
_DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_DISK_FULL_TEXTS = ("No space left on device", "Disk quota exceeded", "os error 28", "errno = 28")
_REFUSED_ERRNOS = (errno.EROFS, errno.EACCES, errno.EPERM)  # a read-only folder, or one the user may not write
# A file verified by check_record in this process, by what a change would alter (as
# fingerprint.Sha256Cache): a second read (parity reads each embeddings file twice) costs no hash.
_VERIFIED: dict[str, tuple[tuple[int, int, int, int], str]] = {}
_RACY_NS = 2_000_000_000  # fingerprint.Sha256Cache.RACY_NS: only a file older than a timestamp tick is memoised


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


def disk_full(error: BaseException) -> bool:
    """Whether an error means the disk (or the user's quota) is full, whatever its type.

    Args:
        error: any exception; native writers raise their own types with the system's text.
    Returns:
        True for ENOSPC or EDQUOT, as an OSError or in the text of another error.
    """
    if isinstance(error, OSError) and error.errno in _DISK_FULL_ERRNOS:
        return True
    return not isinstance(error, OSError) and any(text in str(error) for text in _DISK_FULL_TEXTS)


def refused_write(error: BaseException) -> str | None:
    """One sentence for a write the disk or the permissions refused (jobs.job and the CLI print it).

    Args:
        error: any exception; the writers here raise an OSError naming the final file.
    Returns:
        The sentence naming the file and what to do, or None for any other error.
    """
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


def record_path(path: str | os.PathLike) -> Path:
    """The sha256 record of a file the workflow wrote.

    Args:
        path: the file.
    Returns:
        The hidden `.<name>.sha256` beside it.
    """
    path = Path(path)
    return path.with_name(f".{path.name}{RECORD_SUFFIX}")


def is_record(name: str) -> bool:
    """Whether a file name is that of a sha256 record (record_path).

    Args:
        name: a file name (not a path).
    Returns:
        True for `.<name>.sha256`.
    """
    return name.startswith(".") and name.endswith(RECORD_SUFFIX) and len(name) > len(RECORD_SUFFIX) + 1


def recorded_file(record: str | os.PathLike) -> Path:
    """The file a sha256 record belongs to (the inverse of record_path).

    Args:
        record: a record's path.
    Returns:
        The path of its file, which may no longer exist.
    """
    record = Path(record)
    return record.with_name(record.name[1:-len(RECORD_SUFFIX)])


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
    """One temporary path beside `path`, renamed over it if the block succeeds (see atomic_paths).

    Args:
        path: the final file path; durable: fsync before the rename; record: write its sha256 record.
    Yields:
        The temporary path (an existing empty file).
    """
    with atomic_paths(path, durable=durable, record=record) as (tmp,):
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


def write_bytes(path: str | os.PathLike, data: bytes, record: bool = True) -> None:
    """Write `data` to `path` atomically (atomic_path), with its sha256 record.

    Args:
        path: the final path; data: the file's bytes; record: write the record (atomic_paths).
    """
    with atomic_path(path, record=record) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str, record: bool = True) -> None:
    """Write `text` as UTF-8 to `path` atomically, with its sha256 record.

    Args:
        path: the final path; text: the file's text; record: write the record (atomic_paths).
    """
    write_bytes(path, text.encode("utf-8"), record)


def write_json(path: str | os.PathLike, data, record: bool = True) -> None:
    """JSON with sorted keys and a final newline, so equal data gives equal bytes; with its record.

    Args:
        path: the final path; data: anything json.dumps takes; record: write the record (atomic_paths).
    """
    write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n", record)


def write_tensors(path: str | os.PathLike, tensors: dict, metadata: dict) -> None:
    """A safetensors file, byte-reproducible, with its sha256 record.

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
            tensors, metadata = {name: stream.get_tensor(name) for name in stream.keys()}, dict(stream.metadata() or {})
    except FileNotFoundError:
        raise InputError(f"{path}: file not found; run the workflow to create it.") from None
    except Exception as exc:  # safetensors raises its own error types for damaged files
        raise InputError(f"{path}: not a readable safetensors file ({exc}); delete it and rerun the "
                         "workflow.") from None
    check_record(path)  # after the format's own checks, whose sentences say more about a torn file
    return tensors, metadata


def read_json(path: str | os.PathLike):
    """A JSON file the workflow wrote (write_json), checked against its record.

    Args:
        path: the file.
    Returns:
        Its content.
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


def check_record(path: str | os.PathLike) -> str:
    """Stop unless a file still has the bytes its writer recorded (atomic_paths' record).

    A file verified before in this process and unchanged since (size, times, inode) is not
    hashed again. Hashing costs a read of the whole file (sha256 at about 1 GB/s).

    Args:
        path: a file the workflow wrote.
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


def rerun_advice(path: str | os.PathLike) -> str:
    """How to write a workflow file again, for a sentence: Snakemake's --forcerun of that file, which
    also redoes what was made from it. (Deleting it is not enough: a missing file that only feeds jobs
    whose outputs are up to date is not made again.)

    Args:
        path: the file, relative to the workflow's working directory or under the current one.
    Returns:
        "rerun the workflow with --forcerun <path> to write it again (and what was made from it)".
    """
    absolute, here = Path(os.path.abspath(path)), Path.cwd()
    target = absolute.relative_to(here).as_posix() if here in absolute.parents else str(path)  # a target is relative
    return f"rerun the workflow with --forcerun {target} to write it again (and what was made from it)"


def forget_record(path: str | os.PathLike) -> None:
    """Remove the record of a file that is about to go (a temporary input Snakemake deletes next).

    Args:
        path: the file whose record goes; the file itself is left alone.
    """
    record_path(path).unlink(missing_ok=True)


def unwritable_folder(paths: Iterable[str | os.PathLike]) -> tuple[Path, Path] | None:
    """The first of `paths` that could not be written: its nearest existing folder refuses writes.

    A read-only file system refuses every user, root included (os.access checks the mount).

    Args:
        paths: files a run will write.
    Returns:
        (path, folder) for the first refused one, or None when all can be written.
    """
    for path in paths:
        folder = Path(path).parent
        while not folder.exists():
            folder = folder.parent
        if not os.access(folder, os.W_OK):
            return Path(path), folder
    return None


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
