"""GPU leases under concurrency: disjoint ids, waiting when all are taken, freed by a crash."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from helpers import SNAKEMAKE, snakemake, weather_config, weather_rows
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


def test_jobs_inside_one_allocation_lease_their_share_of_it(tmp_path, monkeypatch):
    """A local run inside a 4-GPU allocation: every job inherits its CUDA_VISIBLE_DEVICES=4,5,6,7;
    used as it is, two jobs of 2 GPUs both ran on GPUs 4 and 5."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")
    monkeypatch.setenv("TIMEKD_NODE_GPUS", "8")
    with lease_gpus(2, tmp_path, timeout_s=0) as first:
        assert first.ids == [4, 5] and os.environ["CUDA_VISIBLE_DEVICES"] == "4,5"
        os.environ["CUDA_VISIBLE_DEVICES"] = "4,5,6,7"    # the next job's environment
        with lease_gpus(2, tmp_path, timeout_s=0) as second:
            assert second.ids == [6, 7] and os.environ["CUDA_VISIBLE_DEVICES"] == "6,7"
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "4,5,6,7"   # released: the value from before its lease


# ------------------------------------------------------------------ the leases as the workflow's jobs hold them

LEASED = re.compile(r"^(\S+ \S+) INFO timekd_embed\.leases: leased GPU\(s\) \[([\d, ]*)\]", re.M)
STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ", re.M)


def leased_at(log: str) -> list[tuple[datetime, list[int]]]:
    """Every "leased GPU(s) [...]" line of a job's log: (its time, the ids)."""
    return [(moment(stamp), [int(i) for i in ids.split(",") if i.strip()]) for stamp, ids in LEASED.findall(log)]


def moment(stamp: str) -> datetime:
    return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f")


def last_line_at(log: str) -> datetime:
    """The time of a job's last log line: its lease is over by then (the job's process has ended)."""
    return moment(STAMP.findall(log)[-1])


PREPARED_CONFIG = {"pred_lens": [24], "splits": ["train", "val"], "limit_windows": 1, "precision": "fp32",
                   "device": "auto", "gpus_per_job": 1}


def node_env(n_gpus: int, lock_dir: Path) -> dict:
    """The environment of a node with `n_gpus` GPUs for the workflow's jobs: TIMEKD_NODE_GPUS, this
    test's lock folder, no hub. No CUDA here: the jobs lease ids, then `device: auto` computes on the CPU."""
    return {"TIMEKD_NODE_GPUS": str(n_gpus), "TIMEKD_GPU_LOCK_DIR": str(lock_dir), "HF_HUB_OFFLINE": "1"}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, tiny_model_dir, weather_csv):
    """A working folder whose windows (train, val) and SCA are made; the extraction jobs are left.
    Tests copy it (Snakemake's records included), so that each runs only the jobs that lease."""
    folder = tmp_path_factory.mktemp("prepared")
    csv = weather_rows(folder / "weather.csv", 1000)      # val: 100 rows + seq_len of train's
    config = weather_config(**PREPARED_CONFIG, model={"name_or_path": str(tiny_model_dir)})
    config["dataset"]["csv"] = str(csv)
    result = snakemake(folder, config, "results/weather/windows/train.parquet", "results/weather/windows/val.parquet",
                       "results/weather/sca.safetensors", "--cores", "2", env={"HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    return folder


@pytest.fixture
def gpu_node(tmp_path, monkeypatch, prepared):
    """(node_env for this test's lock folder, `work(name)`: a copy of the prepared folder)."""
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)

    def work(name: str) -> Path:
        return Path(shutil.copytree(prepared, tmp_path / name, symlinks=True))

    return (lambda n_gpus: node_env(n_gpus, tmp_path / "locks")), work


def embedding_targets(splits: list[str]) -> list[str]:
    return [f"results/weather/embeddings/24/{split}.safetensors" for split in splits]


def extract_logs(folder: Path) -> dict[str, str]:
    return {log.name: log.read_text() for log in sorted((folder / "results/weather/logs").glob("extract_*.log"))}


def test_two_extraction_jobs_side_by_side_lease_disjoint_gpus(gpu_node):
    """A 2-GPU node, `gpus_per_job: 1`, `--resources gpu=2`: the train and the val job run at once
    and each holds its own GPU for its whole life (a lease dropped at once gave both GPU 0)."""
    node, work = gpu_node
    folder = work("run")
    result = snakemake(folder, None, *embedding_targets(["train", "val"]), "--cores", "4", "--resources", "gpu=2",
                       "--set-threads", "extract=1", env=node(2))
    assert result.returncode == 0, result.stderr[-3000:]
    logs = extract_logs(folder)
    assert len(logs) == 2, list(logs)
    leases = {name: leased_at(log) for name, log in logs.items()}
    assert all(len(found) == 1 for found in leases.values()), leases
    (start_a, ids_a), (start_b, ids_b) = (found[0] for found in leases.values())
    (end_a, end_b) = (last_line_at(log) for log in logs.values())
    assert start_a < end_b and start_b < end_a, f"the two jobs did not run side by side: {leases}"
    assert sorted([ids_a, ids_b]) == [[0], [1]], leases


def wait_for(predicate, what: str, run: subprocess.Popen, out: Path, timeout: float = 300):
    """predicate()'s first true value, polled while `run` (its output in `out`) goes on."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        if run.poll() is not None:
            raise AssertionError(f"the run ended (exit {run.returncode}) before {what}: {out.read_text()[-3000:]}")
        time.sleep(0.1)
    raise AssertionError(f"gave up after {timeout} s waiting for {what}")


def start_run(folder: Path, env: dict, out: Path) -> subprocess.Popen:
    """Snakemake on `folder` in a process group of its own (to stop, continue or kill it with its jobs)."""
    # The targets first: --configfile takes every word after it up to the next option.
    return subprocess.Popen(SNAKEMAKE + [*embedding_targets(["train"]), "--cores", "2", "--resources", "gpu=1",
                                         "-d", str(folder), "--configfile", str(folder / "config.yaml")],
                            stdout=out.open("w"), stderr=subprocess.STDOUT, env=os.environ | env,
                            start_new_session=True)


def lease_line(folder: Path) -> tuple[datetime, list[int]] | None:
    logs = extract_logs(folder)
    found = [lease for log in logs.values() for lease in leased_at(log)]
    return found[0] if found else None


def waiting(folder: Path) -> bool | str:
    """True once the job's log says it waits for a GPU; its lease line if it leased one instead."""
    for log in extract_logs(folder).values():
        if "leased GPU(s)" in log:
            return "leased"
        if "waiting for 1 free GPU(s)" in log:
            return "waiting"
    return False


def test_a_job_waits_for_the_gpu_until_its_holder_is_killed_or_ends(gpu_node, tmp_path):
    """Three working folders on a 1-GPU node: while one job holds GPU 0 (stopped, so it cannot
    finish first), the next one waits; kill -9 the holder and the next one leases GPU 0; a third
    waits for that one until it ends. A lease dropped at once let them all take GPU 0 together."""
    node, work = gpu_node
    folders = {name: work(name) for name in ("first", "second", "third")}
    outs = {name: tmp_path / f"{name}.out" for name in folders}
    runs = {}

    def start(name: str) -> None:
        runs[name] = start_run(folders[name], node(1), outs[name])

    def until(predicate, name: str, what: str):
        return wait_for(lambda: predicate(folders[name]), f"the {name} job's {what}", runs[name], outs[name])

    try:
        start("first")
        until(lease_line, "first", "lease")
        os.killpg(runs["first"].pid, signal.SIGSTOP)       # it holds GPU 0 and cannot end
        start("second")
        assert until(waiting, "second", "lease or wait") == "waiting", \
            f"the second job leased GPU 0 while the first held it: {lease_line(folders['second'])}"
        before_the_kill = datetime.now() - timedelta(milliseconds=1)     # log times are cut to the millisecond
        os.killpg(runs["first"].pid, signal.SIGKILL)
        runs["first"].wait(timeout=60)
        leased, ids = until(lease_line, "second", "lease after the kill")
        assert ids == [0] and leased >= before_the_kill
        os.killpg(runs["second"].pid, signal.SIGSTOP)      # hold it again while the third one starts
        start("third")
        assert until(waiting, "third", "lease or wait") == "waiting", \
            f"the third job leased GPU 0 while the second held it: {lease_line(folders['third'])}"
        os.killpg(runs["second"].pid, signal.SIGCONT)
        assert runs["second"].wait(timeout=300) == 0, outs["second"].read_text()[-3000:]
        assert runs["third"].wait(timeout=300) == 0, outs["third"].read_text()[-3000:]
    finally:
        for run in runs.values():
            if run.poll() is None:
                os.killpg(run.pid, signal.SIGKILL)
                run.wait()
    second_ended = last_line_at(next(iter(extract_logs(folders["second"]).values())))
    leased, ids = lease_line(folders["third"])
    assert ids == [0] and leased >= second_ended, (leased, second_ended)


def test_preflight_holds_its_gpus_until_its_checks_end(tmp_path, monkeypatch):
    from timekd_embed.preflight import held_gpus

    monkeypatch.setenv("TIMEKD_NODE_GPUS", "1")
    monkeypatch.setenv("TIMEKD_GPU_LOCK_DIR", str(tmp_path))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    with held_gpus({"device": "auto", "gpus_per_job": 1}) as held:
        assert held == {"source": "lease (file locks)", "ids": "0"}
        del os.environ["CUDA_VISIBLE_DEVICES"]          # another job's environment
        with pytest.raises(TimeoutError):
            lease_gpus(1, timeout_s=0)
    with lease_gpus(1, timeout_s=0) as lease:
        assert lease.ids == [0]
