"""How sizes and durations read in every report, log line and plan-time estimate: one format each."""

from __future__ import annotations


def gib(size: float | None) -> str:
    """Bytes as GiB with two decimals ("1.63 GiB"); "-" for an unknown size."""
    return "-" if size is None else f"{size / 2**30:.2f} GiB"


def duration(seconds: float) -> str:
    """A duration as a person reads it: "45 s", "35 min", "6 h 54 min", "165.6 days"."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        hours, rest = divmod(round(seconds), 3600)
        return f"{hours} h {rest // 60:02d} min"
    return f"{seconds / 86400:.1f} days"
