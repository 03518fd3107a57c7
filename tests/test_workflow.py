"""The real `snakemake` CLI on small configs: dry runs, an end-to-end run, reruns, errors."""

from __future__ import annotations

import json
import math

import yaml
from safetensors import safe_open

from helpers import modes_against_umask, planned_jobs, snakemake, timekd_embed, weather_config


def test_dry_run_of_the_default_config_plans_sharded_extraction_jobs_holding_two_gpus(tmp_path, weather_csv):
    # One job per (horizon, split, range) (share_horizons: tests/test_share_horizons.py), shard_windows as a
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


def test_end_to_end_then_only_changed_stages_rerun(tmp_path, weather_csv, tiny_model_dir):
    config = weather_config(pred_lens=[24], model={"name_or_path": str(tiny_model_dir)}, precision="bf16",
                            limit_windows=3, shard_windows=2, parity={"windows": 2, "min_cosine": 0.99},
                            share_horizons=False)   # so that a horizon added later plans only its own jobs
    run = snakemake(tmp_path, config, "--cores", "2", "--resources", "gpu=2", umask=0o027)
    assert run.returncode == 0, run.stderr[-3000:]
    results = tmp_path / "results" / "weather"
    # Every output follows the umask (tests/test_demo.py runs under another one), also the parity's
    # recomputation, its histogram and the report's pages.
    assert {"sca.safetensors", "embeddings/24/train.safetensors", "embeddings/24/val.json", "MANIFEST.json",
            "windows/train.parquet", "validation/parity_24.json", "validation/summary.html",
            "validation/report/24_train.html", "validation/cosine_24.png", "logs/windows.log"} <= {
        str(p.relative_to(results)) for p in results.rglob("*")}
    assert modes_against_umask(results, 0o027) == {}
    for split in ("train", "val"):
        with safe_open(str(results / "embeddings" / "24" / f"{split}.safetensors"), "pt") as f:
            assert f.get_tensor("embeddings").shape == (3, 21, 64)
            assert f.get_tensor("window_start").tolist() == [0, 1, 2]
            meta = f.metadata()
        assert (meta["pred_len"], meta["split"], meta["precision"], meta["fidelity"]) == (
            "24", split, "bf16", "reference")
        assert meta["input_sha256"] == "34ee981d07313e51da2a50bb600072c8ae4a69cb4b0651f4cb93a069d7a2ba63"
        stats = json.loads((results / "embeddings" / "24" / f"{split}.json").read_text())
        assert stats["windows"] == 3 and stats["shards"] == 2 and stats["peak_memory_bytes"]["cpu_rss"] > 0
    assert not list((results / "embeddings" / "24").glob("*.shards/*"))   # temporary shards are gone
    assert "P=24 train: 100%" in (results / "logs" / "extract_24_train_2-3.log").read_text()

    validation = results / "validation"
    assert json.loads((validation / "shapes.json").read_text())["passed"]
    parity = json.loads((validation / "parity_24.json").read_text())
    assert parity["passed"] and 0.99 < parity["fp32_parity"]["cosine_min"] < 1
    assert "bf16 changed the embeddings by at most" in (validation / "summary.html").read_text()
    html = tmp_path / "report.html"
    report = snakemake(tmp_path, None, "--report", str(html))
    assert report.returncode == 0 and html.stat().st_size > 0, report.stderr[-2000:]

    # Nothing changed: nothing to do.
    again = snakemake(tmp_path, config, "-n", "--cores", "2", "--resources", "gpu=2")
    assert "Nothing to be done" in again.stdout + again.stderr

    # A new horizon plans only its own jobs; a runtime-only key plans nothing.
    more = snakemake(tmp_path, config | {"pred_lens": [24, 48], "batch_tokens": 4096}, "-n", "--cores", "2",
                     "--resources", "gpu=2")
    assert planned_jobs(more) == {"extract": 4, "gather": 2, "parity": 1, "validate": 1}
    assert "pred_len=48" in more.stdout and "pred_len=24" not in more.stdout

    # A key that changes the embeddings plans extraction again, but not windows or SCA.
    changed = snakemake(tmp_path, config | {"fidelity": "corrected"}, "-n", "--cores", "2", "--resources", "gpu=2")
    assert planned_jobs(changed) == {"extract": 4, "gather": 2, "parity": 1, "validate": 1}

    # Parity settings rerun the validation only.
    stricter = snakemake(tmp_path, config | {"parity": {"windows": 3, "min_cosine": 0.99}}, "-n", "--cores", "2",
                         "--resources", "gpu=2")
    assert planned_jobs(stricter) == {"parity": 1, "validate": 1}


def test_inspect_prints_what_the_teacher_reads(tmp_path, weather_csv, tiny_model_dir):
    configfile = tmp_path / "config.yaml"
    configfile.write_text(yaml.safe_dump(weather_config(model={"name_or_path": str(tiny_model_dir)})))
    shown = timekd_embed("inspect", "--configfile", str(configfile), "--pred-len", "24", "--split", "train",
                         "--window", "0")
    assert shown.returncode == 0, shown.stderr
    variables = json.loads(shown.stdout)
    assert len(variables) == 21 and variables[0]["variable"] == "p (mbar)" and variables[-1]["variable"] == "OT"
    first = variables[0]
    assert first["gt_prompt"].startswith("From <01/01/2020 00:10> to <01/01/2020 16:00>, the values were <1008, 1008,")
    assert first["hd_prompt"].endswith("every hour. Forecast the values for the next <24> hours")
    assert len(first["gt_ids"]) == len(first["gt_types"]) and set(first["gt_types"]) == {"language", "time_series"}
    bad = timekd_embed("inspect", "--configfile", str(configfile), "--pred-len", "24", "--split", "val",
                       "--window", "99999")
    assert bad.returncode == 1 and "--window 99999 is outside split val, which has 5247 windows" in bad.stderr
