"""The decoder families the teacher may be, recognised by config.json's model_type.

Each family is a transformers config and model class (no code is ever taken from a model
folder), the decoder block never split over devices, and the checkpoint tensors that may be
present or absent without changing the model. How the forward reaches each family's modules
is lm.py's; how much memory they need is placement.py's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from transformers import (
    GPT2Config,
    GPT2Model,
    LlamaConfig,
    LlamaModel,
    MistralConfig,
    MistralModel,
    Phi3Config,
    Phi3Model,
    PretrainedConfig,
    Qwen2Config,
    Qwen2Model,
)

from .errors import InputError


@dataclass(frozen=True)
class Family:
    """One supported family."""
    name: str
    model_type: str          # config.json's model_type
    examples: str            # checkpoints of the family, for messages and docs
    config_class: type
    model_class: type        # the base model (no LM head): what the teacher runs
    block_class: str         # accelerate never splits a module of this class over devices
    tolerated: re.Pattern    # tensors a checkpoint may carry or lack without changing the model
    dims: tuple[str, str, str]  # config.json's names of depth, width and heads, for messages

    @property
    def prefix(self) -> str:
        """The key prefix of the family's *ForCausalLM checkpoints ("transformer.", "model.")."""
        return self.model_class.base_model_prefix + "."


# Llama-style checkpoints: the LM head (unused by the base model; tied or not) and the rotary
# inverse frequencies older checkpoints stored (the model computes them from its config).
_ROTARY_TOLERATED = re.compile(r"lm_head\.weight|(layers\.\d+\.self_attn\.)?rotary_emb\.inv_freq")
_LLAMA_DIMS = ("num_hidden_layers", "hidden_size", "num_attention_heads")

FAMILIES = (
    # GPT-2: the attention buffers older checkpoints store (the causal-mask `bias`, the
    # `masked_bias` constant; GPT2Model builds both) and the LM head tied to wte.
    Family("GPT-2", "gpt2", "gpt2, gpt2-medium, gpt2-large, gpt2-xl, distilgpt2", GPT2Config, GPT2Model, "GPT2Block",
           re.compile(r"h\.\d+\.attn\.(bias|masked_bias)|lm_head\.weight"), ("n_layer", "n_embd", "n_head")),
    Family("Llama", "llama", "Llama 2, Llama 3 / 3.1 / 3.2", LlamaConfig, LlamaModel, "LlamaDecoderLayer",
           _ROTARY_TOLERATED, _LLAMA_DIMS),
    Family("Mistral", "mistral", "Mistral 7B", MistralConfig, MistralModel, "MistralDecoderLayer",
           _ROTARY_TOLERATED, _LLAMA_DIMS),
    Family("Qwen2", "qwen2", "Qwen2, Qwen2.5", Qwen2Config, Qwen2Model, "Qwen2DecoderLayer",
           _ROTARY_TOLERATED, _LLAMA_DIMS),
    Family("Phi-3", "phi3", "Phi-3, Phi-3.5", Phi3Config, Phi3Model, "Phi3DecoderLayer",
           _ROTARY_TOLERATED, _LLAMA_DIMS),
)
SUPPORTED = "; ".join(f"{family.model_type} ({family.examples})" for family in FAMILIES)


def family_of(config: PretrainedConfig | dict, where: str = "the model") -> Family:
    """The family of a config (or config.json's dict).

    Raises:
        InputError: a model_type no family has, naming the architecture found and the supported ones.
    """
    raw = config if isinstance(config, dict) else config.to_dict()
    for family in FAMILIES:
        if raw.get("model_type") == family.model_type:
            return family
    found = ", ".join(raw.get("architectures") or []) or "no architectures entry"
    raise InputError(f"{where}: config.json describes a {raw.get('model_type')!r} model ({found}), which is not "
                     f"supported as the teacher; supported model types: {SUPPORTED}.")


def context_length(config: PretrainedConfig) -> int:
    """The longest prompt the teacher reads exactly as the model's own forward would, one prompt at a
    time: its position limit, capped where longer prompts would run differently. A sliding window
    (Mistral v0.1, Phi-3-mini-4k) would show a longer prompt only a window of its past; rotary
    frequencies that depend on the sequence's length (Phi-3's longrope, dynamic NTK) switch beyond
    the original context, and a batch holds prompts of many lengths. Such prompts are refused
    before any model work rather than computed differently."""
    limit = int(config.max_position_embeddings)
    window = getattr(config, "sliding_window", None)
    layer_types = getattr(config, "layer_types", None)
    if window is not None and (layer_types is None and getattr(config, "use_sliding_window", True)
                               or layer_types is not None and "sliding_attention" in layer_types):
        limit = min(limit, int(window))
    rope = getattr(config, "rope_parameters", None) or {}
    if rope.get("rope_type") in ("longrope", "dynamic"):
        limit = min(limit, int(rope.get("original_max_position_embeddings", limit)))
    return limit
