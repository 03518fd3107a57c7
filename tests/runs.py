"""The real pipeline runs that several test modules share, each made once per session: one
uninterrupted run of rule all, and the same config stopped by Ctrl-C and kill -9, then resumed.

test_workflow, test_manifest, test_faults, test_validate, test_export and test_reruns read them; under
pytest-xdist they run on one worker (conftest.SHARED_RUNS), so that each run is made once.
Each run has a folder of its own with weather.csv and a tiny GPT-2 copied into resources/:
the config's paths are relative, so a copy of the folder elsewhere uses the same config.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import yaml

from helpers import SNAKEMAKE, snakemake

NAME = "weather"
MODEL = "resources/gpt2"
EMBEDDINGS = {P: f"results/{NAME}/embeddings/{P}/train.safetensors" for P in (24, 48)}
# Two horizons of 3 train windows, one job per (horizon, split, range) of 2 windows: 4 extraction
# jobs. fp32 on the CPU, so no parity job (bf16 and its parity run in tests/test_demo.py).
RUN_CONFIG = {"dataset": {"name": NAME, "csv": "resources/weather.csv"}, "pred_lens": [24, 48], "splits": ["train"],
              "limit_windows": 3, "shard_windows": 2, "share_horizons": False, "precision": "fp32", "device": "cpu",
              "model": {"name_or_path": MODEL}, "parity": {"windows": 2, "min_cosine": 0.99}}
OFFLINE = {"HF_HUB_OFFLINE": "1"}  # a local model folder must never touch the network

_MADE: dict[str, object] = {}


def new_work(folder: Path, model_dir: Path, weather_csv: Path, config: dict = RUN_CONFIG) -> Path:
    """`folder` with resources/weather.csv, the model folder at MODEL and config.yaml: ready to run."""
    (folder / "resources").mkdir(parents=True, exist_ok=True)
    shutil.copy(weather_csv, folder / "resources" / "weather.csv")
    shutil.copytree(model_dir, folder / MODEL)
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    return folder


def uninterrupted_run(factory, model_dir: Path, weather_csv: Path) -> Path:
    """The working folder of one run of rule all on RUN_CONFIG, under umask 0027 (a results folder
    its group may read); made once per session. One core, like the resumed run: an extraction on
    other cores gets other torch threads, which sum floats in another order."""
    if "uninterrupted" not in _MADE:
        work = new_work(factory.mktemp("uninterrupted"), model_dir, weather_csv)
        run = snakemake(work, None, "--cores", "1", env=OFFLINE, umask=0o027, fresh=True)
        assert run.returncode == 0, run.stderr[-3000:]
        _MADE["uninterrupted"] = work
    return _MADE["uninterrupted"]


def _start(work: Path, stdout) -> subprocess.Popen:
    """Rule all, one job at a time, in a process session of its own: a signal reaches snakemake and
    its jobs, like Ctrl-C in a terminal."""
    return subprocess.Popen(SNAKEMAKE + ["-d", str(work), "--configfile", str(work / "config.yaml"), "--cores", "1"],
                            stdout=stdout, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            env=os.environ | OFFLINE)


def _interrupt(run: subprocess.Popen, output: Path) -> None:
    """Ctrl-C, pressed again while Snakemake has not taken it: a SIGINT that lands while Snakemake
    runs a short asyncio task is lost (asyncio.Runner cancels a task that then ends normally), and
    under load the run went on to finish with exit code 0."""
    for _ in range(10):
        os.killpg(run.pid, signal.SIGINT)
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            if run.poll() is not None or "Terminating processes on user request" in output.read_text():
                return
            time.sleep(0.05)


def results_files(work: Path) -> list[str]:
    """What could pass for a result under results/NAME: no logs, benchmarks or hidden temporaries."""
    folder = work / "results" / NAME
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    return [f for f in files if not f.startswith(("logs/", "benchmarks/")) and not Path(f).name.startswith(".")]


def _locked(work: Path) -> bool:
    return any((work / ".snakemake" / "locks").glob("*"))


def resumed_run(factory, model_dir: Path, weather_csv: Path) -> dict:
    """RUN_CONFIG stopped by Ctrl-C as the first range starts, then by kill -9 right after a range
    finished, then `snakemake --unlock` and the same command again (README); made once per session.

    Returns:
        {"work": the folder, "sigint": {rc, output, files, locked}, "sigkill": {rc, finished (the
        finished job's wildcards), files, locked, shards ({file name: window_start})}, "unlock"
        and "rerun": the two completed processes}.
    """
    if "resumed" in _MADE:
        return _MADE["resumed"]
    from timekd_embed.records import read_tensors

    work = new_work(factory.mktemp("resumed"), model_dir, weather_csv)
    seen = {"work": work}
    logs = work / "results" / NAME / "logs"
    with open(work / "sigint.out", "w") as out:
        run = _start(work, out)
        deadline = time.monotonic() + 600
        while run.poll() is None and time.monotonic() < deadline and not list(logs.glob("extract_*.log")):
            time.sleep(0.02)
        _interrupt(run, work / "sigint.out")
        run.wait(timeout=120)
    seen["sigint"] = {"rc": run.returncode, "output": (work / "sigint.out").read_text(),
                      "files": results_files(work), "locked": _locked(work)}

    run, jobs, finished = _start(work, subprocess.PIPE), {}, None
    for line in run.stdout:                              # until Snakemake reports a finished range
        line = line.strip()
        if line.startswith("jobid:"):
            jobid = line.split(":")[1].strip()
        elif line.startswith("wildcards:"):
            jobs[jobid] = line.split("wildcards:")[1].strip()
        elif "(Rule: extract)" in line:
            finished = jobs[line.split("jobid:")[1].split()[0]]
            break
    os.killpg(run.pid, signal.SIGKILL)
    run.wait(timeout=120)
    shards = work / "results" / NAME / "embeddings"
    seen["sigkill"] = {"rc": run.returncode, "finished": finished, "files": results_files(work),
                       "locked": _locked(work),
                       "shards": {p.relative_to(shards).as_posix(): read_tensors(p)[0]["window_start"].tolist()
                                  for p in shards.glob("*/train.shards/*.safetensors")}}

    seen["unlock"] = snakemake(work, None, "--unlock", fresh=True)
    seen["rerun"] = snakemake(work, None, "--cores", "1", env=OFFLINE, fresh=True)
    _MADE["resumed"] = seen
    return seen
