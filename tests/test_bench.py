"""`make bench`'s side-by-side savings worker, on a tiny model: every step runs and agrees."""

import json
import subprocess
import sys

from conftest import TOKENIZER_DIR
from timekd_embed.bench import SAVINGS_ROUNDS, make_model_dir


def test_each_exact_saving_runs_fewer_positions_and_equals_the_plain_path(tmp_path, weather_csv):
    make_model_dir(tmp_path / "model", TOKENIZER_DIR, n_layer=2, n_embd=64, n_head=4)
    run = subprocess.run([sys.executable, "-m", "timekd_embed.bench", "--worker", "savings", "--pred-len", "24",
                          "--workdir", str(tmp_path), "--csv", str(weather_csv), "--tokenizer", str(TOKENIZER_DIR),
                          "--device", "cpu"], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    steps = json.loads((tmp_path / "savings_P24.json").read_text())["steps"]
    assert steps[0]["step"].startswith("plain") and len(steps) == 6
    positions = [s["model_tokens"] for s in steps]
    assert positions[1] < 0.6 * positions[0]                # GT and HD share their prefix
    assert positions[4] < positions[3] and positions[5] < positions[4]   # heads once, duplicates once
    assert all(s["max_abs_diff_vs_plain"] < 1e-5 for s in steps)
    assert all(len(s["seconds_all_rounds"]) == SAVINGS_ROUNDS and s["seconds"] > 0 for s in steps)
