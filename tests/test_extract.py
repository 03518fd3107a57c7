"""Extraction against the deliberately plain oracle (tests/plain_teacher.py) on real weather windows."""

import numpy as np
import pytest
import torch

from plain_teacher import plain_teacher
from timekd_embed.errors import InputError
from timekd_embed.extract import Settings, check_context, embed_windows, load_sca, load_teacher, save_sca
from timekd_embed.prompts import SplitPrompts

P = 24

@pytest.fixture(scope="module")
def sca_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("sca") / "sca.safetensors"
    save_sca(path, n_vars=21, d_model=64, seed=2024)
    return path


def settings(model_dir, **kw):
    base = dict(name="weather", template=None, pred_len=P, split="train", model=str(model_dir), revision=None,
                precision="fp32", fidelity="reference", limit_windows=None, device="cpu")
    return Settings(**(base | kw))


# Windows 0 and 1; one whose Tdew inputs start negative; one holding OT = -9999 (row 7244).
WINDOWS = [0, 1, 5000, 7200]


@pytest.mark.parametrize("fidelity", ["reference", "corrected"])
def test_batched_extraction_equals_the_plain_teacher(train_split, tokenizer, tiny_model_dir, sca_path, fidelity):
    _, raw, stamps = train_split
    teacher = load_teacher(settings(tiny_model_dir, fidelity=fidelity), sca_path, devices=["cpu"])
    prompts = SplitPrompts(tokenizer, raw, stamps, "weather", P)
    got = np.concatenate([embed_windows(teacher, prompts, [i], fidelity, batch_tokens=8192)[0] for i in WINDOWS])
    want = plain_teacher(raw, stamps, WINDOWS, P, "weather", tokenizer, teacher.model.float(),
                         load_sca(sca_path).state_dict(), fidelity)
    assert got.shape == (len(WINDOWS), 21, 64) and got.dtype == np.float32
    assert np.abs(got - want).max() < 1e-4


def test_fidelities_differ_where_the_published_defect_bites(train_split, tokenizer, tiny_model_dir, sca_path):
    _, raw, stamps = train_split
    teacher = load_teacher(settings(tiny_model_dir), sca_path, devices=["cpu"])
    prompts = SplitPrompts(tokenizer, raw, stamps, "weather", P)
    ref, _ = embed_windows(teacher, prompts, [0], "reference", 8192)
    cor, _ = embed_windows(teacher, prompts, [0], "corrected", 8192)
    assert np.abs(ref - cor).max() > 1e-3


def test_batch_size_and_window_ranges_do_not_change_results(train_split, tokenizer, tiny_model_dir, sca_path):
    _, raw, stamps = train_split
    teacher = load_teacher(settings(tiny_model_dir), sca_path, devices=["cpu"])
    prompts = SplitPrompts(tokenizer, raw, stamps, "weather", P)
    one_by_one = np.concatenate([embed_windows(teacher, prompts, [i], "reference", 1024)[0] for i in range(3)])
    together, counts = embed_windows(teacher, prompts, [0, 1, 2], "reference", 1 << 16)
    assert np.abs(one_by_one - together).max() < 1e-5
    gt, hd = prompts.lengths([0, 1, 2])
    assert counts["tokens"] == gt.sum() + hd.sum()
    assert counts["computed"] < 0.7 * counts["tokens"]     # the shared GT/HD prefix runs once


def test_layers_split_over_two_devices_equal_one_device(train_split, tokenizer, tiny_model_dir, sca_path):
    """A device map with the two blocks on two devices, dispatched by accelerate (last_token_states
    moves the activations to each block's device)."""
    _, raw, stamps = train_split
    prompts = SplitPrompts(tokenizer, raw, stamps, "weather", P)
    plain = load_teacher(settings(tiny_model_dir), sca_path, devices=["cpu"])
    split_map = {"wte": "cpu", "wpe": "cpu", "drop": "cpu", "h.0": "cpu", "h.1": "cpu", "ln_f": "cpu"}
    split = load_teacher(settings(tiny_model_dir), sca_path, devices=["cpu", "cpu"], device_map=split_map)
    assert hasattr(split.model.h[1], "_hf_hook")        # really dispatched, not just moved
    a, _ = embed_windows(plain, prompts, [0, 1], "reference", 8192)
    b, _ = embed_windows(split, prompts, [0, 1], "reference", 8192)
    assert np.array_equal(a, b)


def test_one_replica_per_device_equals_one_device(train_split, tokenizer, tiny_model_dir, sca_path):
    """Data parallel over two (CPU) devices: the windows are shared out, the results unchanged."""
    _, raw, stamps = train_split
    prompts = SplitPrompts(tokenizer, raw, stamps, "weather", P)
    plain = load_teacher(settings(tiny_model_dir), sca_path, devices=["cpu"])
    replicated = load_teacher(settings(tiny_model_dir, placement="data_parallel"), sca_path, devices=["cpu", "cpu"])
    assert replicated.placement == "data_parallel" and len(replicated.replicas) == 2
    a, counts_a = embed_windows(plain, prompts, [0, 1, 2], "reference", 8192)
    b, counts_b = embed_windows(replicated, prompts, [0, 1, 2], "reference", 8192)
    # Other batch compositions, so equal up to float rounding, not bit for bit.
    assert np.abs(a - b).max() < 1e-5 and counts_a == counts_b


def test_a_horizon_too_long_for_the_context_fails_before_model_work(train_split, tokenizer):
    names, raw, stamps = train_split
    prompts = SplitPrompts(tokenizer, raw[:2000], stamps[:2000], "weather", 336)
    with pytest.raises(InputError, match=r"pred_len 336, split train: the longest prompt has 1\d{3} tokens"):
        check_context(prompts, 1024, "train", np.arange(prompts.n_windows), names)


def test_sca_weights_use_the_published_names_and_the_seed(sca_path, tmp_path):
    state = load_sca(sca_path).state_dict()
    assert set(state) == {
        "layers.0.self_attn.W_Q.weight", "layers.0.self_attn.W_Q.bias", "layers.0.self_attn.W_K.weight",
        "layers.0.self_attn.W_K.bias", "layers.0.self_attn.W_V.weight", "layers.0.self_attn.W_V.bias",
        "layers.0.self_attn.sdp_attn.scale", "layers.0.self_attn.to_out.0.weight", "layers.0.self_attn.to_out.0.bias",
        "layers.0.norm_attn.weight", "layers.0.norm_attn.bias", "layers.0.ff.0.weight", "layers.0.ff.0.bias",
        "layers.0.ff.3.weight", "layers.0.ff.3.bias", "layers.0.norm_ffn.weight", "layers.0.norm_ffn.bias"}
    assert state["layers.0.ff.0.weight"].shape == (4 * 64, 21)
    assert state["layers.0.self_attn.sdp_attn.scale"].item() == pytest.approx(21 ** -0.5)
    save_sca(tmp_path / "again.safetensors", 21, 64, 2024)
    save_sca(tmp_path / "other.safetensors", 21, 64, 7)
    again, other = load_sca(tmp_path / "again.safetensors").state_dict(), load_sca(tmp_path / "other.safetensors").state_dict()
    assert all(torch.equal(state[k], again[k]) for k in state)
    assert not torch.equal(state["layers.0.self_attn.W_Q.weight"], other["layers.0.self_attn.W_Q.weight"])
