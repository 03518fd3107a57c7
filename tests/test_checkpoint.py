"""Loading the teacher: the language model is exactly the tensors of the named file, or one sentence
says why not.

Each damaged folder is a real GPT-2 folder (config.json, the real tokenizer files) whose
model.safetensors was rewritten the way users' files go wrong. The tiny model has 2 blocks
of 12 tensors plus wte, wpe and ln_f's two: 28 tensors, counted by hand.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import GPT2Config, GPT2LMHeadModel, GPT2Model

from conftest import make_model_dir
from timekd_embed.checkpoint import check_model, check_weights, expected_shapes, load_config, load_lm
from timekd_embed.errors import InputError

TENSORS = 28  # 2 blocks x 12 (ln_1, attn c_attn / c_proj, ln_2, mlp c_fc / c_proj; weight and bias each) + 4
BLOCK = 12


def rewritten(base: Path, folder: Path, tensors: dict[str, torch.Tensor]) -> Path:
    """A copy of the model folder `base` whose model.safetensors holds `tensors`."""
    shutil.copytree(base, folder)
    save_file({name: t.contiguous() for name, t in tensors.items()}, folder / "model.safetensors",
              metadata={"format": "pt"})
    return folder


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return make_model_dir(tmp_path_factory.mktemp("base") / "gpt2", seed=3)


@pytest.fixture(scope="module")
def state(base) -> dict[str, torch.Tensor]:
    return load_file(base / "model.safetensors")


def prefixed(state):  # what saving a wrapper module (self.gpt2 = GPT2Model(...)) writes
    return {f"gpt2.{name}": t for name, t in state.items()}


def without_block_1(state):
    return {name: t for name, t in state.items() if not name.startswith("h.1.")}


def one_wrong_shape(state):  # c_fc of block 0 cut from 256 to 255 outputs
    return {name: (t[:, :255] if name == "h.0.mlp.c_fc.weight" else t) for name, t in state.items()}


def wider(state):  # the tensors of a 128-wide GPT-2 under the 64-wide config.json
    torch.manual_seed(0)
    return GPT2Model(GPT2Config(n_layer=2, n_embd=128, n_head=4, vocab_size=50257)).state_dict()


PREFIXED_MISSING = (f"{TENSORS} tensor(s) the model needs are not in the file (h.0.attn.c_attn.bias, "
                    "h.0.attn.c_attn.weight, h.0.attn.c_proj.bias, ...)")
PREFIXED_EXTRA = f"{TENSORS} tensor(s) of the file are not the model's (gpt2.h.0.attn.c_attn.bias"
CUT = "1 tensor(s) have another shape (h.0.mlp.c_fc.weight: (64, 255) in the file, (64, 256) expected)"
WIDE = f"{TENSORS} tensor(s) have another shape (h.0.attn.c_attn.bias: (384,) in the file, (192,) expected"
CASES = {
    # name: (make the file's tensors, fragments the one sentence must hold)
    "prefixed_keys": (prefixed, [PREFIXED_MISSING, PREFIXED_EXTRA]),
    "missing_block": (without_block_1,
                      [f"{BLOCK} tensor(s) the model needs are not in the file (h.1.attn.c_attn.bias"]),
    "wrong_shape": (one_wrong_shape, [CUT]),
    "other_width": (wider, [WIDE]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_weights_that_are_not_the_configured_gpt2_are_one_sentence(case, base, state, tmp_path):
    make, fragments = CASES[case]
    folder = rewritten(base, tmp_path / case, make(state))
    for load in (lambda: load_lm(str(folder), None, torch.float32), lambda: check_model(str(folder))):
        with pytest.raises(InputError) as caught:
            load()
        sentence = str(caught.value)
        assert sentence.startswith(f"model folder {folder} (config key model.name_or_path), model.safetensors: ")
        assert "(n_layer 2, n_embd 64, n_head 4)" in sentence and "\n" not in sentence
        for fragment in fragments:
            assert fragment in sentence, (fragment, sentence)
        assert sentence.endswith("whose config.json belongs to its model.safetensors.")


def test_a_truncated_weights_file_is_refused_by_the_header_check(base, tmp_path):
    """An interrupted download or copy keeps the header and loses tensors: the check that reads only the
    header must still see it (it used to pass, and the job failed later, at loading)."""
    folder = tmp_path / "truncated"
    shutil.copytree(base, folder)
    weights = folder / "model.safetensors"
    size = weights.stat().st_size
    os.truncate(weights, size // 2)
    with pytest.raises(InputError) as caught:
        check_model(str(folder))
    sentence = str(caught.value)
    assert sentence.startswith(f"model folder {folder} (config key model.name_or_path), model.safetensors")
    assert "truncated" in sentence and sentence.endswith("the model's own model.safetensors.")


def test_the_attention_buffers_old_checkpoints_carry_are_tolerated(base, state, tmp_path):
    causal = torch.tril(torch.ones(1024, 1024, dtype=torch.bool)).view(1, 1, 1024, 1024)
    buffers = {f"h.{i}.attn.{name}": value.clone() for i in range(2)
               for name, value in (("bias", causal), ("masked_bias", torch.tensor(-1e4)))}
    folder = rewritten(base, tmp_path / "with_buffers", state | buffers)
    model = load_lm(str(folder), None, torch.float32)
    loaded = model.state_dict()
    assert all(torch.equal(loaded[name], tensor) for name, tensor in state.items())


def test_a_gpt2_lm_head_checkpoint_loads_its_transformer_weights(tmp_path, tokenizer):
    torch.manual_seed(5)
    head_model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=50257))
    folder = make_model_dir(tmp_path / "plain")  # for the tokenizer files
    head_model.save_pretrained(folder, safe_serialization=True)  # keys "transformer.h.0...", head tied to wte
    assert next(iter(load_file(folder / "model.safetensors"))).startswith("transformer.")
    model = load_lm(str(folder), None, torch.float32)
    assert torch.equal(model.h[1].mlp.c_fc.weight, head_model.transformer.h[1].mlp.c_fc.weight)


def test_a_good_folder_loads_exactly_its_file(base, state):
    model = load_lm(str(base), None, torch.float32)
    loaded = model.state_dict()
    assert sorted(loaded) == sorted(state) and len(state) == TENSORS
    assert all(torch.equal(loaded[name], tensor) for name, tensor in state.items())


def test_the_header_check_compares_names_and_shapes_with_the_meta_model(base, state):
    config = load_config(str(base))
    shapes = expected_shapes(config)
    assert shapes == {name: tuple(t.shape) for name, t in state.items()}
    assert shapes["h.0.attn.c_attn.weight"] == (64, 192) and shapes["wte.weight"] == (50257, 64)
    assert check_weights(str(base), None, config) == [base / "model.safetensors"]
