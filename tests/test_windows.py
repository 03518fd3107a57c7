"""Tests for timekd_embed.windows: CSV checks, split borders, Parquet round trip.

Expected numbers are worked by hand from the published loaders' split rules
(data_provider/data_loader_save.py of TimeKD) and shared/data/README.md, never taken
from the code under test.
"""

from __future__ import annotations

import hashlib
import logging
import os
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import SHARED_DATA
from timekd_embed import windows
from timekd_embed.cadence import template_note
from timekd_embed.config import resolve_layout
from timekd_embed.errors import InputError
from timekd_embed.records import sha256_file
from timekd_embed.table import load_csv, stamps
from timekd_embed.windows import SPLITS, read_windows, split_borders, window_count, write_windows

DATA = SHARED_DATA
WEATHER = DATA / "weather" / "weather.csv"

# Real-data tests need weather.csv (conftest.need: skipped with the others' one line, a failure in CI).
real_data = pytest.mark.usefixtures("weather_csv")

HORIZONS = (24, 96, 192)
FFFD = "\ufffd"


# --------------------------------------------------------------------------- small synthetic files


def make_lines(steps=range(40), header="date,a,b,OT") -> list[str]:
    """Header + one row per step k: date 2020-01-01 00:10 + 10 min * k, a = i, b = i/2, OT = 100 - i."""
    start = datetime(2020, 1, 1, 0, 10)
    rows = [
        f"{(start + timedelta(minutes=10 * k)):%Y-%m-%d %H:%M:%S},{i},{i / 2},{100 - i}"
        for i, k in enumerate(steps)
    ]
    return [header, *rows]


def write_csv(folder: Path, lines: list[str], name: str = "data.csv", eol: str = "\n") -> Path:
    path = folder / name
    path.write_bytes((eol.join(lines) + eol).encode("utf-8"))
    return path


def out_paths(folder: Path, splits=SPLITS) -> dict[str, str]:
    return {s: str(folder / "out" / f"{s}.parquet") for s in splits}


def run_pipeline(csv: Path, out: dict[str, str], target: str = "OT", seq_len: int = 8) -> dict:
    table = load_csv(csv, target=target)
    return write_windows(table, "custom", seq_len, [1, 4], out)


# --------------------------------------------------------------------------- real data fixtures


@pytest.fixture(scope="module")
def weather():
    return load_csv(WEATHER)


@pytest.fixture(scope="module")
def weather_files(weather, tmp_path_factory):
    folder = tmp_path_factory.mktemp("weather_windows")
    out = {s: str(folder / f"{s}.parquet") for s in SPLITS}
    meta = write_windows(weather, "custom", 96, list(HORIZONS), out)
    return out, meta


@pytest.fixture(scope="module")
def weather_pandas():
    """An independent plain-pandas read of the file, to compare against."""
    return pd.read_csv(WEATHER)


# --------------------------------------------------------------------------- weather.csv


@real_data
def test_weather_shape_and_order(weather):
    assert len(weather.dates) == 52_696
    assert weather.values.shape == (52_696, 21)
    assert weather.values.dtype == np.float64
    assert len(weather.variables) == 21
    assert weather.variables[-1] == "OT"
    assert weather.dates[0] == pd.Timestamp("2020-01-01 00:10:00")
    assert weather.dates[-1] == pd.Timestamp("2021-01-01 00:00:00")


@real_data
def test_weather_column_names_byte_for_byte(weather):
    header = WEATHER.read_bytes().split(b"\r\n", 1)[0].split(b",")
    assert [v.encode("utf-8") for v in weather.variables] == header[1:]  # OT already last in the file
    assert "SWDR (W/m" + FFFD + ")" in weather.variables


@real_data
def test_weather_values_unchanged(weather, weather_pandas):
    np.testing.assert_array_equal(weather.values, weather_pandas.iloc[:, 1:].to_numpy())


@real_data
def test_weather_sha256(weather):
    expected = "34ee981d07313e51da2a50bb600072c8ae4a69cb4b0651f4cb93a069d7a2ba63"  # shared/data/README.md
    assert weather.sha256 == expected
    assert sha256_file(WEATHER) == expected


@real_data
def test_weather_irregularities(weather):
    irr = weather.irregularities
    # README: duplicated 2020-05-12 06:00:00 on data rows 19044-19045 (1-based), i.e. file lines 19045-19046.
    assert irr["duplicate_timestamps"] == {
        "count": 1,
        "first": {"timestamp": "2020-05-12 06:00:00", "lines": [19045, 19046]},
    }
    assert irr["gaps"]["count"] == 1
    assert irr["gaps"]["usual_step_seconds"] == 600
    assert irr["gaps"]["first"]["from"] == "2020-05-29 09:30:00"
    assert irr["gaps"]["first"]["to"] == "2020-05-29 11:10:00"
    assert irr["backward_steps"]["count"] == 0
    assert irr["sentinel"]["total"] == 81
    assert irr["sentinel"]["per_column"] == {
        "wv (m/s)": 1,
        f"max. PAR ({FFFD}mol/m{FFFD}/s)": 30,
        "OT": 50,
    }
    # The README says "two column names", but the header bytes (checked with od) hold U+FFFD
    # in three: SWDR, PAR and max. PAR.
    assert irr["non_ascii_columns"] == [
        f"SWDR (W/m{FFFD})",
        f"PAR ({FFFD}mol/m{FFFD}/s)",
        f"max. PAR ({FFFD}mol/m{FFFD}/s)",
    ]
    assert irr["crlf_line_endings"] is True


@real_data
def test_weather_borders_and_window_counts():
    # n_train = int(0.7 * 52696) = 36887, n_test = int(0.2 * 52696) = 10539, n_val = 5270.
    borders = split_borders(52_696, 96, "custom")
    assert borders == {"train": (0, 36_887), "val": (36_791, 42_157), "test": (42_061, 52_696)}
    for p in HORIZONS:
        counts = [window_count(end - start, 96, p) for start, end in borders.values()]
        assert counts == [36_792 - p, 5_271 - p, 10_540 - p]
    counts_96 = [window_count(end - start, 96, 96) for start, end in borders.values()]
    assert counts_96 == [36_696, 5_175, 10_444]  # what every TSLib log prints


@real_data
def test_weather_zscore_stats(weather_files, weather_pandas):
    _, meta = weather_files
    train = weather_pandas.iloc[:36_887, 1:].to_numpy()  # (36887, 21)
    np.testing.assert_allclose(meta["train"]["scaler"]["mean"], train.mean(axis=0), rtol=1e-12, atol=0)
    np.testing.assert_allclose(meta["train"]["scaler"]["std"], train.std(axis=0, ddof=0), rtol=1e-12, atol=0)
    assert meta["train"]["scaler"]["zero_std"] == []


@real_data
def test_weather_round_trip(weather, weather_files):
    out, meta = weather_files
    spans = {"train": (0, 36_887), "val": (36_791, 42_157), "test": (42_061, 52_696)}
    per_p = {"train": 36_792, "val": 5_271, "test": 10_540}
    mean = np.asarray(meta["train"]["scaler"]["mean"])
    std = np.asarray(meta["train"]["scaler"]["std"])
    for split, (start, end) in spans.items():
        sw = read_windows(out[split])
        assert sw.split == split
        assert sw.meta == meta[split]
        assert sw.variables == weather.variables
        np.testing.assert_array_equal(sw.rows, np.arange(start, end))
        np.testing.assert_array_equal(sw.raw, weather.values[start:end])  # exact
        assert sw.dates.equals(weather.dates[start:end])
        np.testing.assert_allclose(sw.zscore, (weather.values[start:end] - mean) / std, rtol=0, atol=1e-12)
        for p in HORIZONS:
            assert sw.n_windows(p) == per_p[split] - p
            assert sw.meta["windows_per_horizon"][str(p)] == per_p[split] - p
    train = read_windows(out["train"])
    # 2020-01-01 00:10 was a Wednesday (weekday 2 with Monday = 0).
    assert train.stamps()[0].tolist() == [2020, 1, 1, 2, 0, 10]
    assert train.stamps().dtype == np.int64
    assert train.meta["input_file"] == "weather.csv"
    assert train.meta["n_rows"] == 52_696
    assert train.meta["borders"] == {s: list(b) for s, b in spans.items()}
    assert train.meta["irregularities"]["sentinel"]["total"] == 81


def test_stamps_fields_by_hand():
    # 2020-02-29 was a Saturday (weekday 5 with Monday = 0); 2021-01-04 23:45 a Monday.
    dates = pd.DatetimeIndex(["2020-02-29 13:07:00", "2021-01-04 23:45:00"])
    got = stamps(dates)
    assert got.dtype == np.int64 and got.shape == (2, 6)
    assert got.tolist() == [[2020, 2, 29, 5, 13, 7], [2021, 1, 4, 0, 23, 45]]
    assert stamps(pd.Series(dates)).tolist() == got.tolist()  # a datetime column gives the same rows
    assert stamps(pd.DatetimeIndex([])).shape == (0, 6)


# --------------------------------------------------------------------------- ETT files


@pytest.mark.parametrize("layout, enough", [("ett_hour", 14_400), ("ett_minute", 57_600)])
def test_ett_too_short(layout, enough):
    split_borders(enough, 96, layout)
    with pytest.raises(InputError, match=str(enough)):
        split_borders(enough - 1, 96, layout)


# --------------------------------------------------------------------------- small pure functions


@pytest.mark.parametrize(
    "layout, name, expected",
    [
        ("auto", "ETTh1", "ett_hour"),
        ("auto", "ETTh2", "ett_hour"),
        ("auto", "ETTm2", "ett_minute"),
        ("auto", "weather", "custom"),
        ("auto", "etth1", "custom"),  # case-sensitive, like the reference's lookup
        ("custom", "ETTh1", "custom"),
        ("ett_minute", "weather", "ett_minute"),
    ],
)
def test_resolve_layout(layout, name, expected):
    assert resolve_layout(layout, name) == expected


def test_resolve_layout_unknown():
    with pytest.raises(InputError, match="dataset.layout"):
        resolve_layout("hourly", "weather")


def test_custom_borders_by_hand():
    # 100 rows: 70 train, 20 test, 10 val.
    assert split_borders(100, 10, "custom") == {"train": (0, 70), "val": (60, 80), "test": (70, 100)}
    # 40 rows: int(28.0) = 28 train, 8 test, 4 val.
    assert split_borders(40, 8, "custom") == {"train": (0, 28), "val": (20, 32), "test": (24, 40)}
    # 45 rows: 0.7 * 45 = 31.5 truncates to 31 (not rounded); test 9, val 5.
    assert split_borders(45, 8, "custom") == {"train": (0, 31), "val": (23, 36), "test": (28, 45)}
    # 90 rows: in floating point 90 * 0.7 = 62.999..., and the reference's int() gives 62, not 63.
    assert split_borders(90, 8, "custom") == {"train": (0, 62), "val": (54, 72), "test": (64, 90)}


def test_custom_borders_too_short():
    with pytest.raises(InputError, match="seq_len"):
        split_borders(20, 16, "custom")  # train 14 rows < 17


def test_window_count():
    assert window_count(10, 8, 2) == 1
    assert window_count(10, 8, 3) == 0
    assert window_count(5, 8, 1) == 0


# --------------------------------------------------------------------------- synthetic checks


def test_small_file_round_trip(tmp_path):
    csv = write_csv(tmp_path, make_lines(header="date,OT,a,b"))  # target first: must move last
    table = load_csv(csv)
    assert table.variables == ["a", "b", "OT"]
    np.testing.assert_array_equal(table.values[1], [0.5, 99.0, 1.0])  # line 3: i = 1 -> a, b, OT
    out = out_paths(tmp_path)
    write_windows(table, "custom", 8, [1, 4], out)
    val = read_windows(out["val"])
    # 40 rows, seq_len 8: val = [20, 32) -> 12 rows -> windows 12 - 8 - P + 1.
    np.testing.assert_array_equal(val.rows, np.arange(20, 32))
    assert val.meta["windows_per_horizon"] == {"1": 4, "4": 1}
    assert val.n_windows(4) == 1
    # train rows 0..27: the OT column holds i (header order date,OT,a,b), so its mean is 13.5.
    assert val.meta["scaler"]["mean"][2] == pytest.approx(13.5)
    # Each file with its sha256 record (records.record_path), nothing else.
    assert sorted(os.listdir(tmp_path / "out")) == [".test.parquet.sha256", ".train.parquet.sha256",
                                                    ".val.parquet.sha256", "test.parquet", "train.parquet",
                                                    "val.parquet"]


def test_irregularities_reported_not_fatal(tmp_path, caplog):
    steps = [0, 1, 2, 3, 3, 4, 5, 6, 7, 10, *range(11, 41)]  # duplicate at lines 5-6, gap before line 11
    lines = make_lines(steps, header=f"date,a,b ({FFFD}),OT")
    lines[3] = lines[3].replace(",2,", ",-9999,", 1)  # line 4, column a
    lines[7] = lines[7].rsplit(",", 1)[0] + ",-9999"  # line 8, column OT
    lines[20] = lines[20].replace(",19,", ",-9999,", 1)  # line 21, column a
    csv = write_csv(tmp_path, lines, eol="\r\n")
    with caplog.at_level(logging.WARNING, logger="timekd_embed.table"):
        table = load_csv(csv)
    irr = table.irregularities
    assert irr["duplicate_timestamps"] == {
        "count": 1,
        "first": {"timestamp": "2020-01-01 00:40:00", "lines": [5, 6]},
    }
    assert irr["gaps"]["count"] == 1
    assert irr["gaps"]["first"] == {"from": "2020-01-01 01:20:00", "to": "2020-01-01 01:50:00", "line": 11}
    assert irr["sentinel"]["total"] == 3
    assert irr["sentinel"]["per_column"] == {"a": 2, "OT": 1}
    assert irr["non_ascii_columns"] == [f"b ({FFFD})"]
    assert irr["crlf_line_endings"] is True
    assert (table.values == -9999).sum() == 3  # kept raw
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 5
    assert all("data.csv" in r.getMessage() and "\n" not in r.getMessage() for r in caplog.records)


def test_zero_std_is_replaced_and_listed(tmp_path):
    lines = make_lines()
    lines = [lines[0]] + [",".join([*line.split(",")[:2], "7", line.split(",")[3]]) for line in lines[1:]]
    csv = write_csv(tmp_path, lines)
    out = out_paths(tmp_path, ["train"])
    meta = run_pipeline(csv, out)
    assert meta["train"]["scaler"]["zero_std"] == ["b"]
    assert meta["train"]["scaler"]["std"][1] == 1.0
    np.testing.assert_array_equal(read_windows(out["train"]).zscore[:, 1], 0.0)


# --------------------------------------------------------------------------- fatal input


def _replace_cell(lines: list[str], line: int, column: int, value: str) -> list[str]:
    cells = lines[line - 1].split(",")
    cells[column] = value
    lines[line - 1] = ",".join(cells)
    return lines


FATAL = {
    # id: (make file bytes from the good lines, load_csv target, fragments the message must hold)
    "empty": (lambda ls: b"", "OT", ["empty"]),
    "header_only": (lambda ls: b"date,a,b,OT\n", "OT", ["no data rows"]),
    "no_date": (lambda ls: ["time,a,b,OT", *ls[1:]], "OT", ["line 1", "'date'"]),
    "no_target": (lambda ls: ls, "Y", ["line 1", "'Y'", "dataset.target"]),
    "duplicate_names": (lambda ls: ["date,a,a,OT", *ls[1:]], "OT", ["line 1", "'a'", "columns 2 and 3"]),
    "bad_date": (lambda ls: _replace_cell(ls, 5, 0, "yesterday"), "OT", ["line 5", "'date'", "'yesterday'"]),
    "empty_date": (lambda ls: _replace_cell(ls, 5, 0, ""), "OT", ["line 5", "'date'", "empty"]),
    "non_numeric": (lambda ls: _replace_cell(ls, 7, 2, "abc"), "OT", ["line 7", "'b'", "'abc'"]),
    "empty_cell": (lambda ls: _replace_cell(ls, 4, 1, ""), "OT", ["line 4", "'a'", "empty"]),
    "NaN": (lambda ls: _replace_cell(ls, 9, 3, "NaN"), "OT", ["line 9", "'OT'", "'NaN'"]),
    "nan": (lambda ls: _replace_cell(ls, 9, 3, "nan"), "OT", ["line 9", "'OT'", "'nan'"]),
    "NA": (lambda ls: _replace_cell(ls, 9, 1, "NA"), "OT", ["line 9", "'a'", "'NA'"]),
    "inf": (lambda ls: _replace_cell(ls, 9, 3, "inf"), "OT", ["line 9", "'OT'", "'inf'"]),
    "-inf": (lambda ls: _replace_cell(ls, 12, 2, "-inf"), "OT", ["line 12", "'b'", "'-inf'"]),
    "overflow": (lambda ls: _replace_cell(ls, 12, 2, "1e999"), "OT", ["line 12", "'b'", "'1e999'"]),
    "short_row": (lambda ls: ls[:5] + [ls[5].rsplit(",", 1)[0]] + ls[6:], "OT", ["line 6", "'OT'"]),
    "long_row": (lambda ls: ls[:5] + [ls[5] + ",4"] + ls[6:], "OT", ["line 6", "fields"]),
    "blank_line": (lambda ls: ls[:10] + [""] + ls[10:], "OT", ["line 11", "blank"]),
    "invalid_utf8": (
        lambda ls: ("\n".join(ls[:5]) + "\n").encode() + b"2020-01-01 00:50:00,1\xff,2,3\n"
        + ("\n".join(ls[6:]) + "\n").encode(),
        "OT",
        ["line 6", "UTF-8"],
    ),
    "bom": (lambda ls: b"\xef\xbb\xbf" + ("\n".join(ls) + "\n").encode(), "OT", ["line 1", "BOM"]),
    "semicolon": (lambda ls: [x.replace(",", ";") for x in ls], "OT", ["line 1", "comma-separated"]),
    "tab": (lambda ls: [x.replace(",", "\t") for x in ls], "OT", ["line 1", "comma-separated"]),
    "too_short": (lambda ls: ls[:6], "OT", ["5 data rows", "seq_len"]),
    "nameless_column": (lambda ls: ["date,a,b,OT,", *ls[1:]], "OT", ["line 1", "column 5"]),
    "mixed_offsets": (
        lambda ls: _replace_cell(
            _replace_cell(ls, 2, 0, "2020-01-01 00:10:00+01:00"), 3, 0, "2020-01-01 00:20:00+02:00"
        ),
        "OT",
        ["'date'", "offset"],
    ),
    "bare_cr": (lambda ls: "\r".join(ls).encode(), "OT", ["line 1", "CR"]),
}


@pytest.mark.parametrize("case", list(FATAL))
def test_fatal_input(case, tmp_path):
    make, target, fragments = FATAL[case]
    content = make(make_lines())
    csv = tmp_path / "bad.csv"
    csv.write_bytes(content if isinstance(content, bytes) else ("\n".join(content) + "\n").encode())
    out = out_paths(tmp_path)
    with pytest.raises(InputError) as caught:
        run_pipeline(csv, out, target=target)
    message = str(caught.value)
    assert str(csv) in message
    assert "\n" not in message and message.endswith(".")
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    assert not any(Path(p).exists() for p in out.values())


def test_missing_file(tmp_path):
    out = out_paths(tmp_path)
    with pytest.raises(InputError, match="nope.csv") as caught:
        run_pipeline(tmp_path / "nope.csv", out)
    assert "does not exist" in str(caught.value)
    assert not any(Path(p).exists() for p in out.values())


@pytest.mark.parametrize(
    "seq_len, pred_lens, out_splits, key",
    [(0, [1], ["train"], "seq_len"), (8, [0], ["train"], "pred_lens"), (8, [1], ["train", "dev"], "'dev'")],
)
def test_bad_arguments_write_nothing(tmp_path, seq_len, pred_lens, out_splits, key):
    table = load_csv(write_csv(tmp_path, make_lines()))
    out = {s: str(tmp_path / "out" / f"{s}.parquet") for s in out_splits}
    with pytest.raises(InputError, match=key):
        write_windows(table, "custom", seq_len, pred_lens, out)
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- atomic writes


def test_failure_during_parquet_write_leaves_nothing(tmp_path, monkeypatch):
    table = load_csv(write_csv(tmp_path, make_lines()))
    out = out_paths(tmp_path)
    real_write = pq.write_table
    calls = []

    def write_then_crash(arrow, where, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # second split: half-written, then the disk "fills up"
            Path(where).write_bytes(b"PAR1 partial")  # store.atomic_paths hands over a temporary path
            raise OSError("No space left on device")
        real_write(arrow, where, **kwargs)

    monkeypatch.setattr(pq, "write_table", write_then_crash)   # the module write_windows imports
    with pytest.raises(OSError, match="No space"):
        write_windows(table, "custom", 8, [1], out)
    assert not any(Path(p).exists() for p in out.values())
    assert os.listdir(tmp_path / "out") == []  # no temporary files left either


def test_failure_during_replace_leaves_nothing(tmp_path, monkeypatch):
    table = load_csv(write_csv(tmp_path, make_lines()))
    out = out_paths(tmp_path)
    real_replace = os.replace
    calls = []

    def replace_then_crash(src, dst):
        calls.append(dst)
        if len(calls) == 4:  # the first split and its record are already in place, the second's record too
            raise OSError("I/O error")
        real_replace(src, dst)

    monkeypatch.setattr(windows.os, "replace", replace_then_crash)
    with pytest.raises(OSError, match="I/O error"):
        write_windows(table, "custom", 8, [1], out)
    monkeypatch.undo()
    assert len(calls) == 4
    assert not any(Path(p).exists() for p in out.values())
    assert os.listdir(tmp_path / "out") == []


# --------------------------------------------------------------------------- read_windows on foreign files


def test_read_windows_rejects_foreign_files(tmp_path):
    missing = tmp_path / "missing.parquet"
    text = tmp_path / "text.parquet"
    text.write_text("not parquet at all\n")
    plain = tmp_path / "plain.parquet"
    pq.write_table(pa.table({"a": [1.0, 2.0]}), plain)
    for path in (missing, text, plain):
        with pytest.raises(InputError) as caught:
            read_windows(path)
        assert str(path) in str(caught.value)
        assert "\n" not in str(caught.value)


def test_a_flipped_byte_that_parquet_reads_without_error_is_refused(tmp_path, weather_csv):
    """The issue's case: a byte flipped in windows/train.parquet changed one value (23.88 -> 14.95) and
    pyarrow read the file without error; read_windows used it."""
    out = out_paths(tmp_path)
    write_windows(load_csv(weather_csv), "custom", 96, [24], out)
    path = Path(out["train"])
    original = path.read_bytes()
    clean = pq.read_table(path)
    for offset in range(len(original) // 2, len(original)):  # the first flip pyarrow does not notice
        damaged = bytearray(original)
        damaged[offset] ^= 0x10
        path.write_bytes(bytes(damaged))
        try:
            read = pq.read_table(path)
        except Exception:  # this flip broke the format: look further
            continue
        if not read.equals(clean):
            break
    else:
        pytest.fail("no flipped byte of the file changed a value silently")
    with pytest.raises(InputError) as caught:
        read_windows(path)
    assert str(caught.value) == (f"{path}: damaged: its sha256 is {sha256_file(path)}, not the "
                                 f"{hashlib.sha256(original).hexdigest()} recorded when it was written; rerun the "
                                 f"workflow with --forcerun {path} to write it again (and what was made from it).")


# --------------------------------------------------------------------------- time step vs template


def test_template_note_names_the_template_its_wording_and_the_measured_step():
    note = template_note("weather", None, 600.0, "weather.csv")
    assert note == ("weather.csv: the prompt template ETTh1 (picked for dataset.name 'weather') says 'every hour' but "
                    "the data's usual step is 10 min; kept, as the published code words it (dataset.template "
                    "changes it).")
    assert "template Exchange (set by dataset.template) says 'every day'" in template_note("x", "Exchange", 3600, "x")
    assert "usual step is 1 h" in template_note("ETTm2", None, 3600, "x")
    assert template_note("ETTm1", None, 900.0, "ETTm1.csv") is None
    assert template_note("weather", "Weather", 600.0, "weather.csv") is None
    assert template_note("weather", None, None, "one_row.csv") is None  # a single row has no step
