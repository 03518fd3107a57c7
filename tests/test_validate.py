"""Validation: shape and provenance checks on damaged files, parity numbers, the report."""

from __future__ import annotations

import base64
import json
import re

import numpy as np
import pytest

from browser import open_pages
from helpers import extract_one, snakemake
from plain_teacher import plain_teacher
from runs import uninterrupted_run
from timekd_embed.config import validate_config
from timekd_embed.errors import InputError
from timekd_embed.parity import compare, parity_report, require_parity, sample_windows
from timekd_embed.records import read_tensors
from timekd_embed.report import NOT_APPLICABLE, answer, histogram, item_html, summary_html
from timekd_embed.sca import load_sca, save_sca
from timekd_embed.settings import Runtime, Settings
from timekd_embed.store import write_tensors
from timekd_embed.table import load_csv
from timekd_embed.validate import check_all
from timekd_embed.windows import read_windows, write_windows

P, LIMIT = 24, 3


def settings_for(model_dir):
    return Settings.from_config(config_for(model_dir))


CPU = Runtime(device="cpu")


def config_for(model_dir) -> dict:
    return validate_config({"dataset": {"name": "weather", "csv": "unused.csv"}, "model": {"name_or_path": str(
        model_dir)}, "precision": "bf16", "device": "cpu", "gpus_per_job": 1, "limit_windows": LIMIT})


@pytest.fixture(scope="module")
def results(tmp_path_factory, weather_csv, tiny_model_dir):
    """A small results folder made by the package itself: windows, SCA, P=24 train/val in bf16."""
    root = tmp_path_factory.mktemp("results")
    windows = {s: str(root / f"{s}.parquet") for s in ("train", "val", "test")}
    write_windows(load_csv(weather_csv), "custom", 96, [P], windows)
    sca = str(root / "sca.safetensors")
    save_sca(sca, 21, 64, seed=2024)
    files = {}
    for split in ("train", "val"):
        files[(P, split)] = str(root / f"{P}_{split}.safetensors")
        extract_one(settings_for(tiny_model_dir), windows[split], sca, files[(P, split)], root / f"{P}_{split}.json",
                    split=split)
    return {"root": root, "windows": windows, "sca": sca, "files": files}


def damaged(results, tmp_path, change) -> dict:
    """A copy of the results' files where `change(tensors, metadata)` altered the train file, written with
    its sha256 record as a job writes its output (the content is wrong, not the bytes after the write)."""
    files = dict(results["files"])
    tensors, meta = read_tensors(files[(P, "train")])
    change(tensors, meta)
    files[(P, "train")] = str(tmp_path / "train.safetensors")
    write_tensors(files[(P, "train")], tensors, meta)
    return files


def check(results, files):
    return check_all(files, {s: results["windows"][s] for s in ("train", "val")}, results["sca"], LIMIT)


def test_intact_results_pass(results):
    report = check(results, results["files"])
    assert report["passed"] and report["files"]["24/train"]["shape"] == [LIMIT, 21, 64]
    assert report["shared_metadata"]["precision"] == "bf16"


@pytest.mark.parametrize("change,message", [
    (lambda t, m: t.update(embeddings=t["embeddings"][:2]), r"shape \(2, 21, 64\), expected \(3, 21, 64\)"),
    (lambda t, m: t["embeddings"].__setitem__((1, 4, 7), float("nan")), r"1 embedding values are NaN .* \(1, 4, 7\)"),
    (lambda t, m: t.update(embeddings=t["embeddings"].half()), r"embeddings are torch.float16, expected float32"),
    (lambda t, m: t.update(window_start=t["window_start"] + 1), r"window_start is not 0..2"),
    (lambda t, m: m.update(model="gpt2-medium"), r"metadata model = .* differs from .*'gpt2-medium'"),
    (lambda t, m: m.update(sca_sha256="0" * 64), r"made with other SCA weights"),
])
def test_damaged_files_fail_with_a_sentence_naming_file_and_check(results, tmp_path, change, message):
    files = damaged(results, tmp_path, change)
    with pytest.raises(InputError, match=message) as error:
        check(results, files)
    assert str(tmp_path / "train.safetensors") in str(error.value)


def test_a_truncated_file_fails_clearly(results, tmp_path):
    files = dict(results["files"])
    data = open(files[(P, "val")], "rb").read()
    files[(P, "val")] = str(tmp_path / "val.safetensors")
    open(files[(P, "val")], "wb").write(data[: len(data) // 2])
    with pytest.raises(InputError, match="val.safetensors: not a readable safetensors file"):
        check(results, files)


def test_parity_statistics_equal_a_direct_computation():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(5, 3, 8)).astype(np.float32)
    prod = ref + rng.normal(scale=0.01, size=ref.shape).astype(np.float32)
    prod[4] = ref[3] * 1.001              # window 4 now looks like window 3: its neighbour changes
    stats, cos = compare(prod, ref)
    direct = np.array([[np.dot(prod[w, v], ref[w, v]) / np.linalg.norm(prod[w, v]) / np.linalg.norm(ref[w, v])
                        for v in range(3)] for w in range(5)])
    assert np.allclose(cos, direct)
    assert stats["cosine_min"] == pytest.approx(direct.min()) and stats["cosine_mean"] == pytest.approx(direct.mean())
    assert stats["max_abs_error"] == pytest.approx(np.abs(prod.astype(np.float64) - ref).max())
    squared_error = ((prod.astype(np.float64) - ref) ** 2).sum()
    assert stats["relative_l2_error"] == pytest.approx(np.sqrt(squared_error / (ref.astype(np.float64) ** 2).sum()))
    def nn(x):
        f = x.reshape(5, -1) / np.linalg.norm(x.reshape(5, -1), axis=1, keepdims=True)
        return [max((j for j in range(5) if j != i), key=lambda j: f[i] @ f[j]) for i in range(5)]
    assert stats["nn_agreement"] == pytest.approx(np.mean(np.array(nn(prod)) == np.array(nn(ref))))
    assert stats["nn_agreement"] < 1


def test_sample_is_deterministic_and_spread_over_splits():
    sample = sample_windows({"train": 1000, "val": 10}, 7)
    assert sample["train"].tolist() == [0, 333, 666, 999] and sample["val"].tolist() == [0, 4, 9]
    assert sample_windows({"train": 3, "val": 3}, 64)["train"].tolist() == [0, 1, 2]


def test_bf16_parity_against_the_plain_fp32_oracle(results, weather_csv, tokenizer, tiny_model_dir):
    windows = {s: results["windows"][s] for s in ("train", "val")}
    files = {s: results["files"][(P, s)] for s in ("train", "val")}
    report, cos = parity_report(settings_for(tiny_model_dir), CPU, P, files, windows, results["sca"], 3, 0.99)
    assert report["sample"] == {"train": [0, 2], "val": [0]}
    # Direct computation: the oracle in fp32 against the stored bf16 rows.
    from transformers import GPT2Model
    model = GPT2Model.from_pretrained(tiny_model_dir, attn_implementation="eager").eval()
    sca = load_sca(results["sca"]).state_dict()
    prod, ref = [], []
    for s in ("train", "val"):
        split = read_windows(windows[s])
        sample = report["sample"][s]
        ref.append(plain_teacher(split.raw, split.stamps(), sample, P, "weather", tokenizer, model, sca))
        prod.append(read_tensors(files[s])[0]["embeddings"].numpy()[sample])
    direct, direct_cos = compare(np.concatenate(prod), np.concatenate(ref))
    assert np.allclose(cos, direct_cos.ravel(), atol=1e-6)
    assert report["fp32_parity"]["cosine_min"] == pytest.approx(direct["cosine_min"], abs=1e-6)
    assert report["fp32_parity"]["max_abs_error"] == pytest.approx(direct["max_abs_error"], rel=1e-3)
    assert 0.99 < report["fp32_parity"]["cosine_min"] < 1.0   # bf16 really differs, and not by much
    assert report["passed"] and report["layer_split"].startswith("not applicable")
    strict, _ = parity_report(settings_for(tiny_model_dir), CPU, P, files, windows, results["sca"], 1, 0.999999)
    with pytest.raises(InputError, match=r"pred_len 24: the lowest cosine similarity between bf16 and fp32 "
                                         r"embeddings is 0\.99\d+, under parity.min_cosine = 0.999999"):
        require_parity(strict)


def _parity_json(by_split: bool = True) -> dict:
    stats = {"windows": 4, "cosine_min": 0.9991, "cosine_p01": 0.9992, "cosine_mean": 0.9998,
             "max_abs_error": 0.05, "relative_l2_error": 0.01, "nn_agreement": 1.0}
    report = {"pred_len": P, "precision": "bf16", "layer_split": "not applicable: one device",
              "fp32_parity": stats, "cosines": [0.9991, 0.9995, 0.9999]}
    if by_split:
        report["fp32_parity_by_split"] = {"train": stats | {"windows": 2, "cosine_min": 0.9993}}
    return report


def test_the_report_pages_render(results, tmp_path):
    shapes = check(results, results["files"])
    stats = {k: json.loads((results["root"] / f"{k[0]}_{k[1]}.json").read_text()) for k in results["files"]}
    parity = {P: _parity_json()}
    train = item_html(P, "train", shapes, stats[(P, "train")], parity[P], "bf16")
    assert "<td>24</td><td>train</td><td>3</td><td>(3, 21, 64)</td>" in train
    assert "<td>24</td><td>train</td><td>bf16</td><td>2</td><td>0.999300</td>" in train   # this split's parity
    val = item_html(P, "val", shapes, stats[(P, "val")], parity[P], "bf16")
    assert "no window of split val was sampled" in val
    histogram(P, parity[P]["cosines"], "bf16", tmp_path / "h.png")
    assert (tmp_path / "h.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = summary_html("weather", shapes, stats, parity, "bf16", {P: tmp_path / "h.png"})
    assert "<td>24</td><td>all sampled</td><td>bf16</td><td>4</td><td>0.999100</td><td>0.999200</td>" in page
    assert "bf16 changed the embeddings by at most 0.05" in page and "not measured" in page
    assert page.count('<img alt="1 - cosine similarity, P = 24" src="data:image/png;base64,') == 1


def test_fp32_pages_say_parity_is_not_applicable(results):
    shapes = check(results, results["files"])
    stats = {k: json.loads((results["root"] / f"{k[0]}_{k[1]}.json").read_text()) for k in results["files"]}
    for page in (item_html(P, "train", shapes, stats[(P, "train")], None, "fp32"),
                 summary_html("weather", shapes, stats, {}, "fp32", {})):
        assert "Parity with fp32: not applicable, the production precision is fp32" in page
        assert "<img" not in page and "cosine min" not in page
        assert page.count("not applicable") == 1        # said once, not under a heading of its own again
    assert answer({}, "fp32") == NOT_APPLICABLE


def report_results(html) -> dict:
    """The `results` object Snakemake's report embeds: {path: name, labels, caption, mime_type, data_uri}."""
    text = html.read_text()
    start = re.search(r"var results = \{", text).end() - 1
    return json.JSONDecoder().raw_decode(text, start)[0]


def test_an_fp32_run_has_no_parity_job_and_its_report_says_so(tmp_path_factory, tiny_model_dir, weather_csv):
    # The uninterrupted fp32 run of tests/runs.py (made once per session): P = 24 and 48, train, 3 windows.
    work = uninterrupted_run(tmp_path_factory, tiny_model_dir, weather_csv)
    assert not list((work / "results" / "weather" / "logs").glob("parity*"))
    assert not list((work / "results" / "weather" / "validation").glob("*.png"))
    html = work / "report.html"
    run = snakemake(work, None, "--report", str(html))
    assert run.returncode == 0, run.stderr[-2000:]
    results = report_results(html)
    assert sorted(e["name"] for e in results.values()) == ["24_train.html", "48_train.html", "summary.html"]
    page = next(e for e in results.values() if e["name"] == "48_train.html")
    assert page["labels"] == {"horizon": "48", "split": "train"} and page["mime_type"] == "text/html"
    text = base64.b64decode(page["data_uri"].split("base64,", 1)[1]).decode()
    assert "<td>48</td><td>train</td><td>3</td><td>(3, 21, 64)</td>" in text and "not applicable" in text
    assert "one job for" not in text            # share_horizons: false, each horizon's time is its own
    pages = open_pages(html, ["Embeddings", "Summary"])
    assert {entry: page.errors for entry, page in pages.items()} == {"Embeddings": [], "Summary": []}
    assert [row[0] for row in pages["Embeddings"].rows] == ["24", "48"]
    assert pages["Embeddings"].shown["iframe tables"] == 1 and pages["Summary"].shown["iframe tables"] == 1
    for entry in results.values():
        assert "not applicable" in entry["caption"] and "sampled" not in entry["caption"]
    assert "64" not in next(e for e in results.values() if e["name"] == "summary.html")["caption"]
