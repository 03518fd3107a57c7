"""CSV -> checked table: the one reader of the raw file, its dates and its irregularities.

Values are kept exactly as written: the teacher builds prompts from raw values (TimeKD,
Liu et al., ICDE 2025; published data_provider/data_loader_save.py). Irregular
data (duplicated stamps, gaps, -9999 sentinels, odd column names, CRLF) is reported but
never changed; anything that would make the result wrong or ambiguous is an InputError.
`stamps` is the one place where dates become the (year, month, day, weekday, hour,
minute) rows the prompts are written from.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import logging
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from pandas.tseries.api import guess_datetime_format

from .config import LAYOUTS
from .errors import InputError

SENTINEL = -9999.0

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


def stamps(dates: pd.DatetimeIndex | pd.Series) -> np.ndarray:
    """The calendar fields the prompts are written from, int64 (R, 6), one row per date: year, month,
    day, weekday (Monday = 0), hour, minute."""
    index = pd.DatetimeIndex(dates)
    fields = (index.year, index.month, index.day, index.day_of_week, index.hour, index.minute)
    return np.stack([np.asarray(field, dtype=np.int64) for field in fields], axis=1).reshape(len(index), 6)


# --------------------------------------------------------------------------- reading the CSV


def load_csv(
    path: str | os.PathLike, target: str = "OT", layout: str = "custom", date_format: str | None = None
) -> Table:
    """Read and check a CSV; InputError on anything fatal, a log warning for each irregularity.

    Args:
        path: the CSV: a `date` column, then the variables (comma-separated, UTF-8).
        target: config key dataset.target; the `custom` layout moves it last.
        layout: a concrete layout (validate_config resolves config key dataset.layout).
        date_format: config key dataset.date_format (a strftime pattern), or None: the
            format the first date shows, refused when day and month could be swapped.
    Returns:
        Table: dates (R,), values float64 (R, N) exactly as written, the file's sha256 and
        the irregularities found (counts and first occurrences, including the usual step).
    Raises:
        InputError: a missing, empty, undecodable or malformed file, a bad cell or date
            (naming its line and column), or ambiguous day/month dates.
    """
    path = str(path)
    if layout not in LAYOUTS:  # "auto" is resolved once, by validate_config
        raise InputError(f"Layout {layout!r} is not a concrete layout; pass one of {', '.join(LAYOUTS)} "
                         "(config.resolve_layout turns config key dataset.layout into one).")
    data = _read_bytes(path)
    text = _decode(path, data)
    header = _check_header(path, text)
    variables = _model_order(path, header, target, layout)
    frame = _parse(path, text, header)  # (R, C) date as str, the rest float64
    dates = _parse_dates(path, frame["date"], date_format)
    values = np.ascontiguousarray(frame[variables].to_numpy(dtype=np.float64))  # (R, N)
    irregularities = _irregularities(path, data, dates, variables, values)
    return Table(path, dates, variables, values, hashlib.sha256(data).hexdigest(), irregularities)


def _read_bytes(path: str) -> bytes:
    try:
        with open(path, "rb") as stream:
            data = stream.read()
    except FileNotFoundError:
        raise InputError(
            f"{path} does not exist; check dataset.csv in the config or download the file."
        ) from None
    except OSError as error:
        raise InputError(f"{path} cannot be read ({error.strerror}); check the path and its permissions.") from None
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
    for column, name in enumerate(header):
        if name != "date":  # dates are checked by _parse_dates, with their own message
            numbers = pd.to_numeric(cells[name], errors="coerce").to_numpy(dtype=np.float64)
            bad[:, column] = ~np.isfinite(numbers)
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


def _parse_dates(path: str, column: pd.Series, date_format: str | None = None) -> pd.DatetimeIndex:
    """Every date parsed in one format: `date_format` when given, else the one the first date shows.

    Without a key, a format that puts day and month side by side (not year first, as ISO
    does) is ambiguous when every date also reads with the two swapped: such a file is
    refused with the key to set, instead of being read month-first (pandas' default).
    """
    if date_format is not None:
        return _dates_in(path, column, date_format, "does not match config key dataset.date_format "
                         f"{date_format!r}", "fix the date or the key")
    non_empty = column[column.str.strip() != ""]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "parsing in %d/%m/%Y format": decided below
        guessed = guess_datetime_format(str(non_empty.iloc[0])) if len(non_empty) else None
    swapped = _day_month_swapped(guessed)
    if swapped is None:  # year first (ISO), one of day/month missing, or no recognisable format
        return _dates_in(path, column, guessed, "cannot be parsed",
                         "write every date in one format, such as YYYY-MM-DD HH:MM:SS")
    as_guessed = _try_format(column, guessed)
    as_swapped = _try_format(column, swapped)
    if as_guessed is not None and as_swapped is not None and not as_guessed.equals(as_swapped):
        example = column.iloc[int(np.flatnonzero(as_guessed.to_numpy() != as_swapped.to_numpy())[0])]
        raise InputError(
            f"{path}, column 'date': every date reads both day-first and month-first (such as {example!r}), so "
            f"the file is ambiguous; set config key dataset.date_format to {_day_first(guessed, swapped)!r} "
            f"(day first) or {_month_first(guessed, swapped)!r} (month first).")
    if as_guessed is None and as_swapped is not None:
        return _dates_in(path, column, guessed, "cannot be parsed",
                         f"the dates read only as {swapped!r}: set config key dataset.date_format to it")
    return _dates_in(path, column, guessed, "cannot be parsed",
                     "write every date in one format, such as YYYY-MM-DD HH:MM:SS")


def _day_month_swapped(fmt: str | None) -> str | None:
    """`fmt` with %d and %m exchanged, when both are there and the year does not come first."""
    if fmt is None or "%d" not in fmt or "%m" not in fmt:
        return None
    year = min((fmt.index(y) for y in ("%Y", "%y") if y in fmt), default=len(fmt))
    if year < fmt.index("%d") and year < fmt.index("%m"):
        return None  # year-month-day (ISO and its relatives): nobody writes year-day-month
    return fmt.replace("%d", "%DAY").replace("%m", "%d").replace("%DAY", "%m")


def _day_first(*formats: str) -> str:
    return next(date_format for date_format in formats if date_format.index("%d") < date_format.index("%m"))


def _month_first(*formats: str) -> str:
    return next(date_format for date_format in formats if date_format.index("%m") < date_format.index("%d"))


def _try_format(column: pd.Series, fmt: str) -> pd.DatetimeIndex | None:
    """The dates when every one of them parses with `fmt`, else None."""
    try:
        dates = pd.to_datetime(column, format=fmt, errors="coerce")
    except (ValueError, TypeError):
        return None
    return None if dates.isna().any() else pd.DatetimeIndex(dates)


def _dates_in(path: str, column: pd.Series, fmt: str | None, problem: str, fix: str) -> pd.DatetimeIndex:
    """The column parsed with `fmt` (None: pandas infers it from the first date); the first bad date named."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "could not infer format": we report NaT ourselves
        try:
            dates = pd.to_datetime(column, format=fmt, errors="coerce")
        except (ValueError, TypeError):  # e.g. mixed time-zone offsets
            raise InputError(
                f"{path}, column 'date': the dates mix formats or time-zone offsets and cannot be parsed "
                f"together; write every date as YYYY-MM-DD HH:MM:SS without an offset."
            ) from None
    bad = np.flatnonzero(dates.isna().to_numpy())
    if len(bad):
        row = int(bad[0])
        value = column.iloc[row]
        what = f"the date {value!r} {problem}" if str(value).strip() else "the date is empty"
        raise InputError(f"{path}, line {row + 2}, column 'date': {what} (first date is {column.iloc[0]!r}); {fix}.")
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
    dup, gaps, back, sent = (found[key] for key in ("duplicate_timestamps", "gaps", "backward_steps", "sentinel"))
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
        """How many steps `mask` marks, and the first of them (its dates and CSV line)."""
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
        "per_column": {variable: int(count) for variable, count in zip(variables, per_column) if count},
    }
