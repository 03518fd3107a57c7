"""kill -9 in the middle of a sharded run: the rerun computes only what is missing, and the
gathered file is byte-identical to an uninterrupted run's."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import yaml

from conftest import ROOT, WEATHER_CSV
from timekd_embed.store import read_tensors

SNAKEMAKE = [str(Path(sys.executable).parent / "snakemake"), "-s", str(ROOT / "Snakefile")]
TARGET = "results/weather/embeddings/24/train.safetensors"


def start(workdir: Path, model_dir: Path) -> subprocess.Popen:
    config = {"dataset": {"name": "weather", "csv": str(WEATHER_CSV)}, "pred_lens": [24], "splits": ["train"],
              "model": {"name_or_path": str(model_dir)}, "precision": "fp32", "limit_windows": 6,
              "shard_windows": 2}
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    return subprocess.Popen(SNAKEMAKE + [TARGET, "-d", str(workdir), "--configfile", str(workdir / "config.yaml"),
                                         "--cores", "1", "--resources", "gpu=2"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def test_kill_minus_nine_then_resume(tmp_path, weather_csv, tiny_model_dir):
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    killed.mkdir(), clean.mkdir()
    shards = killed / "results/weather/embeddings/24/train.shards"

    run = start(killed, tiny_model_dir)
    wildcards, finished = {}, set()
    for line in run.stdout:                              # until Snakemake reports a finished range
        if line.strip().startswith("jobid:"):
            jobid = line.split(":")[1].strip()
        elif line.strip().startswith("wildcards:"):
            wildcards[jobid] = line.split("wildcards:")[1].strip()
        elif "(Rule: extract)" in line:
            finished.add(wildcards[line.split("jobid:")[1].split()[0]])
            break
    os.killpg(run.pid, signal.SIGKILL)
    run.wait()
    assert not (killed / TARGET).exists()
    for path in shards.glob("*.safetensors"):           # whatever exists under a final name is complete
        read_tensors(path)

    # Snakemake's own lock outlives a kill -9; `--unlock` is its documented way back.
    unlock = subprocess.run(SNAKEMAKE + ["-d", str(killed), "--configfile", str(killed / "config.yaml"), "--unlock"],
                            capture_output=True, text=True)
    assert unlock.returncode == 0, unlock.stderr[-2000:]
    rerun = start(killed, tiny_model_dir)
    log = rerun.communicate(timeout=600)[0]
    assert rerun.returncode == 0, log[-3000:]
    done = {w.split("start=")[1].replace(", stop=", "-") for w in finished}
    assert len(done) == 1
    for a, b in ((0, 2), (2, 4), (4, 6)):
        if f"{a}-{b}" in done:
            assert f"start={a}, stop={b}" not in log        # a finished range is not computed again

    uninterrupted = start(clean, tiny_model_dir)
    assert uninterrupted.wait(timeout=600) == 0
    assert (killed / TARGET).read_bytes() == (clean / TARGET).read_bytes()
