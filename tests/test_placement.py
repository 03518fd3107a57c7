"""Fit before you load: the placement plan from config.json alone, for the published configs of
Qwen2.5-7B, Qwen2.5-14B, Llama-3.1-8B and GPT-2 small on GPUs stated by TIMEKD_GPU_MEMORY (no GPU
needed), and the plan's layer split run through the two-CPU-device seam."""

from __future__ import annotations

import json
import re
import resource

import numpy as np
import pytest

from helpers import weather_settings
from timekd_embed.checkpoint import load_config, load_tokenizer
from timekd_embed.devices import device_memory
from timekd_embed.errors import InputError
from timekd_embed.extract import embed_windows
from timekd_embed.placement import meta_model, module_bytes, per_token_bytes, plan_placement
from timekd_embed.prompts import SplitPrompts
from timekd_embed.sca import save_sca
from timekd_embed.teacher import load_teacher

GIB = 2**30
TWO_GPUS = ["cuda:0", "cuda:1"]

# The published config.json files (Hugging Face Qwen/Qwen2.5-7B, Qwen/Qwen2.5-14B and
# meta-llama/Llama-3.1-8B), as mirrored verbatim in github.com/citsjtu2020/LLM-Prof,
# sglang/Model_Config.md at commit 8434c8d19c396b2f95d92a67845a7c0a0e0dd512.
QWEN25_7B = {
    "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643,
    "eos_token_id": 151643, "hidden_act": "silu", "hidden_size": 3584, "initializer_range": 0.02,
    "intermediate_size": 18944, "max_position_embeddings": 131072, "max_window_layers": 28, "model_type": "qwen2",
    "num_attention_heads": 28, "num_hidden_layers": 28, "num_key_value_heads": 4, "rms_norm_eps": 1e-06,
    "rope_theta": 1000000.0, "sliding_window": 131072, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
    "transformers_version": "4.40.1", "use_cache": True, "use_mrope": False, "use_sliding_window": False,
    "vocab_size": 152064,
}
QWEN25_14B = {
    "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643,
    "eos_token_id": 151643, "hidden_act": "silu", "hidden_size": 5120, "initializer_range": 0.02,
    "intermediate_size": 13824, "max_position_embeddings": 131072, "max_window_layers": 48, "model_type": "qwen2",
    "num_attention_heads": 40, "num_hidden_layers": 48, "num_key_value_heads": 8, "rms_norm_eps": 1e-05,
    "rope_theta": 1000000.0, "sliding_window": 131072, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
    "transformers_version": "4.43.1", "use_cache": True, "use_sliding_window": False, "vocab_size": 152064,
}
LLAMA31_8B = {
    "architectures": ["LlamaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
    "bos_token_id": 128000, "eos_token_id": 128001, "hidden_act": "silu", "hidden_size": 4096,
    "initializer_range": 0.02, "intermediate_size": 14336, "max_position_embeddings": 131072, "mlp_bias": False,
    "model_type": "llama", "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8,
    "pretraining_tp": 1, "rms_norm_eps": 1e-05,
    "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "rope_theta": 500000.0, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
    "transformers_version": "4.43.0.dev0", "use_cache": True, "vocab_size": 128256,
}
# Hugging Face openai-community/gpt2 config.json (the fields that size the model).
GPT2_SMALL = {"architectures": ["GPT2LMHeadModel"], "activation_function": "gelu_new", "model_type": "gpt2",
              "n_ctx": 1024, "n_embd": 768, "n_head": 12, "n_layer": 12, "n_positions": 1024, "vocab_size": 50257}


def rotary_params(c: dict, biases: bool) -> int:
    """Parameters of a Llama-style base model (no LM head), counted by hand from config.json: token
    embeddings, per block q/k/v/o (+ q/k/v biases for Qwen2), gate/up/down and two norms, final norm.
    Qwen2.5-7B: 6.53e9 outside the embeddings, as its model card says."""
    d, inner, hd = c["hidden_size"], c["intermediate_size"], c["hidden_size"] // c["num_attention_heads"]
    q, kv = c["num_attention_heads"] * hd, c["num_key_value_heads"] * hd
    block = d * (q + 2 * kv) + q * d + 3 * d * inner + 2 * d + (q + 2 * kv) * biases
    return c["vocab_size"] * d + c["num_hidden_layers"] * block + d


@pytest.fixture
def gpus(monkeypatch):
    """State the GPUs' memory as a user would: TIMEKD_GPU_MEMORY (no GPU on this machine)."""
    for name in ("CUDA_VISIBLE_DEVICES", "TIMEKD_NODE_GPUS", "TIMEKD_GPU_MEMORY"):
        monkeypatch.delenv(name, raising=False)

    def state(value: str) -> None:
        monkeypatch.setenv("TIMEKD_GPU_MEMORY", value)
    return state


def folder(tmp_path, raw: dict):
    """A model folder holding config.json only: the plan needs nothing else."""
    path = tmp_path / f"{raw['model_type']}-{raw.get('hidden_size') or raw['n_embd']}"
    path.mkdir(exist_ok=True)
    (path / "config.json").write_text(json.dumps(raw))
    return path


def plan(tmp_path, raw: dict, precision: str, **kw):
    return plan_placement(load_config(str(folder(tmp_path, raw))), precision, kw.pop("layers", None),
                          kw.pop("devices", TWO_GPUS), **kw)


def test_weights_counted_on_the_meta_device_are_the_published_models(tmp_path):
    for raw, biases in ((QWEN25_7B, True), (QWEN25_14B, True), (LLAMA31_8B, False)):
        config = load_config(str(folder(tmp_path, raw)))
        for precision, size in (("bf16", 2), ("fp32", 4)):
            counted = sum(module_bytes(config, precision).values())
            assert abs(counted - size * rotary_params(raw, biases)) <= 1024   # + the rotary frequencies (fp32)
    assert rotary_params(QWEN25_7B, True) - 152064 * 3584 == pytest.approx(6.53e9, rel=1e-3)


def test_the_meta_build_allocates_no_weight(tmp_path):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    model = meta_model(load_config(str(folder(tmp_path, QWEN25_14B))))      # 56 GB in fp32 were it real
    assert all(param.is_meta for param in model.parameters())
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before < GIB


def test_qwen25_14b_bf16_on_two_24_gib_cards_is_split_by_layers(tmp_path, gpus):
    gpus("2x24GiB")
    split = plan(tmp_path, QWEN25_14B, "bf16")
    assert split.placement == "model_parallel"
    weights = 2 * rotary_params(QWEN25_14B, True)
    assert f"{weights / GIB:.2f} GiB of weights in bf16 (48 blocks)" in split.reason
    first, second = split.devices
    assert first.blocks == list(range(len(first.blocks))) and second.blocks == list(range(len(first.blocks), 48))
    assert 20 <= len(first.blocks) <= 28                          # balanced: the embeddings weigh on the first
    assert abs(first.weights - second.weights) < 0.05 * weights
    assert abs(first.weights + second.weights - weights) <= 1024
    assert first.total <= 24 * GIB and second.total <= 24 * GIB
    device_map = split.device_map
    assert device_map["embed_tokens"] == 0 and device_map["rotary_emb"] == 0 and device_map["norm"] == 1
    assert [device_map[f"layers.{i}"] for i in range(48)] == [0] * len(first.blocks) + [1] * len(second.blocks)
    # batch_tokens null: the GPU default halved until the split fits; twice that budget does not
    assert split.batch_tokens < 65536
    config = load_config(str(folder(tmp_path, QWEN25_14B)))
    assert plan_placement(config, "bf16", None, TWO_GPUS, batch_tokens=2 * split.batch_tokens).placement == "refused"


def test_qwen25_7b_bf16_on_two_80_gib_cards_is_one_copy_per_card(tmp_path, gpus):
    gpus("80GiB")
    copies = plan(tmp_path, QWEN25_7B, "bf16")
    assert copies.placement == "data_parallel" and copies.device_map is None
    assert copies.batch_tokens == 65536                            # the GPU default, as for GPT-2
    assert [device.blocks for device in copies.devices] == [list(range(28))] * 2
    assert copies.reason.startswith("one copy per device: 13.17 GiB of weights in bf16")
    assert all(device.memory == 80 * GIB and device.total <= 80 * GIB for device in copies.devices)


def test_qwen25_14b_fp32_on_two_24_gib_cards_is_refused_in_one_sentence_before_any_weight(tmp_path, gpus):
    """The folder holds config.json only: any weight or tokenizer read would fail with another sentence."""
    gpus("24GiB,24GiB")
    save_sca(tmp_path / "sca.safetensors", n_vars=21, d_model=5120, seed=2024)
    model_dir = folder(tmp_path, QWEN25_14B)
    with pytest.raises(InputError) as refused:
        load_teacher(weather_settings(model_dir).teacher, tmp_path / "sca.safetensors", TWO_GPUS)
    sentence = str(refused.value)
    weights = 4 * rotary_params(QWEN25_14B, True)
    assert sentence.startswith(f"model {model_dir} needs {weights / GIB:.2f} GiB of weights in fp32 (48 blocks)")
    assert "2 GPU(s) offer 24.00 GiB, 24.00 GiB, too little even with the blocks split over them" in sentence
    assert f"precision bf16 (half the weights: {weights / 2 / GIB:.2f} GiB)" in sentence
    assert "more GPUs per job (config key gpus_per_job: " in sentence
    assert "fewer blocks (config key model.layers: " in sentence
    assert "\n" not in sentence and ". " not in sentence and sentence.endswith(".")


def test_qwen25_7b_bf16_on_two_24_gib_cards_is_one_copy_per_card_at_a_smaller_budget(tmp_path, gpus):
    """Weights 13.17 GiB leave about 10 GiB per card: at the GPU default of 65,536 tokens the kept prefix
    states and activations do not fit beside them, in one copy or split; with batch_tokens null the
    plan halves the budget until one copy per card fits, and says so."""
    gpus("2x24GiB")
    chosen = plan(tmp_path, QWEN25_7B, "bf16")
    assert chosen.placement == "data_parallel" and chosen.batch_tokens == 16384
    assert re.search(r"13\.17 GiB of weights in bf16 \(28 blocks\) \+ [\d.]+ GiB of kept prefix states \+ "
                     r"[\d.]+ GiB of activations at batch_tokens 16384 \(prompts up to 2048 tokens\)", chosen.reason)
    device = chosen.devices[0]
    kept_rate, act_rate = per_token_bytes(load_config(str(folder(tmp_path, QWEN25_7B))), "bf16", 2048)
    assert kept_rate == pytest.approx(2 * 4 * 128 * 2 / 3)       # B/3 positions x keys and values of 4 heads
    assert device.kept_prefix == int(16384 * kept_rate) and 0 < device.activations < 24 * GIB - device.weights
    with pytest.raises(InputError, match=r"at batch_tokens 65536 .* use a smaller batch_tokens \(16384\)\.$"):
        plan_placement(load_config(str(folder(tmp_path, QWEN25_7B))), "bf16", None, TWO_GPUS,
                       batch_tokens=65536, name="Qwen2.5-7B").require()


def test_llama31_8b_bf16_and_fp32_on_two_24_gib_cards(tmp_path, gpus):
    gpus("24GiB")
    bf16 = plan(tmp_path, LLAMA31_8B, "bf16")
    assert bf16.placement == "data_parallel"
    assert f"{2 * rotary_params(LLAMA31_8B, False) / GIB:.2f} GiB of weights in bf16 (32 blocks)" in bf16.reason
    fp32 = plan_placement(load_config(str(folder(tmp_path, LLAMA31_8B))), "fp32", None, TWO_GPUS)
    assert fp32.placement == "model_parallel" and fp32.device_map["embed_tokens"] == 0 and fp32.device_map["norm"] == 1


def test_explicit_data_parallel_that_cannot_fit_is_refused_naming_the_split(tmp_path, gpus):
    gpus("2x24GiB")
    refused = plan(tmp_path, QWEN25_14B, "bf16", placement="data_parallel")
    assert refused.placement == "refused"
    assert "too little for one copy on each; use placement auto (the blocks split over the GPUs fit)" in refused.reason


def test_fewer_layers_shrink_the_plan(tmp_path, gpus):
    gpus("2x24GiB")
    eight = plan(tmp_path, QWEN25_14B, "fp32", layers=8)
    assert eight.placement == "data_parallel" and eight.devices[0].blocks == list(range(8))


def test_gpt2_small_keeps_one_replica_per_device(tmp_path, gpus):
    gpus("2x24GiB")
    on_gpus = plan(tmp_path, GPT2_SMALL, "fp16")
    assert on_gpus.placement == "data_parallel" and on_gpus.batch_tokens == 65536
    config = load_config(str(folder(tmp_path, GPT2_SMALL)))
    on_cpus = plan_placement(config, "fp32", None, ["cpu", "cpu"])
    assert on_cpus.placement == "data_parallel" and on_cpus.batch_tokens == 8192
    assert on_cpus.reason == "not planned: CPU memory is not asked"
    assert plan_placement(config, "fp32", None, ["cpu"]).placement == "single"


def test_gpu_memory_statements(gpus, monkeypatch):
    gpus("24GiB")
    assert device_memory(["cuda:0", "cuda:1", "cpu"]) == [24 * GIB, 24 * GIB, None]
    gpus("24GiB,80GiB")
    assert device_memory(TWO_GPUS) == [24 * GIB, 80 * GIB]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")            # a lease of the node's GPU 1
    assert device_memory(["cuda:0"]) == [80 * GIB]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2")
    with pytest.raises(InputError, match=r"gives 2 GPU\(s\), but this job uses GPU 2 of the node"):
        device_memory(["cuda:0"])
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    gpus("2x24GiB")
    monkeypatch.setenv("TIMEKD_NODE_GPUS", "4")
    with pytest.raises(InputError, match=r"gives 2 GPU\(s\) but TIMEKD_NODE_GPUS = 4"):
        device_memory(TWO_GPUS)
    monkeypatch.setenv("TIMEKD_NODE_GPUS", "2")
    assert device_memory(TWO_GPUS) == [24 * GIB] * 2
    gpus("24 gigabytes")
    with pytest.raises(InputError, match=r"TIMEKD_GPU_MEMORY = '24 gigabytes' is no memory size"):
        device_memory(TWO_GPUS)


def test_the_plans_layer_split_runs_through_two_cpu_devices_equal_to_one(family_model_dir, train_split, tmp_path):
    """placement model_parallel on two CPU entries: the plan's own device map (embeddings and rotary
    frequencies first, norm last), dispatched by accelerate, gives one device's embeddings."""
    qwen2_model_dir = family_model_dir("qwen2")
    _, raw, stamp = train_split
    prompts = SplitPrompts(load_tokenizer(str(qwen2_model_dir)), raw[:200], stamp[:200], "weather", 24)
    save_sca(tmp_path / "sca.safetensors", n_vars=21, d_model=64, seed=2024)
    spec = weather_settings(qwen2_model_dir).teacher
    one = load_teacher(spec, tmp_path / "sca.safetensors", ["cpu"])
    split = load_teacher(spec, tmp_path / "sca.safetensors", ["cpu", "cpu"], "model_parallel")
    assert split.placement == "model_parallel" and split.plan.device_map == {
        "embed_tokens": "cpu", "layers.0": "cpu", "layers.1": "cpu", "norm": "cpu", "rotary_emb": "cpu"}
    # Balanced by bytes: the tiny model's embeddings (151,936 x 64) outweigh both its blocks together.
    assert [device.blocks for device in split.plan.devices] == [[], [0, 1]]
    assert hasattr(split.model.layers[1], "_hf_hook")              # really dispatched, not just moved
    a, _ = embed_windows(one, prompts, [0, 1], "reference", 8192)
    b, _ = embed_windows(split, prompts, [0, 1], "reference", 8192)
    assert np.array_equal(a, b)
