"""Packing a GT and an HD prompt into one sequence, and the tree-shaped calibrated mask."""

import numpy as np
import torch

from timekd_embed.lm import calibrated_mask
from timekd_embed.packing import pack, pad

GT = np.array([10, 11, 12, 13, 14, 15])
HD = np.array([10, 11, 12, 20, 21])
TYPES_GT = np.array([0, 1, 1, 1, 0, 0], dtype=np.int8)
TYPES_HD = np.array([0, 1, 1, 0, 0], dtype=np.int8)


def test_the_shared_prefix_is_stored_once_with_both_continuations():
    p = pack(GT, HD, TYPES_GT, TYPES_HD)
    assert p.ids.tolist() == [10, 11, 12, 13, 14, 15, 20, 21]
    assert p.positions.tolist() == [0, 1, 2, 3, 4, 5, 3, 4]
    assert p.segments.tolist() == [0, 0, 0, 1, 1, 1, 2, 2]
    assert p.codes.tolist() == [0, 1, 1, 1, 0, 0, 0, 0]
    assert p.last == (5, 7)


def test_borrowed_types_that_disagree_end_the_shared_prefix():
    # Reference fidelity: same tokens, but the masks read different type lists from position 1.
    p = pack(GT, HD, TYPES_GT, np.array([0, 0, 1], dtype=np.int8))
    assert p.segments.tolist() == [0, 1, 1, 1, 1, 1, 2, 2, 2, 2]
    assert p.positions.tolist() == [0, 1, 2, 3, 4, 5, 1, 2, 3, 4]
    assert p.codes.tolist() == [0, 1, 1, 1, 0, 0, 0, 1, -1, -1]   # beyond the borrowed list: untyped


def test_each_continuation_sees_the_prefix_and_itself_only():
    batch = pad([pack(GT, HD, TYPES_GT, TYPES_HD)])
    mask = calibrated_mask(batch["codes"], batch["segments"], torch.float32)[0, 0]
    visible = (mask > torch.finfo(torch.float32).min).int()
    expected = torch.tensor([
        [1, 0, 0, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0, 0, 0],
        [1, 1, 1, 1, 0, 0, 0, 0],
        [1, 1, 1, 1, 1, 0, 0, 0],
        [1, 1, 1, 1, 1, 1, 0, 0],
        [1, 1, 1, 0, 0, 0, 1, 0],   # HD continuation: prefix + itself, never the GT continuation
        [1, 1, 1, 0, 0, 0, 1, 1],
    ])
    assert torch.equal(visible, expected)
    assert mask[1, 0] == -100 and mask[6, 1] == -100 and mask[6, 0] == 0   # language <-> time-series only
