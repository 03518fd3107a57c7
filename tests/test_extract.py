"""Extraction against the deliberately plain oracle (tests/plain_teacher.py) on real weather windows."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import GPT2Model

from conftest import make_model_dir
from helpers import weather_settings
from plain_teacher import plain_teacher
from timekd_embed.errors import InputError
from timekd_embed.extract import embed_horizons, embed_windows, extract_horizons
from timekd_embed.prompts import SplitPrompts
from timekd_embed.records import read_tensors
from timekd_embed.sca import load_sca, save_sca
from timekd_embed.settings import Runtime
from timekd_embed.split_job import check_context, prepare_split
from timekd_embed.table import load_csv
from timekd_embed.teacher import load_teacher
from timekd_embed.windows import read_windows, write_windows

P = 24
PRED_LENS = (24, 36, 192)

@pytest.fixture(scope="module")
def sca_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("sca") / "sca.safetensors"
    save_sca(path, n_vars=21, d_model=64, seed=2024)
    return path


def settings(model_dir, **kw):
    return weather_settings(model_dir, **kw)


CPU = Runtime(device="cpu")


# One whose Tdew inputs start negative; one holding OT = -9999 (row 7244).
WINDOWS = [5000, 7200]


@pytest.mark.parametrize("fidelity", ["reference", "corrected"])
def test_all_horizons_in_one_trie_equal_the_plain_teacher(train_split, tokenizer, tiny_model_dir, sca_path, fidelity):
    _, raw, stamps = train_split
    teacher = load_teacher(settings(tiny_model_dir, fidelity=fidelity).teacher, sca_path, ["cpu"])
    prompts = {P: SplitPrompts(tokenizer, raw[:8000], stamps[:8000], "weather", P) for P in PRED_LENS}
    got, counts = embed_horizons(teacher, prompts, WINDOWS, fidelity, batch_tokens=8192)
    for P in PRED_LENS:
        want = plain_teacher(raw, stamps, WINDOWS, P, "weather", tokenizer, teacher.model.float(),
                             load_sca(sca_path).state_dict(), fidelity)
        assert got[P].shape == (len(WINDOWS), 21, 64) and got[P].dtype == np.float32
        assert np.abs(got[P] - want).max() < 1e-4, P
    # The prefix every horizon shares runs once: fewer positions than the horizons' own packings together.
    assert counts["computed"] < 0.62 * counts["tokens"]


@pytest.mark.parametrize("fidelity", ["reference", "corrected"])
def test_all_horizons_in_one_job_give_each_horizons_own_job_bit_for_bit(train_split, tokenizer, tiny_model_dir,
                                                                         sca_path, fidelity):
    """share_horizons true and false run the same operations on the same tensors: equal bits."""
    _, raw, stamps = train_split
    teacher = load_teacher(settings(tiny_model_dir, fidelity=fidelity).teacher, sca_path, ["cpu"])
    prompts = {P: SplitPrompts(tokenizer, raw[:8000], stamps[:8000], "weather", P) for P in PRED_LENS}
    windows = np.array([0, 1, 2, 3, 5000, 7200])
    for budget in (2048, 1 << 16):                   # several batches with split leaf buckets; one batch
        together, _ = embed_horizons(teacher, prompts, windows, fidelity, budget)
        for P in PRED_LENS:
            alone, _ = embed_windows(teacher, prompts[P], windows, fidelity, budget)
            assert np.array_equal(together[P], alone), (budget, P, np.abs(together[P] - alone).max())


def test_horizons_with_fewer_windows_get_their_own_prefix_of_the_windows(train_split, tokenizer, tiny_model_dir,
                                                                         sca_path):
    """400 rows: P = 24 has windows 0-280, P = 192 only 0-112; windows 110-114 exist at P = 192 up to 112."""
    _, raw, stamps = train_split
    teacher = load_teacher(settings(tiny_model_dir).teacher, sca_path, ["cpu"])
    prompts = {P: SplitPrompts(tokenizer, raw[:400], stamps[:400], "weather", P) for P in (192, 24)}
    assert prompts[192].n_windows == 113 and prompts[24].n_windows == 281
    together, counts = embed_horizons(teacher, prompts, np.arange(110, 115), "reference", 4096)
    assert together[24].shape == (5, 21, 64) and together[192].shape == (3, 21, 64)
    for P in (192, 24):
        alone, alone_counts = embed_windows(teacher, prompts[P], np.arange(110, 110 + len(together[P])),
                                            "reference", 4096)
        # Windows 113 and 114 share batches with 110-112 in the joint job only: equal within rounding.
        assert np.abs(together[P] - alone).max() < 1e-5
        assert counts["tokens_per_pred_len"][P] == alone_counts["tokens"]


def test_fidelities_differ_where_the_published_defect_bites(train_prompts, tiny_model_dir, sca_path):
    teacher = load_teacher(settings(tiny_model_dir).teacher, sca_path, ["cpu"])
    prompts = train_prompts(P)
    ref, _ = embed_windows(teacher, prompts, [0], "reference", 8192)
    cor, _ = embed_windows(teacher, prompts, [0], "corrected", 8192)
    assert np.abs(ref - cor).max() > 1e-3


def test_batch_size_and_window_ranges_do_not_change_results(train_prompts, tiny_model_dir, sca_path):
    teacher = load_teacher(settings(tiny_model_dir).teacher, sca_path, ["cpu"])
    prompts = train_prompts(P)
    one_by_one = np.concatenate([embed_windows(teacher, prompts, [i], "reference", 1024)[0] for i in range(3)])
    together, counts = embed_windows(teacher, prompts, [0, 1, 2], "reference", 1 << 16)
    assert np.abs(one_by_one - together).max() < 1e-5
    gt, hd = prompts.lengths([0, 1, 2])
    assert counts["tokens"] == gt.sum() + hd.sum()
    assert counts["computed"] < 0.7 * counts["tokens"]     # the shared GT/HD prefix runs once


class Recorder:
    """What the progress bar is told: every update."""

    format_dict = {"elapsed": 1.0}

    def __init__(self):
        self.updates = []

    def update(self, n):
        self.updates.append(n)

    def set_postfix(self, **_):
        pass


def test_the_progress_moves_as_each_batch_finishes_not_only_after_a_whole_chunk(train_prompts, tiny_model_dir,
                                                                                sca_path):
    # On a CPU a chunk of windows (or a whole job's few windows) takes many minutes: the bar must not sit at 0 until
    # every batch of it is done. 3 windows at a budget of 1024 tokens: many batches per window.
    teacher = load_teacher(settings(tiny_model_dir).teacher, sca_path, ["cpu"])
    bar = Recorder()
    embed_windows(teacher, train_prompts(P), [0, 1, 2], "reference", 1024, bar)
    assert sum(bar.updates) == pytest.approx(3) and all(0 < step <= 3 for step in bar.updates)
    assert len(bar.updates) > 10 and bar.updates[0] < 1    # fractions of a window, from the first batch on


def test_layers_split_over_two_devices_equal_one_device(train_prompts, tiny_model_dir, sca_path):
    """A device map with the two blocks on two devices, dispatched by accelerate (last_token_states
    moves the activations to each block's device)."""
    prompts = train_prompts(P)
    plain = load_teacher(settings(tiny_model_dir).teacher, sca_path, ["cpu"])
    split_map = {"wte": "cpu", "wpe": "cpu", "drop": "cpu", "h.0": "cpu", "h.1": "cpu", "ln_f": "cpu"}
    split = load_teacher(settings(tiny_model_dir).teacher, sca_path, ["cpu", "cpu"], device_map=split_map)
    assert hasattr(split.model.h[1], "_hf_hook")        # really dispatched, not just moved
    a, _ = embed_windows(plain, prompts, [0, 1], "reference", 8192)
    b, _ = embed_windows(split, prompts, [0, 1], "reference", 8192)
    assert np.array_equal(a, b)


def test_one_replica_per_device_equals_one_device(train_prompts, tiny_model_dir, sca_path):
    """Data parallel over two (CPU) devices: the windows are shared out, the results unchanged."""
    prompts = train_prompts(P)
    plain = load_teacher(settings(tiny_model_dir).teacher, sca_path, ["cpu"])
    replicated = load_teacher(settings(tiny_model_dir).teacher, sca_path, ["cpu", "cpu"], "data_parallel")
    assert replicated.placement == "data_parallel" and len(replicated.replicas) == 2
    a, counts_a = embed_windows(plain, prompts, [0, 1, 2], "reference", 8192)
    b, counts_b = embed_windows(replicated, prompts, [0, 1, 2], "reference", 8192)
    # Other batch compositions, so equal up to float rounding, not bit for bit (and heads may run in more batches).
    assert np.abs(a - b).max() < 1e-5 and counts_a["tokens"] == counts_b["tokens"]


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
    again = load_sca(tmp_path / "again.safetensors").state_dict()
    other = load_sca(tmp_path / "other.safetensors").state_dict()
    assert all(torch.equal(state[k], again[k]) for k in state)
    assert not torch.equal(state["layers.0.self_attn.W_Q.weight"], other["layers.0.self_attn.W_Q.weight"])


@pytest.fixture(scope="module")
def small_windows(tmp_path_factory, weather_csv) -> dict:
    """Windows of the first 400 rows of weather.csv (train split: rows 0-279)."""
    folder = tmp_path_factory.mktemp("small")
    with open(weather_csv, encoding="utf-8", newline="") as f:
        (folder / "weather.csv").write_text("".join(next(f) for _ in range(401)), encoding="utf-8", newline="")
    out = {s: str(folder / f"{s}.parquet") for s in ("train", "val", "test")}
    write_windows(load_csv(folder / "weather.csv"), "custom", 96, [24], out)
    return out


@pytest.fixture(scope="module")
def overflow_model_dir(tmp_path_factory):
    """GPT-2-shaped, 4 blocks, whose MLPs add 25,000 to residual dimension 7 in every block (real GPT-2
    has such outlier dimensions, smaller): 25,000, 50,000, then 75,000 after block 2, beyond fp16's 65,504."""
    folder = make_model_dir(tmp_path_factory.mktemp("overflow"), n_layer=4)
    model = GPT2Model.from_pretrained(folder)
    with torch.no_grad():
        for block in model.h:
            block.mlp.c_proj.bias[7] = 25_000.0
    model.save_pretrained(folder, safe_serialization=True)
    return folder


def test_an_fp16_overflow_stops_the_job_naming_precision_block_window_and_variable(
        small_windows, overflow_model_dir, sca_path, tmp_path):
    out = {P: (tmp_path / f"{P}.safetensors", tmp_path / f"{P}.json") for P in (24, 36)}
    job = settings(overflow_model_dir, precision="fp16", limit_windows=2)
    with pytest.raises(InputError) as error:
        extract_horizons(job, CPU, "train", [24, 36], small_windows["train"], sca_path, out)
    message = str(error.value)
    assert message.startswith("precision fp16: a hidden state became inf or NaN in block 2 of 4 (from 0), window ")
    assert "variable '" in message and "set config key precision to bf16" in message and "or fp32" in message
    assert len(message.splitlines()) == 1
    assert not any(path.exists() for pair in out.values() for path in pair)        # no file written
    for precision in ("bf16", "fp32"):                                            # fp32's range: finite
        stats = extract_horizons(settings(overflow_model_dir, precision=precision, limit_windows=2), CPU, "train",
                                 [24, 36], small_windows["train"], sca_path, out)
        assert stats[36]["windows"] == 2 and json.loads(out[36][1].read_text())["precision"] == precision
        assert all(np.isfinite(read_tensors(out[P][0])[0]["embeddings"].numpy()).all() for P in out)


def test_the_prompts_of_the_first_windows_read_only_their_rows(small_windows, tokenizer, tiny_model_dir):
    # Train split of small_windows: rows 0-279, 280 - 96 - 24 + 1 = 161 windows at P = 24. Windows 0..4
    # read rows 0..4 + 96 + 24 - 1 = 123: 124 rows.
    split_windows = read_windows(small_windows["train"])
    whole = SplitPrompts(tokenizer, split_windows.raw, split_windows.stamps(), "weather", 24)
    first = prepare_split(tokenizer, split_windows, settings(tiny_model_dir), [24], 1024, up_to=5).prompts[24]
    assert whole.n_windows == 161 and first.n_windows == 5 and len(first.raw) == 124
    for i in (0, 4):
        assert all(np.array_equal(a, b) for a, b in zip(first.window_ids(i).gt + first.window_ids(i).hd,
                                                        whole.window_ids(i).gt + whole.window_ids(i).hd))


def test_a_job_hashes_the_weights_and_the_sca_once_whatever_its_horizons(small_windows, tiny_model_dir, sca_path,
                                                                          tmp_path, monkeypatch):
    # GPT-2 small's weights are 548 MB: a job over the five horizons once hashed them five times.
    import timekd_embed.extract as extract
    import timekd_embed.records as records
    hashed = []

    real = records.sha256_file

    def count(path):
        hashed.append(Path(path).name)
        return real(path)
    for module in (extract, records):        # the SCA is hashed in extract, the weights through records
        monkeypatch.setattr(module, "sha256_file", count)
    out = {P: (tmp_path / f"{P}.safetensors", tmp_path / f"{P}.json") for P in (24, 36, 48)}
    extract_horizons(settings(tiny_model_dir, limit_windows=1), CPU, "train", [24, 36, 48], small_windows["train"],
                     sca_path, out)
    # Whatever the number of horizons (3 here): the weights hashed once for the metadata, the SCA at most
    # twice (its record check, unless a check earlier in this process is still valid, and the metadata).
    assert hashed.count("model.safetensors") == 1 and 1 <= hashed.count("sca.safetensors") <= 2
    assert max(map(hashed.count, hashed)) <= 2
    for P in out:
        meta = read_tensors(out[P][0])[1]
        assert meta["pred_len"] == str(P) and json.loads(meta["settings"])["pred_len"] == P
