"""The real `snakemake` CLI on small configs: dry runs, an end-to-end run and what reruns after it,
the same files with share_horizons, errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from safetensors import safe_open

from helpers import modes_against_umask, planned_jobs, snakemake, timekd_embed_in_process, weather_config
from runs import EMBEDDINGS, OFFLINE, RUN_CONFIG, new_work, uninterrupted_run


def test_dry_run_of_the_default_config_plans_sharded_extraction_jobs_holding_two_gpus(tmp_path, weather_csv):
    # One job per (horizon, split, range) (share_horizons: the next test), shard_windows as a
    # number (the default, auto, depends on the device: tests/test_planning.py)
    result = snakemake(tmp_path, weather_config(shard_windows=4096, share_horizons=False), "-n", "--cores", "8",
                       "--resources", "gpu=2")
    assert result.returncode == 0, result.stderr
    # Windows per split (spec): train 36,792 - P, val 5,271 - P; ranges of 4,096 windows.
    shards = {(P, s): math.ceil((rows - P) / 4096) for P in (24, 36, 48, 96, 192)
              for s, rows in (("train", 36792), ("val", 5271))}
    # gpt2 is a hub id: get_model fetches it once, at its pinned commit.
    assert planned_jobs(result) == {"get_model": 1, "windows": 1, "sca": 1, "extract": sum(shards.values()),
                                    "gather": 10, "parity": 5, "validate": 1}
    extract_jobs = result.stdout.split("rule extract:")[1:]
    assert all("gpu=2" in job.split("\n\n")[0] for job in extract_jobs)
    planned = {}
    for job in extract_jobs:
        wildcards = dict(kv.split("=") for kv in job.split("wildcards: ")[1].split("\n")[0].split(", "))
        planned.setdefault((int(wildcards["pred_len"]), wildcards["split"]), []).append(
            (int(wildcards["start"]), int(wildcards["stop"])))
    assert {k: len(v) for k, v in planned.items()} == shards
    assert sorted(planned[(192, "val")]) == [(0, 4096), (4096, 5079)]


def test_dry_run_with_shared_horizons_plans_one_job_per_split_range_for_every_horizon(tmp_path, weather_csv):
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


def test_bad_config_is_one_sentence(tmp_path, weather_csv):
    result = snakemake(tmp_path, weather_config(pred_lens=[24, 24]), "-n")
    assert result.returncode != 0
    assert "config key pred_lens = [24, 24] holds a value twice" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_csv_of_a_known_dataset_is_fetched_by_get_data(tmp_path):
    # Planned from weather's known row count; tests/test_resources.py runs the download offline.
    result = snakemake(tmp_path, {"dataset": {"name": "weather", "csv": "resources/weather.csv"}}, "-n")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "rule get_data:" in result.stdout


@pytest.fixture(scope="module")
def e2e(tmp_path_factory, weather_csv, tiny_model_dir) -> Path:
    """The uninterrupted run of tests/runs.py: two horizons, one job per (horizon, split, range), so
    that a horizon added later plans only its own jobs and the shared-horizons run below has separate
    jobs to agree with. fp32: bf16 and its parity job run end to end in tests/test_demo.py."""
    return uninterrupted_run(tmp_path_factory, tiny_model_dir, weather_csv)


def embeddings_of(work: Path) -> dict[int, tuple]:
    """P -> (embeddings (W, N, d), window_start, metadata) of the train file."""
    found = {}
    for P, target in EMBEDDINGS.items():
        with safe_open(str(work / target), "np") as f:
            found[P] = (f.get_tensor("embeddings"), f.get_tensor("window_start").tolist(), f.metadata())
    return found


def test_end_to_end_then_only_changed_stages_rerun(e2e):
    work = e2e
    results = work / "results" / "weather"
    # Every output follows the umask (tests/test_demo.py runs under another one).
    assert {"sca.safetensors", "embeddings/24/train.safetensors", "embeddings/48/train.json", "MANIFEST.json",
            "windows/train.parquet", "validation/shapes.json", "validation/summary.html",
            "validation/report/48_train.html", "logs/windows.log"} <= {
        str(p.relative_to(results)) for p in results.rglob("*")}
    assert modes_against_umask(results, 0o027) == {}
    for P, (embeddings, window_start, meta) in embeddings_of(work).items():
        assert embeddings.shape == (3, 21, 64) and window_start == [0, 1, 2]
        assert (meta["pred_len"], meta["split"], meta["precision"], meta["fidelity"]) == (
            str(P), "train", "fp32", "reference")
        assert meta["input_sha256"] == "34ee981d07313e51da2a50bb600072c8ae4a69cb4b0651f4cb93a069d7a2ba63"
        stats = json.loads((results / "embeddings" / str(P) / "train.json").read_text())
        assert stats["windows"] == 3 and stats["shards"] == 2 and stats["peak_memory_bytes"]["cpu_rss"] > 0
        assert not list((results / "embeddings" / str(P)).glob("*.shards/*"))   # temporary shards are gone
    assert "P=24 train: 100%" in (results / "logs" / "extract_24_train_2-3.log").read_text()
    assert json.loads((results / "validation" / "shapes.json").read_text())["passed"]

    def plan(**changes) -> dict[str, int]:
        """The jobs a dry run plans with `changes` to the run's config (in a file of its own)."""
        return planned_jobs(snakemake(work, RUN_CONFIG | changes, "-n", "--cores", "2", "--resources", "gpu=2",
                                      configfile="changed.yaml", env=OFFLINE))

    assert plan() == {}                                             # nothing changed: nothing to do
    # A new horizon plans only its own jobs; a runtime-only key plans nothing.
    assert plan(pred_lens=[24, 48, 96], batch_tokens=4096) == {"extract": 2, "gather": 1, "validate": 1}
    # A key that changes the embeddings plans extraction again, but not windows or SCA.
    assert plan(fidelity="corrected") == {"extract": 4, "gather": 2, "validate": 1}
    # fp32 has no parity job: parity settings change nothing (bf16: tests/test_demo.py).
    assert plan(parity={"windows": 3, "min_cosine": 0.99}) == {}


def test_shared_and_separate_horizons_give_the_same_files(e2e, tmp_path, weather_csv, tiny_model_dir):
    """share_horizons: one job per (split, range) embeds every horizon; its files equal the end-to-end
    run's, made one job per (horizon, split, range), bit for bit: the same ranges, the same batches,
    and one core as there (torch threads sum floats in their own order)."""
    work = new_work(tmp_path, tiny_model_dir, weather_csv, RUN_CONFIG | {"share_horizons": True})
    run = snakemake(work, None, "--cores", "1", *EMBEDDINGS.values(), "--resources", "gpu=2", env=OFFLINE)
    assert run.returncode == 0, run.stderr[-3000:]
    logs = work / "results" / "weather" / "logs"
    assert sorted(p.name for p in logs.glob("extract_*.log")) == ["extract_train_0-2.log", "extract_train_2-3.log"]
    log = (logs / "extract_train_0-2.log").read_text()
    assert "P=24,48 train: 100%" in log and "| 2/2 [" in log          # the bar counts windows (each at P = 24, 48)
    shared, separate = embeddings_of(work), embeddings_of(e2e)
    for P in (24, 48):
        assert shared[P][0].shape == (3, 21, 64) and shared[P][1] == separate[P][1] == [0, 1, 2]
        assert np.array_equal(shared[P][0], separate[P][0]), np.abs(shared[P][0] - separate[P][0]).max()
        assert shared[P][2] == separate[P][2]                          # the same metadata, settings included
        stats = json.loads((work / "results" / "weather" / "embeddings" / str(P) / "train.json").read_text())
        assert stats["windows"] == 3 and stats["shards"] == 2


def test_inspect_prints_what_the_teacher_reads(tmp_path, weather_csv, tiny_model_dir):
    configfile = tmp_path / "config.yaml"
    configfile.write_text(yaml.safe_dump(weather_config(model={"name_or_path": str(tiny_model_dir)})))
    # through cli.main in this process; tests/test_cli.py runs the installed command
    shown = timekd_embed_in_process("inspect", "--configfile", str(configfile), "--pred-len", "24", "--split",
                                    "train", "--window", "0")
    assert shown.returncode == 0, shown.stderr
    variables = json.loads(shown.stdout)
    assert len(variables) == 21 and variables[0]["variable"] == "p (mbar)" and variables[-1]["variable"] == "OT"
    first = variables[0]
    assert first["gt_prompt"].startswith("From <01/01/2020 00:10> to <01/01/2020 16:00>, the values were <1008, 1008,")
    assert first["hd_prompt"].endswith("every hour. Forecast the values for the next <24> hours")
    assert len(first["gt_ids"]) == len(first["gt_types"]) and set(first["gt_types"]) == {"language", "time_series"}
    bad = timekd_embed_in_process("inspect", "--configfile", str(configfile), "--pred-len", "24", "--split", "val",
                                  "--window", "99999")
    assert bad.returncode == 1 and "--window 99999 is outside split val, which has 5247 windows" in bad.stderr
