"""share_horizons through the real snakemake CLI: one job per (split, range) for every horizon."""

from __future__ import annotations

import json

import numpy as np
from safetensors import safe_open

from helpers import planned_jobs, snakemake, weather_config


def test_dry_run_plans_one_job_per_split_range_for_every_horizon(tmp_path, weather_csv):
    result = snakemake(tmp_path, weather_config(shard_windows=4096), "-n", "--cores", "8", "--resources", "gpu=2")
    assert result.returncode == 0, result.stderr
    # Windows per split: train 36,792 - P + ... (36,768 at P = 24, 36,600 at P = 192), val 5,247 and 5,079.
    # Ranges of 4,096 over the longest horizon's windows, the last stretched to the shortest horizon's:
    # train 9 ranges, the last 32,768-36,768; val 0-4,096 and 4,096-5,247.
    assert planned_jobs(result) == {"get_model": 1, "windows": 1, "sca": 1, "extract": 11, "gather": 10, "parity": 5,
                                    "validate": 1}
    jobs = result.stdout.split("rule extract:")[1:]
    planned = {}
    for job in jobs:
        wildcards = dict(kv.split("=") for kv in job.split("wildcards: ")[1].split("\n")[0].split(", "))
        assert "pred_len" not in wildcards
        planned.setdefault(wildcards["split"], []).append((int(wildcards["start"]), int(wildcards["stop"])))
        outputs = job.split("output: ")[1].split("\n")[0]
        assert all(f"embeddings/{P}/{wildcards['split']}.shards/" in outputs for P in (24, 36, 48, 96, 192))
    assert sorted(planned["val"]) == [(0, 4096), (4096, 5247)]
    assert max(planned["train"]) == (32768, 36768) and len(planned["train"]) == 9


def test_shared_and_separate_horizons_give_the_same_files(tmp_path, weather_csv, tiny_model_dir):
    files = {}
    for share in (True, False):
        workdir = tmp_path / f"share_{share}"
        workdir.mkdir()
        config = weather_config(pred_lens=[24, 48], splits=["train"], model={"name_or_path": str(tiny_model_dir)},
                                precision="fp32", limit_windows=3, shard_windows=2, share_horizons=share)
        targets = [f"results/weather/embeddings/{P}/train.safetensors" for P in (24, 48)]
        run = snakemake(workdir, config, "--cores", "2", *targets, "--resources", "gpu=2")
        assert run.returncode == 0, run.stderr[-3000:]
        logs = sorted(p.name for p in (workdir / "results" / "weather" / "logs").glob("extract_*.log"))
        assert logs == (["extract_train_0-2.log", "extract_train_2-3.log"] if share else
                        ["extract_24_train_0-2.log", "extract_24_train_2-3.log", "extract_48_train_0-2.log",
                         "extract_48_train_2-3.log"])
        for P in (24, 48):
            with safe_open(str(workdir / targets[(24, 48).index(P)]), "pt") as f:
                files[(share, P)] = (f.get_tensor("embeddings").numpy(), f.get_tensor("window_start").tolist(),
                                     f.metadata())
            stats = json.loads((workdir / "results" / "weather" / "embeddings" / str(P) / "train.json").read_text())
            assert stats["windows"] == 3 and stats["shards"] == 2
    log = (tmp_path / "share_True" / "results" / "weather" / "logs" / "extract_train_0-2.log").read_text()
    assert "P=24,48 train: 100%" in log and "4/4" in log              # the bar counts windows x horizons
    for P in (24, 48):
        shared, separate = files[(True, P)], files[(False, P)]
        assert shared[0].shape == (3, 21, 64) and shared[1] == separate[1] == [0, 1, 2]
        assert np.abs(shared[0] - separate[0]).max() < 1e-5
        assert shared[2] == separate[2]                                # the same metadata, settings included
