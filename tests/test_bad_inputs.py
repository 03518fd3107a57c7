"""Every bad input of the issue ends in a non-zero exit and one sentence, and nothing complete-looking.

A handful of cases drive the real `snakemake` CLI (each start costs seconds); the rest run
the same entry code in-process: the windows job's script with the object Snakemake would
hand it, `validate_config` (what common.smk calls), `extract_split` and `load_teacher`
(what the extraction job calls). Accepted irregularities (CRLF, the real file's duplicated
timestamp and gap, -9999 sentinels) are checked the same way.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import runpy
import shutil
import socket
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import pyarrow.parquet as pq
import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file
from snakemake.iocontainers import Namedlist
from transformers import GPT2Config, GPT2Model

from conftest import ROOT, SHARED_DATA, make_model_dir, need
from helpers import extract_one, snakemake, weather_settings
from timekd_embed.checkpoint import load_config
from timekd_embed.config import validate_config
from timekd_embed.errors import InputError
from timekd_embed.prompts import SplitPrompts
from timekd_embed.records import is_record
from timekd_embed.sca import save_sca
from timekd_embed.table import load_csv
from timekd_embed.teacher import load_teacher
from timekd_embed.windows import SPLITS, read_windows, write_windows

SCRIPTS = ROOT / "workflow" / "scripts"
ROWS = 400          # enough for every split at seq_len 96 and P = 24 (custom layout: 280 / 40 / 80 + 96)


# --------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def lines(weather_csv) -> list[str]:
    """Header and the first ROWS data lines of the real weather.csv, without line ends."""
    with open(weather_csv, encoding="utf-8", newline="") as f:
        return [next(f).rstrip("\r\n") for _ in range(ROWS + 1)]


def write(path: Path, content: list[str] | bytes) -> Path:
    path.write_bytes(content if isinstance(content, bytes) else ("\n".join(content) + "\n").encode("utf-8"))
    return path


def set_cell(lines: list[str], line: int, column: int, value: str) -> list[str]:
    """A copy with the cell at file line `line` (1 = header) and 0-based `column` replaced."""
    out = list(lines)
    cells = out[line - 1].split(",")
    cells[column] = value
    out[line - 1] = ",".join(cells)
    return out


def one_sentence(text: str) -> str:
    """The single error line a user sees: `Error: ...` (config) or the job's `ERROR timekd_embed: ...`."""
    found = [line.split("ERROR timekd_embed: ", 1)[-1].removeprefix("Error: ") for line in text.splitlines()
             if "ERROR timekd_embed: " in line or line.startswith("Error: ")]
    assert len(found) == 1, text[-3000:]
    sentence = found[0]
    assert sentence.endswith("."), sentence
    return sentence


def artifacts(work: Path) -> list[str]:
    """Files under results/ that could pass for output: everything but logs, benchmarks, temporaries and the
    hidden sha256 records beside the files."""
    results = work / "results"
    if not results.exists():
        return []
    return sorted(p.relative_to(results).as_posix() for p in results.rglob("*")
                  if p.is_file() and not {"logs", "benchmarks"} & set(p.relative_to(results).parts)
                  and not p.name.endswith(".tmp") and not is_record(p.name))


def small_config(csv: Path, model_dir: Path, **overrides) -> dict:
    return {"dataset": {"name": "weather", "csv": str(csv)}, "pred_lens": [24], "splits": ["train"],
            "limit_windows": 2, "precision": "fp32", "device": "cpu",
            "model": {"name_or_path": str(model_dir)}} | overrides


def assert_fails_cleanly(result: subprocess.CompletedProcess, *fragments: str) -> str:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    sentence = one_sentence(result.stderr)
    for fragment in fragments:
        assert fragment in sentence, (fragment, sentence)
    return sentence


@pytest.fixture(autouse=True)
def restore_logging():
    """job() reconfigures the root logger (as it should in a job process); undo that after each test."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in root.handlers:
        if handler not in handlers:
            handler.close()
    root.handlers[:] = handlers
    root.setLevel(level)


def run_windows_job(tmp_path: Path, csv: Path, sha256: str | None = None, seq_len: int = 96, name: str = "weather",
                    layout: str = "custom", date_format: str | None = None, template: str | None = None):
    """workflow/scripts/windows.py in-process, with what Snakemake hands it; (exit code, out paths, log).

    The params are those windows.smk passes after validate_config (a concrete layout).
    """
    out = [tmp_path / "results" / "windows" / f"{s}.parquet" for s in SPLITS]
    log = tmp_path / "results" / "logs" / "windows.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    fake = SimpleNamespace(input=Namedlist(fromdict={"csv": str(csv)}), output=[str(p) for p in out],
                           log=[str(log)], threads=1,
                           params=SimpleNamespace(layout=layout, name=name, target="OT", seq_len=seq_len,
                                                  sha256=sha256, date_format=date_format, template=template),
                           config={"pred_lens": [24]}, scriptdir=str(SCRIPTS))
    try:
        runpy.run_path(str(SCRIPTS / "windows.py"), init_globals={"snakemake": fake})
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    return code, out, log


# --------------------------------------------------------------------------- the real CLI
# One case per place a user meets an error: the config stage before any job (empty CSV,
# too few rows for a horizon), a job's log (the windows job), a later job (the model).
# The missing CSV and a bad config key are driven through the CLI in test_workflow.py.


def _e2e_cases(root: Path, lines: list[str], model_dir: Path) -> dict[str, tuple[Path, dict]]:
    cases = {}
    for name in ("empty", "short", "non_numeric", "no_model", "prefixed_weights", "etth1_on_ettm1"):
        (root / name).mkdir()
    cases["empty"] = small_config(write(root / "empty" / "empty.csv", b""), model_dir)
    # 400 rows: the val split gets 40 + 96 rows, fewer than seq_len + P = 96 + 48.
    cases["short"] = small_config(write(root / "short" / "short.csv", lines), model_dir, pred_lens=[48],
                                  splits=["val"])
    cases["non_numeric"] = small_config(write(root / "non_numeric" / "bad.csv", set_cell(lines, 6, 2, "abc")),
                                        model_dir)
    cases["no_model"] = small_config(write(root / "no_model" / "weather.csv", lines), root / "models" / "gpt2")
    # A wrapper module's save (keys "gpt2.h.0...") used to run as a random GPT-2, rc 0.
    wrapped = root / "models" / "wrapped"
    shutil.copytree(model_dir, wrapped)
    save_file({f"gpt2.{k}": v for k, v in load_file(model_dir / "model.safetensors").items()},
              wrapped / "model.safetensors", metadata={"format": "pt"})
    cases["prefixed_weights"] = small_config(write(root / "prefixed_weights" / "weather.csv", lines), wrapped)
    # dataset.name ETTh1 on the 15-minute ETTm1.csv used to give hourly borders, rc 0.
    with open(need(SHARED_DATA / "ETT-small" / "ETTm1.csv"), encoding="utf-8") as f:
        ettm1 = [next(f).rstrip("\n") for _ in range(20 * 30 * 24 + 1 + 100)]  # enough rows for ett_hour
    cases["etth1_on_ettm1"] = small_config(write(root / "etth1_on_ettm1" / "ETTm1.csv", ettm1), model_dir)
    cases["etth1_on_ettm1"]["dataset"]["name"] = "ETTh1"
    return {name: (root / name, config) for name, config in cases.items()}


def run_case(case: tuple[Path, dict]) -> subprocess.CompletedProcess:
    work, config = case
    return snakemake(work, config, "--cores", "2")


@pytest.fixture(scope="module")
def e2e(tmp_path_factory, lines, tiny_model_dir) -> dict[str, tuple[Path, dict, subprocess.CompletedProcess]]:
    """Every CLI case, two at a time: each pays seconds of start-up, mostly imports."""
    root = tmp_path_factory.mktemp("bad_inputs_cli")
    cases = _e2e_cases(root, lines, tiny_model_dir)
    with ThreadPoolExecutor(2) as pool:
        results = dict(zip(cases, pool.map(run_case, cases.values())))
    return {name: (work, config, results[name]) for name, (work, config) in cases.items()}


def test_empty_csv(e2e):
    work, config, result = e2e["empty"]
    assert_fails_cleanly(result, config["dataset"]["csv"], "0 data rows")
    assert artifacts(work) == []


def test_fewer_rows_than_seq_len_plus_pred_len(e2e):
    work, _, result = e2e["short"]
    assert_fails_cleanly(result, "pred_len 48", "split val", "fewer than seq_len + pred_len = 144", "pred_lens")
    assert artifacts(work) == []


def test_non_numeric_cell(e2e):
    work, config, result = e2e["non_numeric"]
    assert_fails_cleanly(result, config["dataset"]["csv"], "line 6, column 'T (degC)'", "'abc' is not a finite number")
    log = "results/weather/logs/windows.log"
    assert log in result.stderr                                            # Snakemake points at the job's log,
    assert "'abc' is not a finite number" in (work / log).read_text()      # which holds the sentence too
    assert artifacts(work) == []


def test_weights_under_a_wrapper_prefix_stop_the_first_model_job(e2e):
    work, config, result = e2e["prefixed_weights"]
    folder = config["model"]["name_or_path"]
    assert_fails_cleanly(result, f"model folder {folder} (config key model.name_or_path), model.safetensors",
                         "28 tensor(s) the model needs are not in the file", "28 tensor(s) of the file are not")
    assert "sca.log" in result.stderr  # the sca job, the first that reads the model, stopped it
    assert artifacts(work) == [f"weather/windows/{s}.parquet" for s in ("test", "train", "val")]


def test_an_hourly_name_on_15_minute_data_stops_the_run(e2e):
    work, _, result = e2e["etth1_on_ettm1"]
    assert_fails_cleanly(result, "ETTm1.csv", "dataset.layout is ett_hour", "usual step is 15 min")
    assert "results/ETTh1/logs/windows.log" in result.stderr
    assert artifacts(work) == []


def test_missing_model_folder(e2e):
    work, config, result = e2e["no_model"]
    missing = config["model"]["name_or_path"]
    assert_fails_cleanly(result, f"model folder {missing} (config key model.name_or_path) does not exist")
    # The windows stage legitimately finished; nothing of the model stages exists.
    assert artifacts(work) == [f"weather/windows/{s}.parquet" for s in ("test", "train", "val")]


# --------------------------------------------------------------------------- the windows job, in-process


def _header(lines, change):
    return [change(lines[0]), *lines[1:]]


CSV_CASES = {
    "empty": (lambda ls: b"", ["is empty"]),
    "header_only": (lambda ls: ls[:1], ["has a header line but no data rows"]),
    "no_date_column": (lambda ls: _header(ls, lambda h: h.replace("date", "time", 1)), ["line 1", "no 'date' column"]),
    "duplicate_column_names": (lambda ls: _header(ls, lambda h: h.replace("T (degC)", "p (mbar)", 1)),
                               ["line 1", "'p (mbar)' appears twice (columns 2 and 3)"]),
    "non_numeric_cell": (lambda ls: set_cell(ls, 6, 2, "abc"), ["line 6, column 'T (degC)'", "'abc'"]),
    "empty_cell": (lambda ls: set_cell(ls, 4, 5, ""), ["line 4, column 'rh (%)'", "empty"]),
    "nan_cell": (lambda ls: set_cell(ls, 5, 21, "NaN"), ["line 5, column 'OT'", "'NaN' is not a finite number"]),
    "unparsable_date": (lambda ls: set_cell(ls, 7, 0, "2020-13-45 25:00:00"),
                        ["line 7, column 'date'", "'2020-13-45 25:00:00' cannot be parsed"]),
    "invalid_utf8": (lambda ls: "\n".join(ls[:7]).encode() + b"\n" + ls[7].encode().replace(b"0.", b"0\xff", 1)
                     + b"\n" + "\n".join(ls[8:]).encode() + b"\n", ["line 8", "not valid UTF-8"]),
    "utf8_bom": (lambda ls: b"\xef\xbb\xbf" + ("\n".join(ls) + "\n").encode(), ["line 1", "byte order mark"]),
    "semicolon_delimited": (lambda ls: [x.replace(",", ";") for x in ls], ["line 1", "semicolon-separated"]),
    "fewer_rows_than_seq_len": (lambda ls: ls[:51], ["50 data rows, fewer than seq_len + 1 = 97"]),
}


def refused(result: tuple, capsys, *fragments: str) -> str:
    """run_windows_job's result: exit code 1, one sentence holding every fragment, no windows file.

    Returns:
        The sentence.
    """
    code, out, _ = result
    assert code == 1
    sentence = one_sentence(capsys.readouterr().err)
    for fragment in fragments:
        assert fragment in sentence, (fragment, sentence)
    assert not any(p.exists() for p in out) and not list(out[0].parent.glob("*"))
    return sentence


@pytest.mark.parametrize("case", list(CSV_CASES))
def test_bad_csv_stops_the_windows_job(case, tmp_path, lines, capsys):
    make, fragments = CSV_CASES[case]
    csv = write(tmp_path / f"{case}.csv", make(lines))
    result = run_windows_job(tmp_path, csv)
    sentence = refused(result, capsys, str(csv), *fragments)     # one_sentence: one line, no traceback
    assert sentence in result[2].read_text()


def test_csv_whose_sha256_differs_from_the_config(tmp_path, lines, capsys):
    csv = write(tmp_path / "weather.csv", lines)
    code, out, _ = run_windows_job(tmp_path, csv, sha256="f" * 64)
    assert code == 1 and not any(p.exists() for p in out)
    sentence = one_sentence(capsys.readouterr().err)
    actual = hashlib.sha256(csv.read_bytes()).hexdigest()
    assert f"{csv}: sha256 is {actual} but config key dataset.sha256 expects {'f' * 64}" in sentence
    assert run_windows_job(tmp_path, csv, sha256=actual)[0] == 0 and all(p.exists() for p in out)


def test_crlf_duplicates_gaps_and_sentinels_are_accepted(tmp_path, weather_csv, capsys):
    """The real file: CRLF, 2020-05-12 06:00 twice, a 100-minute gap, -9999 81 times."""
    code, out, _ = run_windows_job(tmp_path, weather_csv, sha256=None)
    assert code == 0 and all(p.exists() for p in out)
    meta = json.loads(pq.read_schema(out[0]).metadata[b"timekd_embed"])
    irregular = meta["irregularities"]
    assert irregular["crlf_line_endings"] and irregular["duplicate_timestamps"]["count"] == 1
    assert irregular["gaps"]["count"] == 1 and irregular["sentinel"]["total"] == 81
    assert "ERROR" not in capsys.readouterr().err


# --------------------------------------------------------------------------- time step and dates


@pytest.fixture(scope="module")
def ettm1_head(tmp_path_factory) -> Path:
    """The first 20 months (12/4/4 of 30 days) of hourly rows' worth of the real 15-minute ETTm1.csv."""
    source = need(SHARED_DATA / "ETT-small" / "ETTm1.csv")
    folder = tmp_path_factory.mktemp("ettm1")
    with open(source, encoding="utf-8") as f:
        head = [next(f).rstrip("\n") for _ in range(20 * 30 * 24 + 1 + 100)]
    return write(folder / "ETTm1.csv", head)


def test_an_hourly_name_on_15_minute_data_stops_the_windows_job(ettm1_head, tmp_path, capsys):
    # dataset.name ETTh1 (layout auto -> ett_hour) with ETTm1.csv: hourly borders on 15-minute rows, and
    # HH:00 stamps that would write 23:00 for 23:45.
    refused(run_windows_job(tmp_path, ettm1_head, name="ETTh1", layout="ett_hour"), capsys,
            "dataset.layout is ett_hour", "dataset.name 'ETTh1'", "usual step is 15 min",
            "set dataset.name to an ETTm name (layout ett_minute)")


def test_an_hh00_name_on_data_with_minutes_stops_the_windows_job(lines, tmp_path, capsys):
    # ECL (custom layout) writes HH:00: weather's 10-minute rows would lose their minutes, the first at line 2
    # (2020-01-01 00:10:00).
    refused(run_windows_job(tmp_path, write(tmp_path / "weather.csv", lines), name="ECL"), capsys,
            "line 2", "dataset.name 'ECL' writes the prompts' stamps as HH:00", "usual step is 10 min",
            "2020-01-01 00:10:00 would lose its minutes")


def test_stamps_with_seconds_stop_the_windows_job(lines, tmp_path, capsys):
    # 30-second rows from 2020-01-01 00:00:00: line 3 is 00:00:30, whose seconds no prompt stamp can hold.
    stamped = [lines[0]] + [f"2020-01-01 {k // 120:02d}:{k // 2 % 60:02d}:{30 * (k % 2):02d},{line.split(',', 1)[1]}"
                            for k, line in enumerate(lines[1:])]
    refused(run_windows_job(tmp_path, write(tmp_path / "weather.csv", stamped)), capsys,
            "line 3", "usual step is 30 s", "2020-01-01 00:00:30 would lose its seconds")


def test_weather_under_the_hourly_fallback_template_is_noted_not_refused(lines, tmp_path, capsys):
    code, out, log = run_windows_job(tmp_path, write(tmp_path / "weather.csv", lines))
    assert code == 0
    note = read_windows(out[0]).meta["template_note"]
    assert "template ETTh1 (picked for dataset.name 'weather') says 'every hour'" in note
    assert "usual step is 10 min" in note and note in log.read_text()
    assert "ERROR" not in capsys.readouterr().err
    code, out, _ = run_windows_job(tmp_path, write(tmp_path / "weather.csv", lines), template="Weather")
    assert code == 0 and read_windows(out[0]).meta["template_note"] is None  # "every 10 minutes" fits


def monthly_day_first(path: Path, months: int = 180) -> Path:
    """A monthly file written DD/MM/YYYY from 1 January 2000: every day is 01, so every date also reads month-first."""
    rows = [f"01/{1 + k % 12:02d}/{2000 + k // 12},{k},{2 * k}" for k in range(months)]
    return write(path, ["date,a,OT", *rows])


def test_ambiguous_day_first_dates_stop_the_windows_job_and_name_the_key(tmp_path, capsys):
    csv = monthly_day_first(tmp_path / "monthly.csv")
    refused(run_windows_job(tmp_path, csv, seq_len=12), capsys,
            str(csv), "column 'date'", "'01/02/2000'", "set config key dataset.date_format to '%d/%m/%Y'")


def test_day_first_dates_parse_exactly_with_date_format(tmp_path, tokenizer):
    csv = monthly_day_first(tmp_path / "monthly.csv")
    code, out, log = run_windows_job(tmp_path, csv, seq_len=12, date_format="%d/%m/%Y")
    assert code == 0
    train = read_windows(out[0])
    # Row 83 is written 01/12/2006: 1 December 2006, a Friday (weekday 4).
    assert train.stamps()[83].tolist() == [2006, 12, 1, 4, 0, 0]
    assert train.meta["irregularities"]["gaps"]["count"] == 0
    assert "gap" not in log.read_text()
    text = SplitPrompts(tokenizer, train.raw, train.stamps(), "monthly", 4, 12).window_texts(72)[0][0]
    assert text.startswith("From <01/01/2006 00:00> to <01/12/2006 00:00>, ")


def test_day_first_dates_with_a_day_over_12_still_stop_with_one_sentence(lines, tmp_path, capsys):
    day_first = [lines[0]] + [f"{k % 28 + 1:02d}/01/2020 00:00,{line.split(',', 1)[1]}" for k, line in
                              enumerate(lines[1:])]
    code, _, _ = run_windows_job(tmp_path, write(tmp_path / "weather.csv", day_first))
    assert code == 1
    sentence = one_sentence(capsys.readouterr().err)
    assert "line 14, column 'date': the date '13/01/2020 00:00' cannot be parsed" in sentence
    assert "dataset.date_format" in sentence


# --------------------------------------------------------------------------- config keys (common.smk calls this)


CONFIG_CASES = {
    "pred_len_zero": ({"pred_lens": [0]}, "config key pred_lens[0] = 0 is invalid"),
    "pred_len_negative": ({"pred_lens": [24, -24]}, "config key pred_lens[1] = -24 is invalid"),
    "pred_len_not_an_integer": ({"pred_lens": [24.5]}, "config key pred_lens[0] = 24.5 is invalid"),
    "pred_len_repeated": ({"pred_lens": [24, 48, 24]}, "pred_lens = [24, 48, 24] holds a value twice"),
    "unknown_layout": ({"dataset": {"name": "weather", "csv": "x.csv", "layout": "daily"}},
                       "config key dataset.layout = 'daily' is invalid"),
    "unknown_template": ({"dataset": {"name": "weather", "csv": "x.csv", "template": "weather"}},
                         "config key dataset.template = 'weather' is invalid"),
    "name_with_separator": ({"dataset": {"name": "runs/weather", "csv": "x.csv"}},
                            "dataset.name = 'runs/weather' must be a plain folder name"),
    "name_is_dot_dot": ({"dataset": {"name": "..", "csv": "x.csv"}}, "dataset.name = '..' must be a plain folder name"),
    "name_with_dot_dot": ({"dataset": {"name": "a..b", "csv": "x.csv"}}, "must be a plain folder name"),
    "unknown_key": ({"model": {"name_or_path": "gpt2", "trust_remote_code": True}},
                    "unknown config key model.trust_remote_code"),
}


@pytest.mark.parametrize("case", list(CONFIG_CASES))
def test_bad_config_key(case):
    change, fragment = CONFIG_CASES[case]
    with pytest.raises(InputError) as caught:
        validate_config({"dataset": {"name": "weather", "csv": "x.csv"}} | change, "my.yaml")
    message = str(caught.value)
    assert message.startswith("my.yaml: ") and fragment in message and message.endswith(".")
    assert "\n" not in message


def test_command_line_numbers_are_read_by_the_key_type_and_errors_name_their_origin():
    file = {"dataset": {"name": "weather", "csv": "x.csv"}, "pred_lens": [24], "seq_len": 96}
    # What Snakemake hands over for --config 'pred_lens=[24, 48]' 'parity={windows: 8, min_cosine: 0.99}'
    # 'model={revision: 10}' limit_windows=null: list and mapping items stay strings.
    command_line = {"pred_lens": ["24", "48"], "parity": {"windows": "8", "min_cosine": "0.99"},
                    "model": {"revision": "10"}, "limit_windows": "null"}
    merged = {**file, **command_line, "model": {"name_or_path": "gpt2", "revision": "10"}}
    config = validate_config(merged, "my.yaml", [("my.yaml", file), ("--config", command_line)])
    assert config["pred_lens"] == [24, 48]
    assert config["parity"] == {"windows": 8, "min_cosine": 0.99}
    assert config["model"]["revision"] == "10"  # a text key keeps the text
    assert config["limit_windows"] is None
    for bad, fragment in ((["24", "4x"], "--config: config key pred_lens[1] = '4x' is invalid"),
                          (["24", "1_0"], "--config: config key pred_lens[1] = '1_0' is invalid"),
                          (["24.0"], "--config: config key pred_lens[0] = '24.0' is invalid")):
        with pytest.raises(InputError, match=re.escape(fragment)):
            validate_config({**file, "pred_lens": bad}, "my.yaml",
                            [("my.yaml", file), ("--config", {"pred_lens": bad})])
    with pytest.raises(InputError, match=re.escape("b.yaml: config key seq_len = 0 is invalid")):
        validate_config({**file, "seq_len": 0}, "a.yaml + b.yaml", [("a.yaml", file), ("b.yaml", {"seq_len": 0})])


# Every key of workflow/schemas/config.schema.yaml that holds integers, where a value sits (lists: an item).
INTEGER_KEYS = {("seq_len",): 96, ("pred_lens", 0): 24, ("model", "layers"): 2, ("seed",): 2024,
                ("gpus_per_job",): 2, ("limit_windows",): 4, ("shard_windows",): 2, ("batch_tokens",): 4096,
                ("parity", "windows"): 8}


def integer_keys(schema: dict, path: tuple = ()) -> set[tuple]:
    """The paths of the schema's integer-only keys (an array's items as index 0)."""
    found = set()
    for key, sub in schema.get("properties", {}).items():
        found |= integer_keys(sub, (*path, key))
    if "items" in schema:
        found |= integer_keys(schema["items"], (*path, 0))
    types = {schema["type"]} if isinstance(schema.get("type"), str) else set(schema.get("type", []))
    if "integer" in types and "number" not in types:
        found.add(path)
    return found


def with_value(config: dict, path: tuple, value) -> dict:
    """A deep copy of `config` with `value` at `path` (a list key becomes a one-item list)."""
    config = json.loads(json.dumps(config))
    target = config
    for step in path[:-1]:
        target = target.setdefault(step, {})
    if path[-1] == 0:
        config[path[0]] = [value]
    else:
        target[path[-1]] = value
    return config


def test_the_integer_keys_listed_here_are_every_integer_key_of_the_schema():
    from timekd_embed.config import load_schema

    assert integer_keys(load_schema()) == set(INTEGER_KEYS)


@pytest.mark.parametrize("path", list(INTEGER_KEYS), ids=lambda path: ".".join(map(str, path)))
def test_a_float_in_an_integer_key_is_one_sentence(path):
    """The issue's case: jsonschema counts 4.0 as an integer, and limit_windows: 4.0 or shard_windows: 2.0
    (from the file or --config) ended in a TypeError traceback at plan time."""
    value = INTEGER_KEYS[path]
    base = {"dataset": {"name": "weather", "csv": "x.csv"}}
    key = "pred_lens[0]" if path == ("pred_lens", 0) else ".".join(path)
    for origin in ("my.yaml", "--config"):
        config = with_value(base, path, float(value))
        origins = [("my.yaml", base if origin == "--config" else config)]
        if origin == "--config":  # Snakemake reads limit_windows=4.0 as the float 4.0
            origins.append(("--config", with_value({}, path, float(value))))
        with pytest.raises(InputError) as caught:
            validate_config(config, "my.yaml", origins)
        assert str(caught.value) == (f"{origin}: config key {key} = {float(value)!r} must be an integer; write "
                                     f"{value}, without the decimal point (see config/README.md).")
    assert validate_config(with_value(base, path, value))  # the integer itself is fine


def test_floats_in_integer_keys_stop_the_real_cli_in_one_sentence(tmp_path, weather_csv):
    with open(weather_csv, encoding="utf-8") as f:
        write(tmp_path / "weather.csv", [next(f).rstrip("\n") for _ in range(2001)])
    config = {"dataset": {"name": "weather", "csv": "weather.csv"}, "limit_windows": 4.0, "shard_windows": 2.0}
    from_file = snakemake(tmp_path, config, "-n", "--cores", "2")
    assert_fails_cleanly(from_file, "config.yaml: config key limit_windows = 4.0 must be an integer; write 4")
    config = {"dataset": {"name": "weather", "csv": "weather.csv"}}
    from_command_line = snakemake(tmp_path, config, "-n", "--cores", "2", "--config", "shard_windows=2.0")
    assert_fails_cleanly(from_command_line, "--config: config key shard_windows = 2.0 must be an integer; write 2")


def test_date_format_key_is_checked():
    for pattern, fragment in (("%d/%q/%Y", "unknown code(s) %q"), ("%d/%m", "needs a year"), (12, "is invalid")):
        with pytest.raises(InputError, match=re.escape(fragment)):
            validate_config({"dataset": {"name": "weather", "csv": "x.csv", "date_format": pattern}}, "my.yaml")
    config = validate_config({"dataset": {"name": "weather", "csv": "x.csv", "date_format": "%d/%m/%Y %H:%M"}})
    assert config["dataset"]["date_format"] == "%d/%m/%Y %H:%M"


@pytest.mark.parametrize("name, layout, expected", [("ETTh1", "auto", "ett_hour"), ("ETTm2", "auto", "ett_minute"),
                                                    ("weather", "auto", "custom"), ("ETTh1", "custom", "custom")])
def test_auto_layout_is_resolved_by_the_config_layer(name, layout, expected):
    config = validate_config({"dataset": {"name": name, "csv": "x.csv", "layout": layout}})
    assert config["dataset"]["layout"] == expected


def test_documented_command_line_forms_work_with_the_real_cli(tmp_path, weather_csv):
    """Every --config form README.md and config/README.md show, through `snakemake -n`."""
    with open(weather_csv, encoding="utf-8") as f:
        write(tmp_path / "weather.csv", [next(f).rstrip("\n") for _ in range(2001)])
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"dataset": {"name": "weather", "csv": "weather.csv"}}))
    base = ("-n", "--cores", "2")
    forms = ["pred_lens=[24, 48]", "splits=[train]", "limit_windows=4", "dataset={name: demo}",
             "parity={windows: 8, min_cosine: 0.99}", "model={name_or_path: gpt2, layers: 6}", "seed=7"]
    result = snakemake(tmp_path, None, *base, "--config", *forms)
    assert result.returncode == 0, result.stderr[-3000:]
    planned = sorted(set(re.findall(r"results/demo/embeddings/(\d+)/(\w+)\.safetensors", result.stdout)))
    assert planned == [("24", "train"), ("48", "train")]  # the horizons and split of the command line, name demo
    assert "results/weather" not in result.stdout
    for null in ("limit_windows=", "limit_windows=null"):
        result = snakemake(tmp_path, None, *base, "--config", null, "pred_lens=[96]")
        assert result.returncode == 0, result.stderr[-3000:]
        assert "results/weather/embeddings/96/val.safetensors" in result.stdout
    bad = snakemake(tmp_path, None, *base, "--config", "pred_lens=[24, x]")
    sentence = assert_fails_cleanly(bad, "--config: config key pred_lens[1] = 'x' is invalid")
    assert "config.yaml" not in sentence


# --------------------------------------------------------------------------- the extraction job, in-process


@pytest.fixture(scope="module")
def small_windows(tmp_path_factory, lines) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("small_windows")
    table = load_csv(write(folder / "weather.csv", lines))
    out = {s: str(folder / f"{s}.parquet") for s in SPLITS}
    write_windows(table, "custom", 96, [24], out)
    save_sca(folder / "sca.safetensors", n_vars=21, d_model=64, seed=2024)
    return {"train": Path(out["train"]), "sca": folder / "sca.safetensors"}


def settings(model_dir: Path, **overrides):
    return weather_settings(model_dir, limit_windows=2, **overrides)


def test_a_horizon_whose_prompts_exceed_the_context(tmp_path, small_windows):
    short = make_model_dir(tmp_path / "short-context", n_positions=256)
    out = tmp_path / "out.safetensors"
    with pytest.raises(InputError) as caught:
        extract_one(settings(short), small_windows["train"], small_windows["sca"], out, tmp_path / "out.json")
    message = str(caught.value)
    assert "pred_len 24, split train: the longest prompt has" in message
    assert "the model reads at most 256; remove 24 from pred_lens" in message
    assert not out.exists() and not list(tmp_path.glob("out*"))


def _model_copy(src: Path, dst: Path, drop: tuple[str, ...] = ()) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(*drop))
    return dst


def test_model_folder_without_weights(tmp_path, tiny_model_dir, small_windows):
    folder = _model_copy(tiny_model_dir, tmp_path / "no-weights", drop=("model.safetensors",))
    expected = f"model folder {folder} has no model.safetensors (nor model.safetensors.index.json with its shards)"
    with pytest.raises(InputError, match=re.escape(expected)):
        load_teacher(settings(folder).teacher, small_windows["sca"], ["cpu"])


def test_model_folder_with_pickle_weights_only_is_refused(tmp_path, tiny_model_dir, small_windows):
    folder = _model_copy(tiny_model_dir, tmp_path / "pickle-only", drop=("model.safetensors",))
    marker = tmp_path / "unpickled"
    # A pickle that would leave a marker file if anything ever unpickled it.
    torch.save({"payload": _Marker(str(marker))}, folder / "pytorch_model.bin")
    with pytest.raises(InputError) as caught:
        load_teacher(settings(folder).teacher, small_windows["sca"], ["cpu"])
    assert f"model folder {folder} has only pickle weights (pytorch_model.bin)" in str(caught.value)
    assert "convert them to safetensors" in str(caught.value)
    assert not marker.exists()


class _Marker:
    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):  # unpickling calls Path(path).touch()
        return (Path(self.path).touch, ())


def test_tokenizer_vocabulary_differs_from_the_model(tmp_path, tiny_model_dir, small_windows):
    # A model with 50,000 embeddings (weights and config.json agree) next to GPT-2's 50,257-token tokenizer.
    folder = _model_copy(tiny_model_dir, tmp_path / "other-vocab")
    torch.manual_seed(0)
    GPT2Model(GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=50_000)).save_pretrained(folder)
    with pytest.raises(InputError, match=r"the tokenizer has 50257 tokens but the model 50000 embeddings"):
        load_teacher(settings(folder).teacher, small_windows["sca"], ["cpu"])


# --------------------------------------------------------------------------- security: network and remote code


@pytest.fixture
def no_network(monkeypatch) -> list:
    """Every connection attempt fails and is recorded."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network access is disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    return attempts


def test_a_local_model_folder_needs_no_network_and_runs_no_remote_code(tmp_path, tiny_model_dir, small_windows,
                                                                     no_network):
    folder = _model_copy(tiny_model_dir, tmp_path / "with-remote-code")
    marker = tmp_path / "remote-code-ran"
    (folder / "evil.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "evil.Config", "AutoModel": "evil.Model"}
    (folder / "config.json").write_text(json.dumps(config))
    teacher = load_teacher(settings(folder).teacher, small_windows["sca"], ["cpu"])
    assert teacher.model.config.n_embd == 64
    assert no_network == [] and not marker.exists()


def test_an_unreachable_hub_id_is_one_sentence(no_network, monkeypatch):
    import huggingface_hub.constants
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # what HF_HUB_OFFLINE=1 sets
    with pytest.raises(InputError) as caught:
        load_config("nobody-here/no-such-gpt2")
    message = str(caught.value)
    assert "model 'nobody-here/no-such-gpt2' (config key model.name_or_path" in message
    assert "could not be loaded from the model hub" in message and "\n" not in message
