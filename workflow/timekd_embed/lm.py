"""The frozen teacher's forward: the calibrated mask over a trie batch, last-token states
(docs/teacher.md sections 3-4). Loading and its checks are checkpoint.py's.

One forward for every family, the nanoGPT way: one block function, written over the model's
own modules (so it is HF's arithmetic, norm for norm and projection for projection), with the
family's differences as small named steps in its `Layout`: where the blocks, norms and
projections are, how queries, keys and values come out of the attention module, and whether
positions enter as learned embeddings (GPT-2) or as rotary embeddings of q and k (Llama,
Mistral, Qwen2, Phi-3; each family's own apply_rotary_pos_emb, so partial rotary and rope
scaling are theirs too). transformers' registrable attention functions were the other way:
they see one block's own keys only, while a trie level attends to its ancestors' keys and
values, which this block function concatenates before attending; so the block is ours.
Grouped-query attention keeps keys and values at their own (fewer) heads, in the trie's kept
prefixes too; SDPA reads them with enable_gqa, as transformers' SDPA path does.

References: Liu et al., "TimeKD", ICDE 2025 (the calibrated language model); the published
clm.py (the -100 calibration between language and time-series tokens) and store_emb.py
(the last token's final-norm state of every prompt).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers.models.llama import modeling_llama
from transformers.models.mistral import modeling_mistral
from transformers.models.phi3 import modeling_phi3
from transformers.models.qwen2 import modeling_qwen2

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


def _fused_qkv(attn, h: torch.Tensor) -> tuple[torch.Tensor, ...]:                      # GPT-2
    return attn.c_attn(h).split(h.shape[-1], dim=2)                                     # (R, T, d) each


def _separate_qkv(attn, h: torch.Tensor) -> tuple[torch.Tensor, ...]:                   # Llama, Mistral, Qwen2
    return attn.q_proj(h), attn.k_proj(h), attn.v_proj(h)                      # (R, T, H*hd), (R, T, Hkv*hd) x 2


def _phi3_qkv(attn, h: torch.Tensor) -> tuple[torch.Tensor, ...]:                       # Phi-3: one fused projection
    q_size = attn.config.num_attention_heads * attn.head_dim
    kv_size = attn.num_key_value_heads * attn.head_dim
    return attn.qkv_proj(h).split([q_size, kv_size, kv_size], dim=2)


@dataclass(frozen=True)
class Layout:
    """Where the forward finds one family's modules, and the steps that differ."""
    blocks: str                      # the model's decoder blocks
    token_embedding: str
    position_embedding: str | None   # learned absolute positions (GPT-2); None: rotary
    final_norm: str
    attention: str                   # the block's attention module
    norms: tuple[str, str]           # the block's norms before attention and before the MLP
    out_proj: str                    # the attention module's output projection
    qkv: Callable                    # attention module, normed states (R, T, d) -> q, k, v (R, T, heads * hd)
    rotary: Callable | None          # the family's apply_rotary_pos_emb(q, k, cos, sin)


_ROTARY = dict(blocks="layers", token_embedding="embed_tokens", position_embedding=None, final_norm="norm",
               attention="self_attn", norms=("input_layernorm", "post_attention_layernorm"), out_proj="o_proj")
LAYOUTS = {
    "gpt2": Layout("h", "wte", "wpe", "ln_f", "attn", ("ln_1", "ln_2"), "c_proj", _fused_qkv, None),
    "llama": Layout(**_ROTARY, qkv=_separate_qkv, rotary=modeling_llama.apply_rotary_pos_emb),
    "mistral": Layout(**_ROTARY, qkv=_separate_qkv, rotary=modeling_mistral.apply_rotary_pos_emb),
    "qwen2": Layout(**_ROTARY, qkv=_separate_qkv, rotary=modeling_qwen2.apply_rotary_pos_emb),
    "phi3": Layout(**_ROTARY, qkv=_phi3_qkv, rotary=modeling_phi3.apply_rotary_pos_emb),
}


def layout_of(model: torch.nn.Module) -> Layout:
    """The Layout of a loaded base model (its config's model_type; families.py lists the supported ones)."""
    return LAYOUTS[model.config.model_type]


def decoder_blocks(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The model's decoder blocks, in order."""
    return getattr(model, layout_of(model).blocks)


def _embed(model, layout: Layout, level) -> torch.Tensor:
    """The level's input states (R, T, d): token embeddings, plus learned positions where the family has them."""
    x = getattr(model, layout.token_embedding)(level.ids)
    if layout.position_embedding is not None:
        x = x + getattr(model, layout.position_embedding)(level.positions)
    return x


def _rotations(model, layout: Layout, states: list[torch.Tensor], batch: TrieBatch) -> list[tuple | None]:
    """Per level, the rotary (cos, sin) of its positions, each (R, T, rotary dims); None without rotary."""
    if layout.rotary is None:
        return [None] * len(states)
    return [model.rotary_emb(x, level.positions) for x, level in zip(states, batch.levels)]


def _heads(t: torch.Tensor, head_dim: int) -> torch.Tensor:
    """(R, n, heads * hd) -> (R, heads, n, hd)."""
    return t.view(t.shape[0], t.shape[1], -1, head_dim).transpose(1, 2)


def _qkv(layout: Layout, attn, h: torch.Tensor, rotation: tuple | None) -> tuple[torch.Tensor, ...]:
    """Queries (R, H, T, hd), keys and values (R, Hkv, T, hd) of the normed states h (R, T, d)."""
    q, k, v = (_heads(t, attn.head_dim) for t in layout.qkv(attn, h))
    if rotation is not None:
        q, k = layout.rotary(q, k, *rotation)
    return q, k, v


def _attend(layout: Layout, attn, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
            mask: torch.Tensor) -> torch.Tensor:
    """Attention output (R, Tq, d) with an additive mask (R, 1, Tq, Tk); grouped keys read as they are."""
    # A mask of another dtype than the queries' makes some fused kernels (cuDNN) wrong or slow.
    assert mask.dtype == q.dtype, f"attention mask dtype {mask.dtype} differs from the queries' {q.dtype}"
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=attn.scaling,
                                       enable_gqa=q.shape[1] != k.shape[1])                  # (R, H, Tq, hd)
    return getattr(attn, layout.out_proj)(y.transpose(1, 2).flatten(2))


def block_forward(layout: Layout, block, states: list[torch.Tensor], batch: TrieBatch, masks: list[torch.Tensor],
                  rotations: list[tuple | None], kept_only: bool = False) -> list[torch.Tensor | None]:
    """One decoder block over every level of a trie batch, parents first (dropout is off in eval mode).

    Args:
        layout: the family's Layout; block: one of its decoder blocks.
        states: per level (R, T, d), the residual stream entering the block.
        batch, masks, rotations: the levels, their masks (level_masks) and rotary (cos, sin), on the block's device.
        kept_only: the last block: leaves run queries, output projection and MLP on their
            kept token only; inner nodes only give their keys and values to their children.
    Returns:
        Per level the residual stream leaving the block: (R, T, d); with kept_only, (R, 1, d)
        for leaves and None for inner nodes.
    """
    attn = getattr(block, layout.attention)
    norm_attention, norm_mlp = (getattr(block, name) for name in layout.norms)
    has_children = {level.parent for level in batch.levels}
    keys, values, out = [], [], []
    for index, (level, x, mask, rotation) in enumerate(zip(batch.levels, states, masks, rotations)):
        kept = level.last[:, None] if kept_only and level.last is not None else None        # (R, 1)
        q, k, v = _qkv(layout, attn, norm_attention(x), rotation)    # q (R, H, T, hd); k, v (R, Hkv, T, hd)
        if level.parent >= 0:                                     # the ancestors' keys and values first
            k = torch.cat([keys[level.parent][level.parent_rows], k], 2)                    # (R, Hkv, K, hd)
            v = torch.cat([values[level.parent][level.parent_rows], v], 2)
        keys.append(k if index in has_children else None)
        values.append(v if index in has_children else None)
        if kept_only and kept is None:
            out.append(None)
            continue
        if kept is not None:
            rows = torch.arange(len(x), device=x.device)
            q = q[rows[:, None], :, kept].transpose(1, 2)                                     # (R, H, 1, hd)
            x, mask = x[rows[:, None], kept], mask[rows, :, level.last].unsqueeze(2)        # (R, 1, d), (R, 1, 1, K)
        x = x + _attend(layout, attn, q, k, v, mask)
        out.append(x + block.mlp(norm_mlp(x)))
    return out


@torch.inference_mode()
def first_block_attention(model, batch: TrieBatch, device: torch.device) -> tuple[torch.Tensor, ...]:
    """The first block's attention inputs of the batch's widest leaf level (most query x key pairs),
    exactly as block_forward builds them: for checks of the attention kernels (preflight).

    Returns:
        q (R, H, T, hd), k and v (R, Hkv, K, hd) (the ancestors' keys, then the level's own), the
        mask (R, 1, T, K) in the model's dtype.
    """
    layout, batch = layout_of(model), batch.to(device)
    block, masks = decoder_blocks(model)[0], level_masks(batch, model.dtype)
    attn, norm = getattr(block, layout.attention), getattr(block, layout.norms[0])
    states = [_embed(model, layout, level) for level in batch.levels]
    keys, values, widest = [], [], None
    for index, (level, rotation) in enumerate(zip(batch.levels, _rotations(model, layout, states, batch))):
        q, k, v = _qkv(layout, attn, norm(states[index]), rotation)
        if level.parent >= 0:
            k = torch.cat([keys[level.parent][level.parent_rows], k], 2)
            v = torch.cat([values[level.parent][level.parent_rows], v], 2)
        keys.append(k)
        values.append(v)
        if level.last is not None and (widest is None or masks[index].numel() > widest[3].numel()):
            widest = (q, k, v, masks[index])
    return widest


def _first_non_finite(states: list[torch.Tensor | None], block: int) -> None:
    for level, x in enumerate(states):
        if x is not None and not torch.isfinite(x).all():
            bad = (~torch.isfinite(x)).flatten(1).any(1)
            raise NonFiniteState(block, level, int(bad.nonzero()[0, 0]))


def _forward(model, batch: TrieBatch, check_each_block: bool) -> torch.Tensor:
    layout, blocks = layout_of(model), decoder_blocks(model)
    masks = level_masks(batch, model.dtype)                       # per level (R, 1, T, K)
    states = [_embed(model, layout, level) for level in batch.levels]                         # (R, T, d)
    rotations = _rotations(model, layout, states, batch)          # per level (cos, sin) (R, T, rotary dims)
    for index, block in enumerate(blocks):
        here = getattr(block, layout.norms[0]).weight.device      # model_parallel: blocks on several devices
        batch, masks, states = batch.to(here), [mask.to(here) for mask in masks], [x.to(here) for x in states]
        rotations = [None if r is None else (r[0].to(here), r[1].to(here)) for r in rotations]

        states = block_forward(layout, block, states, batch, masks, rotations, kept_only=index == len(blocks) - 1)
        if check_each_block:
            _first_non_finite(states, index)
    norm = getattr(model, layout.final_norm)
    kept = torch.cat([x[:, 0] for x in states if x is not None])                           # (leaves, d)
    return norm(kept.to(norm.weight.device)).float()


@torch.inference_mode()
def last_token_states(model, batch: TrieBatch, device: torch.device) -> torch.Tensor:
    """Final-norm hidden states of the leaves' last tokens: (leaves, d) float32, in batch.kept order.

    The family's forward (equal to its transformers model's, tests/test_lm.py) over a trie batch:
    each node's keys and values are computed once and read by all its descendants, and the
    last block runs queries, output projection and MLP on the kept tokens only. With layers on
    several devices (accelerate device map) each block gets its inputs on its device.

    Args:
        model: a loaded base model in eval mode (checkpoint.load_lm).
        batch: packing.batches output.
        device: where the token embeddings are (devices.input_device).
    Raises:
        NonFiniteState: a state became inf or NaN (fp16 overflows beyond 65,504); costs one
            reduction on the kept states, and a second pass, checking every block, only then.
    """
    batch = batch.to(device)
    kept = _forward(model, batch, check_each_block=False)
    if not torch.isfinite(kept).all():
        _forward(model, batch, check_each_block=True)             # raises, naming the first block
        raise NonFiniteState(len(decoder_blocks(model)), -1, int((~torch.isfinite(kept)).any(1).nonzero()[0, 0]))
    return kept
