"""GPU leases under concurrency: disjoint ids, waiting when all are taken, freed by a crash."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from timekd_embed.leases import lease_gpus

HOLD = """
import json, os, sys, time
from timekd_embed.leases import lease_gpus
lease = lease_gpus(2, sys.argv[1], poll_s=0.05)
start = time.time()
time.sleep(float(sys.argv[2]))
print(json.dumps({"ids": lease.ids, "visible": os.environ["CUDA_VISIBLE_DEVICES"], "start": start, "end": time.time()}))
"""


def run_holders(lock_dir, n, hold_s):
    env = os.environ | {"TIMEKD_NODE_GPUS": "4"}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    procs = [subprocess.Popen([sys.executable, "-c", HOLD, str(lock_dir), str(hold_s)], stdout=subprocess.PIPE,
                              text=True, env=env) for _ in range(n)]
    return [json.loads(p.communicate(timeout=60)[0]) for p in procs]


def test_concurrent_jobs_get_disjoint_gpus_and_the_rest_wait(tmp_path):
    leases = run_holders(tmp_path, 4, 1.0)      # 4 jobs x 2 GPUs on a 4-GPU node: two at a time
    for lease in leases:
        assert len(lease["ids"]) == 2 and lease["visible"] == ",".join(map(str, lease["ids"]))
    for a in leases:
        for b in leases:
            overlap = a is not b and a["start"] < b["end"] and b["start"] < a["end"]
            assert not (overlap and set(a["ids"]) & set(b["ids"]))
    starts = sorted(lease["start"] for lease in leases)
    assert starts[2] - starts[0] > 0.5          # the third job waited for a pair to come free


def test_a_killed_job_frees_its_gpus(tmp_path, monkeypatch):
    env = os.environ | {"TIMEKD_NODE_GPUS": "2"}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path), "60"], stdout=subprocess.PIPE, env=env)
    time.sleep(1.5)
    monkeypatch.setenv("TIMEKD_NODE_GPUS", "2")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    with pytest.raises(TimeoutError, match="no 2 free GPU"):
        lease_gpus(2, tmp_path, timeout_s=0.2, poll_s=0.05)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    lease = lease_gpus(2, tmp_path, timeout_s=5, poll_s=0.05)
    assert lease.ids == [0, 1] and os.environ["CUDA_VISIBLE_DEVICES"] == "0,1"
    lease.release()


def test_a_scheduler_assignment_wins(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    monkeypatch.setenv("TIMEKD_NODE_GPUS", "8")
    assert lease_gpus(2, tmp_path) is None and os.environ["CUDA_VISIBLE_DEVICES"] == "3,5"
