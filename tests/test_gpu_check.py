"""`make gpu-check` on the CPU as a user types it: in a fresh clone, without the network, with none of
snakemake, jsonschema and pyarrow importable (as on a GPU node with the site's packages), on the real weather.csv
from the test-data cache. Its one report is read section by section: every check of both precisions, the
ones that need CUDA saying so, the targets, the figures. And the parts of it that decide what it runs."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import torch

from benchmarks.common import GPT2_SMALL
from benchmarks.common import SEED as BENCH_SEED
from benchmarks.gpu_check import SEED, SIZES, SYNTHETIC_CSV, choose_data, csv_part, preflight_config
from benchmarks.render import fmt
from conftest import ROOT, SHARED_DATA
from helpers import fresh_clone, left_in_the_tree
from test_commands import make
from timekd_embed.config import validate_config
from timekd_embed.demo import DEMO_SHAPE
from timekd_embed.preflight import NO_CUDA, check_outcome
from timekd_embed.resources import KNOWN_DATASETS

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the check runs there in full")

# Importing a name that sys.modules maps to None raises ImportError: these are then "not installed".
NOT_NEEDED = ("snakemake", "jsonschema", "pyarrow")
BLOCKER = f"import sys\nsys.modules.update(dict.fromkeys({NOT_NEEDED}))\n"
CUDA_CHECKS = ["key_padding", "prefetch_pinning", "replica_scaling", "model_parallel"]
RUN_CHECKS = ["embed_windows P=24", "embed_windows P=36", "whole job: the shared trie equals one job per horizon",
              "preflight", "parity with fp32", "attention_backends"]
TARGETS = ["GPU, P=24: at least 200 windows/s", "GPU, P=192: at least 60 windows/s",
           "GPU, P=192: peak GPU memory at most 8 GiB", "GPU: the whole weather job in at most 1 h (preflight's ETA)"]
DEMO_CSV_SHA256 = "3dbe437b634318274dd0d363c88fa4f65f8bebef8351e01d212bd46961ef0baf"   # .test/config.yaml
WEATHER_HEADER = b"date,p (mbar),T (degC),Tpot (K),Tdew (degC),OT\r\n"               # its first 4 variables and OT


@pytest.fixture(scope="module")
def checked(tmp_path_factory, weather_csv):
    clone = fresh_clone(tmp_path_factory.mktemp("clone"))
    blocker = tmp_path_factory.mktemp("blocker")
    (blocker / "sitecustomize.py").write_text(BLOCKER)
    # the clone's own package, as an editable install in the clone would give it
    env = {"PYTHONPATH": f"{blocker}:{clone / 'workflow'}", "TIMEKD_TEST_DATA": str(SHARED_DATA)}
    run = make(clone, "gpu-check", env=env, timeout=900)
    # the blocker works: in that environment neither can be imported
    for module in NOT_NEEDED:
        probe = subprocess.run([sys.executable, "-c", f"import {module}"], env=env | {"PATH": "/usr/bin:/bin"},
                               capture_output=True, text=True)
        assert probe.returncode != 0 and "ModuleNotFoundError" in probe.stderr
    folder = clone / "results" / "gpu-check"
    return clone, run, json.loads((folder / "gpu-check.json").read_text()), (folder / "gpu-check.md").read_text()


def test_make_gpu_check_runs_offline_without_snakemake_jsonschema_or_pyarrow(checked, weather_csv):
    clone, run, report, _ = checked
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Traceback" not in run.stdout + run.stderr
    printed = run.stdout.splitlines()        # after make's echo of the command
    first = printed.index("# GPU check: no CUDA device")
    # 2 precisions x (2 horizons, the whole job, preflight, parity, attention backends) ok; 2 x 4 need CUDA
    assert re.fullmatch(r"\*\*PASSED\*\*: 12 checks ok, 0 failed, 8 not run; targets 0 met, 0 not met, "
                        r"8 not measured; in .+\.", printed[first + 2])
    assert printed[first:-1] == report["headline"]
    assert printed[-1] == "Report: results/gpu-check/gpu-check.md and results/gpu-check/gpu-check.json"
    assert report["passed"] is True and report["summary"] == {
        "ok": 12, "failed": 0, "not_run": 8, "targets_met": 0, "targets_not_met": 0, "targets_not_measured": 8}
    assert left_in_the_tree(clone) == []          # results/ is ignored


def test_the_report_names_the_machine_data_model_and_sizes(checked, weather_csv):
    _, _, report, markdown = checked
    machine = report["machine"]
    assert machine["card"] is None and machine["cuda_available"] is False
    assert machine["torch"] == torch.__version__ and machine["cuda"] == torch.version.cuda
    assert machine["python"] == ".".join(map(str, sys.version_info[:3]))
    assert [device["device"] for device in machine["devices"]] == ["cpu"]
    if "CUDA_VISIBLE_DEVICES" not in os.environ:
        assert machine["held_gpus"] == {"source": "none: no GPU on this node"}
    assert report["data"]["kind"] == "weather" and report["data"]["csv"] == str(weather_csv.resolve())
    assert report["data"]["sha256"] == KNOWN_DATASETS["weather"]["sha256"]
    assert report["sizes"] == SIZES["cpu"] and report["model"] == DEMO_SHAPE
    assert report["docs_file"] is None            # no card to name it by
    lines = markdown.splitlines()
    assert lines[:3] == report["headline"][:3]
    assert f"- Data: real weather.csv ({weather_csv.resolve()}, its pinned sha256); no CUDA, so a part of it: its " \
           "first 2,000 rows, 5 of its 21 variables (OT among them)." in lines
    assert f"torch {torch.__version__}" in lines[4] and "driver -, CUDA -" in lines[4]
    assert [line for line in lines if line.startswith("## ")] == [
        "## Checks", "## Targets", "## embed_windows per horizon", "## The whole job",
        "## Preflight: the whole job's speed, memory and ETA", "## Section times"]


def test_every_check_of_both_precisions_with_those_that_need_cuda_not_run(checked):
    _, _, report, markdown = checked
    checks = {(row["precision"], row["check"]): row for row in report["checks"]}
    assert list(checks) == [(precision, check) for precision in ("fp16", "bf16") for check in RUN_CHECKS + CUDA_CHECKS]
    for (precision, check), row in checks.items():
        if check in CUDA_CHECKS:
            assert (row["outcome"], row["detail"]) == ("not run", NO_CUDA)
            assert f"| {check} | {NO_CUDA} | {NO_CUDA} |" in markdown
        else:
            assert row["outcome"] == "ok", row
    for precision, figures in report["figures"].items():
        whole, preflight = figures["whole_job"], figures["preflight"]
        assert whole["pred_lens"] == [24, 36] and len(whole["windows"]) == 1 and whole["rounds"] == 1
        assert f"max abs diff {whole['max_abs_diff']:.3g}" in checks[(precision, RUN_CHECKS[2])]["detail"]
        assert preflight["passed"] and preflight["config"]["precision"] == precision
        assert [job["pred_lens"] for job in preflight["jobs"]] == [[24, 36]]
        assert preflight["config"]["splits"] == ["train", "val"] and preflight["windows_per_horizon"] == 1
        assert preflight["gpu_checks"]["attention_backends"]["default"]["within_rounding"]
        lowest = min(stats["cosine_min"] for stats in preflight["parity"].values())
        assert f"lowest cosine {lowest:.6f}" in checks[(precision, "parity with fp32")]["detail"]


def test_the_targets_stand_beside_the_figures_and_say_why_they_are_not_measured(checked):
    _, _, report, markdown = checked
    assert [(row["precision"], row["target"]) for row in report["targets"]] == [
        (precision, target) for precision in ("fp16", "bf16") for target in TARGETS]
    for row in report["targets"]:
        assert row["measured"] is None and row["status"] == "not measured (no CUDA device)"
    for target in TARGETS:
        assert f"| {target} | not measured (no CUDA device) | not measured (no CUDA device) |" in markdown
    for precision, figures in report["figures"].items():
        assert [result["pred_len"] for result in figures["horizons"]] == [24, 36]
        for result in figures["horizons"]:
            assert result["windows"] == 1 and result["windows_per_s"] > 0 and "gpu_peak_allocated_bytes" not in result
            assert result["roofline_nearby_flops_per_s"] is None    # no matmul roofline on the CPU
            assert (f"| {result['pred_len']} | {precision} | 1 | {fmt(result['windows_per_s'])} | "
                    f"{fmt(result['tokens_per_s'])} | {fmt(result['s_per_window'])} | - | "
                    f"{result['longest_prompt']} |") in markdown
    assert [name for name, _ in report["sections_s"]] == [
        f"{precision}: {section}" for precision in ("fp16", "bf16")
        for section in ("embed_windows P=24", "embed_windows P=36", "the whole job", "preflight")]


def test_weather_csv_is_found_by_its_sha256_else_the_synthetic_csv(tmp_path, weather_csv):
    other = tmp_path / "weather.csv"
    other.write_bytes(weather_csv.read_bytes()[:-10])
    found = choose_data([tmp_path / "absent.csv", other, weather_csv])
    assert found["kind"] == "weather" and found["csv"] == str(weather_csv.resolve())
    assert found["splits"] == ["train", "val"] and found["skipped"][0].startswith(f"{other}: another sha256")
    synthetic = choose_data([other])
    assert synthetic["kind"] == "synthetic" and synthetic["csv"] == str(SYNTHETIC_CSV)
    assert synthetic["sha256"] == DEMO_CSV_SHA256 and synthetic["splits"] == ["train"]


def test_the_configs_it_builds_are_valid_configs(tmp_path, weather_csv):
    """Built without jsonschema; validate_config, which has it, accepts them unchanged."""
    for data in (choose_data([weather_csv]), choose_data([])):
        for device, sizes in SIZES.items():
            config = preflight_config(data, sizes, "bf16", device, 1, tmp_path)
            assert validate_config(config) == config
            assert config["pred_lens"] == sizes["pred_lens"] and config["dataset"]["layout"] == "custom"
    assert SIZES["cuda"]["model"] == {key: GPT2_SMALL[key] for key in ("n_layer", "n_embd", "n_head")}
    assert SEED == BENCH_SEED


def test_the_cpu_part_of_weather_keeps_rows_and_fields_as_they_are(tmp_path, weather_csv):
    part = csv_part(weather_csv, 3, 5, tmp_path / "part.csv").read_bytes().splitlines(keepends=True)
    source = weather_csv.read_bytes().splitlines(keepends=True)[:4]
    assert part[0] == WEATHER_HEADER and len(part) == 4
    for got, line in zip(part[1:], source[1:]):
        fields = line.rstrip(b"\r\n").split(b",")
        assert got == b",".join(fields[:5] + fields[-1:]) + b"\r\n"


def test_a_check_is_failed_only_when_it_failed_or_differs_by_more_than_rounding():
    within = {"max_abs_difference": 0.001, "bit_equal": False, "tolerance": 0.01, "within_rounding": True}
    assert check_outcome(NO_CUDA) == "not run"
    assert check_outcome("not run: the job holds one device (cuda:0)") == "not run"
    assert check_outcome("failed: CUDA error: an illegal memory access") == "failed"
    assert check_outcome({"default": within, "flash_attention": "not used for this batch: mask"}) == "ok"
    assert check_outcome({"parity_vs_one_device": within | {"within_rounding": False}, "speedup": 1.9}) == "failed"


def test_a_python_without_the_packages_says_which_in_one_sentence(tmp_path):
    (tmp_path / "sitecustomize.py").write_text("import sys\nsys.modules.update(dict.fromkeys(('accelerate', "
                                               "'pandas')))\n")
    run = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "--out", str(tmp_path / "out")],
                         env={"PYTHONPATH": f"{tmp_path}:{ROOT / 'workflow'}", "PATH": "/usr/bin:/bin"}, cwd=ROOT,
                         capture_output=True, text=True)
    assert run.returncode == 1 and run.stdout == ""
    assert run.stderr.splitlines() == [
        f"gpu-check: this Python ({sys.executable}) lacks accelerate, pandas; install them from a wheelhouse (make "
        "wheelhouse on a machine with network; README \"On a GPU node without internet\") or with make bootstrap."]
    assert not (tmp_path / "out").exists()


def gpu_results(cpu: dict, rates: dict[int, float], peak_192: int, eta_s: float) -> dict:
    """Both workers' results as a run on one H200 would give them: the CPU run's, with the device, the
    sizes and the figures the targets read set by hand (no GPU has run the check yet)."""
    h200 = {"device": "cuda:0", "name": "NVIDIA H200", "memory_bytes": 140 * 2**30, "compute_capability": "9.0",
            "fp16": True, "bf16": True}
    machine = cpu["machine"] | {"devices": [h200], "driver": "570.86.15", "cuda": "12.8"}
    results = {}
    for precision, figures in cpu["figures"].items():
        first = figures["horizons"][0]
        horizons = [first | {"pred_len": P, "windows_per_s": rate, "gpu_peak_allocated_bytes":
                             {"cuda:0": peak_192 if P == 192 else 2**30}} for P, rate in rates.items()]
        results[precision] = {"precision": precision, "device": "cuda", "sizes": SIZES["cuda"], "machine": machine,
                              "versions": {key: cpu["machine"][key] for key in ("python", "transformers",
                                                                               "timekd_embed")},
                              "horizons": horizons, "whole_job": figures["whole_job"], "min_cosine": 0.999,
                              "preflight": figures["preflight"] | {"eta_s": eta_s}, "sections_s": []}
    return results


def test_on_a_gpu_each_target_is_met_or_not_by_its_figure(checked):
    from benchmarks.gpu_check_report import assemble, render
    _, _, cpu, _ = checked
    rates = {24: 250.0, 36: 200.0, 48: 150.0, 96: 100.0, 192: 50.0}
    held = {"source": "lease (file locks)", "ids": "0"}
    report = assemble(gpu_results(cpu, rates, 6 * 2**30, 2 * 3600.0), cpu["data"], held, 300.0)
    statuses = {row["target"]: (row["measured"], row["status"])
                for row in report["targets"] if row["precision"] == "bf16"}
    assert statuses == {TARGETS[0]: (250.0, "met"), TARGETS[1]: (50.0, "not met"), TARGETS[2]: (6.0, "met"),
                        TARGETS[3]: (2.0, "not met")}
    assert report["summary"]["targets_met"] == 4 and report["summary"]["targets_not_met"] == 4
    assert report["docs_file"] == "docs/gpu-check-nvidia-h200.md"
    assert report["headline"][0] == "# GPU check: NVIDIA H200"
    assert "driver 570.86.15, CUDA 12.8" in report["headline"][4] and "GPUs held: lease (file locks), ids 0" in \
        report["headline"][4]
    assert report["headline"][-1] == "- Keep this report as docs/gpu-check-nvidia-h200.md (README \"GPU check\")."
    markdown = render(report)
    assert f"| {TARGETS[1]} | 50 windows/s: not met | 50 windows/s: not met |" in markdown
    assert f"| {TARGETS[2]} | 6 GiB: met | 6 GiB: met |" in markdown
    assert re.search(r"^\| 192 \| fp16 \| 1 \| 50 \| .* \| 6\.00 GiB \| \d+ \|$", markdown, flags=re.M)
    # the same figures read from the synthetic CSV measure no target; a worker that died fails the check
    synthetic = assemble(gpu_results(cpu, rates, 6 * 2**30, 600.0), choose_data([]), held, 300.0)
    assert {row["status"] for row in synthetic["targets"]} == {"not measured (synthetic data: no weather.csv found)"}
    died = gpu_results(cpu, rates, 6 * 2**30, 600.0) | {"bf16": {"precision": "bf16", "failed": "its worker exited "
                                                                 "with status 1"}}
    failed = assemble(died, cpu["data"], held, 300.0)
    assert not failed["passed"] and [row for row in failed["checks"] if row["precision"] == "bf16"] == [
        {"precision": "bf16", "check": "worker", "outcome": "failed", "detail": "its worker exited with status 1"}]
    assert {row["status"] for row in failed["targets"] if row["precision"] == "bf16"} == {
        "not measured (its worker failed)"}
    assert "The bf16 worker did not finish: its worker exited with status 1." in render(failed)
