"""Which windows the fp32 parity check recomputes: a deterministic sample, known at plan time.

Light on purpose (numpy only): the Snakefile plans the sample sizes for the report's
captions, and parity.py draws the same sample when it runs.
"""

from __future__ import annotations

import numpy as np


def sample_sizes(available: dict[str, int], total: int) -> dict[str, int]:
    """Windows sampled per split, {split: min(its share of `total`, its windows)}: `total` (config
    key parity.windows) shared out as evenly as possible, the first splits getting the remainder."""
    splits = list(available)
    share = {split: total // len(splits) + (position < total % len(splits)) for position, split in enumerate(splits)}
    return {split: min(share[split], available[split]) for split in splits}


def sample_windows(available: dict[str, int], total: int) -> dict[str, np.ndarray]:
    """{split: sorted, distinct int64 window indices}, `total` of them spread evenly over the splits
    (sample_sizes) and within each over its windows; a split's first and last window are always among
    them when it gets two or more."""
    sizes = sample_sizes(available, total)
    # Evenly spaced over 0..n-1: with at most n points the steps are >= 1, so rounding keeps them distinct.
    return {split: np.linspace(0, available[split] - 1, sizes[split]).round().astype(np.int64)
            for split in available}

