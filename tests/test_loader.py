"""The training loader: zero-copy embeddings and the (x, y, embedding) Dataset."""

from __future__ import annotations

import json
import mmap
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors import safe_open
from torch.utils.data import DataLoader

from timekd_embed import TeacherDataset, load_embeddings
from timekd_embed.errors import InputError
from timekd_embed.records import read_metadata
from timekd_embed.store import write_tensors
from timekd_embed.table import load_csv
from timekd_embed.windows import write_windows

SEQ_LEN, P, N, D, WINDOWS = 12, 4, 3, 16, 5


def make_results(root: Path, rows: int = 200) -> Path:
    """results/toy/: windows of a synthetic CSV and an embeddings file like an extraction writes."""
    rng = np.random.default_rng(1)
    frame = pd.DataFrame(rng.normal(10, 3, size=(rows, N)), columns=["a", "OT", "b"])
    frame.insert(0, "date", pd.date_range("2020-01-01", periods=rows, freq="h").strftime("%Y-%m-%d %H:%M:%S"))
    csv = root / "toy.csv"
    frame.to_csv(csv, index=False)
    results = root / "results"
    out = {s: str(results / "toy" / "windows" / f"{s}.parquet") for s in ("train", "val", "test")}
    metas = write_windows(load_csv(csv), "custom", SEQ_LEN, [P], out)
    emb = torch.from_numpy(rng.normal(size=(WINDOWS, N, D)).astype(np.float32))
    write_tensors(results / "toy" / "embeddings" / str(P) / "train.safetensors",
                  {"embeddings": emb, "window_start": torch.arange(WINDOWS)},
                  {"input_sha256": metas["train"]["input_sha256"], "pred_len": P, "seq_len": SEQ_LEN,
                   "split": "train", "limit_windows": WINDOWS})
    return results


@pytest.fixture()
def results(tmp_path) -> Path:
    return make_results(tmp_path)


def embeddings_file(results: Path) -> Path:
    return results / "toy" / "embeddings" / str(P) / "train.safetensors"


def test_load_embeddings_maps_the_file_without_copying(results):
    path = embeddings_file(results)
    emb = load_embeddings(results, "toy", P, "train")
    with safe_open(str(path), "np") as f:
        want = f.get_tensor("embeddings")
    assert isinstance(emb, np.memmap) and isinstance(emb.base, mmap.mmap) and not emb.flags.writeable
    assert emb.shape == (WINDOWS, N, D) and emb.dtype == np.float32
    assert np.array_equal(emb, want)
    # A copy would not see the file change; a mapping does.
    offset = emb.offset + emb.itemsize * (2 * N * D + 5)  # window 2, variable 0, dim 5
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(np.float32(1234.5).tobytes())
    assert emb[2, 0, 5] == np.float32(1234.5) and want[2, 0, 5] != np.float32(1234.5)


def test_damaged_or_missing_files_are_one_sentence(results, tmp_path):
    with pytest.raises(InputError, match=r"96/train.safetensors: file not found; run the workflow"):
        load_embeddings(results, "toy", 96, "train")
    path = embeddings_file(results)
    data = path.read_bytes()
    # A copy cut short, or with bytes after the tensors: its header alone (the metadata, the shape) looks fine.
    for damaged in (data[:-8], data + b"\0" * 8):
        path.write_bytes(damaged)
        told = (rf"truncated or damaged safetensors file \(its header describes {len(data):,} bytes, the file has "
                rf"{len(damaged):,}\); delete it and rerun")
        with pytest.raises(InputError, match=told):
            load_embeddings(results, "toy", P, "train")
        with pytest.raises(InputError, match=told):
            read_metadata(path)
    path.write_bytes(b"\xff" * 64)
    with pytest.raises(InputError, match="not a readable safetensors file .damaged header."):
        load_embeddings(results, "toy", P, "train")


def test_dataset_pairs_zscored_windows_with_their_embeddings(results, tmp_path):
    ds = TeacherDataset(results, "toy", P, "train")
    emb = load_embeddings(results, "toy", P, "train")
    # The z-score by hand: train rows, population std, target OT moved last.
    raw = pd.read_csv(tmp_path / "toy.csv")[["a", "b", "OT"]].to_numpy()
    train = raw[:int(len(raw) * 0.7)]
    z = (raw - train.mean(axis=0)) / train.std(axis=0)
    assert len(ds) == WINDOWS and ds.variables == ["a", "b", "OT"]
    for k in range(WINDOWS):
        x, y, e = ds[k]
        assert x.dtype == y.dtype == e.dtype == torch.float32
        assert x.shape == (SEQ_LEN, N) and y.shape == (P, N) and e.shape == (N, D)
        assert np.allclose(x.numpy(), z[k:k + SEQ_LEN], atol=1e-6)
        assert np.allclose(y.numpy(), z[k + SEQ_LEN:k + SEQ_LEN + P], atol=1e-6)
        assert np.array_equal(e.numpy(), emb[k])
    assert torch.equal(ds[-1][2], ds[WINDOWS - 1][2])
    with pytest.raises(IndexError):
        ds[WINDOWS]
    x, y, e = next(iter(DataLoader(ds, batch_size=2)))
    assert x.shape == (2, SEQ_LEN, N) and y.shape == (2, P, N) and e.shape == (2, N, D)
    # Workers started by pickling get the path, not a copy of the mapped embeddings.
    ds.embeddings
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._embeddings is None and len(pickle.dumps(ds)) < emb.nbytes + 10_000
    assert torch.equal(clone[3][2], ds[3][2])


def test_dataset_refuses_embeddings_of_another_input_or_horizon(results):
    path = embeddings_file(results)
    with safe_open(str(path), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        meta = f.metadata()
    write_tensors(path, tensors, meta | {"input_sha256": "0" * 64})
    with pytest.raises(InputError, match="made from another input file than .*train.parquet; rerun the workflow"):
        TeacherDataset(results, "toy", P, "train")
    write_tensors(path, tensors, meta | {"pred_len": "8"})
    with pytest.raises(InputError, match="its metadata says pred_len 8"):
        TeacherDataset(results, "toy", P, "train")


def test_importing_the_package_does_not_import_torch():
    code = "import sys, timekd_embed; assert 'torch' not in sys.modules; print(sorted(timekd_embed.__all__))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.replace("'", '"')) == ["TeacherDataset", "__version__", "load_embeddings"]
