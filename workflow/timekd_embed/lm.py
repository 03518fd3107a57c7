"""The frozen GPT-2 teacher: loading, the calibrated mask, last-token states (docs/teacher.md sections 3-4).

References: Liu et al., "TimeKD", ICDE 2025 (the calibrated language model); the published
clm.py (the -100 calibration between language and time-series tokens) and store_emb.py
(the last token's final-layer-norm state of every prompt).
"""

from __future__ import annotations

import logging
import re
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from transformers import GPT2Config, GPT2Model, GPT2TokenizerFast

from .errors import InputError
from .packing import TrieBatch
from .store import read_header

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
    # what transformers raises for files it cannot fetch or parse; safetensors' own error for a damaged file
    except (OSError, ValueError, SafetensorError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if _local(name_or_path) is not None:
            raise InputError(f"model folder {name_or_path} cannot be loaded ({first}); check its files "
                             f"({FOLDER_FILES}).") from None
        raise InputError(f"model {name_or_path!r} (config key model.name_or_path, revision {revision or 'default'}) "
                         f"is no local folder and could not be loaded from the model hub ({first}); fix the id, "
                         f"allow network access for the first run, or point it at a local folder with "
                         f"{FOLDER_FILES}.") from None


def load_tokenizer(name_or_path: str, revision: str | None = None) -> GPT2TokenizerFast:
    """The model's GPT-2 byte-level BPE tokenizer (vocab.json, merges.txt).

    Args:
        name_or_path, revision: config keys model.name_or_path and model.revision.
    Returns:
        GPT2TokenizerFast.
    Raises:
        InputError: a local folder without the tokenizer files, or a hub id that cannot be loaded.
    """
    local = _local(name_or_path)
    if local is not None:
        missing = [name for name in ("vocab.json", "merges.txt") if not (local / name).is_file()]
        if missing:
            raise InputError(f"model folder {local} lacks {', '.join(missing)}; put the GPT-2 tokenizer files there.")
    with _from_hub(name_or_path, revision):
        return GPT2TokenizerFast.from_pretrained(name_or_path, revision=revision)


def load_config(name_or_path: str, revision: str | None = None) -> GPT2Config:
    """The model's config.json, which must describe a GPT-2 (model_type gpt2).

    Args:
        name_or_path, revision: config keys model.name_or_path and model.revision.
    Returns:
        GPT2Config.
    Raises:
        InputError: no config.json, another model type, or a hub id that cannot be loaded.
    """
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
    """The safetensors file the weights come from (local folder or hub cache).

    Args:
        name_or_path, revision: config keys model.name_or_path and model.revision.
    Returns:
        Path of model.safetensors.
    Raises:
        InputError: no model.safetensors (pickle weights are never loaded: unpickling can run code).
    """
    local = _local(name_or_path)
    if local is not None:
        path = local / "model.safetensors"
        if not path.is_file():
            pickled = (sorted(file.name for file in local.glob("*.bin"))
                       + sorted(file.name for file in local.glob("*.pt")))
            if pickled:  # unpickling can run arbitrary code, so such weights are never loaded
                raise InputError(f"model folder {local} has only pickle weights ({', '.join(pickled)}), which are "
                                 "never loaded because unpickling can run code; convert them to model.safetensors "
                                 "where you trust them (save_pretrained(..., safe_serialization=True)).")
            raise InputError(f"model folder {local} has no model.safetensors; only safetensors weights are loaded "
                             "(no pickle).")
        return path
    from transformers.utils import cached_file
    with _from_hub(name_or_path, revision):
        return Path(cached_file(name_or_path, "model.safetensors", revision=revision))


# Tensors a GPT-2 checkpoint may carry or lack without changing the model: the attention
# buffers older checkpoints store (the causal-mask `bias`, the `masked_bias` constant; GPT2Model
# builds both itself), and the LM head of a GPT2LMHeadModel checkpoint, tied to wte and unused
# by GPT2Model. Every other difference is refused.
TOLERATED = re.compile(r"h\.\d+\.attn\.(bias|masked_bias)|lm_head\.weight")
HEAD_MODEL_PREFIX = GPT2Model.base_model_prefix + "."  # "transformer.": keys of a GPT2LMHeadModel checkpoint
SHOWN = 3  # names quoted per kind of difference


def expected_shapes(config: GPT2Config) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor GPT2Model(config) loads, built on the meta device (no memory, no init cost).

    Args:
        config: the model's GPT2Config.
    Returns:
        {tensor name: shape}.
    """
    with torch.device("meta"):
        model = GPT2Model(config)
    return {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}


def file_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor in a safetensors file, from its header alone (store.read_header).

    Args:
        path: a .safetensors file.
    Returns:
        {tensor name: shape}.
    Raises:
        InputError: the file is missing or its header is damaged.
    """
    header, _ = read_header(path)
    return {name: tuple(entry["shape"]) for name, entry in header.items() if name != "__metadata__"}


def _as_model_names(shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """Drop the `transformer.` prefix of a GPT2LMHeadModel checkpoint, as from_pretrained does."""
    body = [name for name in shapes if name != "lm_head.weight"]
    if body and all(name.startswith(HEAD_MODEL_PREFIX) for name in body):
        return {name.removeprefix(HEAD_MODEL_PREFIX): shape for name, shape in shapes.items()}
    return shapes


def _listed(names: list[str]) -> str:
    shown = ", ".join(names[:SHOWN])
    return shown + (", ..." if len(names) > SHOWN else "")


def _refuse_differences(where: str, config: GPT2Config, missing: list[str], unexpected: list[str],
                        reshaped: list[tuple[str, tuple, tuple]]) -> None:
    """One InputError naming every kind of difference between the file and the model, or nothing."""
    missing = sorted(name for name in missing if not TOLERATED.fullmatch(name))
    unexpected = sorted(name for name in unexpected if not TOLERATED.fullmatch(name))
    if not (missing or unexpected or reshaped):
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} tensor(s) the model needs are not in the file ({_listed(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} tensor(s) of the file are not the model's ({_listed(unexpected)})")
    if reshaped:
        shown = "; ".join(f"{name}: {tuple(got)} in the file, {tuple(want)} expected"
                          for name, got, want in reshaped[:SHOWN])
        more = "; ..." if len(reshaped) > SHOWN else ""
        parts.append(f"{len(reshaped)} tensor(s) have another shape ({shown}{more})")
    raise InputError(f"{where}: the weights are not the GPT-2 that config.json describes (n_layer {config.n_layer}, "
                     f"n_embd {config.n_embd}, n_head {config.n_head}): {'; '.join(parts)}; the language model "
                     "would run with weights that were initialised, not loaded, so use a folder saved by "
                     "GPT2Model or GPT2LMHeadModel save_pretrained(..., safe_serialization=True) whose "
                     "config.json belongs to its model.safetensors.")


def _where(name_or_path: str, revision: str | None, weights: Path) -> str:
    if _local(name_or_path) is not None:
        return f"model folder {name_or_path} (config key model.name_or_path), {weights.name}"
    return f"model {name_or_path!r} (config key model.name_or_path, revision {revision or 'default'}), {weights}"


def check_weights(name_or_path: str, revision: str | None, config: GPT2Config) -> Path:
    """The safetensors file holds exactly the tensors GPT2Model(config) loads, by name and shape.

    A header-only comparison: nothing is loaded, so a 6 GB gpt2-xl costs a few milliseconds.

    Args:
        name_or_path, revision: config keys model.name_or_path and model.revision.
        config: the model's GPT2Config (load_config).
    Returns:
        The weights file (weights_file).
    Raises:
        InputError: tensors missing, unexpected (a prefix such as `gpt2.` from a wrapper
            module) or of another shape (another width or depth), beyond the TOLERATED ones,
            naming the folder, how many tensors, the first few names and what to do.
    """
    weights = weights_file(name_or_path, revision)
    try:
        found = _as_model_names(file_shapes(weights))
    except (InputError, OSError, KeyError, TypeError):  # a damaged header or size, an unreadable file, no shapes
        raise InputError(f"{_where(name_or_path, revision, weights)} cannot be read as safetensors (damaged "
                         "header, or truncated); replace the file with the model's own model.safetensors.") from None
    wanted = expected_shapes(config)
    reshaped = [(name, found[name], wanted[name]) for name in sorted(wanted.keys() & found.keys())
                if found[name] != wanted[name] and not TOLERATED.fullmatch(name)]
    _refuse_differences(_where(name_or_path, revision, weights), config, sorted(wanted.keys() - found.keys()),
                        sorted(found.keys() - wanted.keys()), reshaped)
    return weights


def check_model(name_or_path: str, revision: str | None = None) -> tuple[GPT2Config, GPT2TokenizerFast]:
    """Config, safetensors weights that fit it exactly and a matching tokenizer; else one sentence.

    Args:
        name_or_path, revision: config keys model.name_or_path and model.revision.
    Returns:
        (GPT2Config, GPT2TokenizerFast).
    Raises:
        InputError: a missing or non-GPT-2 config, missing or non-fitting weights
            (check_weights), missing tokenizer files or a tokenizer of another vocabulary.
    """
    config = load_config(name_or_path, revision)
    check_weights(name_or_path, revision, config)
    tokenizer = load_tokenizer(name_or_path, revision)
    check_vocab(tokenizer, config, name_or_path)
    return config, tokenizer


def load_lm(name_or_path: str, revision: str | None, dtype: torch.dtype) -> GPT2Model:
    """GPT2Model in eval mode with frozen weights: exactly the tensors of the named file.

    Safetensors only, no remote code. The file is compared with the model by header first
    (check_weights); the loading report of from_pretrained is checked again afterwards, so
    no weight is ever left as initialised rather than loaded.

    Args:
        name_or_path, revision: config keys model.name_or_path and model.revision.
        dtype: the language model's dtype (config key precision).
    Returns:
        GPT2Model, eval mode, requires_grad False.
    Raises:
        InputError: as check_weights, or a model that cannot be loaded.
    """
    config = load_config(name_or_path, revision)
    weights = check_weights(name_or_path, revision, config)  # before any loading: fail early, in one sentence
    # GPT-2's tanh GELU as one fused kernel instead of five elementwise ops (about 11% of the
    # CPU time): the same formula, equal within float rounding (tests/test_lm.py).
    if config.activation_function == "gelu_new":
        config.activation_function = "gelu_pytorch_tanh"
    with _from_hub(name_or_path, revision):
        model, report = GPT2Model.from_pretrained(name_or_path, revision=revision, config=config, dtype=dtype,
                                                  use_safetensors=True, trust_remote_code=False,
                                                  output_loading_info=True)
    reshaped = [(name, got, want) for name, got, want in
                (_mismatch_entry(entry) for entry in report.get("mismatched_keys", ()))]
    _refuse_differences(_where(name_or_path, revision, weights), config, list(report.get("missing_keys", ())),
                        list(report.get("unexpected_keys", ())), reshaped)
    model.requires_grad_(False)
    return model.eval()


def keep_layers(model: GPT2Model, layers: int | None) -> GPT2Model:
    """Keep the first `layers` transformer blocks (the final layer norm stays): the published
    `--l_layers` of store_emb.py, which cuts clm.py's GPT-2 to `h[:L]` and applies `ln_f` after it.

    Args:
        model: a loaded GPT2Model, changed in place (before any placement on devices).
        layers: blocks to keep, 1 .. config.n_layer; None keeps all (the published default, 12 for gpt2).
    Returns:
        The same model, with `config.n_layer` set to the blocks it now has.
    Raises:
        InputError: `layers` is outside 1 .. the model's number of blocks (config key model.layers).
    """
    if layers is None:
        return model
    total = len(model.h)
    if not 1 <= layers <= total:
        raise InputError(f"config key model.layers = {layers}, but {model.config.name_or_path or 'the model'} has "
                         f"{total} blocks; set it to 1 .. {total}, or null for all of them.")
    model.h = model.h[:layers]
    model.config.n_layer = layers
    return model


def _mismatch_entry(entry) -> tuple[str, tuple, tuple]:
    """transformers reports a mismatched key as (name, file shape, model shape)."""
    if isinstance(entry, str):
        return entry, (), ()
    name, got, want = entry
    return name, tuple(got), tuple(want)


def check_vocab(tokenizer, config: GPT2Config, name_or_path: str) -> None:
    """Fail when the tokenizer does not belong to the model.

    Args:
        tokenizer: the loaded tokenizer; config: the model's GPT2Config; name_or_path: named in the message.
    Raises:
        InputError: the tokenizer's size differs from config.vocab_size.
    """
    # A different size means a tokenizer from another model: its ids would index the wrong embeddings.
    if len(tokenizer) != config.vocab_size:
        raise InputError(f"model {name_or_path}: the tokenizer has {len(tokenizer)} tokens but the model "
                         f"{config.vocab_size} embeddings (config.json vocab_size); use the tokenizer that "
                         "belongs to this model.")


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
