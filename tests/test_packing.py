"""Packing a GT and an HD prompt into one sequence, and the tree-shaped calibrated mask."""

import dataclasses
import numpy as np
import torch

from timekd_embed.lm import calibrated_mask
from timekd_embed.packing import distinct, pack, pad, share_head, unpacked

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


# Two variables of one window: the same 3 head tokens, then their own values.
GT_B = np.array([10, 11, 12, 16, 14, 15])
HD_B = np.array([10, 11, 12, 16, 21])


def test_the_tokens_all_sequences_begin_with_become_one_head():
    a, b = share_head([pack(GT, HD, TYPES_GT, TYPES_HD), pack(GT_B, HD_B, TYPES_GT, TYPES_HD)])
    assert a.head_ids is b.head_ids and a.head_ids.tolist() == [10, 11, 12]
    assert a.head_codes.tolist() == [0, 1, 1]
    assert a.ids.tolist() == [13, 14, 15, 20, 21] and a.positions.tolist() == [3, 4, 5, 3, 4]
    assert a.last == (2, 4)                              # indices move with the tokens
    assert b.ids.tolist() == [16, 14, 15, 16, 21] and b.segments.tolist() == [1, 1, 1, 2, 2]


def test_a_head_stops_where_codes_differ_and_leaves_every_last_token():
    other_types = np.array([0, 1, 0, 1, 0, 0], dtype=np.int8)
    a, _ = share_head([pack(GT, HD, TYPES_GT, TYPES_HD), pack(GT_B, HD_B, other_types, other_types)])
    assert a.head_ids.tolist() == [10, 11]
    single = share_head([unpacked(GT, TYPES_GT)])[0]
    assert single.head_ids.tolist() == [10, 11, 12, 13, 14] and single.ids.tolist() == [15]
    assert single.last == (0, 0)


def test_identical_sequences_are_computed_once_but_not_across_heads():
    one = share_head([pack(GT, HD, TYPES_GT, TYPES_HD)] * 2)
    other_head = [dataclasses.replace(s, head_ids=s.head_ids + 1) for s in one]   # another window's head
    unique, inverse = distinct(one + other_head)
    assert len(unique) == 2 and inverse.tolist() == [0, 0, 1, 1]


def test_a_sequence_sees_its_whole_head_with_calibration():
    a, b = share_head([pack(GT, HD, TYPES_GT, TYPES_HD), pack(GT_B, HD_B, TYPES_GT, TYPES_HD)])
    batch = pad([a, b])
    assert batch["head_of"].tolist() == [0, 0] and batch["head_ids"].tolist() == [[10, 11, 12]]
    of = batch["head_of"]
    mask = calibrated_mask(batch["codes"], batch["segments"], torch.float32,
                           torch.cat([batch["head_codes"][of], batch["codes"]], 1),
                           torch.cat([batch["head_segments"][of], batch["segments"]], 1))[0, 0]
    full = calibrated_mask(*(pad([pack(GT, HD, TYPES_GT, TYPES_HD)])[k] for k in ("codes", "segments")),
                           torch.float32)[0, 0]
    assert torch.equal(mask, full[3:])                 # the rows after the head, all keys: as before
