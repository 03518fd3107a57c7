"""The opt-in export to the published training layout: <export_root>/<name>/<P>/<split>/<i>.h5."""

from __future__ import annotations

import os
import shutil

import h5py
import numpy as np
import pytest
import torch
from safetensors import safe_open

import timekd_embed.export as export
from helpers import job_counts, snakemake
from runs import NAME, OFFLINE, RUN_CONFIG, uninterrupted_run
from timekd_embed import TeacherDataset
from timekd_embed.store import write_tensors

N, D = 7, 16


def embeddings_file(path, n=6, seed=0, limit=None):
    rng = np.random.default_rng(seed)
    emb = torch.from_numpy(rng.normal(size=(n, N, D)).astype(np.float32))
    write_tensors(path, {"embeddings": emb, "window_start": torch.arange(n)}, {"limit_windows": limit})
    return emb.numpy()


def read_h5(folder):
    """{window index: array} of every .h5 file, read as the published loader reads them."""
    out = {}
    for name in os.listdir(folder):
        if name == ".snakemake_timestamp":  # Snakemake's marker in every directory output
            continue
        with h5py.File(folder / name, "r") as f:
            assert list(f.keys()) == ["embeddings"]
            out[int(name.removesuffix(".h5"))] = f["embeddings"][:]
    return out


def assert_exported(folder, emb):
    files = read_h5(folder)
    assert sorted(files) == list(range(len(emb)))
    for i, row in files.items():
        assert row.dtype == np.float32 and row.shape == emb[i].shape and np.array_equal(row, emb[i])


def test_every_window_becomes_one_h5_file_and_nothing_else(tmp_path):
    emb = embeddings_file(tmp_path / "train.safetensors")
    out = tmp_path / "export" / "toy" / "24" / "train"
    summary = export.export_split(tmp_path / "train.safetensors", out)
    assert summary == summary | {"files": 6, "written": 6, "resumed": 0, "shape": [N, D]}
    assert_exported(out, emb)
    assert os.listdir(out.parent) == ["train"]  # no staging folder, no temporary file left


def test_an_interrupted_export_resumes_and_a_stale_one_starts_over(tmp_path, monkeypatch):
    source = tmp_path / "train.safetensors"
    emb = embeddings_file(source)
    out = tmp_path / "export" / "24" / "train"
    real_write, calls = export._write_h5, []

    def dies_after_three(h5py, path, row):
        if len(calls) == 3:
            raise KeyboardInterrupt
        calls.append(path)
        real_write(h5py, path, row)

    monkeypatch.setattr(export, "_write_h5", dies_after_three)
    with pytest.raises(KeyboardInterrupt):
        export.export_split(source, out)
    monkeypatch.setattr(export, "_write_h5", real_write)
    staging = export.staging_dir(out)
    assert not out.exists() and len(list(staging.glob("*.h5"))) == 2  # the probe file, then windows 0 and 1
    (staging / "1.h5").write_bytes((staging / "1.h5").read_bytes()[:100])  # torn by a crash
    (staging / ".2.h5.tmp").write_bytes(b"half")  # a temporary file the kill left

    summary = export.export_split(source, out)
    assert (summary["resumed"], summary["written"]) == (1, 5)
    assert_exported(out, emb)
    assert not staging.exists() and not (out / ".2.h5.tmp").exists()

    # A staging folder from an older extraction is discarded, and a new export replaces the old one.
    monkeypatch.setattr(export, "_write_h5", dies_after_three)
    calls.clear()
    with pytest.raises(KeyboardInterrupt):
        export.export_split(source, out)
    monkeypatch.setattr(export, "_write_h5", real_write)
    assert len(list(staging.glob("*.h5"))) == 2
    fewer = embeddings_file(source, n=4, seed=7)
    summary = export.export_split(source, out)
    assert (summary["resumed"], summary["written"]) == (0, 4)
    assert_exported(out, fewer)


def test_a_limited_extraction_warns_that_train_py_needs_every_window(tmp_path, caplog):
    embeddings_file(tmp_path / "train.safetensors", n=2, limit=2)
    export.export_split(tmp_path / "train.safetensors", tmp_path / "out" / "train")
    assert "only windows 0..1 were extracted (limit_windows = 2)" in caplog.text


def test_export_timekd_after_a_run_with_the_snakemake_cli(tmp_path, tmp_path_factory, tiny_model_dir, weather_csv):
    # A copy of the finished run of tests/runs.py (its Snakemake records too): the export alone runs.
    work = tmp_path / "work"
    shutil.copytree(uninterrupted_run(tmp_path_factory, tiny_model_dir, weather_csv), work, copy_function=shutil.copy2)
    run = snakemake(work, RUN_CONFIG | {"export_root": "for-train"}, "export_timekd", "--cores", "2",
                    "--resources", "gpu=2", env=OFFLINE)
    assert run.returncode == 0, run.stderr[-3000:]
    jobs = job_counts(run.stdout + run.stderr)  # a real run prints its job table on stderr
    assert jobs == {"export_h5": 2, "export_timekd": 1}   # opt-in, and nothing computed again

    results = work / "results" / NAME
    for P in (24, 48):
        with safe_open(str(results / "embeddings" / str(P) / "train.safetensors"), "np") as f:
            emb = f.get_tensor("embeddings")
        assert emb.shape == (3, 21, 64)
        folder = work / "for-train" / NAME / str(P) / "train"  # train.py --data_path weather --pred_len P
        assert_exported(folder, emb)
        _, _, e = TeacherDataset(work / "results", NAME, P, "train")[2]
        assert np.array_equal(e.numpy(), read_h5(folder)[2])
    log = (results / "logs" / "export_48_train.log").read_text()
    assert "export 48/train: 100%" in log and "limit_windows = 3" in log
    assert (results / "benchmarks" / "export_24_train.tsv").is_file()
