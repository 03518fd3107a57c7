"""Window ranges of one (horizon, split), planned before the windows exist, and their gathering.

Each range is a separate Snakemake job, so a killed run redoes only the missing ranges
and a cluster can run many at once. Gathering concatenates them in window order.
"""

from __future__ import annotations

import json
from pathlib import Path

from .errors import InputError
from .windows import read_windows, split_borders, window_count


def csv_rows(path: str | Path) -> int:
    """Data rows of a CSV (lines after the header, trailing blank lines ignored), without parsing it."""
    lines = Path(path).read_bytes().splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    return max(0, len(lines) - 1)


def split_rows(csv: str | Path, windows: dict[str, str], seq_len: int, layout: str) -> dict[str, int]:
    """Rows per split: from the windows files when they exist (results copied without the CSV), else the CSV."""
    if all(Path(p).exists() for p in windows.values()):
        return {s: len(read_windows(p).rows) for s, p in windows.items()}
    borders = split_borders(csv_rows(csv), seq_len, layout, str(csv))
    return {s: end - start for s, (start, end) in borders.items()}


def ranges(n_windows: int, shard_windows: int | None) -> list[tuple[int, int]]:
    """[start, stop) ranges of at most `shard_windows` windows covering 0..n_windows-1."""
    size = shard_windows or max(n_windows, 1)
    return [(a, min(a + size, n_windows)) for a in range(0, n_windows, size)]


def planned_windows(rows: int, seq_len: int, pred_len: int, limit_windows: int | None) -> int:
    n = window_count(rows, seq_len, pred_len)
    return n if limit_windows is None else min(n, limit_windows)


def gather(shards: list[str], stats: list[str], out: str, stats_out: str) -> None:
    """One embeddings file from its shards (in window order) and one stats file."""
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
