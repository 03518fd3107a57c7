"""CSV -> checked table -> split borders -> one Parquet file per split.

The teacher builds prompts from RAW values, windows are taken by row index, and the
splits follow the reference data loaders (TIMEKD_TEACHER.md section 1). Irregular
data (duplicated stamps, gaps, -9999 sentinels, odd column names, CRLF) is reported but
never changed; anything that would make the result wrong or ambiguous is an InputError
raised before a single byte is written.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import json
import logging
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .errors import InputError
from .store import atomic_paths

SPLITS = ("train", "val", "test")
LAYOUTS = ("custom", "ett_hour", "ett_minute")

FORMAT_VERSION = 1
METADATA_KEY = b"timekd_embed"
SENTINEL = -9999.0
_ETT_MONTH_ROWS = {"ett_hour": 30 * 24, "ett_minute": 30 * 24 * 4}  # a "month" is 30 days

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- types


@dataclass(frozen=True, eq=False)  # eq=False: numpy fields make == ambiguous
class Table:
    """The checked CSV, values exactly as in the file."""

    path: str
    dates: pd.DatetimeIndex  # (R,)
    variables: list[str]  # (N,) model order
    values: np.ndarray  # float64 (R, N), raw, sentinels kept
    sha256: str
    irregularities: dict


@dataclass(frozen=True, eq=False)
class SplitWindows:
    """One split as read back from its Parquet file."""

    split: str
    rows: np.ndarray  # int64 (R_s,) global row index
    dates: pd.DatetimeIndex  # (R_s,)
    raw: np.ndarray  # float64 (R_s, N)
    zscore: np.ndarray  # float64 (R_s, N)
    variables: list[str]
    meta: dict

    def n_windows(self, pred_len: int) -> int:
        return window_count(len(self.rows), self.meta["seq_len"], pred_len)

    def stamps(self) -> np.ndarray:
        """int64 (R_s, 6): year, month, day, weekday (Mon=0), hour, minute."""
        d = self.dates
        parts = (d.year, d.month, d.day, d.day_of_week, d.hour, d.minute)
        return np.stack([np.asarray(p, dtype=np.int64) for p in parts], axis=1)


# --------------------------------------------------------------------------- layout and borders


def resolve_layout(layout: str, name: str) -> str:
    """'auto' picks the layout from the dataset name like the reference does."""
    if layout == "auto":
        if name.startswith("ETTh"):
            return "ett_hour"
        if name.startswith("ETTm"):
            return "ett_minute"
        return "custom"
    if layout in LAYOUTS:
        return layout
    raise InputError(
        f"Config key dataset.layout is {layout!r}, which is not a known layout; "
        f"set it to one of auto, {', '.join(LAYOUTS)}."
    )


def split_borders(
    n_rows: int, seq_len: int, layout: str, source: str = "The input file"
) -> dict[str, tuple[int, int]]:
    """split -> [start, end) row range; val and test start seq_len rows early (their first input window)."""
    _check_positive_int(seq_len, "seq_len")
    if layout == "custom":
        n_train = int(n_rows * 0.7)  # float arithmetic on purpose: same rounding as the reference
        n_test = int(n_rows * 0.2)
        n_val = n_rows - n_train - n_test
        borders = {
            "train": (0, n_train),
            "val": (n_train - seq_len, n_train + n_val),
            "test": (n_rows - n_test - seq_len, n_rows),
        }
    elif layout in _ETT_MONTH_ROWS:
        month = _ETT_MONTH_ROWS[layout]
        ends = (12 * month, 16 * month, 20 * month)  # 12/4/4 months; later rows are unused
        if n_rows < ends[2]:
            raise InputError(
                f"{source} has {n_rows} data rows, but layout {layout} needs at least {ends[2]} "
                f"(12/4/4 months of {month} rows); use the complete file or set dataset.layout to custom."
            )
        borders = {
            "train": (0, ends[0]),
            "val": (ends[0] - seq_len, ends[1]),
            "test": (ends[1] - seq_len, ends[2]),
        }
    else:
        resolve_layout(layout, "")  # raises the config-key message for unknown names
        raise InputError(
            f"Layout {layout!r} must be resolved with resolve_layout before computing borders; "
            f"pass one of {', '.join(LAYOUTS)}."
        )
    _check_borders_fit(borders, n_rows, seq_len, layout, source)
    return borders


def _check_borders_fit(
    borders: dict[str, tuple[int, int]], n_rows: int, seq_len: int, layout: str, source: str
) -> None:
    """Every split needs seq_len + 1 rows (one window with a 1-step future) inside the file."""
    if n_rows < seq_len + 1:
        raise InputError(
            f"{source} has {n_rows} data rows, fewer than seq_len + 1 = {seq_len + 1}; "
            f"use a longer file or a smaller seq_len."
        )
    for split, (start, end) in borders.items():
        if start < 0 or end - start < seq_len + 1:
            raise InputError(
                f"{source} has {n_rows} data rows, too few for layout {layout} with seq_len {seq_len} "
                f"(split {split} would get rows [{start}, {end})); use a longer file or a smaller seq_len."
            )


def window_count(n_split_rows: int, seq_len: int, pred_len: int) -> int:
    return max(0, n_split_rows - seq_len - pred_len + 1)


def _check_positive_int(value: object, key: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InputError(f"Config key {key} is {value!r}; set it to a whole number of at least 1.")


# --------------------------------------------------------------------------- reading the CSV


def load_csv(path: str | os.PathLike, target: str = "OT", layout: str = "custom") -> Table:
    """Read and check a CSV; InputError on anything fatal, warnings for irregularities.

    `layout` may also be "auto", resolved from the file name (the config's dataset.name
    is the better key, so callers should resolve it themselves).
    """
    path = str(path)
    layout = resolve_layout(layout, Path(path).stem)
    data = _read_bytes(path)
    text = _decode(path, data)
    header = _check_header(path, text)
    variables = _model_order(path, header, target, layout)
    frame = _parse(path, text, header)  # (R, C) date as str, the rest float64
    dates = _parse_dates(path, frame["date"])
    values = np.ascontiguousarray(frame[variables].to_numpy(dtype=np.float64))  # (R, N)
    irregularities = _irregularities(path, data, dates, variables, values)
    return Table(path, dates, variables, values, hashlib.sha256(data).hexdigest(), irregularities)


def _read_bytes(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise InputError(
            f"{path} does not exist; check dataset.csv in the config or download the file."
        ) from None
    except OSError as e:
        raise InputError(f"{path} cannot be read ({e.strerror}); check the path and its permissions.") from None
    if not data.strip():
        raise InputError(f"{path} is empty; it needs a header line with a date column and data rows.")
    return data


def _decode(path: str, data: bytes) -> str:
    if data.startswith(codecs.BOM_UTF8):
        raise InputError(
            f"{path}, line 1: the file starts with a UTF-8 byte order mark (BOM); re-save it as UTF-8 without BOM."
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise InputError(
            f"{path}, line {line}: byte 0x{data[e.start]:02x} at offset {e.start} is not valid UTF-8; "
            f"re-save the file as UTF-8."
        ) from None
    # Trailing blank lines are harmless; blank lines in the middle are reported later.
    return text.rstrip() + "\n"


def _check_header(path: str, text: str) -> list[str]:
    """Column names exactly as written (pandas would silently rename duplicates)."""
    lines = text.split("\n", 2)
    header_line = lines[0].rstrip("\r")
    for number, line in ((1, header_line), (2, lines[1].rstrip("\r") if len(lines) > 1 else "")):
        if "," not in line and ("\t" in line or ";" in line):
            kind = "tab" if "\t" in line else "semicolon"
            raise InputError(
                f"{path}, line {number}: the file looks {kind}-separated; the file must be comma-separated, "
                f"so re-export it with commas."
            )
    if "\r" in header_line:  # a lone CR never ends a line for pandas, so everything would be "line 1"
        raise InputError(
            f"{path}, line 1: the file uses bare CR line endings; re-save it with LF or CRLF line endings."
        )
    try:
        header = next(csv.reader([header_line]))
    except csv.Error:
        raise InputError(f"{path}, line 1: the header cannot be parsed as CSV; check its quotes.") from None
    seen: dict[str, int] = {}
    for col, name in enumerate(header, start=1):
        if name == "":
            raise InputError(
                f"{path}, line 1, column {col}: the column has no name; name it or remove the extra comma."
            )
        if name in seen:
            raise InputError(
                f"{path}, line 1: the column name {name!r} appears twice (columns {seen[name]} and {col}); "
                f"rename one of them."
            )
        seen[name] = col
    if "date" not in seen:
        raise InputError(
            f"{path}, line 1: there is no 'date' column (the header starts {', '.join(map(repr, header[:4]))}); "
            f"name the time-stamp column 'date'."
        )
    if len(header) < 2:
        raise InputError(f"{path}, line 1: there are no variable columns besides 'date'; add at least one.")
    if len(lines) < 2 or not lines[1].strip():
        raise InputError(f"{path} has a header line but no data rows; use a file with data.")
    return header


def _model_order(path: str, header: list[str], target: str, layout: str) -> list[str]:
    """custom: target moved last (reference Dataset_Custom); ETT layouts: file order."""
    others = [name for name in header if name != "date"]
    if layout != "custom":
        return others
    if target == "date" or target not in others:
        raise InputError(
            f"{path}, line 1: the target column {target!r} (config key dataset.target) is not a variable "
            f"column of the file; set dataset.target to one of its column names."
        )
    return [name for name in others if name != target] + [target]


_FIELDS_ERROR = re.compile(r"Expected (\d+) fields in line (\d+), saw (\d+)")


def _parse(path: str, text: str, header: list[str]) -> pd.DataFrame:
    """Fast path: the C engine parses floats directly; any problem -> locate the first bad cell."""
    dtypes = {name: (str if name == "date" else np.float64) for name in header}
    try:
        frame = pd.read_csv(
            io.StringIO(text), names=header, header=0, dtype=dtypes, index_col=False,
            na_filter=False,  # "", "NA", "nan" must fail here, and dates keep their text
            skip_blank_lines=False,  # blank lines kept so row i is always line i + 2
            engine="c",
        )
    except pd.errors.ParserError as e:
        match = _FIELDS_ERROR.search(str(e))
        if match:
            want, line, got = match.groups()
            raise InputError(
                f"{path}, line {line}: the line has {got} fields but the header has {want}; "
                f"remove the extra commas or quote text that contains commas."
            ) from None
        raise InputError(f"{path} cannot be parsed as CSV; check its quoting and line structure.") from None
    except ValueError:  # a cell that is not a number, empty cells included
        raise _first_bad_cell(path, text, header) or InputError(
            f"{path} contains a value that is not a number; make every variable cell a plain number."
        ) from None
    values = frame[[name for name in header if name != "date"]].to_numpy(dtype=np.float64)
    if not np.isfinite(values).all():  # "inf", "1e999" and friends parse, so check
        raise _first_bad_cell(path, text, header) or InputError(
            f"{path} contains an empty, NaN or infinite value; make every variable cell a finite number."
        )
    return frame


def _first_bad_cell(path: str, text: str, header: list[str]) -> InputError | None:
    """Slow path, errors only: re-read as text and name the first bad cell by line and column."""
    cells = pd.read_csv(
        io.StringIO(text), names=header, header=0, dtype=str, na_filter=False,
        index_col=False, skip_blank_lines=False, engine="c",
    )  # (R, C) strings, "" for empty
    bad = np.zeros(cells.shape, dtype=bool)
    for j, name in enumerate(header):
        if name != "date":  # dates are checked by _parse_dates, with their own message
            numbers = pd.to_numeric(cells[name], errors="coerce").to_numpy(dtype=np.float64)
            bad[:, j] = ~np.isfinite(numbers)
    rows, cols = np.nonzero(bad)  # row-major: first hit is the earliest line, leftmost column
    if len(rows) == 0:
        return None
    row, col = int(rows[0]), int(cols[0])
    line, name, value = row + 2, header[col], cells.iat[row, col]
    if all(not str(v).strip() for v in cells.iloc[row]):
        return InputError(f"{path}, line {line}: the line is blank; remove it.")
    if value.strip():
        problem = f"{value!r} is not a finite number"
    else:
        problem = "the cell is empty (or the line has too few fields)"
    return InputError(
        f"{path}, line {line}, column {name!r}: {problem}; fill in a finite number or remove the row."
    )


def _parse_dates(path: str, column: pd.Series) -> pd.DatetimeIndex:
    """Every date must parse, in the format of the first one (pandas infers it from there)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "could not infer format": we report NaT ourselves
        try:
            dates = pd.to_datetime(column, errors="coerce")
        except (ValueError, TypeError):  # e.g. mixed time-zone offsets
            raise InputError(
                f"{path}, column 'date': the dates mix formats or time-zone offsets and cannot be parsed "
                f"together; write every date as YYYY-MM-DD HH:MM:SS without an offset."
            ) from None
    bad = np.flatnonzero(dates.isna().to_numpy())
    if len(bad):
        row = int(bad[0])
        value = column.iloc[row]
        problem = f"the date {value!r} cannot be parsed" if str(value).strip() else "the date is empty"
        raise InputError(
            f"{path}, line {row + 2}, column 'date': {problem} (first date is {column.iloc[0]!r}); "
            f"write every date in one format, such as YYYY-MM-DD HH:MM:SS."
        )
    return pd.DatetimeIndex(dates)


# --------------------------------------------------------------------------- irregularities


def _irregularities(
    path: str, data: bytes, dates: pd.DatetimeIndex, variables: list[str], values: np.ndarray
) -> dict:
    """Counts of things the reference tolerates; logged once each, data left untouched."""
    name = Path(path).name
    found = {
        "duplicate_timestamps": _duplicates(dates),
        **_steps(dates),
        "sentinel": _sentinels(variables, values),
        "non_ascii_columns": [v for v in variables if not v.isascii()],
        "crlf_line_endings": b"\r\n" in data,
    }
    dup, gaps, back, sent = (found[k] for k in ("duplicate_timestamps", "gaps", "backward_steps", "sentinel"))
    if dup["count"]:
        first = dup["first"]
        log.warning("%s: %d duplicated timestamp(s), first %s on lines %d and %d; kept as is",
                    name, dup["count"], first["timestamp"], *first["lines"])
    if gaps["count"]:
        first = gaps["first"]
        log.warning("%s: %d gap(s) longer than the usual %g s step, first %s to %s (line %d); windows are by row",
                    name, gaps["count"], gaps["usual_step_seconds"], first["from"], first["to"], first["line"])
    if back["count"]:
        first = back["first"]
        log.warning("%s: %d backward time step(s), first %s to %s (line %d); rows kept in file order",
                    name, back["count"], first["from"], first["to"], first["line"])
    if sent["total"]:
        log.warning("%s: the missing-data sentinel %g occurs %d times (%s); values kept raw",
                    name, SENTINEL, sent["total"], ", ".join(f"{k}: {v}" for k, v in sent["per_column"].items()))
    if found["non_ascii_columns"]:
        log.warning("%s: %d column name(s) contain non-ASCII or U+FFFD characters (%s); kept byte-for-byte",
                    name, len(found["non_ascii_columns"]), ", ".join(found["non_ascii_columns"]))
    if found["crlf_line_endings"]:
        log.warning("%s: CRLF line endings; read as ordinary line ends", name)
    return found


def _duplicates(dates: pd.DatetimeIndex) -> dict:
    repeated = np.flatnonzero(dates.duplicated())  # rows equal to an earlier row
    if len(repeated) == 0:
        return {"count": 0, "first": None}
    row = int(repeated[0])
    first_seen = int(np.flatnonzero(dates == dates[row])[0])
    return {
        "count": len(repeated),
        "first": {"timestamp": str(dates[row]), "lines": [first_seen + 2, row + 2]},
    }


def _steps(dates: pd.DatetimeIndex) -> dict:
    """Gaps (steps longer than the most common one) and backward steps."""
    steps = np.diff(dates.asi8)  # (R-1,) in the index's unit
    empty = {"count": 0, "first": None}
    if len(steps) == 0:
        return {"gaps": {**empty, "usual_step_seconds": None}, "backward_steps": empty}
    unique, counts = np.unique(steps, return_counts=True)
    usual = unique[np.argmax(counts)]

    def report(mask: np.ndarray) -> dict:
        where = np.flatnonzero(mask)
        if len(where) == 0:
            return dict(empty)
        i = int(where[0])  # step from row i to row i + 1
        return {
            "count": len(where),
            "first": {"from": str(dates[i]), "to": str(dates[i + 1]), "line": i + 3},  # line of row i + 1
        }

    gaps = report(steps > usual) if usual > 0 else dict(empty)
    return {
        "gaps": {**gaps, "usual_step_seconds": pd.Timedelta(int(usual), unit=dates.unit).total_seconds()},
        "backward_steps": report(steps < 0),
    }


def _sentinels(variables: list[str], values: np.ndarray) -> dict:
    per_column = (values == SENTINEL).sum(axis=0)  # (N,)
    return {
        "value": SENTINEL,
        "total": int(per_column.sum()),
        "per_column": {v: int(c) for v, c in zip(variables, per_column) if c},
    }


# --------------------------------------------------------------------------- writing


def write_windows(
    table: Table, layout: str, seq_len: int, pred_lens: list[int], out: dict[str, str]
) -> dict[str, dict]:
    """Write one Parquet per split in `out`; return {split: the metadata stored in its file}.

    Everything is checked and built in memory first. Files appear only by os.replace of a
    finished temporary file; if any write fails, the outputs of this call are removed so
    no partial set of splits survives.
    """
    layout = resolve_layout(layout, Path(table.path).stem)
    _check_positive_int(seq_len, "seq_len")
    for p in pred_lens:
        _check_positive_int(p, "pred_lens")
    _check_out(out)
    borders = split_borders(len(table.values), seq_len, layout, source=table.path)
    mean, std, zero_std = _fit_scaler(table.values[slice(*borders["train"])], table.variables)
    common = {
        "format_version": FORMAT_VERSION,
        "layout": layout,
        "seq_len": int(seq_len),
        "n_rows": len(table.values),
        "borders": {s: list(b) for s, b in borders.items()},
        "variables": list(table.variables),
        "scaler": {"mean": mean.tolist(), "std": std.tolist(), "zero_std": zero_std},
        "input_sha256": table.sha256,
        "input_file": Path(table.path).name,
        "irregularities": table.irregularities,
    }
    metas, arrow = {}, {}
    for split in out:
        start, end = borders[split]
        metas[split] = {
            **common,
            "split": split,
            "windows_per_horizon": {str(p): window_count(end - start, seq_len, p) for p in pred_lens},
        }
        arrow[split] = _arrow_table(table, start, end, mean, std, metas[split])
    _write_all_atomically(arrow, out)
    return metas


def _check_out(out: dict[str, str]) -> None:
    if not out:
        raise InputError(f"No output paths were given; name at least one of the splits {', '.join(SPLITS)}.")
    unknown = [s for s in out if s not in SPLITS]
    if unknown:
        raise InputError(
            f"Split {unknown[0]!r} (config key splits) is not known; use only {', '.join(SPLITS)}."
        )
    paths = [os.path.abspath(p) for p in out.values()]
    if len(set(paths)) != len(paths):
        raise InputError(f"Two splits would be written to the same file ({out}); give each split its own path.")
    for p in out.values():
        if os.path.isdir(p):
            raise InputError(f"Output path {p} is a folder; give a file path for the Parquet output.")


def _fit_scaler(train: np.ndarray, variables: list[str]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Mean and population std (ddof=0) of the train rows; a zero std becomes 1 (like sklearn)."""
    mean = train.mean(axis=0)  # (N,)
    std = train.std(axis=0, ddof=0)  # (N,)
    zero = std == 0
    std = np.where(zero, 1.0, std)
    return mean, std, [v for v, z in zip(variables, zero) if z]


def _arrow_table(
    table: Table, start: int, end: int, mean: np.ndarray, std: np.ndarray, meta: dict
) -> pa.Table:
    raw = table.values[start:end]  # (R_s, N)
    z = (raw - mean) / std  # (R_s, N)
    columns: dict[str, pa.Array] = {
        "row": pa.array(np.arange(start, end, dtype=np.int64)),
        "date": pa.Array.from_pandas(table.dates[start:end]),
    }
    # Transposed copies: each variable becomes one contiguous (R_s,) array for Arrow.
    for prefix, block in (("raw:", raw), ("z:", z)):
        for name, column in zip(table.variables, np.ascontiguousarray(block.T)):
            columns[prefix + name] = pa.array(column, type=pa.float64())
    result = pa.table(columns)
    return result.replace_schema_metadata({METADATA_KEY: json.dumps(meta).encode("utf-8")})


def _write_all_atomically(tables: dict[str, pa.Table], out: dict[str, str]) -> None:
    """All splits or none: store.atomic_paths renames them together, or removes them all."""
    with atomic_paths(*(out[split] for split in tables)) as temps:
        for arrow, tmp in zip(tables.values(), temps):
            pq.write_table(arrow, tmp)


# --------------------------------------------------------------------------- reading back


def read_windows(path: str | os.PathLike) -> SplitWindows:
    path = str(path)
    arrow = _read_parquet(path)
    meta = _our_metadata(path, arrow)
    variables = meta["variables"]
    expected = ["row", "date"] + [f"raw:{v}" for v in variables] + [f"z:{v}" for v in variables]
    if arrow.column_names != expected:
        raise InputError(
            f"{path} does not have the columns its timekd_embed metadata lists; "
            f"delete it and re-run the windows step."
        )

    def block(prefix: str) -> np.ndarray:  # (R_s, N) float64
        cols = [arrow.column(prefix + v).to_numpy() for v in variables]
        return np.stack(cols, axis=1).astype(np.float64, copy=False)

    return SplitWindows(
        split=meta["split"],
        rows=arrow.column("row").to_numpy().astype(np.int64, copy=False),
        dates=pd.DatetimeIndex(arrow.column("date").to_pandas()),
        raw=block("raw:"),
        zscore=block("z:"),
        variables=list(variables),
        meta=meta,
    )


def _read_parquet(path: str) -> pa.Table:
    if not os.path.isfile(path):
        raise InputError(f"{path} does not exist; run the windows step first.")
    try:
        return pq.read_table(path)
    except (pa.ArrowException, OSError):
        raise InputError(
            f"{path} is not a readable Parquet file; delete it and re-run the windows step."
        ) from None


def _our_metadata(path: str, arrow: pa.Table) -> dict:
    blob = (arrow.schema.metadata or {}).get(METADATA_KEY)
    try:
        meta = json.loads(blob) if blob is not None else None
    except ValueError:
        meta = None
    ours = isinstance(meta, dict) and meta.get("format_version") == FORMAT_VERSION
    if not ours or meta.get("split") not in SPLITS:
        raise InputError(
            f"{path} is not a windows file written by timekd_embed (format version {FORMAT_VERSION}); "
            f"delete it and re-run the windows step."
        )
    return meta
