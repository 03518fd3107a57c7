"""The second test case beside the demo, .test/config-fp32-per-horizon/: fp32 and one extraction
job per (horizon, split) (share_horizons: false), run by the real snakemake CLI in a copy of .test/
and checked by `timekd-embed verify`.

The expected values come from the case: the demo's CSV has 560 rows (train 392, val 56 + seq_len
48 = 104; tests/test_demo.py), so every split has more than limit_windows = 8 windows at P = 24
and 48, and every embeddings file holds windows 0-7 of the 5 variables at the tiny GPT-2's width 64.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import yaml

from conftest import ROOT
from helpers import job_counts, planned_jobs, snakemake_command, timekd_embed
from timekd_embed.records import read_tensors

CASE = Path(".test") / "config-fp32-per-horizon" / "config.yaml"
OFFLINE = {"HF_HUB_OFFLINE": "1"}


def case_command(work: Path, *args: str, fresh: bool = False):
    return snakemake_command([*args, "--cores", "2", "-d", str(work), "--configfile", str(work / CASE)],
                             env=OFFLINE, fresh=fresh, snakefile=ROOT / "Snakefile", timeout=1200)


@pytest.fixture(scope="module")
def case(tmp_path_factory) -> tuple[Path, object]:
    work = tmp_path_factory.mktemp("fp32-per-horizon")
    shutil.copytree(ROOT / ".test", work / ".test")
    run = case_command(work, fresh=True)   # the installed command, as the catalog's CI types it
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return work, run


def test_the_case_is_the_demo_in_fp32_with_a_job_per_horizon():
    case, demo = (yaml.safe_load((ROOT / path).read_text()) for path in (CASE, Path(".test") / "config.yaml"))
    assert case["precision"] == "fp32" and case["share_horizons"] is False
    assert {key: case[key] for key in ("dataset", "seq_len", "pred_lens", "splits", "model")} == \
        {key: demo[key] for key in ("dataset", "seq_len", "pred_lens", "splits", "model")}


def test_each_horizon_and_split_is_embedded_by_its_own_job_in_fp32(case):
    work, run = case
    assert job_counts(run.stderr)["extract"] == 4                 # 2 horizons x 2 splits, one range each
    results = work / "results" / "demo"
    assert sorted(log.name for log in (results / "logs").glob("extract_*.log")) == [
        "extract_24_train_0-8.log", "extract_24_val_0-8.log", "extract_48_train_0-8.log", "extract_48_val_0-8.log"]
    for P in (24, 48):
        for split in ("train", "val"):
            tensors, metadata = read_tensors(results / "embeddings" / str(P) / f"{split}.safetensors")
            assert tensors["embeddings"].shape == (8, 5, 64) and tensors["embeddings"].dtype == torch.float32
            assert torch.isfinite(tensors["embeddings"]).all()
            assert torch.equal(tensors["window_start"], torch.arange(8))
            assert (metadata["precision"], metadata["pred_len"], metadata["split"]) == ("fp32", str(P), split)
    assert not list((results / "validation").glob("parity_*.json"))   # fp32: nothing to compare with fp32
    assert "one job for" not in (results / "validation" / "summary.html").read_text()   # each job its own horizon
    verify = timekd_embed("verify", str(results))
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_a_second_run_of_the_case_has_nothing_to_do(case):
    work, _ = case
    assert planned_jobs(case_command(work, "-n")) == {}
