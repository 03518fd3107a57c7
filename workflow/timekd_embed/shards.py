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
    """Data rows of a CSV (lines after the header, trailing blank lines ignored), without parsing it.

    Args:
        path: the CSV file.
    Returns:
        The number of data rows (0 for a header alone or an empty file).
    """
    lines = Path(path).read_bytes().splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    return max(0, len(lines) - 1)


def split_rows(csv: str | Path, windows_paths: dict[str, str], seq_len: int, layout: str,
               known_rows: int | None = None) -> dict[str, int]:
    """Rows per split of the current input, to plan the window ranges before the windows stage runs.

    The plan always follows the input that the windows stage will read, never an older
    windows file: the CSV when it exists (a CSV that grew plans the new ranges, and its
    changed sha256 remakes the windows); the windows files only when the CSV is absent
    (results copied without it), read from their Parquet footers; else `known_rows`,
    the row count of a known dataset that get_data will download and verify.

    Args:
        csv: config key dataset.csv.
        windows_paths: split -> windows Parquet path.
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
    elif all(Path(path).is_file() for path in windows_paths.values()):
        return {split: parquet_rows(path) for split, path in windows_paths.items()}
    elif known_rows is not None:
        n_rows = known_rows
    else:
        raise InputError(f"{csv} not found; put the CSV there or set dataset.csv in the config.")
    borders = split_borders(n_rows, seq_len, layout, str(csv))
    return {split: end - start for split, (start, end) in borders.items()}


def parquet_rows(path: str | Path) -> int:
    """Rows of a Parquet file, from its footer (the row groups are not read).

    Args:
        path: a windows Parquet file.
    Returns:
        Its number of rows.
    Raises:
        InputError: the file is missing or not readable Parquet.
    """
    import pyarrow.parquet as pq

    try:
        return pq.read_metadata(path).num_rows
    except Exception:  # pyarrow's own errors for a damaged file
        raise InputError(f"{path} is not a readable Parquet file; delete it and rerun the workflow.") from None


def ranges(n_windows: int, shard_windows: int | None) -> list[tuple[int, int]]:
    """[start, stop) ranges of at most `shard_windows` windows (None: one range) covering
    0..n_windows-1, in window order; none for 0 windows."""
    size = shard_windows or max(n_windows, 1)
    return [(start, min(start + size, n_windows)) for start in range(0, n_windows, size)]


def planned_windows(rows: int, seq_len: int, pred_len: int, limit_windows: int | None) -> int:
    """Windows of one (horizon, split), at most limit_windows: the one place that counts them for
    planning and gathering (0 when the split is shorter than seq_len + pred_len)."""
    count = window_count(rows, seq_len, pred_len)
    return count if limit_windows is None else min(count, limit_windows)


def no_windows(split: str, rows: int, seq_len: int, pred_len: int) -> InputError:
    """The one sentence, as an InputError to raise, for a split too short for a window at a horizon."""
    return InputError(f"pred_len {pred_len}: split {split} has {rows} rows, fewer than seq_len + pred_len = "
                      f"{seq_len + pred_len}; remove {pred_len} from pred_lens or use a longer file.")


def gather(shards: list[str], stats: list[str], out: str, stats_out: str, expected: int | None = None) -> None:
    """One embeddings file from its shards (in window order) and one stats file.

    Args:
        shards, stats: the range files, in window order.
        out, stats_out: the final files (written only when everything checks out).
        expected: the number of windows the current windows file holds for this horizon
            (planned_windows); a plan made from other data gives another count, and then
            no final file is written.

    Raises:
        InputError: a shard or its stats damaged since they were written (records.check_record), shards
            made with other settings, not covering 0..n-1, or not `expected` windows.
    """
    import torch  # here, not at the top: the Snakefile imports this module to plan, and torch is slow to load

    from .records import forget_record, read_json, read_tensors
    from .store import write_json, write_tensors

    parts = [read_tensors(path) for path in shards]
    shard_stats = [read_json(path) for path in stats]
    # What decides the embeddings must agree; the window range and the speed-only runtime
    # record (devices, placement, batch_tokens: settings.py) may differ from shard to shard.
    metas = [{key: value for key, value in meta.items() if key not in ("window_range", "runtime")}
             for _, meta in parts]
    for path, meta in zip(shards[1:], metas[1:]):
        if meta != metas[0]:
            odd = sorted(key for key in meta if meta[key] != metas[0].get(key))
            raise InputError(f"{path}: made with other settings than {shards[0]} ({', '.join(odd)}); delete the "
                             "shards of this horizon and split and rerun.")
    starts = torch.cat([tensors["window_start"] for tensors, _ in parts])
    if not torch.equal(starts, torch.arange(len(starts), dtype=starts.dtype)):
        raise InputError(f"{Path(out).parent}: the shards do not cover windows 0..{len(starts) - 1} in order; rerun.")
    if expected is not None and len(starts) != expected:
        raise InputError(f"{out}: the shards hold {len(starts)} windows but the windows file has {expected}; they "
                         "were planned from other data: rerun the workflow (the plan follows the current CSV).")
    runtimes = list(dict.fromkeys(meta.get("runtime", "{}") for _, meta in parts))  # distinct, in shard order
    metadata = metas[0] | {"window_range": json.dumps([0, len(starts)]), "shards": str(len(shards)),
                           "runtime": runtimes[0] if len(runtimes) == 1 else "[" + ", ".join(runtimes) + "]"}
    embeddings = torch.cat([tensors["embeddings"] for tensors, _ in parts])
    write_tensors(out, {"embeddings": embeddings, "window_start": starts}, metadata)
    write_json(stats_out, merge_stats(shard_stats))
    # The shards are temporary: Snakemake deletes them next, and their records must not outlive them
    # (left behind, they would keep the .shards folders that Snakemake removes once empty).
    for path in [*shards, *stats]:
        forget_record(path)


def merge_stats(stats: list[dict]) -> dict:
    """One stats record from the shards' records: sums of work and time, maxima of memory, rates
    over the summed time.

    Args:
        stats: the shards' stats JSON contents (extract_horizons'), at least one.
    Returns:
        The merged record, with "shards" (their number) and without "window_range".
    """

    merged = dict(stats[0])
    for key in ("windows", "tokens", "tokens_computed", "wall_s"):
        merged[key] = sum(shard_stats[key] for shard_stats in stats)
    merged["windows_per_s"] = merged["windows"] / merged["wall_s"]
    merged["tokens_per_s"] = merged["tokens"] / merged["wall_s"]
    merged["longest_prompt"] = max(shard_stats["longest_prompt"] for shard_stats in stats)
    merged["peak_memory_bytes"] = {device: max(shard_stats["peak_memory_bytes"].get(device, 0)
                                               for shard_stats in stats)
                                   for device in stats[0]["peak_memory_bytes"]}
    merged["shards"] = len(stats)
    merged.pop("window_range", None)
    return merged
