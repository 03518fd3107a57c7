"""Plan-time sizing (planning.py): shard sizes from the device and the horizon, threads, the CPU note.

The expected values are worked out by hand from the figures documented in planning.py and
config/README.md (`shard_windows`): CPU seconds per window of GPT-2 small, fp32, 21 variables
8.37 at P = 24, 8.4 at 36, 19.3 at 192; GPU targets 200 windows/s per GPU at P = 24, 60 at
192; fp16 and bf16 on the CPU 62x on the model's part at d = 768 (linear in d below); 300 s of work per job.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import ROOT
from helpers import snakemake, weather_config
from timekd_embed.planning import (
    cpu_half_slowdown,
    cpu_hint,
    cpu_seconds,
    extraction_threads,
    job_device,
    model_dims,
    seconds_per_window,
    shard_size,
    too_slow,
    visible_gpus,
)

GPT2 = (12, 768)


@pytest.mark.parametrize("device,pred_len,precision,gpus,expected", [
    ("cpu", 24, "fp32", 1, 35),        # 300 / 8.37 = 35.8
    ("cpu", 30, "fp32", 1, 35),        # 300 / (8.37 + 0.03 / 2) = 35.8
    ("cpu", 192, "fp32", 1, 15),       # 300 / 19.3 = 15.5
    ("cpu", 24, "fp16", 1, 1),         # 300 / (8.37 * (0.05 + 0.95 * 62)) = 0.61: fp16 slows the model's part
    ("cpu", 24, "bf16", 1, 1),         # the same for bf16 on that CPU
    ("cuda", 24, "fp16", 2, 120_000),  # 300 * 200 * 2
    ("cuda", 192, "fp16", 1, 18_000),  # 300 * 60
])
def test_auto_shard_size_follows_device_and_horizon(device, pred_len, precision, gpus, expected):
    seconds = seconds_per_window(device, pred_len, 21, GPT2, precision, gpus)
    assert shard_size("auto", seconds, n_windows=100) == expected


def test_configured_shard_sizes_are_kept():
    assert shard_size(4096, 1.0, 10**6) == 4096 and shard_size(None, 1.0, 10**6) is None


def test_auto_plans_at_most_100_jobs_per_split(tmp_path, weather_csv):
    """The default config on a CPU: fp16 there costs 342 s per window for the five horizons, so
    `auto` gave one window per job, 41,679 jobs, and the dry run took 4 minutes."""
    result = dry_run(tmp_path, {"device": "cpu", "allow_slow_cpu": True}, "--cores", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    # train: 36,600 windows at P = 192 in ranges of 366; val: 5,079 in ranges of 51 (the last of 30).
    wildcards = [dict(kv.split("=") for kv in job["wildcards"].split(", ")) for job in extract_jobs(result.stdout)]
    assert len(wildcards) == 200 and sum(w["split"] == "train" for w in wildcards) == 100
    val = sorted((int(w["start"]), int(w["stop"])) for w in wildcards if w["split"] == "val")
    assert val[-2:] == [(4998, 5049), (5049, 5247)]


def test_cost_scales_with_variables_and_model_size():
    base = seconds_per_window("cpu", 24, 21, GPT2, "fp32")
    assert seconds_per_window("cpu", 24, 7, GPT2, "fp32") == pytest.approx(base / 3)
    # gpt2-medium: 24 layers of width 1024 -> 2 * (1024 / 768)^2 = 3.56x the weight matmuls, the rest (0.05) alike
    assert seconds_per_window("cpu", 24, 21, model_dims("gpt2-medium"), "fp32") == \
        pytest.approx(base * (0.05 + 0.95 * 32 / 9))


def test_model_dims_from_a_folder_or_a_hub_id(tiny_model_dir, family_model_dir):
    assert model_dims(str(tiny_model_dir)) == (2, 64)
    assert model_dims("gpt2-xl") == (48, 1600) and model_dims("someone/unknown") == GPT2
    # Every family's config.json (num_hidden_layers, hidden_size), not GPT-2 small's size for all but GPT-2:
    assert model_dims(str(family_model_dir("qwen2"))) == (2, 64)
    # a hub id before get_model fetched it: the jobs' folder is not there yet, the id is known
    assert model_dims("./resources/models/Qwen/Qwen2.5-7B", "Qwen/Qwen2.5-7B") == (28, 3584)
    # model.layers: only the first blocks run
    assert model_dims("gpt2-xl", layers=6) == (6, 1600) and model_dims(str(tiny_model_dir), layers=6) == (2, 64)


@pytest.mark.parametrize("example,dims", [("Qwen2.5-7B", "28 layers, d = 3584"),
                                          ("Llama-3.1-8B", "32 layers, d = 4096"),
                                          ("Mistral-7B", "32 layers, d = 4096"),
                                          ("Phi-3-mini-4k", "32 layers, d = 3072")])
def test_the_plan_of_an_example_teacher_is_sized_by_its_own_width_and_depth(tmp_path, weather_csv, example, dims):
    # Each example config names a hub id: before get_model the plan took it for GPT-2 small (12 layers, d = 768)
    config = yaml.safe_load((ROOT / "config" / "examples" / f"{example}.yaml").read_text())
    config["dataset"]["csv"] = str(weather_csv)
    result = snakemake(tmp_path, config | {"limit_windows": 4, "pred_lens": [24], "splits": ["train"]}, "-n",
                       "--cores", "2", env={"HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"{config['model']['name_or_path'].split('/')[-1]} with {dims}, bf16)" in result.stderr


def test_visible_gpus_reads_the_driver_folder_and_cuda_visible_devices(tmp_path):
    for i in range(4):
        (tmp_path / f"0000:0{i}:00.0").mkdir()
    assert visible_gpus({}, tmp_path) == 4
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "1,3"}, tmp_path) == 2
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": ""}, tmp_path) == 0
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "-1"}, tmp_path) == 0
    assert visible_gpus({}, tmp_path / "absent") == 0
    assert job_device("auto", 0) == "cpu" and job_device("auto", 2) == "cuda" and job_device("cpu", 2) == "cpu"


def test_threads_are_what_the_job_keeps_busy():
    assert extraction_threads("cpu", 2, 16) == 16   # torch's intra-op threads on every core
    assert extraction_threads("cuda", 2, 16) == 4   # per GPU: the thread driving it, the one preparing batches


def test_cpu_note_estimates_the_whole_job():
    text = cpu_hint({24: 100}, 21, "gpt2", GPT2, "fp32")
    assert "runs on the CPU" in text and "100 windows" in text and "about 14 min" in text  # 100 * 8.37 s + 16 s
    assert "docs/benchmarks.md" in text and "make preflight" in text and "fp16" not in text
    slow = cpu_hint({24: 100, 192: 50}, 21, "gpt2", GPT2, "fp16", jobs=100)
    # (100 * 8.37 + 50 * 19.3) * (0.05 + 0.95 * 62) + 100 jobs * 16 s = 107,827 s
    assert "in 100 job(s): about 29 h 57 min" in slow
    assert "fp16 on a CPU without half-precision matmul instructions is slow (about 62x fp32" in slow


def test_the_estimate_counts_each_jobs_start_up_and_the_work_that_does_not_shrink_with_the_model():
    # The demo (make demo): 2 layers, d = 64, 5 variables, seq_len 48, bf16, 3 extraction jobs. The estimate
    # said "about 2 s" for extraction jobs that took 65 s: no start-up, and all of a window's work scaled
    # with n_layer * d^2 (1/864 of GPT-2 small's).
    demo = cpu_seconds({24: 354, 48: 306}, 3, 5, (2, 64), "bf16", seq_len=48)
    # bf16 at d = 64: 62 / 12 times fp32 on the model's part
    per_window_24 = 8.37 * 5 / 21 * (2 * 48 + 24) / (2 * 96 + 24) * (0.05 + 0.95 * (2 * 64 ** 2) / (12 * 768 ** 2)
                                                                      * 62 / 12)
    assert seconds_per_window("cpu", 24, 5, (2, 64), "bf16", seq_len=48) == pytest.approx(per_window_24)
    assert 88 < demo < 98                       # 3 x 16 s of start-up and about 45 s of windows


def test_half_precision_on_the_cpu_slows_the_model_part_by_its_width():
    # One weather window at P = 24 with a GPT-2-small-shaped model took 60x its fp32 time in fp16 on a CPU without
    # half-precision matmul instructions (the estimate said 6x: 64 s for a job that took 2,019 s), and bf16's
    # matmuls there are as slow as fp16's (the estimate took bf16 as fast as fp32).
    fp32 = seconds_per_window("cpu", 24, 21, GPT2, "fp32")
    for precision in ("fp16", "bf16"):
        assert seconds_per_window("cpu", 24, 21, GPT2, precision) == pytest.approx(8.37 * (0.05 + 0.95 * 62))
        assert 55 < seconds_per_window("cpu", 24, 21, GPT2, precision) / fp32 < 65
    assert cpu_half_slowdown(768) == cpu_half_slowdown(1600) == 62
    assert cpu_half_slowdown(64) == pytest.approx(62 / 12) and cpu_half_slowdown(8) == 1.0
    # on a GPU the precision's speed is in the GPU targets (fp16)
    assert seconds_per_window("cuda", 24, 21, GPT2, "fp16") == seconds_per_window("cuda", 24, 21, GPT2, "fp32")


def test_a_cpu_estimate_beyond_a_day_is_one_sentence_with_the_ways_forward():
    assert too_slow(86400) is None
    stop = too_slow(3 * 86400)
    assert stop.startswith("the extraction on the CPU would take about 3.0 days")
    assert "GPU" in stop and "limit_windows=4" in stop and "allow_slow_cpu: true" in stop


# --------------------------------------------------------------------------- the real snakemake CLI


def dry_run(tmp_path: Path, config: dict, *args: str) -> subprocess.CompletedProcess:
    return snakemake(tmp_path, weather_config(**config), "-n", *args)


def extract_jobs(stdout: str) -> list[dict]:
    jobs = []
    for block in stdout.split("rule extract:\n")[1:]:
        lines = []
        for line in block.splitlines():
            if not line.startswith("    "):
                break               # the job's fields end where the next log entry starts
            lines.append(line.strip())
        jobs.append(dict(line.split(": ", 1) for line in lines if ": " in line))
    return jobs


def test_plan_on_the_cpu_cuts_small_ranges_uses_every_core_and_prints_no_shell_command(tmp_path, weather_csv):
    result = dry_run(tmp_path, {"pred_lens": [24], "splits": ["train"], "limit_windows": 100, "device": "cpu",
                                "precision": "fp32"}, "--cores", "8")
    assert result.returncode == 0, result.stderr
    jobs = extract_jobs(result.stdout)
    ranges = sorted(tuple(int(v) for v in (j["wildcards"].split("start=")[1].split(", stop="))) for j in jobs)
    assert ranges == [(0, 35), (35, 70), (70, 100)]
    cores = min(os.cpu_count(), 8)
    assert all(j.get("threads", "1") == str(cores) for j in jobs)
    assert "Shell command: None" not in result.stdout + result.stderr
    assert "No GPU is visible" not in result.stderr  # device: cpu was asked for: the estimate says so
    assert result.stderr.count("device is cpu: the extraction runs on the CPU. Estimate for all 100 windows") == 1


def test_a_cpu_run_estimated_beyond_a_day_stops_at_plan_time_unless_allowed(tmp_path, weather_csv):
    config = {"device": "cpu", "precision": "fp32"}       # weather, 5 horizons, train and val: weeks
    stopped = snakemake(tmp_path, weather_config(**config), "--cores", "2")          # a real run: no job starts
    assert stopped.returncode == 1
    assert stopped.stderr.rstrip().splitlines()[-1].startswith("Error: the extraction on the CPU would take about ")
    assert not (tmp_path / "results").exists()
    planned = dry_run(tmp_path, config, "--cores", "2")       # a dry run plans, and says where a run would stop
    assert planned.returncode == 0, planned.stderr[-3000:]
    assert "Dry run: a real run stops here: the extraction on the CPU would take about " in planned.stderr
    allowed = dry_run(tmp_path, config | {"allow_slow_cpu": True}, "--cores", "2")
    assert allowed.returncode == 0, allowed.stderr[-3000:]
    assert "days, start-up included" in allowed.stderr and "rule extract" in allowed.stdout
    assert "a real run stops here" not in allowed.stderr


def test_plan_for_gpus_holds_two_threads_per_gpu_and_one_range(tmp_path, weather_csv):
    result = dry_run(tmp_path, {"pred_lens": [24], "splits": ["train"], "limit_windows": 100, "device": "cuda",
                                "gpus_per_job": 2}, "--cores", "8", "--resources", "gpu=2")
    assert result.returncode == 0, result.stderr
    jobs = extract_jobs(result.stdout)
    assert len(jobs) == 1 and "start=0, stop=100" in jobs[0]["wildcards"] and jobs[0]["threads"] == "4"


@pytest.mark.skipif(visible_gpus() > 0, reason="this machine has a GPU: device auto plans for it")
def test_auto_without_a_gpu_says_once_where_the_run_goes_and_how_long(tmp_path, weather_csv):
    result = dry_run(tmp_path, {"pred_lens": [24], "splits": ["train"], "limit_windows": 100}, "--cores", "2")
    assert result.returncode == 0, result.stderr
    assert (result.stdout + result.stderr).count("No GPU is visible and device is auto") == 1
    # 100 windows * 8.37 s * (0.05 + 0.95 * 62) (fp16, the default precision) + 100 jobs of 1 window * 16 s
    assert "in 100 job(s): about 14 h 09 min" in result.stderr and "fp16 on a CPU without half-" in result.stderr
    assert "make preflight" in result.stderr
