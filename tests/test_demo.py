"""`make demo`: the whole workflow offline on .test/config.yaml, and the HTML report it renders.

One run of `make demo` as the README's Quick start types it, in a fresh clone (helpers.fresh_clone:
this test run's `.venv` linked in, so its bootstrap has nothing to do): the rule-built tiny GPT-2 with
the real tokenizer files, windows, two horizons in bf16, fp32 parity, validation, the manifest and `snakemake --report`.
The expected counts are worked out from the demo's CSV (560 rows; custom layout 70/10/20 %:
train 392 rows, val 56 + seq_len 48 rows) and config (seq_len 48, P = 24 and 48, 16 parity
windows shared by train and val, shard_windows 200).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import os
import re
import runpy
import subprocess
from pathlib import Path

import pytest
import yaml
from safetensors import safe_open

from browser import open_pages
from conftest import ROOT
from helpers import BIN, fresh_clone, left_in_the_tree, modes_against_umask, planned_jobs, snakemake, users_environment
from timekd_embed.demo import tokenizer_files

WINDOWS = {(24, "train"): 392 - 48 - 24 + 1, (48, "train"): 392 - 48 - 48 + 1,
           (24, "val"): 104 - 48 - 24 + 1, (48, "val"): 104 - 48 - 48 + 1}
# OpenAI's GPT-2 tokenizer files (../shared/data/README.md)
TOKENIZER_SHA256 = {"vocab.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
                    "merges.txt": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"}


def report_results(html: Path) -> dict:
    """The `results` object Snakemake's report embeds: {path: name, labels, caption, mime_type, data_uri}."""
    text = html.read_text()
    start = re.search(r"var results = \{", text).end() - 1
    return json.JSONDecoder().raw_decode(text, start)[0]


def decoded(entry: dict) -> str:
    return base64.b64decode(entry["data_uri"].split("base64,", 1)[1]).decode()


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    work = fresh_clone(tmp_path_factory.mktemp("demo"))
    run = subprocess.run(["make", "demo"], cwd=work, check=False, capture_output=True, text=True, timeout=1200,
                         env=users_environment(),
                         preexec_fn=functools.partial(os.umask, 0o002))   # a group-shared folder
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return work, run


def test_the_committed_csv_is_what_the_script_writes():
    rows = runpy.run_path(str(ROOT / ".test" / "make_data.py"))["rows"]()
    assert (ROOT / ".test" / "data" / "demo.csv").read_text() == "\n".join(rows) + "\n"
    assert len(rows) == 561 and rows[0] == "date,temperature,humidity,wind,load,OT"


def test_the_tokenizer_files_come_from_the_pinned_package():
    files = tokenizer_files()
    assert {name: hashlib.sha256(path.read_bytes()).hexdigest() for name, path in files.items()} == TOKENIZER_SHA256
    assert files["vocab.json"].name == "encoder.json" and files["merges.txt"].name == "vocab.bpe"


def test_demo_runs_the_whole_workflow_and_says_where_to_look(demo):
    work, run = demo
    assert "Demo finished" in run.stdout and "report.html" in run.stdout and "MANIFEST.json" in run.stdout
    assert "Shell command: None" not in run.stdout + run.stderr
    results = work / "results" / "demo"
    for (P, split), n in WINDOWS.items():
        with safe_open(str(results / "embeddings" / str(P) / f"{split}.safetensors"), "pt") as f:
            assert f.get_tensor("embeddings").shape == (n, 5, 64)
            assert f.metadata()["precision"] == "bf16"
    assert json.loads((results / "embeddings" / "24" / "train.json").read_text())["shards"] == 2  # 0-200, 200-321
    for P in (24, 48):
        parity = json.loads((results / "validation" / f"parity_{P}.json").read_text())
        assert parity["passed"] and 0.99 < parity["fp32_parity"]["cosine_min"] < 1.0   # bf16 differs, a little
    for name, digest in TOKENIZER_SHA256.items():
        assert hashlib.sha256((work / "resources" / "demo-gpt2" / name).read_bytes()).hexdigest() == digest
    verify = subprocess.run([str(BIN / "timekd-embed"), "verify", str(results)], check=False,
                            capture_output=True, text=True)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert modes_against_umask(results, 0o002) == {}   # group-writable, as the umask asks
    assert left_in_the_tree(work) == []          # git status stays clean after make demo
    # Progress where the user looks: each extraction job's bar on the console too, in windows of the job
    # (the train range 0-200 holds 200 windows, each at P = 24 and 48), not (window, horizon) pairs.
    bar = r"^P=24,48 train: 100%\|[^|]*\| 200/200 \[[^]]*(window/s|s/window)"   # tqdm inverts a rate below 1
    assert re.search(bar, run.stderr, flags=re.M), run.stderr[-3000:]
    logs = (results / "logs").glob("extract_*.log")
    assert not any("GPT-2 small" in log.read_text() for log in logs)   # no guess made for another model


def test_the_report_shows_every_horizon_and_split_with_its_parity(demo):
    work, _ = demo
    results = report_results(work / "report.html")
    pages = {(int(e["labels"]["horizon"]), e["labels"]["split"]): e for e in results.values()
             if e["name"].endswith(".html") and e["labels"] and "," not in str(e["labels"]["split"])}
    assert set(pages) == set(WINDOWS)
    for (P, split), entry in pages.items():
        assert entry["mime_type"] == "text/html"           # shown in the report, not only a download
        page = decoded(entry)
        assert f"<td>{P}</td><td>{split}</td><td>{WINDOWS[(P, split)]}</td><td>({WINDOWS[(P, split)]}, 5, 64)</td>" \
            in page
        assert "<th>cosine min</th>" in page and "<td>bf16</td>" in page
    # 16 parity windows: 8 per split, but P = 48's val split has only 9 windows, P = 24's 33: 8 each.
    histograms = [e for e in results.values() if e["mime_type"] == "image/png"]
    assert sorted(int(e["labels"]["horizon"]) for e in histograms) == [24, 48]
    assert all(e["labels"]["split"] == "train, val" for e in histograms)
    assert "P = 24: 16, P = 48: 16" in histograms[0]["caption"]
    summary = next(e for e in results.values() if e["name"] == "summary.html")
    text = decoded(summary)
    assert "bf16 changed the embeddings by at most" in text and "data:image/png;base64," in text
    # share_horizons: one job per range embedded both horizons; each horizon's row says the time is that job's
    assert text.count(" (shared by P = 24, 48)</td>") == 4 * 3      # 4 rows: time, windows/s, tokens/s
    assert "not applicable" not in text and "not applicable" not in summary["caption"]
    assert "bf16" in summary["caption"] and "16 windows at P = 24" in summary["caption"]


def test_every_report_label_is_text(demo):
    # The report's JavaScript sorts label values with String.localeCompare: a number there
    # (horizon 24) left the Embeddings and Parity pages blank.
    labels = [e["labels"] for e in report_results(demo[0] / "report.html").values() if e["labels"]]
    assert labels and all(isinstance(value, str) for entry in labels for value in entry.values())


def test_every_page_of_the_report_shows_in_a_browser_without_console_errors(demo):
    pages = open_pages(demo[0] / "report.html", ["Embeddings", "Parity with fp32", "Summary", "Workflow",
                                                 "Statistics"])
    assert {entry: page.errors for entry, page in pages.items()} == dict.fromkeys(pages, [])
    # one row per horizon (the split is a toggle above the table); the page shown holds its two tables
    assert [row[0] for row in pages["Embeddings"].rows] == ["24", "48"]
    assert pages["Embeddings"].shown == {"img": 0, "iframe tables": 2}
    assert [row[:2] for row in pages["Parity with fp32"].rows] == [["24", "train, val"], ["48", "train, val"]]
    assert pages["Parity with fp32"].shown == {"img": 1, "iframe tables": 0}          # the histogram
    assert [row[0] for row in pages["Summary"].rows] == ["results/demo/validation/summary.html"]
    assert pages["Summary"].shown == {"img": 0, "iframe tables": 2}
    assert pages["Workflow"].graphics and pages["Statistics"].graphics          # the rule graph, the runtime plot


def test_parity_settings_rerun_the_parity_and_validation_only(demo):
    work, _ = demo
    config = yaml.safe_load((ROOT / ".test" / "config.yaml").read_text())
    stricter = config | {"parity": {"windows": 8, "min_cosine": 0.99}}
    dry = snakemake(work, stricter, "-n", "--cores", "2", "--resources", "gpu=1", configfile="stricter.yaml",
                    env={"HF_HUB_OFFLINE": "1"})
    assert planned_jobs(dry) == {"parity": 2, "validate": 1}      # one parity job per horizon, no extraction
