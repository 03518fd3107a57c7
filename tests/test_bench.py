"""`make bench`'s side-by-side workers (the savings, the whole job), on a tiny model: every step runs and agrees."""

import json
import subprocess
import sys

from conftest import TOKENIZER_DIR
from timekd_embed.bench import SAVINGS_ROUNDS, WHOLE_ROUNDS, make_model_dir
from timekd_embed.extract import save_sca


def worker(tmp_path, weather_csv, name: str, *extra: str) -> dict:
    run = subprocess.run([sys.executable, "-m", "timekd_embed.bench", "--worker", name, "--pred-len", "24",
                          "--workdir", str(tmp_path), "--csv", str(weather_csv), "--tokenizer", str(TOKENIZER_DIR),
                          "--device", "cpu", *extra], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads((tmp_path / f"{name}_P24.json").read_text())


def test_each_exact_saving_runs_fewer_positions_and_equals_the_plain_path(tmp_path, weather_csv):
    make_model_dir(tmp_path / "model", TOKENIZER_DIR, n_layer=2, n_embd=64, n_head=4)
    steps = worker(tmp_path, weather_csv, "savings")["steps"]
    assert steps[0]["step"].startswith("plain") and len(steps) == 6
    positions = [s["model_tokens"] for s in steps]
    assert positions[3] < 0.6 * positions[0]                # GT and HD share their prefix
    assert positions[4] < positions[3] and positions[5] < positions[4]   # heads once, duplicates once
    assert all(s["max_abs_diff_vs_plain"] < 1e-5 for s in steps)
    assert all(len(s["seconds_all_rounds"]) == SAVINGS_ROUNDS for s in steps)


def test_the_whole_job_runs_fewer_positions_with_the_trie_and_agrees(tmp_path, weather_csv):
    make_model_dir(tmp_path / "model", TOKENIZER_DIR, n_layer=2, n_embd=64, n_head=4)
    save_sca(tmp_path / "sca.safetensors", n_vars=21, d_model=64, seed=0)
    whole = worker(tmp_path, weather_csv, "whole", "--pred-lens", "24", "96", "--windows", "2")
    assert len(whole["windows"]) == 2 and whole["pred_lens"] == [24, 96]
    assert whole["positions_ratio"] > 1.3 and whole["max_abs_diff"] < 1e-5
    assert len(whole["trie"]["seconds_all_rounds"]) == WHOLE_ROUNDS
