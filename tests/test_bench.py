"""`make bench`'s workers (benchmarks/workers.py, benchmarks/baseline.py) on a tiny model: every step
runs, and the figures that are exact (model positions, prompt lengths, the differences between paths
that compute the same function) are checked. The whole-job worker runs in a fresh interpreter, as
benchmarks/run.py spawns every worker (what the parent passes it is checked); the others run the same
`worker_main` in this process, sparing an interpreter's imports each. The family section runs as `make bench
BENCH_ARGS="--only families"` runs it, at a tiny width."""

import contextlib
import json
import logging
import shutil

import pytest
from transformers.utils import logging as hf_logging

from benchmarks.run import main, parse_args, spawn
from benchmarks.workers import SAVINGS_ROUNDS, TIMED_REPEATS, WHOLE_ROUNDS, worker_main
from conftest import ROOT, TOKENIZER_DIR, TOKENIZERS, make_model_dir, need
from timekd_embed import packing
from timekd_embed.packing import PREFIX_SHARE
from timekd_embed.sca import save_sca


@contextlib.contextmanager
def library_logging_kept():
    """worker_main quiets the package's logger and transformers' for its own process; this one goes on."""
    package = logging.getLogger("timekd_embed")
    level, verbosity, bars = package.level, hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    try:
        yield
    finally:
        package.setLevel(level)
        hf_logging.set_verbosity(verbosity)
        (hf_logging.enable_progress_bar if bars else hf_logging.disable_progress_bar)()


def worker(monkeypatch, tmp_path, weather_csv, name: str, *options: str, probe: bool = False,
           fresh: bool = False) -> dict:
    """One worker with the options `make bench`'s parent gives it, from another folder than the
    repository root; its JSON. `fresh`: through run.spawn (`python -m benchmarks.run --worker NAME`)."""
    common = ["--csv", str(weather_csv), "--tokenizer", str(TOKENIZER_DIR), "--device", "cpu", *options]
    monkeypatch.chdir(tmp_path)
    if fresh:
        return spawn(parse_args(common), name, tmp_path, 24, probe=probe)
    args = parse_args([*common, "--worker", name, "--pred-len", "24", "--workdir", str(tmp_path)]
                      + (["--memory-probe"] if probe else []))
    with library_logging_kept():
        worker_main(args)
    return json.loads((tmp_path / f"{name}_P24.json").read_text())


def tiny_teacher(tmp_path) -> None:
    """The work folder the parent prepares: a 2-layer GPT-2 (d = 64) and an SCA for weather's 21 variables."""
    make_model_dir(tmp_path / "model", n_layer=2, n_embd=64, n_head=4)
    save_sca(tmp_path / "sca.safetensors", n_vars=21, d_model=64, seed=0)


def test_each_exact_saving_runs_fewer_positions_and_equals_the_plain_path(monkeypatch, tmp_path, weather_csv):
    make_model_dir(tmp_path / "model", n_layer=2, n_embd=64, n_head=4)
    steps = worker(monkeypatch, tmp_path, weather_csv, "savings")["steps"]
    assert steps[0]["step"].startswith("plain") and len(steps) == 6
    positions = [s["model_tokens"] for s in steps]
    assert positions[3] < 0.6 * positions[0]                # GT and HD share their prefix
    assert positions[4] < positions[3] and positions[5] < positions[4]   # heads once, duplicates once
    assert all(s["max_abs_diff_vs_plain"] < 1e-5 for s in steps)
    assert all(len(s["seconds_all_rounds"]) == SAVINGS_ROUNDS for s in steps)


def test_the_whole_job_runs_fewer_positions_with_the_trie_and_agrees(monkeypatch, tmp_path, weather_csv):
    tiny_teacher(tmp_path)
    # The parent's --pred-lens and --whole-windows reach the worker (spawn once left --pred-lens out: all five ran).
    whole = worker(monkeypatch, tmp_path, weather_csv, "whole", "--pred-lens", "24", "96", "--whole-windows", "2",
                   fresh=True)
    assert len(whole["windows"]) == 2 and whole["pred_lens"] == [24, 96]
    # one job for all horizons gives each horizon's own job's bits
    assert whole["positions_ratio"] > 1.3 and whole["max_abs_diff"] == 0 and whole["max_abs_diff_states"] == 0
    # the rounding floor: one job per horizon against itself at a quarter of the budget
    assert whole["floor_batch_tokens"] == whole["batch_tokens"] // 4 and whole["floor_max_abs_diff"] < 1e-5
    assert len(whole["trie"]["seconds_all_rounds"]) == WHOLE_ROUNDS


def test_the_prefix_share_worker_sets_the_share_and_gives_it_back(monkeypatch, tmp_path, weather_csv):
    tiny_teacher(tmp_path)
    options = ("--pred-lens", "24", "96", "--whole-windows", "2")
    half = worker(monkeypatch, tmp_path, weather_csv, "share", *options, "--prefix-share", "0.5")
    assert PREFIX_SHARE == packing.PREFIX_SHARE == 1 / 6                # given back in this process
    sixth = worker(monkeypatch, tmp_path, weather_csv, "share", *options, "--prefix-share", str(1 / 6))
    assert half["prefix_share"] == 0.5 and half["peak_rss_bytes"] > 0 and half["s_per_window"] > 0
    # the share decides which stems share a batch, hence the padding and the heads' repeats
    assert half["model_positions_per_window"] != sixth["model_positions_per_window"]


def test_the_published_way_equals_embed_windows(monkeypatch, tmp_path, weather_csv):
    # One prompt per forward with the double-loop mask of the last variable's types (the published defect)
    # against the package's batched tries: the same function, so only float rounding apart.
    tiny_teacher(tmp_path)
    base = worker(monkeypatch, tmp_path, weather_csv, "baseline")
    assert base["window"] == 0 and base["pred_len"] == 24 and base["precision"] == "fp32"
    assert base["max_abs_diff_vs_embed_windows"] < 1e-4
    assert set(base["seconds"]) == {"tokenize", "mask", "forward", "sca"}


def test_one_horizon_counts_the_prompt_tokens_of_window_0(monkeypatch, tmp_path, weather_csv):
    tiny_teacher(tmp_path)
    make_model_dir(tmp_path / "model-1layer", n_layer=1, n_embd=64, n_head=4)
    got = worker(monkeypatch, tmp_path, weather_csv, "horizon", "--windows", "1", "--batch-tokens", "2048",
                 "--probe-batch-tokens", "8192", probe=True)
    # Weather train window 0 at P = 24: GT prompts 280-400 GPT-2 tokens, HD 232-328 (docs/teacher.md section 7).
    assert got["window_indices"] == [0]
    assert got["prompt_tokens_gt"] == [280, 400] and got["prompt_tokens_hd"] == [232, 328]
    # Shared prefixes and heads: fewer positions through the model than prompt tokens, padding included.
    assert got["token_counts"]["model_tokens"] < got["tokens"]
    assert len(got["wall_s_all_repeats"]) == TIMED_REPEATS
    assert got["split_windows"] == 36887 - 96 - 24 + 1   # weather train rows - seq_len - P + 1
    # The memory probe fills a batch at its own budget with the 1-layer model, and never exceeds that budget:
    # the batch's stems fill the prefix share of 8,192 tokens to within one weather stem (under 300 tokens).
    probe = got["probe"]
    assert probe["batch_tokens"] == 8192 and 8192 * PREFIX_SHARE - 300 < probe["largest_batch_tokens"] <= 8192


def test_only_whole_without_an_earlier_report_says_so(tmp_path, weather_csv):
    # Once a KeyError ('roofline') after minutes of work: the section merges into a full run's JSON.
    out = tmp_path / "benchmarks.md"
    with pytest.raises(SystemExit, match=r"benchmarks\.json, which does not exist; run without --only first"):
        main(["--only", "whole", "--out", str(out), "--csv", str(weather_csv), "--tokenizer", str(TOKENIZER_DIR),
              "--device", "cpu"])
    assert not out.exists()


def test_the_family_section_runs_fewer_positions_than_the_plain_reference(tmp_path, weather_csv):
    # The family section alone (--only families), merged into an earlier full run's report, at tiny width:
    # a Qwen2-shaped model (4 heads, 2 kv heads, 1 layer) with the real qwen2 tokenizer, one window at P = 24.
    need(TOKENIZERS / "qwen2")
    out = tmp_path / "benchmarks.md"
    shutil.copy(ROOT / "docs" / "benchmarks.json", out.with_suffix(".json"))
    main(["--only", "families", "--out", str(out), "--csv", str(weather_csv), "--tokenizer", str(TOKENIZER_DIR),
          "--tokenizers", str(TOKENIZERS), "--device", "cpu", "--families", "qwen2", "--family-size", "tiny",
          "--family-layers", "1", "--family-pred-lens", "24", "--family-windows", "1"])
    section = json.loads(out.with_suffix(".json").read_text())["families"]
    assert (section["layers"], section["pred_lens"], section["size"]) == (1, [24], "tiny")
    (family,) = section["families"]
    assert family["family"] == "qwen2" and family["layers"] == 1 and family["public_layers"] == 24
    assert family["config"]["vocab_size"] == 151936 and family["config"]["num_key_value_heads"] == 2
    (horizon,) = family["horizons"]
    workflow, plain = horizon["workflow"], horizon["plain"]
    assert workflow["windows"] == plain["windows"] == [0] and workflow["way"] == "workflow" and plain["way"] == "plain"
    # The plain reference runs every prompt token; the trie runs each shared prefix once, padding included.
    assert plain["model_positions_per_window"] == workflow["prompt_tokens"]
    assert workflow["model_positions_per_window"] < plain["model_positions_per_window"]
    assert horizon["positions_ratio"] == plain["model_positions_per_window"] / workflow["model_positions_per_window"]
    assert horizon["max_abs_diff"] < 1e-4                        # the same function, float rounding apart
    # Every key tensor handed to attention is at the 2 kv heads, not expanded to the 4 query heads.
    assert workflow["key_heads_seen"] == [2] and workflow["attention_calls"] > 0
    probe = workflow["attention_probe"]
    assert probe["key_heads"] == 2 and probe["query_heads"] == 4
    # torch's allocations for the workflow's attention call, against the same call on expanded keys and values
    assert probe["call_allocated_bytes"] < probe["expanded_call_allocated_bytes"]
    assert probe["keys_values_expanded_bytes"] == 2 * probe["keys_values_bytes"]        # 4 query heads, 2 kv heads
    assert probe["expanded_call_allocated_bytes"] >= probe["keys_values_expanded_bytes"]
    for run in (workflow, plain):
        assert run["s_per_window"] > 0 and run["peak_rss_bytes"] >= run["loaded_rss_bytes"] > 0
    markdown = out.read_text()
    assert "### Qwen2.5-0.5B shape (qwen2)" in markdown and "the first 1 layer**" in markdown
    assert "Qwen2.5-0.5B: fewer model positions than the plain reference" in markdown
