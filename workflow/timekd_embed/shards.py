"""Window ranges of one (horizon, split), planned before the windows exist, and their gathering.

Each range is a separate Snakemake job, so a killed run redoes only the missing ranges
and a cluster can run many at once. Gathering concatenates them in window order.
"""

from __future__ import annotations

import json
from pathlib import Path

from .errors import InputError
from .windows import split_borders, window_count


def csv_rows(path: str | Path) -> int:
    """Data rows of a CSV (lines after the header, trailing blank lines ignored), without parsing it."""
    lines = Path(path).read_bytes().splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    return max(0, len(lines) - 1)


def split_rows(csv: str | Path, windows: dict[str, str], seq_len: int, layout: str,
               known_rows: int | None = None) -> dict[str, int]:
    """Rows per split of the current input, to plan the window ranges before the windows stage runs.

    The plan always follows the input that the windows stage will read, never an older
    windows file: the CSV when it exists (a CSV that grew plans the new ranges, and its
    changed sha256 remakes the windows); the windows files only when the CSV is absent
    (results copied without it), read from their Parquet footers; else `known_rows`,
    the row count of a known dataset that get_data will download and verify.

    Args:
        csv: config key dataset.csv.
        windows: split -> windows Parquet path.
        seq_len: config key seq_len (input window length, in rows).
        layout: the resolved layout (windows.resolve_layout).
        known_rows: data rows of the file get_data fetches, or None.

    Returns:
        split -> number of rows of that split (its windows need seq_len + P of them).

    Raises:
        InputError: none of the three is available, or a windows file is unreadable.
    """
    if Path(csv).is_file():
        n_rows = csv_rows(csv)
    elif all(Path(p).is_file() for p in windows.values()):
        return {s: parquet_rows(p) for s, p in windows.items()}
    elif known_rows is not None:
        n_rows = known_rows
    else:
        raise InputError(f"{csv} not found; put the CSV there or set dataset.csv in the config.")
    borders = split_borders(n_rows, seq_len, layout, str(csv))
    return {s: end - start for s, (start, end) in borders.items()}


def parquet_rows(path: str | Path) -> int:
    """Rows of a Parquet file, from its footer (the row groups are not read)."""
    import pyarrow.parquet as pq

    try:
        return pq.read_metadata(path).num_rows
    except Exception:  # pyarrow's own errors for a damaged file
        raise InputError(f"{path} is not a readable Parquet file; delete it and rerun the workflow.") from None


def ranges(n_windows: int, shard_windows: int | None) -> list[tuple[int, int]]:
    """[start, stop) ranges of at most `shard_windows` windows covering 0..n_windows-1."""
    size = shard_windows or max(n_windows, 1)
    return [(a, min(a + size, n_windows)) for a in range(0, n_windows, size)]


def planned_windows(rows: int, seq_len: int, pred_len: int, limit_windows: int | None) -> int:
    """Windows of one (horizon, split): the one place that counts them for planning and gathering.

    Args:
        rows: rows of the split (split_rows).
        seq_len: input window length, in rows.
        pred_len: the horizon P, in rows.
        limit_windows: config key limit_windows (the first windows only), or None.

    Returns:
        The number of windows, 0 when the split is shorter than seq_len + pred_len.
    """
    n = window_count(rows, seq_len, pred_len)
    return n if limit_windows is None else min(n, limit_windows)


def gather(shards: list[str], stats: list[str], out: str, stats_out: str, expected: int | None = None) -> None:
    """One embeddings file from its shards (in window order) and one stats file.

    Args:
        shards, stats: the range files, in window order.
        out, stats_out: the final files (written only when everything checks out).
        expected: the number of windows the current windows file holds for this horizon
            (planned_windows); a plan made from other data gives another count, and then
            no final file is written.

    Raises:
        InputError: shards made with other settings, not covering 0..n-1, or not `expected` windows.
    """
    import torch  # here, not at the top: the Snakefile imports this module to plan, and torch is slow to load

    from .store import read_tensors, write_json, write_tensors

    parts = [read_tensors(p) for p in shards]
    # What decides the embeddings must agree; the window range and the speed-only runtime
    # record (devices, placement, batch_tokens: settings.py) may differ from shard to shard.
    metas = [{k: v for k, v in m.items() if k not in ("window_range", "runtime")} for _, m in parts]
    for path, m in zip(shards[1:], metas[1:]):
        if m != metas[0]:
            odd = sorted(k for k in m if m[k] != metas[0].get(k))
            raise InputError(f"{path}: made with other settings than {shards[0]} ({', '.join(odd)}); delete the "
                             "shards of this horizon and split and rerun.")
    starts = torch.cat([t["window_start"] for t, _ in parts])
    if not torch.equal(starts, torch.arange(len(starts), dtype=starts.dtype)):
        raise InputError(f"{Path(out).parent}: the shards do not cover windows 0..{len(starts) - 1} in order; rerun.")
    if expected is not None and len(starts) != expected:
        raise InputError(f"{out}: the shards hold {len(starts)} windows but the windows file has {expected}; they "
                         "were planned from other data: rerun the workflow (the plan follows the current CSV).")
    runtimes = list(dict.fromkeys(m.get("runtime", "{}") for _, m in parts))  # distinct, in shard order
    metadata = metas[0] | {"window_range": json.dumps([0, len(starts)]), "shards": str(len(shards)),
                           "runtime": runtimes[0] if len(runtimes) == 1 else "[" + ", ".join(runtimes) + "]"}
    write_tensors(out, {"embeddings": torch.cat([t["embeddings"] for t, _ in parts]), "window_start": starts},
                  metadata)
    write_json(stats_out, merge_stats([json.loads(Path(p).read_text()) for p in stats]))


def merge_stats(stats: list[dict]) -> dict:
    """Sums of work and time, maxima of memory, rates over the summed time."""
    merged = dict(stats[0])
    for key in ("windows", "tokens", "tokens_computed", "wall_s"):
        merged[key] = sum(s[key] for s in stats)
    merged["windows_per_s"] = merged["windows"] / merged["wall_s"]
    merged["tokens_per_s"] = merged["tokens"] / merged["wall_s"]
    merged["longest_prompt"] = max(s["longest_prompt"] for s in stats)
    merged["peak_memory_bytes"] = {k: max(s["peak_memory_bytes"].get(k, 0) for s in stats)
                                   for k in stats[0]["peak_memory_bytes"]}
    merged["shards"] = len(stats)
    merged.pop("window_range", None)
    return merged
