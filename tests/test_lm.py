"""lm.py's hand-written forward over trie batches against GPT2Model's own, and the fused GELU it loads."""

import numpy as np
import pytest
import torch
from transformers import GPT2Model
from transformers.activations import NewGELUActivation

from timekd_embed.checkpoint import load_lm
from timekd_embed.lm import LAYOUTS, _attend, calibrated_mask, last_token_states
from timekd_embed.packing import Prompt, batches, build_trie, window_prompts
from timekd_embed.prompts import SplitPrompts

CPU = torch.device("cpu")
PRED_LENS = (24, 36, 192)


def gpt2_state(model: GPT2Model, p: Prompt) -> torch.Tensor:
    """GPT2Model's forward on one whole prompt with its calibrated 4D mask: the last token's state (d,)."""
    ids, codes = torch.from_numpy(p.ids)[None], torch.from_numpy(p.codes)[None]
    valid = torch.ones_like(ids, dtype=torch.bool)
    mask = calibrated_mask(codes, valid, codes, valid, model.dtype)
    with torch.inference_mode():
        return model(input_ids=ids, attention_mask=mask).last_hidden_state[0, -1]


@pytest.fixture(scope="module")
def prompts(train_split, tokenizer) -> dict[int, SplitPrompts]:
    _, raw, stamps = train_split
    return {P: SplitPrompts(tokenizer, raw[:6000], stamps[:6000], "weather", P) for P in PRED_LENS}


@pytest.mark.parametrize("fidelity", ["reference", "corrected"])
def test_forward_equals_gpt2model_on_real_prompt_tries(prompts, tiny_model_dir, fidelity):
    # Windows 0 and 5000 have heads of 25 and 26 tokens: one batch holds two heads of two lengths.
    groups = [window_prompts(prompts, i, fidelity)[0] for i in (0, 5000)]
    tries = [build_trie(g) for g in groups]
    assert [len(t.head) for t in tries] == [25, 26]
    # Four of the 21 variables keep the test short; the last one is where `reference` borrows its types.
    ours = load_lm(str(tiny_model_dir), None, torch.float32)
    reference = GPT2Model.from_pretrained(tiny_model_dir).eval()          # GPT-2's own GELU (gelu_new)
    want = {(w, *map(int, tries[w].leaf_of[c, j])): gpt2_state(reference, p)    # by (window, branch, leaf)
            for w in range(2) for c in (0, 4, 12, 20) for j, p in enumerate(groups[w][c])}
    items = sorted({(w, branch) for w, branch, _ in want})
    for budget in (1 << 20, 2048):                                         # one batch; several, with leaf buckets
        for batch in batches(tries, items, budget):
            got = last_token_states(ours, batch, CPU)
            assert got.shape == (len(batch.kept), 64)
            for state, (item, leaf) in zip(got, batch.kept):
                assert (state - want[(*items[item], int(leaf))]).abs().max() < 1e-5


def test_the_mask_must_have_the_queries_dtype(tiny_model_dir):
    model = load_lm(str(tiny_model_dir), None, torch.float32)
    q = torch.zeros(1, 4, 3, 16)
    with pytest.raises(AssertionError, match="attention mask dtype torch.float16 differs"):
        _attend(LAYOUTS["gpt2"], model.h[0].attn, q, q, q, torch.zeros(1, 1, 3, 3, dtype=torch.float16))


def test_gpt2_gelu_is_loaded_as_the_fused_kernel_equal_within_rounding(tiny_model_dir):
    model = load_lm(str(tiny_model_dir), None, torch.float32)
    assert model.config.activation_function == "gelu_pytorch_tanh"
    x = torch.linspace(-12, 12, 200_001)
    want, got = NewGELUActivation()(x), model.h[0].mlp.act(x)
    eps = torch.finfo(torch.float32).eps
    assert ((got - want).abs() <= 2 * eps * want.abs().clamp_min(1)).all()   # within two units of rounding
    assert isinstance(model.h[0].mlp.act, torch.nn.Module) and not isinstance(model.h[0].mlp.act, NewGELUActivation)


def test_a_single_prompt_without_head_or_stem_runs_too(tokenizer, tiny_model_dir):
    ids = np.array(tokenizer.encode("From <01/01/2020 00:10> the values were <1, 2, 3> every hour"))
    single = Prompt(ids, np.zeros(len(ids), np.int8))
    trie = build_trie([[single]], share_head=False)
    model = load_lm(str(tiny_model_dir), None, torch.float32)
    reference = GPT2Model.from_pretrained(tiny_model_dir).eval()
    got = last_token_states(model, batches([trie], [(0, 0)], 4096)[0], CPU)
    assert (got[0] - gpt2_state(reference, single)).abs().max() < 1e-5
