"""lm.py's hand-written forward against GPT2Model's own, and the fused GELU it loads."""

import numpy as np
import pytest
import torch
from transformers import GPT2Model
from transformers.activations import NewGELUActivation

from timekd_embed.extract import packed_window
from timekd_embed.lm import calibrated_mask, last_token_states, load_lm
from timekd_embed.packing import Packed, pack, pad, unpacked
from timekd_embed.prompts import SplitPrompts

CPU = torch.device("cpu")
P = 24


def gpt2_states(model: GPT2Model, seqs: list[Packed]) -> torch.Tensor:
    """GPT2Model's forward with the calibrated 4D mask, states at each sequence's `last`."""
    b = pad(seqs)
    mask = calibrated_mask(b["codes"], b["segments"], model.dtype)
    with torch.inference_mode():
        hidden = model(input_ids=b["ids"], position_ids=b["positions"], attention_mask=mask).last_hidden_state
    return hidden[torch.arange(len(seqs))[:, None], b["last"]]


def with_head_inside(s: Packed) -> Packed:
    """The same sequence with its head put back in front (what it was before share_head)."""
    h = len(s.head_ids)
    return Packed(np.concatenate([s.head_ids, s.ids]), np.concatenate([s.head_codes, s.codes]),
                  np.concatenate([np.zeros(h, np.int8), s.segments]), np.concatenate([np.arange(h), s.positions]),
                  (s.last[0] + h, s.last[1] + h))


@pytest.mark.parametrize("fidelity", ["reference", "corrected"])
def test_forward_equals_gpt2model_on_real_packed_prompts(train_split, tokenizer, tiny_model_dir, fidelity):
    _, raw, stamps = train_split
    prompts = SplitPrompts(tokenizer, raw, stamps, "weather", P)
    # Windows 0 and 5000 have heads of 25 and 26 tokens: one batch holds two heads of two lengths.
    seqs = packed_window(prompts, 0, fidelity) + packed_window(prompts, 5000, fidelity)
    assert {len(s.head_ids) for s in seqs} == {25, 26}
    ours = load_lm(str(tiny_model_dir), None, torch.float32)
    reference = GPT2Model.from_pretrained(tiny_model_dir).eval()          # GPT-2's own GELU (gelu_new)
    got = last_token_states(ours, pad(seqs), CPU)
    want = gpt2_states(reference, [with_head_inside(s) for s in seqs])
    assert got.shape == (len(seqs), 2, 64)
    assert (got - want).abs().max() < 1e-5


def test_a_sequence_without_a_head_runs_too(tokenizer, tiny_model_dir):
    ids = np.array(tokenizer.encode("From <01/01/2020 00:10> the values were <1, 2, 3> every hour"))
    types = np.zeros(len(ids), np.int8)
    seqs = [unpacked(ids, types), pack(ids, ids[:-3], types, types)]
    model = load_lm(str(tiny_model_dir), None, torch.float32)
    reference = GPT2Model.from_pretrained(tiny_model_dir).eval()
    assert (last_token_states(model, pad(seqs), CPU) - gpt2_states(reference, seqs)).abs().max() < 1e-5


def test_gpt2_gelu_is_loaded_as_the_fused_kernel_equal_within_rounding(tiny_model_dir):
    model = load_lm(str(tiny_model_dir), None, torch.float32)
    assert model.config.activation_function == "gelu_pytorch_tanh"
    x = torch.linspace(-12, 12, 200_001)
    want, got = NewGELUActivation()(x), model.h[0].mlp.act(x)
    assert not torch.equal(got, want)                   # really another kernel ...
    eps = torch.finfo(torch.float32).eps
    assert ((got - want).abs() <= 2 * eps * want.abs().clamp_min(1)).all()   # ... within two units of rounding
