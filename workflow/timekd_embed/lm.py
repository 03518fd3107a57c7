"""The frozen GPT-2 teacher: loading, the calibrated mask, last-token states (spec sections 3-4)."""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import GPT2Config, GPT2Model, GPT2TokenizerFast

from .errors import InputError

log = logging.getLogger(__name__)

CALIBRATION = -100.0  # added between language and time-series tokens, both directions
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


FOLDER_FILES = "config.json, model.safetensors, vocab.json, merges.txt"


def _local(name_or_path: str) -> Path | None:
    """The model folder, or None for a hub id; a folder-like path that does not exist is an error."""
    path = Path(name_or_path)
    if path.exists():
        return path
    if path.is_absolute() or name_or_path.startswith("."):
        raise InputError(f"model folder {path} (config key model.name_or_path) does not exist; point it at a "
                         f"GPT-2 folder with {FOLDER_FILES}, or at a hub id such as gpt2.")
    return None


@contextmanager
def _from_hub(name_or_path: str, revision: str | None):
    """A model that cannot be loaded (hub offline, unknown id or revision, damaged file): one sentence."""
    try:
        yield
    except (OSError, ValueError) as exc:  # what transformers raises for files it cannot fetch or parse
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if _local(name_or_path) is not None:
            raise InputError(f"model folder {name_or_path} cannot be loaded ({first}); check its files "
                             f"({FOLDER_FILES}).") from None
        raise InputError(f"model {name_or_path!r} (config key model.name_or_path, revision {revision or 'default'}) "
                         f"is no local folder and could not be loaded from the model hub ({first}); fix the id, "
                         f"allow network access for the first run, or point it at a local folder with "
                         f"{FOLDER_FILES}.") from None


def load_tokenizer(name_or_path: str, revision: str | None = None) -> GPT2TokenizerFast:
    local = _local(name_or_path)
    if local is not None:
        missing = [f for f in ("vocab.json", "merges.txt") if not (local / f).is_file()]
        if missing:
            raise InputError(f"model folder {local} lacks {', '.join(missing)}; put the GPT-2 tokenizer files there.")
    with _from_hub(name_or_path, revision):
        return GPT2TokenizerFast.from_pretrained(name_or_path, revision=revision)


def load_config(name_or_path: str, revision: str | None = None) -> GPT2Config:
    local = _local(name_or_path)
    if local is not None and not (local / "config.json").is_file():
        raise InputError(f"model folder {local} has no config.json; point model.name_or_path at a GPT-2 model folder.")
    with _from_hub(name_or_path, revision):
        raw, _ = GPT2Config.get_config_dict(name_or_path, revision=revision)  # GPT2Config would relabel any type
        if raw.get("model_type") != "gpt2":
            raise InputError(f"model {name_or_path} is a {raw.get('model_type')!r} model; only the GPT-2 family "
                             "(gpt2, gpt2-medium, gpt2-large, gpt2-xl, distilgpt2) is supported.")
        return GPT2Config.from_pretrained(name_or_path, revision=revision)


def weights_file(name_or_path: str, revision: str | None = None) -> Path:
    """The safetensors file the weights come from (local folder or hub cache)."""
    local = _local(name_or_path)
    if local is not None:
        path = local / "model.safetensors"
        if not path.is_file():
            pickled = sorted(p.name for p in local.glob("*.bin")) + sorted(p.name for p in local.glob("*.pt"))
            if pickled:  # unpickling can run arbitrary code, so such weights are never loaded
                raise InputError(f"model folder {local} has only pickle weights ({', '.join(pickled)}), which are "
                                 "never loaded because unpickling can run code; convert them to model.safetensors "
                                 "where you trust them (save_pretrained(..., safe_serialization=True)).")
            raise InputError(f"model folder {local} has no model.safetensors; only safetensors weights are loaded (no pickle).")
        return path
    from transformers.utils import cached_file
    with _from_hub(name_or_path, revision):
        return Path(cached_file(name_or_path, "model.safetensors", revision=revision))


def check_model(name_or_path: str, revision: str | None = None) -> tuple[GPT2Config, GPT2TokenizerFast]:
    """Config, safetensors weights and a matching tokenizer are all there; else one sentence."""
    config = load_config(name_or_path, revision)
    weights_file(name_or_path, revision)
    tokenizer = load_tokenizer(name_or_path, revision)
    check_vocab(tokenizer, config, name_or_path)
    return config, tokenizer


def load_lm(name_or_path: str, revision: str | None, dtype: torch.dtype) -> GPT2Model:
    """GPT2Model in eval mode with frozen weights, safetensors only, no remote code."""
    weights_file(name_or_path, revision)  # fail early and clearly when there are no safetensors
    config = load_config(name_or_path, revision)
    # GPT-2's tanh GELU as one fused kernel instead of five elementwise ops (about 11% of the
    # CPU time): the same formula, equal within float rounding (tests/test_lm.py).
    if config.activation_function == "gelu_new":
        config.activation_function = "gelu_pytorch_tanh"
    with _from_hub(name_or_path, revision):
        model = GPT2Model.from_pretrained(name_or_path, revision=revision, config=config, dtype=dtype,
                                          use_safetensors=True, trust_remote_code=False)
    model.requires_grad_(False)
    return model.eval()


def check_vocab(tokenizer, config: GPT2Config, name_or_path: str) -> None:
    # A different size means a tokenizer from another model: its ids would index the wrong embeddings.
    if len(tokenizer) != config.vocab_size:
        raise InputError(f"model {name_or_path}: the tokenizer has {len(tokenizer)} tokens but the model "
                         f"{config.vocab_size} embeddings (config.json vocab_size); use the tokenizer that "
                         "belongs to this model.")


def calibrated_mask(codes: torch.Tensor, segments: torch.Tensor, dtype: torch.dtype,
                    key_codes: torch.Tensor | None = None, key_segments: torch.Tensor | None = None) -> torch.Tensor:
    """Additive attention mask (B, 1, T, K) for right-padded, possibly packed sequences.

    codes: (B, T) int8 type code per query token: 1 time-series, 0 language, -1 untyped
    (padding, or beyond the type list the published code used). segments: (B, T) int8,
    0 shared prefix, 1 and 2 the two continuations of a packed pair, -1 padding. The keys
    are the queries themselves by default (K = T); given key_codes/key_segments (B, K),
    they are a head of K - T tokens that every query follows, then the queries.
    Query i may see key j when j is not after i and j is in the prefix (or head) or in i's
    own segment; a visible pair gets -100 when one is language and the other time-series,
    else 0; an invisible pair gets the dtype's minimum (causal, other continuation, padding).
    """
    key_codes = codes if key_codes is None else key_codes
    key_segments = segments if key_segments is None else key_segments
    ts, lang, key_ts, key_lang = codes == 1, codes == 0, key_codes == 1, key_codes == 0
    cross = (lang[:, :, None] & key_ts[:, None, :]) | (ts[:, :, None] & key_lang[:, None, :])   # (B, T, K)
    T, K = codes.shape[1], key_codes.shape[1]
    causal = torch.ones(T, K, dtype=torch.bool, device=codes.device).tril(K - T)
    same_branch = (key_segments[:, None, :] == 0) | (key_segments[:, None, :] == segments[:, :, None])
    mask = torch.where(cross, CALIBRATION, 0.0).to(dtype)
    return mask.masked_fill_(~(causal & same_branch), torch.finfo(dtype).min).unsqueeze(1)


def _qkv(attn, x: torch.Tensor, rows: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
    """Queries, keys, values (B, H, *, hd) of the layer-normed x (B, T, d); `rows` (B, r) keeps r queries."""
    B, T, d = x.shape
    q, k, v = attn.c_attn(x).split(d, dim=2)                                  # (B, T, d) each
    if rows is not None:
        q = q[torch.arange(B, device=x.device)[:, None], rows]                 # (B, r, d)
    heads = lambda t: t.view(B, t.shape[1], attn.num_heads, attn.head_dim).transpose(1, 2)
    return heads(q), heads(k), heads(v)


def _attend(attn, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """GPT-2 attention output (B, Tq, d) with an additive mask (B, 1, Tq, Tk)."""
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=attn.scaling)   # (B, H, Tq, hd)
    return attn.c_proj(y.transpose(1, 2).flatten(2))


@torch.inference_mode()
def last_token_states(model: GPT2Model, batch: dict[str, torch.Tensor], device: torch.device) -> torch.Tensor:
    """Final-layer-norm hidden states at the gathered positions: (B, 2, d) float32.

    batch: `packing.pad` output: sequences (ids, positions, codes, segments (B, T); last
    (B, 2)) and the heads they follow (head_* (H, h); head_of (B,)). GPT-2's forward,
    written out over the model's own modules (equal to GPT2Model's, tests/test_lm.py says
    so) for two exact savings: each head runs once, its keys and values joining those of
    every sequence that follows it; and the last block runs queries, output projection and
    MLP on the two kept positions only (about 20/24 of that block's work). With layers on
    several devices (accelerate device map) each block gets the activations on its device.
    """
    b = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
    of = b["head_of"]
    head_mask = calibrated_mask(b["head_codes"], b["head_segments"], model.dtype)          # (H, 1, h, h)
    mask = calibrated_mask(b["codes"], b["segments"], model.dtype, torch.cat([b["head_codes"][of], b["codes"]], 1),
                           torch.cat([b["head_segments"][of], b["segments"]], 1))           # (B, 1, T, h + T)
    embed = lambda ids, pos: model.wte(ids) + model.wpe(pos)                                # dropout is off in eval
    head, seq = embed(b["head_ids"], b["head_positions"]), embed(b["ids"], b["positions"])  # (H, h, d), (B, T, d)
    *blocks, final = model.h
    for block in blocks:
        at = block.ln_1.weight.device
        head, seq, of, head_mask, mask = (t.to(at) for t in (head, seq, of, head_mask, mask))
        hq, hk, hv = _qkv(block.attn, block.ln_1(head))
        q, k, v = _qkv(block.attn, block.ln_1(seq))
        head = head + _attend(block.attn, hq, hk, hv, head_mask)
        seq = seq + _attend(block.attn, q, torch.cat([hk[of], k], 2), torch.cat([hv[of], v], 2), mask)
        head = head + block.mlp(block.ln_2(head))
        seq = seq + block.mlp(block.ln_2(seq))
    at = final.ln_1.weight.device
    head, seq, of, mask, last = (t.to(at) for t in (head, seq, of, mask, b["last"]))
    rows = torch.arange(len(last), device=at)[:, None]
    _, hk, hv = _qkv(final.attn, final.ln_1(head))
    q, k, v = _qkv(final.attn, final.ln_1(seq), rows=last)                                   # q: (B, H, 2, hd)
    kept = seq[rows, last] + _attend(final.attn, q, torch.cat([hk[of], k], 2), torch.cat([hv[of], v], 2),
                                     mask[rows, 0, last].unsqueeze(1))                       # (B, 2, d)
    kept = kept + final.mlp(final.ln_2(kept))
    return model.ln_f(kept.to(model.ln_f.weight.device)).float()
