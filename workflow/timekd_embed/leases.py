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
        for f in self._files:
            f.close()
        self._files = []


def lease_gpus(count: int, lock_dir: str | Path = DEFAULT_LOCK_DIR, timeout_s: float = 24 * 3600,
               poll_s: float = 2.0) -> Lease | None:
    """Take `count` free GPU ids and set CUDA_VISIBLE_DEVICES to them; None when there is nothing to lease."""
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
            f = open(lock_dir / f"gpu{gpu}.lock", "a")
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.close()
                continue
            held.append((gpu, f))
            if len(held) == count:
                ids = [g for g, _ in held]
                os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, ids))
                log.info("leased GPU(s) %s (locks in %s)", ids, lock_dir)
                return Lease(ids, [f for _, f in held])
        for _, f in held:  # not enough free: give back what we took, so two jobs cannot deadlock
            f.close()
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {count} free GPU(s) among {total} after {timeout_s:.0f} s (locks in {lock_dir})")
        time.sleep(poll_s)
