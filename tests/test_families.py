"""Teachers other than GPT-2 (Llama, Mistral, Qwen2, Phi-3): the workflow's embeddings against the
plain reference of tests/plain_teacher.py, which runs each prompt through the family's own
transformers class. Small random-weight models from each family's config class, REAL tokenizers."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch.nn.functional as F
import transformers

from conftest import TOKENIZER_DIR, TOKENIZERS, make_family_model_dir, need
from helpers import BIN, extract_one, snakemake, weather_rows, weather_settings
from plain_teacher import plain_teacher
from runs import OFFLINE, new_work
from timekd_embed.errors import InputError
from timekd_embed.extract import embed_horizons
from timekd_embed.families import context_length
from timekd_embed.prompts import SplitPrompts
from timekd_embed.records import read_tensors
from timekd_embed.sca import load_sca, save_sca
from timekd_embed.split_job import check_context
from timekd_embed.table import load_csv
from timekd_embed.teacher import load_teacher
from timekd_embed.windows import write_windows

ROWS = 8000          # of the train split: enough for windows 0 and 700 at P = 192
WINDOWS = [0, 700]
PRED_LENS = (24, 192)
WIDTH = 64


@pytest.fixture(scope="module")
def sca_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("sca") / "sca.safetensors"
    save_sca(path, n_vars=21, d_model=WIDTH, seed=2024)
    return path


def model_dir(request, family: str) -> Path:
    return request.getfixturevalue("family_model_dir")(family)


def oracle_model(folder: Path):
    """The checkpoint through the family's own class as users load it: eager attention, fp32."""
    return transformers.AutoModelForCausalLM.from_pretrained(str(folder), attn_implementation="eager").float().eval()


@pytest.mark.parametrize("fidelity", ["reference", "corrected"])
@pytest.mark.parametrize("family", ["qwen2", "llama", "mistral", "phi3"])
def test_each_family_equals_its_plain_reference(request, train_split, sca_path, family, fidelity):
    folder = model_dir(request, family)
    _, raw, stamps = train_split
    teacher = load_teacher(weather_settings(folder, fidelity=fidelity).teacher, sca_path, ["cpu"])
    prompts = {P: SplitPrompts(teacher.tokenizer, raw[:ROWS], stamps[:ROWS], "weather", P) for P in PRED_LENS}
    got, counts = embed_horizons(teacher, prompts, WINDOWS, fidelity, batch_tokens=8192)
    model = oracle_model(folder)
    for P in PRED_LENS:
        want = plain_teacher(raw, stamps, WINDOWS, P, "weather", teacher.tokenizer, model,
                             load_sca(sca_path).state_dict(), fidelity)
        assert got[P].shape == (len(WINDOWS), 21, WIDTH)
        assert np.abs(got[P] - want).max() < 1e-4, (family, P)
    # The shared prefixes (across GT/HD and across horizons) run once for these tokenizers too.
    assert counts["computed"] < 0.62 * counts["tokens"]


@pytest.mark.parametrize("family", ["qwen2", "llama"])
def test_grouped_query_keys_stay_at_their_heads_and_the_last_block_runs_on_kept_rows(request, train_split, sca_path,
                                                                                      family, monkeypatch):
    """A spy around SDPA (it calls through): keys and values keep num_key_value_heads heads, as in
    transformers' own SDPA path, and the last block attends from fewer query rows than the first."""
    folder = model_dir(request, family)
    _, raw, stamps = train_split
    teacher = load_teacher(weather_settings(folder).teacher, sca_path, ["cpu"])
    config = teacher.model.config
    seen = []
    sdpa = F.scaled_dot_product_attention

    def spy(q, k, v, **kw):
        seen.append((q.shape, k.shape, v.shape))
        return sdpa(q, k, v, **kw)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    prompts = {24: SplitPrompts(teacher.tokenizer, raw[:ROWS], stamps[:ROWS], "weather", 24)}
    embed_horizons(teacher, prompts, [0], "reference", batch_tokens=1 << 16)
    assert seen
    assert {q[1] for q, _, _ in seen} == {config.num_attention_heads}
    assert {k[1] for _, k, _ in seen} == {v[1] for _, _, v in seen} == {config.num_key_value_heads}
    first = sum(q[0] * q[2] for q, _, _ in seen[:len(seen) // 2])   # 2 blocks: first half is block 0
    last = sum(q[0] * q[2] for q, _, _ in seen[len(seen) // 2:])
    assert last < first


def test_an_unsupported_architecture_is_one_sentence_naming_it_and_the_supported_ones(tmp_path):
    folder = tmp_path / "neox"
    shutil.copytree(need(TOKENIZER_DIR), folder)
    (folder / "config.json").write_text(json.dumps({"model_type": "gpt_neox", "architectures": ["GPTNeoXForCausalLM"],
                                                    "hidden_size": 64, "num_hidden_layers": 2}))
    with pytest.raises(InputError) as error:
        load_teacher(weather_settings(folder).teacher, tmp_path / "sca.safetensors", ["cpu"])
    message = str(error.value)
    assert "'gpt_neox'" in message and "GPTNeoXForCausalLM" in message
    assert all(name in message for name in ("gpt2", "llama", "mistral", "qwen2", "phi3"))
    assert "\n" not in message


def test_embeddings_padded_beyond_the_tokenizer_load_and_a_tokenizer_beyond_them_is_refused(tmp_path, sca_path):
    """Qwen2.5 checkpoints hold more embedding rows (151,936) than the tokenizer has ids: fine. The
    other way round, an id could index past the embeddings: one sentence."""
    tokenizer_size = len(transformers.AutoTokenizer.from_pretrained(str(need(TOKENIZERS / "qwen2"))))
    padded = make_family_model_dir(tmp_path / "padded", "qwen2", vocab_size=tokenizer_size + 64)
    assert load_teacher(weather_settings(padded).teacher, sca_path, ["cpu"]).model.config.vocab_size == \
        tokenizer_size + 64
    short = make_family_model_dir(tmp_path / "short", "qwen2", vocab_size=tokenizer_size - 64)
    refused = rf"the tokenizer has {tokenizer_size} tokens but the model {tokenizer_size - 64} embeddings"
    with pytest.raises(InputError, match=refused):
        load_teacher(weather_settings(short).teacher, sca_path, ["cpu"])


def test_a_sharded_checkpoint_loads_all_its_shards(tmp_path, train_split, sca_path, family_model_dir):
    """save_pretrained's shards and index, as large checkpoints come: the same teacher as one file."""
    llama_model_dir = family_model_dir("llama")
    sharded = tmp_path / "sharded"
    transformers.AutoModelForCausalLM.from_pretrained(str(llama_model_dir)).save_pretrained(
        sharded, max_shard_size="100KB")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(llama_model_dir / name, sharded / name)
    assert len(list(sharded.glob("model-*-of-*.safetensors"))) > 2
    assert (sharded / "model.safetensors.index.json").is_file()
    _, raw, stamps = train_split
    results = []
    for folder in (llama_model_dir, sharded):
        teacher = load_teacher(weather_settings(folder).teacher, sca_path, ["cpu"])
        prompts = {24: SplitPrompts(teacher.tokenizer, raw[:2000], stamps[:2000], "weather", 24)}
        results.append(embed_horizons(teacher, prompts, [0], "reference", batch_tokens=8192)[0][24])
    # The same weights; tensors at other offsets of other files may take other vectorized paths.
    assert np.abs(results[0] - results[1]).max() < 1e-5
    missing = sorted(sharded.glob("model-*-of-*.safetensors"))[1]
    missing.unlink()
    with pytest.raises(InputError, match=missing.name):
        load_teacher(weather_settings(sharded).teacher, sca_path, ["cpu"])


def test_a_sliding_window_shorter_than_the_prompts_is_refused_before_model_work(tmp_path, train_split):
    """Mistral v0.1's 4,096-token window; here 1,024, so that P = 192's prompts (1,785 tokens with
    this tokenizer) would be cut: refused, naming the window. P = 24's fit and pass."""
    folder = make_family_model_dir(tmp_path / "windowed", "mistral", sliding_window=1024)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder))
    context = context_length(transformers.AutoConfig.from_pretrained(str(folder)))
    assert context == 1024
    names, raw, stamps = train_split
    windows = np.arange(100)
    assert check_context(SplitPrompts(tokenizer, raw[:2000], stamps[:2000], "weather", 24), context, "train", windows,
                         names) < 1024
    with pytest.raises(InputError, match=r"pred_len 192, split train: the longest prompt has 17\d\d tokens.* 1024;"):
        check_context(SplitPrompts(tokenizer, raw[:2000], stamps[:2000], "weather", 192), context, "train", windows,
                      names)


@pytest.fixture(scope="module")
def weather_windows(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("family-windows")
    csv = weather_rows(folder / "weather.csv", 400)
    windows = folder / "train.parquet"
    write_windows(load_csv(csv, target="OT", layout="custom"), "custom", 96, [24], {"train": str(windows)})
    return windows


@pytest.mark.parametrize(("family", "architecture", "prefix", "suffix"), [
    ("qwen2", "qwen2", [], []),
    ("phi3", "phi3", ["<s>"], []),
])
def test_the_embeddings_name_the_architecture_and_the_special_tokens_added(request, tmp_path, weather_windows, sca_path,
                                                                           family, architecture, prefix, suffix):
    """The expected tokens are these tokenizers' defaults (their README: qwen2 adds nothing, phi3 its <s>)."""
    out = tmp_path / "embeddings.safetensors"
    extract_one(weather_settings(model_dir(request, family), limit_windows=1), weather_windows, sca_path, out,
                tmp_path / "stats.json")
    tensors, metadata = read_tensors(out)
    assert metadata["architecture"] == architecture
    assert json.loads(metadata["special_tokens"]) == {"prefix": prefix, "suffix": suffix}
    assert tensors["embeddings"].shape == (1, 21, WIDTH)


# One end-to-end run per tokenizer kind: byte-level BPE with one digit a token (Qwen2), tiktoken-style
# with up to three (Llama 3) and SentencePiece with its BOS (Phi-3). bf16, so that parity has work.
@pytest.mark.parametrize("family", ["qwen2", "llama", "phi3"])
def test_a_workflow_run_with_a_family_model_gives_embeddings_validation_and_a_verified_manifest(
        request, tmp_path, weather_csv, family):
    config = {"dataset": {"name": "weather", "csv": "resources/weather.csv"}, "pred_lens": [24], "splits": ["train"],
              "limit_windows": 2, "precision": "bf16", "device": "cpu", "model": {"name_or_path": "resources/gpt2"},
              "parity": {"windows": 2, "min_cosine": 0.9}}
    work = new_work(tmp_path / "work", model_dir(request, family), weather_rows(tmp_path / "weather.csv", 400),
                    config)
    run = snakemake(work, None, "--cores", "2", env=OFFLINE, fresh=True)
    assert run.returncode == 0, run.stderr[-3000:]
    results = work / "results" / "weather"
    tensors, metadata = read_tensors(results / "embeddings" / "24" / "train.safetensors")
    assert tensors["embeddings"].shape == (2, 21, WIDTH) and metadata["architecture"] == family
    parity = json.loads((results / "validation" / "parity_24.json").read_text())
    assert parity["passed"] and parity["fp32_parity"]["cosine_min"] < 1.0    # bf16 moved the values a little
    verify = subprocess.run([str(BIN / "timekd-embed"), "verify", str(results)], capture_output=True, text=True,
                            check=False)
    assert verify.returncode == 0, verify.stdout + verify.stderr

