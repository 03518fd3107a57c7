"""Which GPUs a local job owns when Snakemake does not say (snakemake/snakemake#281).

Each job takes `count` GPU ids with non-blocking exclusive file locks (flock) in one
node-local folder and exports CUDA_VISIBLE_DEVICES before CUDA starts; the lease lasts
until the job releases it (`with lease:`) or its process ends: the kernel drops a flock
when the last descriptor on it closes, so a crashed or killed job frees its GPUs.

Every user of a node locks in the same folder, so two users' jobs never share a GPU
that both lease: the folder is sticky and world-writable (mode 1777, like /tmp) and every
lock file 0666, whatever the umask. A lock needs only a descriptor, not write permission,
so a leftover lock file of another user's that only they can write is opened read-only.

A scheduler that assigns GPUs (SLURM, Kubernetes) sets CUDA_VISIBLE_DEVICES: a job given
no more GPUs than it asks for uses them as they are; one given more (several jobs inside
one allocation) leases its share among those ids.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import pwd
import shutil
import stat
import subprocess
import time
from pathlib import Path

from .errors import InputError

log = logging.getLogger(__name__)

DEFAULT_LOCK_DIR = "/tmp/timekd-embed-gpu-leases"
LOCK_DIR_MODE = 0o1777   # every user may add lock files; only a file's owner may delete it (sticky)
LOCK_FILE_MODE = 0o666   # every user may open and lock every lock file


def node_lock_dir() -> Path:
    """The node's lock folder: $TIMEKD_GPU_LOCK_DIR, else DEFAULT_LOCK_DIR.

    Returns:
        The folder's path (it may not exist yet).
    """
    return Path(os.environ.get("TIMEKD_GPU_LOCK_DIR") or DEFAULT_LOCK_DIR)


def gpu_count() -> int:
    """GPUs on this node, counted without starting CUDA (which would fix the visible set).

    Returns:
        $TIMEKD_NODE_GPUS when set (tests, nodes without nvidia-smi), else the GPUs nvidia-smi lists (0 without it).
    """
    if "TIMEKD_NODE_GPUS" in os.environ:
        return int(os.environ["TIMEKD_NODE_GPUS"])
    if shutil.which("nvidia-smi") is None:
        return 0
    out = subprocess.run(["nvidia-smi", "--list-gpus"], capture_output=True, text=True, check=False).stdout
    return sum(1 for line in out.splitlines() if line.startswith("GPU "))


class Lease:
    """The lock files of the leased GPU ids, held until `release` (or the end of a `with` block).

    Hold it for the job's whole life: `with lease_gpus(...) as lease:`, or `release()` in a
    `finally`. Its descriptors are plain file descriptors, never closed by garbage collection,
    so a Lease nobody releases holds its GPUs until the process ends, never shorter.
    """

    def __init__(self, ids: list[int | str], descriptors: list[int], previous_visible: str | None):
        self.ids, self._descriptors, self._previous_visible = ids, descriptors, previous_visible

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()

    def release(self) -> None:
        """Unlock the GPUs for other jobs and give CUDA_VISIBLE_DEVICES back its value from before the lease."""
        if not self._descriptors:
            return
        for descriptor in self._descriptors:
            os.close(descriptor)
        self._descriptors = []
        if self._previous_visible is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = self._previous_visible
        log.info("released GPU(s) %s", self.ids)


def lease_gpus(count: int, lock_dir: str | Path | None = None, timeout_s: float = 24 * 3600,
               poll_s: float = 2.0) -> Lease | None:
    """Take `count` free GPU ids and set CUDA_VISIBLE_DEVICES to them; None when there is nothing to lease.

    Args:
        count: GPUs wanted (fewer when the node or the scheduler's set has fewer).
        lock_dir: the node-local folder of the lock files gpu<id>.lock; None: `node_lock_dir()`.
        timeout_s: how long to wait for enough free GPUs, in seconds.
        poll_s: seconds between attempts.
    Returns:
        The Lease (hold it for the job's life: `with` or `release()`), or None when the scheduler
        set CUDA_VISIBLE_DEVICES to at most `count` GPUs or the node has no GPU.
    Raises:
        TimeoutError: not enough free GPUs within timeout_s.
        InputError: the lock folder or a lock file cannot be used by this user (one sentence).
    """
    previous = os.environ.get("CUDA_VISIBLE_DEVICES")
    candidates = _candidates(previous, count)
    if not candidates:
        return None
    count = min(count, len(candidates))
    folder = _lock_folder(Path(lock_dir) if lock_dir is not None else node_lock_dir())
    deadline, said_waiting = time.monotonic() + timeout_s, False
    while True:
        held: list[tuple[int | str, int]] = []
        try:
            for gpu in candidates:
                descriptor = _open_lock(folder / f"gpu{str(gpu).replace('/', '_')}.lock")  # MIG ids hold slashes
                try:
                    fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(descriptor)
                    continue
                held.append((gpu, descriptor))
                if len(held) == count:
                    ids = [gpu for gpu, _ in held]
                    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, ids))
                    log.info("leased GPU(s) %s (locks in %s)", ids, folder)
                    return Lease(ids, [descriptor for _, descriptor in held], previous)
        except BaseException:
            for _, descriptor in held:
                os.close(descriptor)
            raise
        for _, descriptor in held:  # not enough free: give back what we took, so two jobs cannot deadlock
            os.close(descriptor)
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {count} free GPU(s) among {len(candidates)} after {timeout_s:.0f} s "
                               f"(locks in {folder})")
        if not said_waiting:
            log.info("waiting for %d free GPU(s) of %d: other jobs hold the rest (locks in %s)", count,
                     len(candidates), folder)
            said_waiting = True
        time.sleep(poll_s)


def _candidates(visible: str | None, count: int) -> list[int | str]:
    """The GPU ids a job may lease: every GPU of the node, or the scheduler's set when it holds
    more than the job needs (several jobs in one allocation); [] when there is nothing to lease."""
    if visible is None:
        return list(range(gpu_count()))
    ids = [int(gpu) if gpu.strip().isdigit() else gpu.strip() for gpu in visible.split(",") if gpu.strip()]
    if len(ids) <= count or "-1" in map(str, ids):
        log.info("CUDA_VISIBLE_DEVICES=%s set by the scheduler: using those GPUs", visible)
        return []
    log.info("CUDA_VISIBLE_DEVICES=%s lists %d GPUs for a job of %d: leasing among them", visible, len(ids), count)
    return ids


def _lock_folder(folder: Path) -> Path:
    """The lock folder, made sticky and world-writable when this user makes it (or owns an older one)."""
    try:
        folder.mkdir(parents=True)
    except FileExistsError:
        pass
    except PermissionError:
        raise InputError(f"cannot create the GPU lock folder {folder}: permission denied; set TIMEKD_GPU_LOCK_DIR "
                         "to a node-local folder every user of this node may write (the default is "
                         f"{DEFAULT_LOCK_DIR}).") from None
    info = folder.stat()
    if info.st_uid == os.geteuid() and stat.S_IMODE(info.st_mode) != LOCK_DIR_MODE:
        os.chmod(folder, LOCK_DIR_MODE)   # mkdir's mode is cut by the umask; an older version made it 0755
    return folder


def _open_lock(path: Path) -> int:
    """A descriptor on the lock file `path` (made 0666 when missing): read-write where this user
    may write it, else read-only; flock needs no more."""
    for _ in range(3):
        try:
            # Never O_CREAT on an existing file: with fs.protected_regular the kernel refuses it for
            # another user's file in a sticky folder, even one this user may open.
            return _open_existing(path)
        except FileNotFoundError:
            pass
        try:
            descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, LOCK_FILE_MODE)
        except FileExistsError:
            continue                      # another job made it in between: open theirs
        except PermissionError:
            raise InputError(_not_writable(path.parent)) from None
        os.fchmod(descriptor, LOCK_FILE_MODE)  # the umask took bits away
        return descriptor
    raise InputError(f"the GPU lock file {path} keeps appearing and vanishing; something other than "
                     "timekd-embed deletes files in its folder; set TIMEKD_GPU_LOCK_DIR to a folder nothing cleans.")


def _open_existing(path: Path) -> int:
    try:
        return os.open(path, os.O_RDWR)
    except PermissionError:
        pass
    try:
        return os.open(path, os.O_RDONLY)
    except PermissionError:
        raise InputError(_not_lockable(path)) from None
    except OSError as error:
        if error.errno == errno.ENOENT:
            raise
        raise InputError(f"cannot open the GPU lock file {path}: {error.strerror}; it should be an empty file "
                         f"every user may read and write (mode 0666).") from None


def _owner(info: os.stat_result) -> str:
    try:
        return pwd.getpwuid(info.st_uid).pw_name
    except KeyError:
        return f"uid {info.st_uid}"


def _who_and_who_may_fix(path: Path) -> tuple[str, str]:
    """("owner <name>, mode <octal>", "<name> or root") for a sentence about `path`."""
    info = path.stat()
    owner = _owner(info)
    return f"owner {owner}, mode {stat.S_IMODE(info.st_mode):04o}", owner if owner == "root" else f"{owner} or root"


def _not_lockable(path: Path) -> str:
    found, fixer = _who_and_who_may_fix(path)
    return (f"cannot lock the GPU lock file {path} ({found}): every user's jobs lock it to share this node's "
            f"GPUs; ask {fixer} to run `chmod 0666 {path}`.")


def _not_writable(folder: Path) -> str:
    found, fixer = _who_and_who_may_fix(folder)
    return (f"cannot create a GPU lock file in {folder} ({found}): every user's jobs lock their GPUs there; "
            f"ask {fixer} to run `chmod 1777 {folder}`.")
