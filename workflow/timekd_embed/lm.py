"""The frozen GPT-2 teacher: loading, the calibrated mask, last-token states (spec sections 3-4)."""

from __future__ import annotations

import hashlib
import logging
from contextlib import contextmanager
from pathlib import Path

import torch
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


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def check_model(name_or_path: str, revision: str | None = None) -> tuple[GPT2Config, GPT2TokenizerFast]:
    """Config, safetensors weights and a matching tokenizer are all there; else one sentence."""
    config = load_config(name_or_path, revision)
    weights_file(name_or_path, revision)
    tokenizer = load_tokenizer(name_or_path, revision)
    check_vocab(tokenizer, config, name_or_path)
    return config, tokenizer


def load_lm(name_or_path: str, revision: str | None, dtype: torch.dtype,
            attn_implementation: str = "sdpa") -> GPT2Model:
    """GPT2Model in eval mode with frozen weights, safetensors only, no remote code."""
    weights_file(name_or_path, revision)  # fail early and clearly when there are no safetensors
    with _from_hub(name_or_path, revision):
        model = GPT2Model.from_pretrained(name_or_path, revision=revision, dtype=dtype, use_safetensors=True,
                                          trust_remote_code=False, attn_implementation=attn_implementation)
    model.requires_grad_(False)
    return model.eval()


def check_vocab(tokenizer, config: GPT2Config, name_or_path: str) -> None:
    # A different size means a tokenizer from another model: its ids would index the wrong embeddings.
    if len(tokenizer) != config.vocab_size:
        raise InputError(f"model {name_or_path}: the tokenizer has {len(tokenizer)} tokens but the model "
                         f"{config.vocab_size} embeddings (config.json vocab_size); use the tokenizer that "
                         "belongs to this model.")


def calibrated_mask(codes: torch.Tensor, segments: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Additive attention mask (B, 1, T, T) for right-padded, possibly packed sequences.

    codes: (B, T) int8 type code per token: 1 time-series, 0 language, -1 untyped
    (padding, or beyond the type list the published code used). segments: (B, T) int8,
    0 shared prefix, 1 and 2 the two continuations of a packed pair, -1 padding.
    Query i may see key j when j <= i and j is in the prefix or in i's own segment; a
    visible pair gets -100 when one is language and the other time-series, else 0; an
    invisible pair gets the dtype's minimum (causal, the other continuation, padding).
    """
    ts, lang = codes == 1, codes == 0                                     # (B, T)
    cross = (lang[:, :, None] & ts[:, None, :]) | (ts[:, :, None] & lang[:, None, :])
    T = codes.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool, device=codes.device).tril()
    same_branch = (segments[:, None, :] == 0) | (segments[:, None, :] == segments[:, :, None])
    visible = causal & same_branch                                         # (B, T, T)
    mask = torch.where(cross, CALIBRATION, 0.0).to(dtype)
    return mask.masked_fill_(~visible, torch.finfo(dtype).min).unsqueeze(1)


@torch.inference_mode()
def last_token_states(model: GPT2Model, batch: dict[str, torch.Tensor], device: torch.device) -> torch.Tensor:
    """Final-layer-norm hidden states at the gathered positions: (B, 2, d) float32.

    batch: `packing.pad` output (ids, positions, codes, segments (B, T); last (B, 2)).
    """
    to = lambda k: batch[k].to(device, non_blocking=True)
    mask = calibrated_mask(to("codes"), to("segments"), model.dtype)
    hidden = model(input_ids=to("ids"), position_ids=to("positions"), attention_mask=mask,
                   use_cache=False).last_hidden_state                             # (B, T, d)
    last = batch["last"].to(hidden.device)
    return hidden[torch.arange(len(last), device=hidden.device)[:, None], last].float()
