"""The frozen GPT-2 teacher's forward: the calibrated mask over a trie batch, last-token states
(docs/teacher.md sections 3-4). Loading and its checks are checkpoint.py's.

References: Liu et al., "TimeKD", ICDE 2025 (the calibrated language model); the published
clm.py (the -100 calibration between language and time-series tokens) and store_emb.py
(the last token's final-layer-norm state of every prompt).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import GPT2Model

from .packing import TrieBatch

CALIBRATION = -100.0  # added between language and time-series tokens, both directions
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class NonFiniteState(ArithmeticError):
    """A hidden state became inf or NaN: in `block` (counted from 0), at row `row` of level
    `level` of the batch; block n_layer with level -1: the final layer norm, at kept state `row`."""

    def __init__(self, block: int, level: int, row: int):
        super().__init__(f"non-finite hidden state in block {block}, level {level}, row {row}")
        self.block, self.level, self.row = block, level, row


def calibrated_mask(codes: torch.Tensor, valid: torch.Tensor, key_codes: torch.Tensor, key_valid: torch.Tensor,
                    dtype: torch.dtype) -> torch.Tensor:
    """Additive attention mask (R, 1, T, K) of one level of trie nodes (packing.py).

    Args:
        codes, valid: (R, T) int8 / bool, the level's own tokens (the queries): type code
            (1 time-series, 0 language, -1 untyped: padding, or beyond the type list the
            published mask reads) and whether the token is real (not padding).
        key_codes, key_valid: (R, K) the keys: the ancestors' K - T tokens, then the own T.
        dtype: the model's dtype (the mask must match the queries').
    Returns:
        (R, 1, T, K) of `dtype`: query i may see every real ancestor key and its own real keys
        j <= i; a visible pair gets -100 when one is language and the other time-series
        (TimeKD's calibrated attention, Liu et al. ICDE 2025; published clm.py), else 0; an
        invisible pair gets the dtype's minimum.
    """
    ts, lang, key_ts, key_lang = codes == 1, codes == 0, key_codes == 1, key_codes == 0
    cross = (lang[:, :, None] & key_ts[:, None, :]) | (ts[:, :, None] & key_lang[:, None, :])   # (R, T, K)
    T, K = codes.shape[1], key_codes.shape[1]
    causal = torch.ones(T, K, dtype=torch.bool, device=codes.device).tril(K - T)                  # ancestors + j <= i
    mask = torch.where(cross, CALIBRATION, 0.0).to(dtype)
    return mask.masked_fill_(~(causal & key_valid[:, None, :]), torch.finfo(dtype).min).unsqueeze(1)


def level_masks(batch: TrieBatch, dtype: torch.dtype) -> list[torch.Tensor]:
    """Each level's mask, its keys being its ancestors' tokens then its own (calibrated_mask).

    Args:
        batch: a packing.TrieBatch, parents before children.
        dtype: the model's dtype.
    Returns:
        Per level, (R, 1, T, K) of `dtype`.
    """
    key_codes, key_valid, masks = [], [], []
    for level in batch.levels:
        codes, valid = level.codes, level.valid
        if level.parent >= 0:
            codes = torch.cat([key_codes[level.parent][level.parent_rows], codes], 1)              # (R, K)
            valid = torch.cat([key_valid[level.parent][level.parent_rows], valid], 1)
        key_codes.append(codes)
        key_valid.append(valid)
        masks.append(calibrated_mask(level.codes, level.valid, codes, valid, dtype))
    return masks


def _qkv(attn, x: torch.Tensor, rows: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
    """Queries, keys, values (R, H, *, hd) of the layer-normed x (R, T, d); `rows` (R, r) keeps r queries."""
    R, _, d = x.shape
    q, k, v = attn.c_attn(x).split(d, dim=2)                                  # (R, T, d) each
    if rows is not None:
        q = q[torch.arange(R, device=x.device)[:, None], rows]                 # (R, r, d)

    def split_heads(t: torch.Tensor) -> torch.Tensor:                           # (R, n, d) -> (R, H, n, hd)
        return t.view(R, t.shape[1], attn.num_heads, attn.head_dim).transpose(1, 2)

    return split_heads(q), split_heads(k), split_heads(v)


def _attend(attn, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """GPT-2 attention output (R, Tq, d) with an additive mask (R, 1, Tq, Tk)."""
    # A mask of another dtype than the queries' makes some fused kernels (cuDNN) wrong or slow.
    assert mask.dtype == q.dtype, f"attention mask dtype {mask.dtype} differs from the queries' {q.dtype}"
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=attn.scaling)   # (R, H, Tq, hd)
    return attn.c_proj(y.transpose(1, 2).flatten(2))


def block_forward(block, states: list[torch.Tensor], batch: TrieBatch, masks: list[torch.Tensor],
                  kept_only: bool = False) -> list[torch.Tensor | None]:
    """One GPT-2 block over every level of a trie batch, parents first.

    Args:
        block: a GPT2Block (ln_1, attn, ln_2, mlp); dropout is off in eval mode.
        states: per level (R, T, d), the residual stream entering the block.
        batch, masks: the levels and their masks (level_masks), on the block's device.
        kept_only: the last block: leaves run queries, output projection and MLP on their
            kept token only; inner nodes only give their keys and values to their children.
    Returns:
        Per level the residual stream leaving the block: (R, T, d); with kept_only, (R, 1, d)
        for leaves and None for inner nodes.
    """
    has_children = {level.parent for level in batch.levels}
    keys, values, out = [], [], []
    for index, (level, x, mask) in enumerate(zip(batch.levels, states, masks)):
        kept = level.last[:, None] if kept_only and level.last is not None else None        # (R, 1)
        q, k, v = _qkv(block.attn, block.ln_1(x), kept)          # q (R, H, T or 1, hd); k, v (R, H, T, hd)
        if level.parent >= 0:                                     # the ancestors' keys and values first
            k = torch.cat([keys[level.parent][level.parent_rows], k], 2)                    # (R, H, K, hd)
            v = torch.cat([values[level.parent][level.parent_rows], v], 2)
        keys.append(k if index in has_children else None)
        values.append(v if index in has_children else None)
        if kept_only and kept is None:
            out.append(None)
            continue
        if kept is not None:
            rows = torch.arange(len(x), device=x.device)
            x, mask = x[rows[:, None], kept], mask[rows, :, level.last].unsqueeze(2)        # (R, 1, d), (R, 1, 1, K)
        x = x + _attend(block.attn, q, k, v, mask)
        out.append(x + block.mlp(block.ln_2(x)))
    return out


@torch.inference_mode()
def first_block_attention(model: GPT2Model, batch: TrieBatch, device: torch.device) -> tuple[torch.Tensor, ...]:
    """The first block's attention inputs of the batch's widest leaf level (most query x key pairs),
    exactly as block_forward builds them: for checks of the attention kernels (preflight).

    Args:
        model: GPT2Model in eval mode; batch: a packing.TrieBatch with a leaf level; device: model.wte's.
    Returns:
        q (R, H, T, hd), k and v (R, H, K, hd) (the ancestors' keys, then the level's own), the
        mask (R, 1, T, K) in the model's dtype.
    """
    batch = batch.to(device)
    block, masks = model.h[0], level_masks(batch, model.dtype)
    keys, values, widest = [], [], None
    for index, level in enumerate(batch.levels):
        _, k, v = q_k_v = _qkv(block.attn, block.ln_1(model.wte(level.ids) + model.wpe(level.positions)))
        if level.parent >= 0:
            k = torch.cat([keys[level.parent][level.parent_rows], k], 2)
            v = torch.cat([values[level.parent][level.parent_rows], v], 2)
        keys.append(k)
        values.append(v)
        if level.last is not None and (widest is None or masks[index].numel() > widest[3].numel()):
            widest = (q_k_v[0], k, v, masks[index])
    return widest


def _first_non_finite(states: list[torch.Tensor | None], block: int) -> None:
    for level, x in enumerate(states):
        if x is not None and not torch.isfinite(x).all():
            bad = (~torch.isfinite(x)).flatten(1).any(1)
            raise NonFiniteState(block, level, int(bad.nonzero()[0, 0]))


def _forward(model: GPT2Model, batch: TrieBatch, check_each_block: bool) -> torch.Tensor:
    masks = level_masks(batch, model.dtype)                       # per level (R, 1, T, K)
    states = [model.wte(level.ids) + model.wpe(level.positions) for level in batch.levels]   # (R, T, d)
    for index, block in enumerate(model.h):
        here = block.ln_1.weight.device                           # model_parallel: blocks on several devices
        batch, masks, states = batch.to(here), [mask.to(here) for mask in masks], [x.to(here) for x in states]

        states = block_forward(block, states, batch, masks, kept_only=index == len(model.h) - 1)
        if check_each_block:
            _first_non_finite(states, index)
    kept = torch.cat([x[:, 0] for x in states if x is not None])                           # (leaves, d)
    return model.ln_f(kept.to(model.ln_f.weight.device)).float()


@torch.inference_mode()
def last_token_states(model: GPT2Model, batch: TrieBatch, device: torch.device) -> torch.Tensor:
    """Final-layer-norm hidden states of the leaves' last tokens: (leaves, d) float32.

    GPT-2's forward (the nanoGPT way: one block function for every block, written over the
    model's own modules; equal to GPT2Model's, tests/test_lm.py) over a trie batch: each
    node's keys and values are computed once and read by all its descendants, and the last
    block runs queries, output projection and MLP on the kept tokens only. With layers on
    several devices (accelerate device map) each block gets its inputs on its device.

    Args:
        model: GPT2Model in eval mode.
        batch: packing.batches output.
        device: where the token embeddings are (devices.input_device).
    Returns:
        (leaves, d) float32, in batch.kept order.
    Raises:
        NonFiniteState: a state became inf or NaN (fp16 overflows beyond 65,504); costs one
            reduction on the kept states, and a second pass, checking every block, only then.
    """
    batch = batch.to(device)
    kept = _forward(model, batch, check_each_block=False)
    if not torch.isfinite(kept).all():
        _forward(model, batch, check_each_block=True)             # raises, naming the first block
        raise NonFiniteState(len(model.h), -1, int((~torch.isfinite(kept)).any(1).nonzero()[0, 0]))
    return kept
