"""Which GPUs a local job owns when Snakemake does not say (snakemake issue #281).

A scheduler that assigns GPUs (SLURM, Kubernetes) sets CUDA_VISIBLE_DEVICES: then that is
the answer. Otherwise each job takes `count` GPU ids with non-blocking exclusive file
locks in a node-local folder and exports CUDA_VISIBLE_DEVICES before CUDA starts. The
kernel drops a flock when its process ends, so a crashed or killed job frees its GPUs.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import subprocess
import time
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_LOCK_DIR = "/tmp/timekd-embed-gpu-leases"


def gpu_count() -> int:
    """GPUs on this node, counted without starting CUDA (which would fix the visible set)."""
    if "TIMEKD_NODE_GPUS" in os.environ:  # an explicit count: tests, or nodes without nvidia-smi
        return int(os.environ["TIMEKD_NODE_GPUS"])
    if shutil.which("nvidia-smi") is None:
        return 0
    out = subprocess.run(["nvidia-smi", "--list-gpus"], capture_output=True, text=True, check=False).stdout
    return sum(1 for line in out.splitlines() if line.startswith("GPU "))


class Lease:
    """Holds the lock files of the leased GPU ids for the life of the process (or until release)."""

    def __init__(self, ids: list[int], files: list):
        self.ids, self._files = ids, files

    def release(self) -> None:
        """Close the lock files: the GPUs are free for other jobs."""
        for lock_file in self._files:
            lock_file.close()
        self._files = []


def lease_gpus(count: int, lock_dir: str | Path = DEFAULT_LOCK_DIR, timeout_s: float = 24 * 3600,
               poll_s: float = 2.0) -> Lease | None:
    """Take `count` free GPU ids and set CUDA_VISIBLE_DEVICES to them; None when there is nothing to lease.

    Args:
        count: GPUs wanted (fewer when the node has fewer).
        lock_dir: the node-local folder of the lock files gpu<i>.lock.
        timeout_s: how long to wait for enough free GPUs, in seconds.
        poll_s: seconds between attempts.
    Returns:
        The Lease (hold it: closing its files frees the GPUs), or None when the scheduler set
        CUDA_VISIBLE_DEVICES or the node has no GPU.
    Raises:
        TimeoutError: not enough free GPUs within timeout_s.
    """

    if os.environ.get("CUDA_VISIBLE_DEVICES") is not None:
        log.info("CUDA_VISIBLE_DEVICES=%s set by the scheduler: using those GPUs", os.environ["CUDA_VISIBLE_DEVICES"])
        return None
    total = gpu_count()
    if total == 0:
        return None
    count = min(count, total)
    lock_dir = Path(lock_dir)
    lock_dir.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout_s
    while True:
        held = []
        for gpu in range(total):
            lock_file = open(lock_dir / f"gpu{gpu}.lock", "a")
            try:
                fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                lock_file.close()
                continue
            held.append((gpu, lock_file))
            if len(held) == count:
                ids = [gpu for gpu, _ in held]
                os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, ids))
                log.info("leased GPU(s) %s (locks in %s)", ids, lock_dir)
                return Lease(ids, [lock_file for _, lock_file in held])
        for _, lock_file in held:  # not enough free: give back what we took, so two jobs cannot deadlock
            lock_file.close()
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {count} free GPU(s) among {total} after {timeout_s:.0f} s (locks in {lock_dir})")
        time.sleep(poll_s)
