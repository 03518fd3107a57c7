"""Datasets beyond weather through config alone: the ETT files (fixed borders) on the real
../shared/data/ETT-small files, Exchange / ECL / Traffic (custom layout) on small synthetic CSVs."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import ROOT, SHARED_DATA, need
from helpers import job_counts, snakemake
from timekd_embed.cadence import check_cadence
from timekd_embed.config import load_config_file, validate_config
from timekd_embed.model_files import model_source
from timekd_embed.prompts import TEMPLATES, SplitPrompts, template_key
from timekd_embed.table import load_csv
from timekd_embed.windows import read_windows, write_windows

EXAMPLES = ROOT / "config" / "examples"
SEQ_LEN = 96
HOUR, QUARTER = 24, 24 * 4  # rows per day
MONTH = 30  # days in an ETT "month"


def example(name: str) -> dict:
    return load_config_file(EXAMPLES / f"{name}.yaml")


def windows_of(csv: Path, name: str, tmp_path: Path, pred_lens=(24, 96), seq_len=SEQ_LEN) -> dict:
    """The windows stage as the workflow runs it, from the example config's name alone."""
    config = validate_config({"dataset": {"name": name, "csv": str(csv)}, "seq_len": seq_len})
    layout = config["dataset"]["layout"]  # concrete: validate_config resolves "auto" from the name
    table = load_csv(csv, target=config["dataset"]["target"], layout=layout)
    check_cadence(table, name, layout)
    out = {s: str(tmp_path / f"{s}.parquet") for s in ("train", "val", "test")}
    write_windows(table, layout, seq_len, list(pred_lens), out)
    return {s: read_windows(p) for s, p in out.items()}


def ett_counts(rows_per_day: int, pred_len: int) -> dict[str, int]:
    """Windows per split by hand: 12/4/4 months of 30 days; val and test start seq_len rows early."""
    month = MONTH * rows_per_day
    rows = {"train": 12 * month, "val": 4 * month + SEQ_LEN, "test": 4 * month + SEQ_LEN}
    return {s: r - SEQ_LEN - pred_len + 1 for s, r in rows.items()}


def prompts(split, name: str, pred_len: int, tokenizer) -> SplitPrompts:
    return SplitPrompts(tokenizer, split.raw, split.stamps(), name, pred_len, split.meta["seq_len"])


# --------------------------------------------------------------------------- ETT, real files


@pytest.fixture(scope="module")
def etth1(tmp_path_factory):
    return windows_of(need(SHARED_DATA / "ETT-small" / "ETTh1.csv"), "ETTh1", tmp_path_factory.mktemp("ETTh1"))


@pytest.fixture(scope="module")
def ettm1(tmp_path_factory):
    return windows_of(need(SHARED_DATA / "ETT-small" / "ETTm1.csv"), "ETTm1", tmp_path_factory.mktemp("ETTm1"))


def test_etth1_has_the_fixed_hourly_borders(etth1):
    # 8640 = 12 * 30 * 24 train rows; val 11520 - (8640 - 96) = 2976 rows; test the same.
    assert ett_counts(HOUR, 24) == {"train": 8521, "val": 2857, "test": 2857}
    assert ett_counts(HOUR, 96) == {"train": 8449, "val": 2785, "test": 2785}
    for P in (24, 96):
        assert {s: w.n_windows(P) for s, w in etth1.items()} == ett_counts(HOUR, P)
        assert {s: w.meta["windows_per_horizon"][str(P)] for s, w in etth1.items()} == ett_counts(HOUR, P)
    train = etth1["train"]
    assert train.meta["layout"] == "ett_hour"
    assert train.meta["borders"] == {"train": [0, 8640], "val": [8544, 11520], "test": [11424, 14400]}
    # The scaler is fit on the train rows only (data_loader_save.py), here recomputed with pandas.
    fit = pd.read_csv(SHARED_DATA / "ETT-small" / "ETTh1.csv", nrows=8640).iloc[:, 1:].to_numpy()
    np.testing.assert_allclose(train.meta["scaler"]["mean"], fit.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(train.meta["scaler"]["std"], fit.std(axis=0), rtol=1e-12)
    assert train.variables == ["HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL", "OT"]  # file order, as ETT loaders
    assert str(etth1["val"].dates[0]) == "2017-06-22 00:00:00"  # row 8544 = 356 days after 2016-07-01


def test_ettm1_has_the_fixed_quarter_hour_borders(ettm1):
    # 34560 = 12 * 30 * 96 train rows; val 46080 - (34560 - 96) = 11616 rows; test the same.
    assert ett_counts(QUARTER, 24) == {"train": 34441, "val": 11497, "test": 11497}
    assert ett_counts(QUARTER, 96) == {"train": 34369, "val": 11425, "test": 11425}
    for P in (24, 96):
        assert {s: w.n_windows(P) for s, w in ettm1.items()} == ett_counts(QUARTER, P)
    assert ettm1["train"].meta["layout"] == "ett_minute"
    assert ettm1["test"].meta["borders"] == {"train": [0, 34560], "val": [34464, 46080], "test": [45984, 57600]}


# The HUFL column of ETTh1.csv, rows 0-95 and 96-119, each value truncated toward zero.
ETTH1_HUFL_IN = ("5, 5, 5, 5, 5, 5, 7, 7, 5, 4, 4, 5, 4, 4, 5, 5, 4, 4, 5, 5, 5, 5, 4, 4, 5, 5, 5, 5, 4, 5, 5, 5, "
                 "5, 5, 9, 11, 9, 10, 8, 10, 9, 9, 10, 10, 9, 9, 9, 9, 10, 9, 10, 9, 10, 10, 12, 11, 10, 10, 11, "
                 "12, 9, 9, 10, 9, 9, 11, 11, 10, 11, 10, 9, 9, 9, 8, 8, 9, 9, 9, 11, 11, 10, 11, 11, 12, 10, 10, "
                 "10, 10, 9, 11, 11, 9, 10, 10, 9, 12")
ETTH1_HUFL_OUT = "11, 12, 12, 10, 11, 10, 13, 11, 11, 10, 12, 13, 11, 9, 10, 10, 10, 11, 11, 10, 11, 10, 9, 11"


def test_etth1_prompts_say_every_hour_with_hh00_stamps(etth1, tokenizer):
    p = prompts(etth1["train"], "ETTh1", 24, tokenizer)
    gt, hd = p.window_texts(0)[0]
    head = f"From <01/07/2016 00:00> to <04/07/2016 23:00>, the values were <{ETTH1_HUFL_IN}> every hour."
    assert gt == f"{head} The values for the next <24> hours are <{ETTH1_HUFL_OUT}>"
    assert hd == f"{head} Forecast the values for the next <24> hours"
    val = prompts(etth1["val"], "ETTh1", 96, tokenizer)
    assert val.window_texts(5)[-1][1].startswith("From <22/06/2017 05:00> to <26/06/2017 04:00>, the values were <")


def test_ettm1_prompts_say_every_15_minutes_with_minute_stamps(ettm1, tokenizer):
    p = prompts(ettm1["train"], "ETTm1", 24, tokenizer)
    gt, hd = p.window_texts(0)[0]
    assert gt.startswith("From <01/07/2016 00:00> to <01/07/2016 23:45>, the values were <5, 5, 5, 5, 5,")
    assert " every 15 minutes. The values for the next <24> minutes are <" in gt
    assert hd.endswith(" every 15 minutes. Forecast the values for the next <24> minutes")
    assert p.window_texts(1)[0][0].startswith("From <01/07/2016 00:15> to <02/07/2016 00:00>,")


def test_a_dry_run_plans_etth1_from_its_example_config_alone(tmp_path):
    csv = need(SHARED_DATA / "ETT-small" / "ETTh1.csv")
    config = yaml.safe_load((EXAMPLES / "ETTh1.yaml").read_text())
    config["dataset"]["csv"] = str(csv)                  # where the file lies here: the one key changed
    result = snakemake(tmp_path, config, "-n", "--cores", "8", "--resources", "gpu=2")
    assert result.returncode == 0, result.stderr[-2000:]
    jobs = job_counts(result.stdout)
    assert jobs["windows"] == jobs["sca"] == jobs["all"] == 1 and "export_h5" not in jobs  # the export is opt-in
    assert f"input: {csv}\n" in result.stdout
    for P in (24, 36, 48, 96, 192):
        for split in ("train", "val"):
            assert f"results/ETTh1/embeddings/{P}/{split}.safetensors" in result.stdout
    assert "results/weather" not in result.stdout


# --------------------------------------------------------------------------- custom layout, synthetic files


def synthetic_csv(path: Path, rows: int, freq: str, date_format: str, columns: list[str]) -> Path:
    """A custom-layout file as the TSLib collection ships them: date, variables, OT not last."""
    rng = np.random.default_rng(0)
    dates = np.datetime64("2016-07-01T00:00") + np.arange(rows) * np.timedelta64(*freq)
    values = rng.normal(50, 20, size=(rows, len(columns)))
    lines = [",".join(["date", *columns])]
    for d, row in zip(dates.astype("datetime64[m]").tolist(), values):
        lines.append(",".join([d.strftime(date_format), *(f"{v:.3f}" for v in row)]))
    path.write_text("\n".join(lines) + "\n")
    return path


CUSTOM = {  # name: (step, date format as the collection writes it, expected template, HD prompt ending)
    "Exchange": ((1, "D"), "%Y/%-m/%-d %-H:%M", "Exchange", "every day. Forecast the rates for the next <4> days"),
    "ECL": ((1, "h"), "%Y-%m-%d %H:%M:%S", "ETTh1", "every hour. Forecast the values for the next <4> hours"),
    "Traffic": ((30, "m"), "%Y-%m-%d %H:%M:%S", "ETTh1", "every hour. Forecast the values for the next <4> hours"),
}


@pytest.mark.parametrize("name", sorted(CUSTOM))
def test_custom_layout_datasets_from_their_example_config(name, tmp_path, tokenizer):
    step, date_format, template, hd_end = CUSTOM[name]
    config = example(name)
    assert config["dataset"]["name"] == name and config["dataset"]["layout"] == "custom"
    assert template_key(name, config["dataset"]["template"]) == template
    csv = synthetic_csv(tmp_path / "data.csv", 301, step, date_format, ["0", "OT", "1"])
    splits = windows_of(csv, name, tmp_path, pred_lens=[4], seq_len=12)
    # 301 rows: train int(210.7) = 210, test int(60.2) = 60, val the 31 left, plus seq_len rows before each.
    assert {s: len(w.rows) for s, w in splits.items()} == {"train": 210, "val": 31 + 12, "test": 60 + 12}
    assert {s: w.n_windows(4) for s, w in splits.items()} == {"train": 195, "val": 28, "test": 57}
    assert splits["train"].variables == ["0", "1", "OT"]  # the target moved last
    gt, hd = prompts(splits["val"], name, 4, tokenizer).window_texts(0)[-1]
    assert hd.endswith(hd_end) and gt.startswith(hd[:-len(hd_end)])
    stamps = gt.split(">, ")[0]
    if name == "Exchange":  # daily rows from 2016-07-01: val starts at row 210 - 12 = 198
        assert stamps == "From <15/01/2017 00:00> to <26/01/2017 00:00"
    elif name == "ECL":  # hourly rows (HH:00 stamps): val starts at row 198 = 8 days 6 h after 01/07/2016 00:00
        assert stamps == "From <09/07/2016 06:00> to <09/07/2016 17:00"
    else:  # Traffic keeps its minutes
        assert stamps == "From <05/07/2016 03:00> to <05/07/2016 08:30"


# --------------------------------------------------------------------------- the example configs


@pytest.mark.parametrize("name, layout, every", [
    ("ETTh1", "ett_hour", "every hour"), ("ETTh2", "ett_hour", "every hour"),
    ("ETTm1", "ett_minute", "every 15 minutes"), ("ETTm2", "ett_minute", "every 15 minutes"),
    ("Exchange", "custom", "every day"), ("ECL", "custom", "every hour"), ("Traffic", "custom", "every hour"),
])
def test_every_example_config_is_valid_and_picks_its_layout_and_template(name, layout, every):
    data = example(name)["dataset"]
    assert data["name"] == name and data["csv"].startswith("resources/")
    assert data["layout"] == layout  # "auto" resolved by validate_config
    assert f" {every}." in TEMPLATES[template_key(name, data["template"])][0]


DATASET_EXAMPLES = ["ETTh1", "ETTh2", "ETTm1", "ETTm2", "Exchange", "ECL", "Traffic"]
# Teachers other than GPT-2, one per family (docs/teacher.md section 8), and their hub ids.
TEACHER_EXAMPLES = {"Qwen2.5-7B": "Qwen/Qwen2.5-7B", "Llama-3.1-8B": "meta-llama/Llama-3.1-8B",
                    "Phi-3-mini-4k": "microsoft/Phi-3-mini-4k-instruct", "Mistral-7B": "mistralai/Mistral-7B-v0.1"}


def test_the_examples_are_exactly_the_documented_datasets_and_teachers():
    assert sorted(p.stem for p in EXAMPLES.glob("*.yaml")) == sorted(DATASET_EXAMPLES + list(TEACHER_EXAMPLES))


@pytest.mark.parametrize("name", TEACHER_EXAMPLES)
def test_every_teacher_example_pins_a_commit_of_its_hub_model_in_bf16(name):
    """bf16, not fp16 (docs/teacher.md: these families' activations outgrow fp16), and a commit, so
    that get_model downloads the same files for every run."""
    config = validate_config(example(name))
    hub_id = TEACHER_EXAMPLES[name]
    source = model_source(config["model"])
    assert source.hub and source.name == hub_id and re.fullmatch(r"[0-9a-f]{40}", source.revision)
    assert source.folder == Path("resources") / "models" / hub_id
    assert config["precision"] == "bf16" and config["dataset"]["name"] == "weather"

