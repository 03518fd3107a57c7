"""Prompts -> padded model inputs: GT and HD of one variable packed into one sequence.

The GT and HD prompts of a (window, variable) share everything up to the end of the input
values (about 260 of their 280-400 and 230-330 tokens). Packing computes that prefix
once: one sequence [shared prefix | GT continuation | HD continuation] with explicit
position ids and a tree-shaped causal mask (each continuation sees the prefix and itself,
never the other continuation). This is exact, not an approximation: every query sees the
same keys, at the same positions, with the same calibration, as in its own prompt.

Calibration: each token carries the type code its prompt's mask reads at its position
(1 time-series, 0 language, -1 none). In `reference` fidelity those codes are borrowed
from another variable's prompts, so the prefix is shared only as far as the GT and HD
codes agree as well as the tokens.

One level up, the N sequences of a window all begin with the same head ("From <t1> to
<t2>, the values were <", about 26 tokens): `share_head` moves it out, so that the model
computes it once per window and every sequence of the window attends to its keys.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

SHARED, GT, HD = 0, 1, 2  # segment ids; -1 marks padding


@dataclass(frozen=True)
class Packed:
    ids: np.ndarray        # (T,) int64, the tokens after the head
    codes: np.ndarray      # (T,) int8, type code per token
    segments: np.ndarray   # (T,) int8
    positions: np.ndarray  # (T,) int64, counted from the head's first token
    last: tuple[int, int]  # indices of the GT and HD prompts' last tokens
    head_ids: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))  # (h,) tokens in front, shared
    head_codes: np.ndarray = field(default_factory=lambda: np.empty(0, np.int8))  # (h,) their type codes


def type_codes(source: np.ndarray, length: int) -> np.ndarray:
    """The codes a prompt of `length` tokens reads from a (possibly borrowed) type list."""
    codes = np.full(length, -1, dtype=np.int8)
    n = min(length, len(source))
    codes[:n] = source[:n]
    return codes


def pack(gt: np.ndarray, hd: np.ndarray, gt_types: np.ndarray, hd_types: np.ndarray) -> Packed:
    """One sequence for a GT and an HD prompt; *_types are the type lists their masks use."""
    g_codes, h_codes = type_codes(gt_types, len(gt)), type_codes(hd_types, len(hd))
    n = min(len(gt), len(hd)) - 1          # each continuation keeps at least its last token
    same = (gt[:n] == hd[:n]) & (g_codes[:n] == h_codes[:n])
    k = n if same.all() else int(np.argmin(same))
    return Packed(
        ids=np.concatenate([gt, hd[k:]]),
        codes=np.concatenate([g_codes, h_codes[k:]]),
        segments=np.concatenate([np.full(k, SHARED), np.full(len(gt) - k, GT), np.full(len(hd) - k, HD)]).astype(np.int8),
        positions=np.concatenate([np.arange(len(gt)), np.arange(k, len(hd))]),
        last=(len(gt) - 1, len(gt) + len(hd) - k - 1),
    )


def unpacked(ids: np.ndarray, types: np.ndarray) -> Packed:
    """A single prompt as a Packed sequence (used by tests to compare with packing)."""
    n = len(ids)
    return Packed(ids, type_codes(types, n), np.zeros(n, np.int8), np.arange(n), (n - 1, n - 1))


def share_head(seqs: list[Packed]) -> list[Packed]:
    """Move the leading tokens all `seqs` agree on (ids and codes, inside each one's shared
    prefix) into one head object they reference; each keeps its continuations."""
    branch = lambda s: np.append(np.flatnonzero(s.segments != SHARED), len(s.ids) - 1)[0]  # or keep the last token
    n = min(int(branch(s)) for s in seqs)
    ids, codes = np.stack([s.ids[:n] for s in seqs]), np.stack([s.codes[:n] for s in seqs])
    agree = ((ids == ids[0]) & (codes == codes[0])).all(axis=0)
    h = n if agree.all() else int(np.argmin(agree))
    head_ids, head_codes = seqs[0].ids[:h], seqs[0].codes[:h]
    return [Packed(s.ids[h:], s.codes[h:], s.segments[h:], s.positions[h:], (s.last[0] - h, s.last[1] - h),
                   head_ids, head_codes) for s in seqs]


def distinct(seqs: list[Packed]) -> tuple[list[Packed], np.ndarray]:
    """The distinct sequences, and for each input its index among them.

    Variables whose truncated values agree over the whole window (rain gauges at 0, say)
    give identical sequences, hence identical states: about 3% of the weather sequences.
    """
    index: dict[tuple, int] = {}
    key = lambda s: tuple(a.tobytes() for a in (s.head_ids, s.head_codes, s.ids, s.codes, s.segments))
    inverse = np.array([index.setdefault(key(s), len(index)) for s in seqs], dtype=np.int64)
    first = np.unique(inverse, return_index=True)[1]
    return [seqs[k] for k in first], inverse


def batches(lengths: np.ndarray, token_budget: int) -> list[np.ndarray]:
    """Sequence indices grouped longest-first so that each batch's count x padded length <= budget."""
    order = np.argsort(-lengths, kind="stable")
    groups, k = [], 0
    while k < len(order):
        size = max(1, token_budget // int(lengths[order[k]]))
        groups.append(order[k:k + size])
        k += size
    return groups


def pad(seqs: list[Packed]) -> dict[str, torch.Tensor]:
    """Right-pad packed sequences into (B, T) tensors, their distinct heads into (H, h) ones.

    `last` is (B, 2); `head_of` (B,) says which head row each sequence follows. Heads have
    segment 0 (shared) and positions from 0; padding has segment -1. At least one head
    column, so that shapes never become empty.
    """
    T = max(len(s.ids) for s in seqs)
    out = {"ids": np.zeros((len(seqs), T), np.int64), "codes": np.full((len(seqs), T), -1, np.int8),
           "segments": np.full((len(seqs), T), -1, np.int8), "positions": np.zeros((len(seqs), T), np.int64)}
    for b, s in enumerate(seqs):
        n = len(s.ids)
        out["ids"][b, :n], out["codes"][b, :n] = s.ids, s.codes
        out["segments"][b, :n], out["positions"][b, :n] = s.segments, s.positions
    rows: dict[tuple, int] = {}
    head_of = [rows.setdefault((s.head_ids.tobytes(), s.head_codes.tobytes()), len(rows)) for s in seqs]
    heads = [seqs[head_of.index(k)] for k in range(len(rows))]
    h = max(1, max(len(s.head_ids) for s in heads))
    out |= {"head_ids": np.zeros((len(heads), h), np.int64), "head_codes": np.full((len(heads), h), -1, np.int8),
            "head_segments": np.full((len(heads), h), -1, np.int8),
            "head_positions": np.broadcast_to(np.arange(h), (len(heads), h)).copy()}
    for k, s in enumerate(heads):
        n = len(s.head_ids)
        out["head_ids"][k, :n], out["head_codes"][k, :n], out["head_segments"][k, :n] = s.head_ids, s.head_codes, SHARED
    tensors = {k: torch.from_numpy(v) for k, v in out.items()}
    tensors["last"] = torch.tensor([s.last for s in seqs], dtype=torch.int64)
    tensors["head_of"] = torch.tensor(head_of, dtype=torch.int64)
    return tensors
