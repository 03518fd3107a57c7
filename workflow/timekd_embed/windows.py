"""Checked table -> split borders -> train-fitted scaler -> one Parquet file per split.

The splits follow the reference data loaders (TimeKD, Liu et al., ICDE 2025; published
data_provider/data_loader_save.py): `custom` is 70/10/20 % of the rows, the ETT
layouts 12/4/4 months of 30 days; val and test start seq_len rows early. Windows are taken
by row index. Reading and checking the CSV is table.py's job; this module writes and reads
back the Parquet files, each carrying its metadata (borders, scaler, input hash).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .config import LAYOUTS, resolve_layout
from .errors import InputError
from .records import check_record
from .store import atomic_paths
from .table import Table, stamps

if TYPE_CHECKING:     # imported where Parquet is written or read: the GPU check runs where it is not installed
    import pyarrow as pa

SPLITS = ("train", "val", "test")

FORMAT_VERSION = 1
METADATA_KEY = b"timekd_embed"
_ETT_MONTH_ROWS = {"ett_hour": 30 * 24, "ett_minute": 30 * 24 * 4}  # a "month" is 30 days

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- types


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
        """Windows of this split at one horizon (window_count; limit_windows not applied)."""
        return window_count(len(self.rows), self.meta["seq_len"], pred_len)

    def stamps(self) -> np.ndarray:
        """int64 (R_s, 6): year, month, day, weekday (Mon=0), hour, minute (table.stamps)."""
        return stamps(self.dates)


# --------------------------------------------------------------------------- layout and borders


def split_borders(
    n_rows: int, seq_len: int, layout: str, source: str = "The input file"
) -> dict[str, tuple[int, int]]:
    """split -> [start, end) row range; val and test start seq_len rows early (their first input window),
    as the published data_provider/data_loader_save.py borders them.

    Args:
        n_rows: data rows of the CSV.
        seq_len: config key seq_len, in rows.
        layout: a resolved layout: "custom" (70/10/20 %) or an ETT one (12/4/4 months).
        source: the file, named in messages.
    Returns:
        {"train": (start, end), "val": ..., "test": ...}, row indices into the CSV's data rows.
    Raises:
        InputError: seq_len is not a whole number >= 1, the layout is unresolved or unknown, or
            the file is too short for the layout (a split without one window of seq_len + 1 rows).
    """
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
    """Windows of seq_len input and pred_len future rows in a split of n_split_rows rows (0 when
    it is too short)."""
    return max(0, n_split_rows - seq_len - pred_len + 1)


def _check_positive_int(value: object, key: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InputError(f"Config key {key} is {value!r}; set it to a whole number of at least 1.")


# --------------------------------------------------------------------------- writing


def write_windows(
    table: Table,
    layout: str,
    seq_len: int,
    pred_lens: list[int],
    out: dict[str, str],
    template_note: str | None = None,
) -> dict[str, dict]:
    """Write one Parquet per split in `out`; return {split: the metadata stored in its file}.

    Everything is checked and built in memory first. Files appear only by os.replace of a
    finished temporary file; if any write fails, the outputs of this call are removed so
    no partial set of splits survives.

    Args:
        table: the checked CSV (table.load_csv).
        layout: a concrete layout; seq_len: input rows per window; pred_lens: the horizons
            whose window counts go into the metadata.
        out: split -> Parquet path.
        template_note: cadence.template_note's line, stored as metadata "template_note".
    Returns:
        {split: metadata}: borders, scaler (train mean and ddof-0 std per variable),
        input sha256, irregularities, windows per horizon, template_note.
    Raises:
        InputError: bad seq_len / pred_lens, unknown splits or output paths, too few rows.
    """
    _check_positive_int(seq_len, "seq_len")
    for pred_len in pred_lens:
        _check_positive_int(pred_len, "pred_lens")
    _check_out(out)
    borders = split_borders(len(table.values), seq_len, layout, source=table.path)
    mean, std, zero_std = _fit_scaler(table.values[slice(*borders["train"])], table.variables)
    common = {
        "format_version": FORMAT_VERSION,
        "layout": layout,
        "seq_len": int(seq_len),
        "n_rows": len(table.values),
        "borders": {split: list(border) for split, border in borders.items()},
        "variables": list(table.variables),
        "scaler": {"mean": mean.tolist(), "std": std.tolist(), "zero_std": zero_std},
        "input_sha256": table.sha256,
        "input_file": Path(table.path).name,
        "irregularities": table.irregularities,
        "template_note": template_note,
    }
    metas, arrow = {}, {}
    for split in out:
        start, end = borders[split]
        metas[split] = {
            **common,
            "split": split,
            "windows_per_horizon": {str(pred_len): window_count(end - start, seq_len, pred_len)
                                    for pred_len in pred_lens},
        }
        arrow[split] = _arrow_table(table, start, end, mean, std, metas[split])
    _write_all_atomically(arrow, out)
    return metas


def split_windows(table: Table, layout: str, seq_len: int) -> dict[str, SplitWindows]:
    """Every split in memory, as read_windows gives it back from write_windows' files (for a job that
    reads the CSV itself: the preflight).

    Args:
        table: the checked CSV (table.load_csv); layout: a concrete layout; seq_len: input rows per window.
    Returns:
        {split: SplitWindows}; meta holds split, seq_len, variables and input_sha256.
    Raises:
        InputError: as split_borders.
    """
    borders = split_borders(len(table.values), seq_len, layout, source=table.path)
    mean, std, _ = _fit_scaler(table.values[slice(*borders["train"])], table.variables)
    return {split: SplitWindows(split, np.arange(start, end, dtype=np.int64), table.dates[start:end],
                                table.values[start:end], (table.values[start:end] - mean) / std,
                                list(table.variables),
                                {"split": split, "seq_len": int(seq_len), "variables": list(table.variables),
                                 "input_sha256": table.sha256})
            for split, (start, end) in borders.items()}


def _check_out(out: dict[str, str]) -> None:
    if not out:
        raise InputError(f"No output paths were given; name at least one of the splits {', '.join(SPLITS)}.")
    unknown = [split for split in out if split not in SPLITS]
    if unknown:
        raise InputError(
            f"Split {unknown[0]!r} (config key splits) is not known; use only {', '.join(SPLITS)}."
        )
    paths = [os.path.abspath(path) for path in out.values()]
    if len(set(paths)) != len(paths):
        raise InputError(f"Two splits would be written to the same file ({out}); give each split its own path.")
    for path in out.values():
        if os.path.isdir(path):
            raise InputError(f"Output path {path} is a folder; give a file path for the Parquet output.")


def _fit_scaler(train: np.ndarray, variables: list[str]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Mean and population std (ddof=0) of the train rows; a zero std becomes 1 (like sklearn)."""
    mean = train.mean(axis=0)  # (N,)
    std = train.std(axis=0, ddof=0)  # (N,)
    zero = std == 0
    std = np.where(zero, 1.0, std)
    return mean, std, [variable for variable, is_zero in zip(variables, zero) if is_zero]


def _arrow_table(
    table: Table, start: int, end: int, mean: np.ndarray, std: np.ndarray, meta: dict
) -> pa.Table:
    import pyarrow as pa

    raw = table.values[start:end]  # (R_s, N)
    zscore = (raw - mean) / std  # (R_s, N)
    columns: dict[str, pa.Array] = {
        "row": pa.array(np.arange(start, end, dtype=np.int64)),
        "date": pa.Array.from_pandas(table.dates[start:end]),
    }
    # Transposed copies: each variable becomes one contiguous (R_s,) array for Arrow.
    for prefix, block in (("raw:", raw), ("z:", zscore)):
        for name, column in zip(table.variables, np.ascontiguousarray(block.T)):
            columns[prefix + name] = pa.array(column, type=pa.float64())
    result = pa.table(columns)
    return result.replace_schema_metadata({METADATA_KEY: json.dumps(meta).encode("utf-8")})


def _write_all_atomically(tables: dict[str, pa.Table], out: dict[str, str]) -> None:
    """All splits or none: store.atomic_paths renames them together, or removes them all."""
    import pyarrow.parquet as pq

    with atomic_paths(*(out[split] for split in tables)) as temps:
        for arrow, tmp in zip(tables.values(), temps):
            pq.write_table(arrow, tmp)


# --------------------------------------------------------------------------- reading back


def read_windows(path: str | os.PathLike) -> SplitWindows:
    """One split's windows file, read back and checked against its own metadata.

    Args:
        path: a Parquet file write_windows wrote.
    Returns:
        The SplitWindows (float64 raw and z-scored values, int64 rows, the dates, the metadata).
    Raises:
        InputError: the file is missing, not Parquet, not ours (another format version), its
            columns differ from its metadata's variables, or its bytes are not those recorded when
            it was written (records.check_record: Parquet reads a changed value without complaint).
    """
    path = str(path)
    arrow = _read_parquet(path)
    meta = _our_metadata(path, arrow)
    variables = meta["variables"]
    expected = (["row", "date"] + [f"raw:{variable}" for variable in variables]
                + [f"z:{variable}" for variable in variables])

    if arrow.column_names != expected:
        raise InputError(
            f"{path} does not have the columns its timekd_embed metadata lists; "
            f"delete it and re-run the windows step."
        )
    check_record(path)

    def block(prefix: str) -> np.ndarray:
        """The columns of one prefix ("raw:" or "z:") as (R_s, N) float64."""

        cols = [arrow.column(prefix + variable).to_numpy() for variable in variables]
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
    import pyarrow as pa
    import pyarrow.parquet as pq

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
