"""A deliberately plain re-implementation of the TimeKD teacher, used by the tests as an oracle.

Semantics: docs/teacher.md (sections 2-5).  Everything here is done the slow,
obvious way: one prompt at a time, batch of one, no padding, the calibrated mask as the plain
statement "every language/time-series pair", and GPT-2's attention written out from the block weights.  It must not
import the project package (`timekd_embed`): it is the independent side of the comparison.

Other teacher families (Llama 2/3, Mistral, Qwen2/Qwen2.5, Phi-3) run through their own
transformers model class with eager attention and the mask given as a 4D additive float mask
(causal part plus calibration), which transformers uses as given; tests/test_plain_teacher.py
checks that route against one Llama layer written out from its weights.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import (
    GPT2Model,
    LlamaForCausalLM,
    LlamaModel,
    MistralForCausalLM,
    MistralModel,
    Phi3ForCausalLM,
    Phi3Model,
    Qwen2ForCausalLM,
    Qwen2Model,
)

SEQ_LEN = 96  # input window length used by the published runs

# Spec section 2: (GT prompt, HD prompt) per dataset name.  Exact, case-sensitive keys.
TEMPLATES: dict[str, tuple[str, str]] = {
    "ETTh1": (
        "From <t1> to <t2>, the values were <value1, ..., valuen> every hour. "
        "The values for the next <output_len> hours are <gt1, ..., gtn>",
        "From <t1> to <t2>, the values were <value1, ..., valuen> every hour. "
        "Forecast the values for the next <output_len> hours",
    ),
    "ETTh2": (
        "From <t1> to <t2>, the values were <value1, ..., valuen> every hour. "
        "The values for the next <output_len> hours are <gt1, ..., gtn>",
        "From <t1> to <t2>, the values were <value1, ..., valuen> every hour. "
        "Forecast the values for the next <output_len> hours",
    ),
    "ETTm1": (
        "From <t1> to <t2>, the values were <value1, ..., valuen> every 15 minutes. "
        "The values for the next <output_len> minutes are <gt1, ..., gtn>",
        "From <t1> to <t2>, the values were <value1, ..., valuen> every 15 minutes. "
        "Forecast the values for the next <output_len> minutes",
    ),
    "ETTm2": (
        "From <t1> to <t2>, the values were <value1, ..., valuen> every 15 minutes. "
        "The values for the next <output_len> minutes are <gt1, ..., gtn>",
        "From <t1> to <t2>, the values were <value1, ..., valuen> every 15 minutes. "
        "Forecast the values for the next <output_len> minutes",
    ),
    "Weather": (
        "From <t1> to <t2>, the values were <value1, ..., valuen> every 10 minutes. "
        "The values for the next <output_len> minutes are <gt1, ..., gtn>",
        "From <t1> to <t2>, the values were <value1, ..., valuen> every 10 minutes. "
        "Forecast the values for the next <output_len> minutes",
    ),
    "Exchange": (
        "From <t1> to <t2>, the exchange rates were <value1, ..., valuen> every day. "
        "The rates for the next <output_len> days are <gt1, ..., gtn>",
        "From <t1> to <t2>, the exchange rates were <value1, ..., valuen> every day. "
        "Forecast the rates for the next <output_len> days",
    ),
}

# Datasets whose stamps are written with the minutes replaced by "00".
HOURLY_STAMP_NAMES = ("ETTh1", "ETTh2", "ECL")


def template_pair(dataset_name: str) -> tuple[str, str]:
    """(GT template, HD template); unknown names (e.g. "weather") fall back to ETTh1."""
    if dataset_name in TEMPLATES:
        return TEMPLATES[dataset_name]
    return TEMPLATES["ETTh1"]


def stamp_text(stamp_row, dataset_name: str) -> str:
    """stamp_row = (year, month, day, weekday, hour, minute) -> "DD/MM/YYYY HH:MM" (or "HH:00")."""
    year, month, day, _weekday, hour, minute = (int(v) for v in stamp_row)
    if dataset_name in HOURLY_STAMP_NAMES:
        return f"{day:02d}/{month:02d}/{year:04d} {hour:02d}:00"
    return f"{day:02d}/{month:02d}/{year:04d} {hour:02d}:{minute:02d}"


def _values_text(column) -> str:
    # str(int(v)) truncates toward zero: 1008.89 -> "1008", -2.7 -> "-2", -0.3 -> "0".
    return ", ".join(str(int(v)) for v in column)


def plain_prompts(x, y, x_stamps, pred_len: int, dataset_name: str) -> list[tuple[str, str]]:
    """One (gt_text, hd_text) per variable.

    x: (T, N) raw input rows (T = 96 in real use), y: (P, N) raw future rows,
    x_stamps: (T, 6) stamps of the input rows.  t1/t2 come from the first/last input row.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    x_stamps = np.asarray(x_stamps)
    assert x.ndim == 2 and y.ndim == 2 and x.shape[1] == y.shape[1], (x.shape, y.shape)
    assert y.shape[0] == pred_len, (y.shape, pred_len)
    assert x_stamps.shape == (x.shape[0], 6), x_stamps.shape

    gt_template, hd_template = template_pair(dataset_name)
    t1 = stamp_text(x_stamps[0], dataset_name)
    t2 = stamp_text(x_stamps[x.shape[0] - 1], dataset_name)

    prompts = []
    for j in range(x.shape[1]):
        values = _values_text(x[:, j].tolist())
        future = _values_text(y[:, j].tolist())
        # Same replacement order as the published code: values, (gt), output_len, t1, t2.
        gt = gt_template.replace("value1, ..., valuen", values)
        gt = gt.replace("gt1, ..., gtn", future)
        gt = gt.replace("output_len", str(pred_len))
        gt = gt.replace("t1", t1).replace("t2", t2)
        hd = hd_template.replace("value1, ..., valuen", values)
        hd = hd.replace("output_len", str(pred_len))
        hd = hd.replace("t1", t1).replace("t2", t2)
        prompts.append((gt, hd))
    return prompts


def space_marker(tokenizer) -> str:
    """How the tokenizer writes a space inside its token strings: "Ġ" (byte-level BPE: GPT-2,
    Qwen2, Llama 3) or "▁" (SentencePiece: Llama 2, Mistral, Phi-3).

    Read off the vocabulary: the token for " <" is spelled "Ġ<" in one kind and "▁<" in the other.
    """
    vocab = tokenizer.backend_tokenizer  # token_to_id: the token's id, None if not in the vocabulary
    found = [marker for marker in ("Ġ", "▁") if vocab.token_to_id(marker + "<") is not None]
    if len(found) != 1:
        raise ValueError(f"cannot tell the space marker: tokens for ' <' in the vocabulary: {found}")
    return found[0]


def plain_token_types(tokens: list[str], space: str = "Ġ") -> list[str]:
    """Spec section 3 flag walk over token strings; `space` is the tokenizer's space marker.

    Only the exact token " <" (space + "<") opens a span and only the exact token ">" closes it,
    so " <-" (negative first value) opens nothing and ">," (after t2) closes nothing.  Any other
    token, a BOS included, is language unless a span is open.
    """
    opener = space + "<"
    types = []
    open_span = False
    for tok in tokens:
        if tok == opener:
            open_span = True
            types.append("time_series")
        elif tok == ">":
            open_span = False
            types.append("time_series")
        elif open_span:
            types.append("time_series")
        else:
            types.append("language")
    return types


def plain_mask(types: list[str], length: int) -> torch.Tensor:
    """(length, length) float32 additive mask: -100 between every language/time-series pair.

    Indices of `types` at or beyond `length` are ignored; positions that `types` does not
    cover (when it is shorter than `length`) get no -100 entries.
    """
    covered = list(types[:length]) + [None] * max(0, length - len(types))
    language = torch.tensor([t == "language" for t in covered])        # (length,) bool
    series = torch.tensor([t == "time_series" for t in covered])
    pair = language[:, None] & series[None, :]                          # query language, key series
    return torch.where(pair | pair.T, -100.0, 0.0).to(torch.float32)


def _layer_norm(h: torch.Tensor, ln: nn.LayerNorm) -> torch.Tensor:
    return F.layer_norm(h, ln.normalized_shape, ln.weight, ln.bias, ln.eps)


def _conv1d(h: torch.Tensor, conv) -> torch.Tensor:
    # transformers' Conv1D stores its weight as (in, out): y = h @ W + b.
    return h @ conv.weight + conv.bias


def _activation(h: torch.Tensor, name: str) -> torch.Tensor:
    if name in ("gelu_new", "gelu_pytorch_tanh"):  # GPT-2's tanh approximation
        return 0.5 * h * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (h + 0.044715 * h.pow(3))))
    if name == "gelu":
        return F.gelu(h)
    raise ValueError(f"plain oracle does not know activation {name!r}")


# Model classes whose own forward computes the oracle's states (a *ForCausalLM: its `.model`).
ROTARY_MODELS = (LlamaModel, MistralModel, Qwen2Model, Phi3Model)
ROTARY_CAUSAL_LMS = (LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, Phi3ForCausalLM)


def plain_last_hidden(model, ids: list[int], mask: torch.Tensor) -> torch.Tensor:
    """(d,) hidden state after the final norm at the last token of ONE prompt.

    `mask` (L, L) is added, in every layer and head, to the causal-masked scores.  GPT-2 is
    evaluated from its block weights by hand; the other families by their own model class.
    """
    if isinstance(model, GPT2Model):
        return gpt2_last_hidden(model, ids, mask)
    if isinstance(model, ROTARY_CAUSAL_LMS):
        model = model.model  # the decoder without its LM head
    if isinstance(model, ROTARY_MODELS):
        return rotary_last_hidden(model, ids, mask)
    raise TypeError(f"plain oracle does not know model class {type(model).__name__}")


def causal_plus(mask: torch.Tensor) -> torch.Tensor:
    """(1, 1, L, L) float32: the dtype's minimum above the diagonal (future keys), plus `mask`."""
    L = mask.shape[0]
    future = torch.ones((L, L), dtype=torch.bool).triu(diagonal=1)  # True where key j > query i
    causal = torch.where(future, torch.finfo(torch.float32).min, 0.0)
    return (causal + mask.to(torch.float32))[None, None]


def rotary_last_hidden(model, ids: list[int], mask: torch.Tensor) -> torch.Tensor:
    """(d,) state after the final norm at the last token of ONE prompt, by the family's own
    model class (LlamaModel, MistralModel, Qwen2Model, Phi3Model): eager attention, fp32,
    positions 0..L-1, and the 4D mask `causal_plus(mask)`, which eager attention adds to the
    scores as given (transformers builds no mask of its own when handed a 4D one).
    """
    cfg = model.config
    assert cfg._attn_implementation == "eager", cfg._attn_implementation
    assert model.dtype == torch.float32, "the oracle computes in float32: pass model.float()"
    # The forward runs layers[:num_hidden_layers]; make "every layer the model holds" explicit.
    assert len(model.layers) == cfg.num_hidden_layers, (len(model.layers), cfg.num_hidden_layers)
    L = len(ids)
    assert mask.shape == (L, L), (mask.shape, L)
    if L > cfg.max_position_embeddings:
        raise ValueError(f"prompt of {L} tokens exceeds the model context {cfg.max_position_embeddings}")
    # A given 4D mask replaces the sliding-window mask too: refuse prompts the window would cut.
    window = getattr(cfg, "sliding_window", None)
    if window is not None and L > window:
        raise ValueError(f"prompt of {L} tokens exceeds the model's sliding window {window}")
    out = model(
        input_ids=torch.tensor([ids], dtype=torch.long),
        attention_mask=causal_plus(mask),
        position_ids=torch.arange(L, dtype=torch.long)[None],
        use_cache=False,
    )
    return out.last_hidden_state[0, -1]  # (d,)


def gpt2_last_hidden(model, ids: list[int], mask: torch.Tensor) -> torch.Tensor:
    """(d,) GPT-2 hidden state after ln_f at the last token of ONE prompt.

    `mask` (L, L) is added, in every layer and head, to the causal-masked scores.
    The blocks are evaluated from their weights here (not via the model's forward).
    """
    cfg = model.config
    # The published model uses GPT-2's defaults; the oracle only implements those.
    assert cfg.scale_attn_weights and not cfg.scale_attn_by_inverse_layer_idx
    assert not cfg.reorder_and_upcast_attn and not cfg.add_cross_attention
    L = len(ids)
    if L > cfg.n_positions:
        raise ValueError(f"prompt of {L} tokens exceeds the model context {cfg.n_positions}")
    d = cfg.n_embd
    n_head = cfg.n_head
    d_head = d // n_head
    mask = mask.to(torch.float32)
    assert mask.shape == (L, L), (mask.shape, L)

    ids_t = torch.tensor(ids, dtype=torch.long)
    positions = torch.arange(L, dtype=torch.long)
    h = model.wte(ids_t).float() + model.wpe(positions).float()  # (L, d)

    future = torch.ones((L, L), dtype=torch.bool).triu(diagonal=1)  # True where key j > query i
    most_negative = torch.tensor(torch.finfo(torch.float32).min)

    for block in model.h:
        # --- attention sub-layer (pre-norm) ---
        a = _layer_norm(h, block.ln_1)  # (L, d)
        qkv = _conv1d(a, block.attn.c_attn)  # (L, 3d)
        q, k, v = qkv[:, :d], qkv[:, d : 2 * d], qkv[:, 2 * d :]  # each (L, d)
        head_outputs = []
        for head in range(n_head):
            cols = slice(head * d_head, (head + 1) * d_head)
            scores = q[:, cols] @ k[:, cols].T / math.sqrt(d_head)  # (L, L)
            scores = torch.where(future, most_negative, scores)  # causal first ...
            scores = scores + mask  # ... then the calibrated mask on top
            probs = torch.softmax(scores, dim=-1)  # (L, L)
            head_outputs.append(probs @ v[:, cols])  # (L, d_head)
        attn = torch.cat(head_outputs, dim=1)  # (L, d), heads side by side
        h = h + _conv1d(attn, block.attn.c_proj)

        # --- MLP sub-layer (pre-norm) ---
        m = _layer_norm(h, block.ln_2)
        m = _activation(_conv1d(m, block.mlp.c_fc), cfg.activation_function)  # (L, 4d)
        h = h + _conv1d(m, block.mlp.c_proj)  # (L, d)

    h = _layer_norm(h, model.ln_f)
    return h[-1]  # (d,)


# ---------------------------------------------------------------------------------------
# Subtractive cross attention (docs/teacher.md section 5).  Module nesting only mirrors the published
# parameter names; the arithmetic is all in PlainSCA.forward.


class _Scale(nn.Module):
    def __init__(self, n_vars: int):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(n_vars**-0.5), requires_grad=False)


class _SelfAttn(nn.Module):
    def __init__(self, n_vars: int):
        super().__init__()
        self.W_Q = nn.Linear(n_vars, n_vars)
        self.W_K = nn.Linear(n_vars, n_vars)
        self.W_V = nn.Linear(n_vars, n_vars)
        self.sdp_attn = _Scale(n_vars)
        self.to_out = nn.Sequential(nn.Linear(n_vars, n_vars))


class _Layer(nn.Module):
    def __init__(self, n_vars: int, d_ff: int):
        super().__init__()
        self.self_attn = _SelfAttn(n_vars)
        self.norm_attn = nn.LayerNorm(n_vars)
        # indices 1, 2 hold no weights (GELU, dropout in the published module): ff.0 / ff.3
        self.ff = nn.Sequential(nn.Linear(n_vars, d_ff), nn.GELU(), nn.Identity(), nn.Linear(d_ff, n_vars))
        self.norm_ffn = nn.LayerNorm(n_vars)


class PlainSCA(nn.Module):
    """One pre-norm layer, width N (variables), sequence length d (LM width), dropout off."""

    def __init__(self, n_vars: int, d_ff: int):
        super().__init__()
        self.layers = nn.ModuleList([_Layer(n_vars, d_ff)])

    @classmethod
    def from_state_dict(cls, state_dict) -> "PlainSCA":
        d_ff, n_vars = state_dict["layers.0.ff.0.weight"].shape  # (4d, N)
        sca = cls(int(n_vars), int(d_ff))
        sca.load_state_dict({k: torch.as_tensor(v) for k, v in state_dict.items()})
        return sca.float().eval()

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        # q, k, v: (d, N)  ->  (d, N)
        layer = self.layers[0]
        att = layer.self_attn
        q = layer.norm_attn(q)  # one LayerNorm shared by q, k and v
        k = layer.norm_attn(k)
        v = layer.norm_attn(v)
        Q, K, V = att.W_Q(q), att.W_K(k), att.W_V(v)  # each (d, N), single head of width N
        scores = (Q @ K.T) * att.sdp_attn.scale  # (d, d)
        attended = torch.softmax(scores, dim=-1) @ V  # (d, N)
        attended = att.to_out[0](attended)
        x = q - attended  # subtraction, not a residual addition
        x = layer.norm_ffn(x)
        return x + layer.ff[3](F.gelu(layer.ff[0](x)))  # exact (erf) GELU, as nn.GELU()


# ---------------------------------------------------------------------------------------


def plain_teacher(
    raw,
    stamps,
    starts,
    pred_len: int,
    dataset_name: str,
    tokenizer,
    model,
    sca_state_dict,
    fidelity: str = "reference",
) -> np.ndarray:
    """Teacher embeddings (len(starts), N, d) float32 for windows of ONE split.

    `model`: a GPT2Model, or a Llama / Mistral / Qwen2 / Phi-3 model (or *ForCausalLM) loaded
    with attn_implementation="eager", in float32; `tokenizer`: the model's own.
    raw: (R, N) raw values of the split, stamps: (R, 6).  Window i: x = rows i..i+95,
    y = rows i+96..i+95+P.  fidelity "reference" reproduces the published mask defect
    (masks from the types of variable N-1's prompts); "corrected" uses each prompt's own.
    """
    if fidelity not in ("reference", "corrected"):
        raise ValueError(f"unknown fidelity {fidelity!r}")
    raw = np.asarray(raw, dtype=np.float64)
    stamps = np.asarray(stamps)
    n_vars = raw.shape[1]
    d = model.config.hidden_size  # the LM width (GPT-2: n_embd)
    space = space_marker(tokenizer)
    sca = PlainSCA.from_state_dict(sca_state_dict)
    out = np.zeros((len(starts), n_vars, d), dtype=np.float32)

    with torch.inference_mode():
        for w, i in enumerate(starts):
            x = raw[i : i + SEQ_LEN]  # (96, N)
            y = raw[i + SEQ_LEN : i + SEQ_LEN + pred_len]  # (P, N)
            if x.shape[0] != SEQ_LEN or y.shape[0] != pred_len:
                raise IndexError(f"window {i} does not fit in {raw.shape[0]} rows")
            prompts = plain_prompts(x, y, stamps[i : i + SEQ_LEN], pred_len, dataset_name)

            # with the tokenizer's default special tokens (Phi-3 and Llama-family: a BOS)
            gt_ids = [tokenizer.encode(gt) for gt, _ in prompts]
            hd_ids = [tokenizer.encode(hd) for _, hd in prompts]
            gt_types = [plain_token_types(tokenizer.convert_ids_to_tokens(ids), space) for ids in gt_ids]
            hd_types = [plain_token_types(tokenizer.convert_ids_to_tokens(ids), space) for ids in hd_ids]

            gt_last = torch.zeros((d, n_vars), dtype=torch.float32)  # (d, N)
            hd_last = torch.zeros((d, n_vars), dtype=torch.float32)  # (d, N)
            for j in range(n_vars):
                if fidelity == "reference":
                    # published defect: the types left over from the last variable's prompts
                    gt_src, hd_src = gt_types[n_vars - 1], hd_types[n_vars - 1]
                else:
                    gt_src, hd_src = gt_types[j], hd_types[j]
                gt_mask = plain_mask(gt_src, len(gt_ids[j]))
                hd_mask = plain_mask(hd_src, len(hd_ids[j]))
                gt_last[:, j] = plain_last_hidden(model, gt_ids[j], gt_mask)
                hd_last[:, j] = plain_last_hidden(model, hd_ids[j], hd_mask)

            emb = sca(gt_last, hd_last, hd_last)  # (d, N)
            out[w] = emb.T.numpy()  # (N, d)
    return out
