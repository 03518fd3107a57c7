"""`timekd-embed preflight` on the CPU: a tiny GPT-2 with the real tokenizer, real weather windows,
two "devices" through the extraction's own test seam (explicit device lists and maps), a NaN in
one block's weights and a damaged checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import ROOT, make_model_dir
from helpers import snakemake, weather_config
from timekd_embed.checkpoint import checkpoint_matches, load_lm
from timekd_embed.config import validate_config
from timekd_embed.diagnostics import Horizon, device_usable, fill_windows, key_padding, prefetch_pinning
from timekd_embed.errors import InputError
from timekd_embed.packing import batches, packed_window
from timekd_embed.preflight import NO_CUDA, main, require_passed, run_preflight, write_report
from timekd_embed.report import preflight_markdown

P = 24
TRAIN_WINDOWS_AT_24 = 36768      # weather train: 36,887 rows - 96 - 24 + 1 (README "Results layout")
SPLIT_MAP = {"wte": "cpu", "wpe": "cpu", "drop": "cpu", "h.0": "cpu", "h.1": "cpu", "ln_f": "cpu"}
# Where the whole split's counts do not matter: the prompts of 16 windows, not of all 36,768 (3.8 s here).
FEW = {"limit_windows": 16}


def config_for(csv, model_dir, **overrides) -> dict:
    raw = {"dataset": {"name": "weather", "csv": str(csv)}, "pred_lens": [P], "splits": ["train"],
           "model": {"name_or_path": str(model_dir)}, "precision": "fp32", "device": "cpu"} | overrides
    return validate_config(raw)


@pytest.fixture(scope="module")
def nan_model_dir(tmp_path_factory):
    """The tiny model with one NaN in block 1's MLP weights."""
    path = make_model_dir(tmp_path_factory.mktemp("nan-gpt2"))
    tensors = load_file(path / "model.safetensors")
    tensors["h.1.mlp.c_fc.weight"][3, 5] = float("nan")
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})
    return path


def test_one_cpu_device_measures_and_lists_the_gpu_checks_as_not_run(weather_csv, tiny_model_dir, tmp_path):
    report = run_preflight(config_for(weather_csv, tiny_model_dir, precision="fp16"), n_windows=3)
    assert report["passed"], report["failures"]
    (horizon,) = report["jobs"]
    assert horizon["pred_lens"] == [P] and horizon["planned_windows"] == {"train": TRAIN_WINDOWS_AT_24}
    assert horizon["windows_per_s"] > 0
    assert report["eta_s"] == pytest.approx(TRAIN_WINDOWS_AT_24 / horizon["windows_per_s"])
    assert report["context"] == 1024 and 0 < horizon["longest_prompt"] <= 1024
    assert horizon["peak_memory_bytes"]["cpu_rss"] > 0 and horizon["fitting_batch_tokens"] is None
    assert set(report["parity"][P]) >= {"cosine_min", "cosine_mean", "max_abs_error", "nn_agreement"}
    assert report["gpu_checks"]["attention_backends"]["default"]["within_rounding"]
    for name in ("key_padding", "prefetch_pinning", "replica_scaling", "model_parallel"):
        assert report["gpu_checks"][name] == NO_CUDA
    assert report["machine"]["devices"][0]["device"] == "cpu"
    assert report["notes"] == ["fp16 on the CPU is emulated and slow: use precision fp32 there."]
    # The placement plan from config.json: the tiny model's 2 blocks on the one device, the CPU's budget.
    plan = report["plan"]
    assert plan["placement"] == "single" and plan["batch_tokens"] == 8192 and plan["device_map"] is None
    assert plan["devices"][0]["blocks"] == [0, 1] and plan["devices"][0]["weights"] > 0

    json_path, md_path = write_report(report, tmp_path)
    assert json.loads(json_path.read_text())["passed"] is True
    text = md_path.read_text()
    assert "**PASSED**" in text and "key_padding: not run: no CUDA device" in text and "| 24 |" in text
    assert "## Placement" in text and "**single**: not planned: CPU memory is not asked" in text
    assert "| cpu | - |" in text and "| all 2 |" in text
    require_passed(report, md_path)       # nothing to raise


def test_the_speed_memory_and_eta_are_those_of_the_jobs_the_workflow_runs(weather_csv, tiny_model_dir):
    """share_horizons: one job for both horizons, measured as one; false: one job per horizon."""
    shared = run_preflight(config_for(weather_csv, tiny_model_dir, pred_lens=[48, 24], precision="bf16", **FEW),
                           n_windows=2)
    assert shared["passed"], shared["failures"]
    # parity against fp32 on the same sample windows at both horizons
    assert [shared["parity"][P]["windows_compared"] for P in (48, 24)] == [[0, 15], [0, 15]]
    (job,) = shared["jobs"]
    assert job["pred_lens"] == [48, 24] and job["planned_windows"] == {"train": 16}
    assert shared["eta_s"] == pytest.approx(16 / job["windows_per_s"])
    text = preflight_markdown(shared)
    assert "| 48, 24 |" in text and "every horizon of a window in one job" in text
    separate = run_preflight(config_for(weather_csv, tiny_model_dir, pred_lens=[48, 24], share_horizons=False, **FEW),
                             n_windows=2)
    assert [job["pred_lens"] for job in separate["jobs"]] == [[48], [24]]
    assert separate["eta_s"] == pytest.approx(sum(16 / job["windows_per_s"] for job in separate["jobs"]))


def test_two_devices_run_the_replica_and_layer_split_checks(weather_csv, tiny_model_dir):
    """Two CPU entries: data-parallel replicas in threads, and the layers split by an explicit map
    (dispatched by accelerate); both against one device."""
    report = run_preflight(config_for(weather_csv, tiny_model_dir, **FEW), n_windows=2, devices=["cpu", "cpu"],
                           device_map=SPLIT_MAP)
    assert report["passed"], report["failures"]
    checks = report["gpu_checks"]
    assert checks["model_parallel"]["device_map"] == SPLIT_MAP
    # The plan of the split over the two entries: balanced by bytes, the embeddings (50,257 x 64) on the
    # first outweigh both blocks, which go to the second with the final norm.
    plan = report["plan"]
    assert plan["placement"] == "model_parallel" and [device["blocks"] for device in plan["devices"]] == [[], [0, 1]]
    text = preflight_markdown(report)
    assert "## Placement" in text and "**model_parallel**: the blocks split over 2 devices" in text
    assert "| none |" in text and "| 0-1 |" in text       # blocks per device
    assert checks["model_parallel"]["parity_vs_one_device"]["bit_equal"]      # same ops, same device type
    replicas = checks["replica_scaling"]
    assert replicas["devices"] == ["cpu", "cpu"] and replicas["windows_per_s_1"] > 0 and replicas["windows_per_s_2"] > 0
    assert replicas["parity_vs_one_device"]["within_rounding"]
    assert report["parity"] == {"fp32": "trivially exact: the configured precision is fp32"}


def test_a_nan_in_one_blocks_weights_fails_and_says_non_finite(weather_csv, nan_model_dir, tmp_path):
    report = run_preflight(config_for(weather_csv, nan_model_dir, precision="fp16", **FEW), n_windows=2)
    assert not report["passed"]
    assert any("non-finite" in f for f in report["failures"]), report["failures"]
    assert any("h.1.mlp.c_fc.weight" in f for f in report["failures"])       # where the NaN sits
    _, md_path = write_report(report, tmp_path)
    with pytest.raises(InputError, match=r"^preflight failed: .*non-finite"):
        require_passed(report, md_path)


def test_cli_exits_1_with_one_sentence_on_a_damaged_checkpoint(weather_csv, tmp_path):
    model_dir = make_model_dir(tmp_path / "damaged")
    weights = model_dir / "model.safetensors"
    os.truncate(weights, weights.stat().st_size // 2)
    config = tmp_path / "config.yaml"
    config.write_text(f"dataset: {{name: weather, csv: {weather_csv}}}\npred_lens: [24]\nsplits: [train]\n"
                      f"model: {{name_or_path: {model_dir}}}\nprecision: fp32\ndevice: cpu\n")
    env = os.environ | {"PYTHONPATH": str(ROOT / "workflow"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-m", "timekd_embed.cli", "preflight", "--configfile", str(config),
                             "--windows", "2", "--out", str(tmp_path / "out")], capture_output=True, text=True,
                            env=env, timeout=600, check=False, cwd=ROOT)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert errors[0].startswith("Error: preflight failed: ") and str(model_dir) in errors[0], errors[0]
    report = json.loads((tmp_path / "out" / "preflight.json").read_text())
    assert report["passed"] is False and "**FAILED**" in preflight_markdown(report)


def test_weights_other_than_the_named_ones_are_caught(tiny_model_dir, tmp_path):
    """A model whose parameters are not the file's (here: another seed's file) is named by parameter."""
    model = load_lm(str(tiny_model_dir), None, torch.float16)
    assert checkpoint_matches(model, [tiny_model_dir / "model.safetensors"], "tiny") is None
    other = make_model_dir(tmp_path / "other", seed=1)
    problem = checkpoint_matches(model, [other / "model.safetensors"], "tiny")
    assert problem.startswith("the loaded model is not the named weights: parameter wte.weight differs")
    partial = load_file(tiny_model_dir / "model.safetensors")
    del partial["h.1.attn.c_proj.weight"]
    save_file(partial, tmp_path / "partial.safetensors", metadata={"format": "pt"})
    problem = checkpoint_matches(model, [tmp_path / "partial.safetensors"], "tiny")
    assert "parameter h.1.attn.c_proj.weight is not in" in problem


def test_more_windows_asked_than_exist_reports_the_windows_timed(weather_csv, tiny_model_dir, tmp_path, capsys):
    """`--windows 100000` where limit_windows leaves 4 windows: it said "PASSED ... 100000 windows per
    horizon" while 4 were timed. The report names the windows timed, in the JSON and the Markdown, and
    says that fewer than asked exist."""
    report = main(config_for(weather_csv, tiny_model_dir, limit_windows=4), n_windows=100000, out=tmp_path)
    printed = capsys.readouterr().out
    written = json.loads((tmp_path / "preflight.json").read_text())
    assert (written["windows_asked"], written["windows_per_horizon"]) == (100000, 4)
    assert [job["windows_timed"] for job in written["jobs"]] == [4] and report["passed"]
    assert printed == (tmp_path / "preflight.md").read_text()
    assert "100000 sample windows per horizon were asked, but split train has 4" in printed
    headline = printed.splitlines()[2]
    assert "100000" not in headline and "4 sample windows per horizon" in headline, headline
    table = printed.split("## Speed and memory")[1].splitlines()
    header = [cell.strip() for cell in next(line for line in table if line.startswith("| P |")).split("|")]
    row = [cell.strip() for cell in next(line for line in table if line.startswith("| 24 |")).split("|")]
    assert row[header.index("windows timed")] == "4"


def test_a_device_that_cannot_run_is_named(weather_csv, tiny_model_dir):
    assert device_usable("cpu") is None
    if torch.cuda.is_available():
        pytest.skip("every CUDA device here may be usable")
    report = run_preflight(config_for(weather_csv, tiny_model_dir), devices=["cpu", "cuda:0"])
    assert not report["passed"]
    assert report["failures"] == [report["failures"][0]]
    assert report["failures"][0].startswith("device cuda:0 is visible but unusable (")


def test_key_padding_to_a_multiple_of_8_keeps_the_attention_output(train_prompts, tiny_model_dir):
    """The GPU check's own code on the CPU: the padded keys are masked out, so the output is the same."""
    prompts = train_prompts(P)
    trie, _ = packed_window({P: prompts}, 0, "reference")
    batch = batches([trie], [(0, b) for b in range(len(trie.branches))], 1 << 20)[0]
    model = load_lm(str(tiny_model_dir), None, torch.float32)
    result = key_padding(model, batch, "cpu")
    assert result["padded_to_8"]["key_length"] % 8 == 0
    head, stem, *leaves = batch.levels                 # a leaf level's keys: its ancestors', then its own
    ancestors = head.ids.shape[1] + stem.ids.shape[1]
    assert result["unaligned"]["key_length"] in {ancestors + leaf.ids.shape[1] for leaf in leaves}
    assert result["max_abs_difference"] < 1e-6


def test_prefetch_timing_runs_the_extractions_batch_preparation(train_prompts):
    prompts = train_prompts(P)
    horizon = Horizon(P, prompts, np.array([0, 3]), planned={"train": 4}, longest_prompt=0)
    result = prefetch_pinning(horizon, "reference", 8192, threads=2, pins=(False,))
    assert result["pageable_s"] > 0 and result["threads"] == 2 and "pinned_s" not in result
    # the memory measurement fills one batch and keeps the sample windows among those it runs
    filled = fill_windows(horizon, 1 << 16, "reference")
    assert set(horizon.sample) <= set(filled) and len(filled) > len(horizon.sample)
    assert filled.max() < 4 and np.array_equal(fill_windows(horizon, 1024, "reference"), horizon.sample)


def test_snakemake_target_writes_the_report_and_is_not_part_of_all(weather_csv, tiny_model_dir, tmp_path):
    config = weather_config(pred_lens=[24], splits=["train"], model={"name_or_path": str(tiny_model_dir)},
                            precision="fp32", device="cpu", **FEW)
    result = snakemake(tmp_path, config, "--cores", "2", "preflight", env={"HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "results" / "weather" / "preflight.json").read_text())
    assert report["passed"] and report["windows_per_horizon"] == 8
    assert (tmp_path / "results" / "weather" / "preflight.md").read_text().startswith("# Preflight")
    planned = snakemake(tmp_path, None, "--cores", "2", "-n")
    assert planned.returncode == 0 and "rule preflight" not in planned.stdout
