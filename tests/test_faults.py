"""Faults: a full disk, CUDA out of memory, Ctrl-C and kill -9 leave nothing that looks complete,
the rerun computes only what is missing, and its result equals an uninterrupted run byte for byte.
"""

from __future__ import annotations

import errno
import json
import os
import signal
from pathlib import Path

import pytest
import safetensors.torch
import torch
from transformers.models.gpt2.modeling_gpt2 import GPT2MLP

from helpers import extract_one, weather_settings
from runs import EMBEDDINGS, NAME, resumed_run, uninterrupted_run
from timekd_embed import records, store
from timekd_embed.jobs import job
from timekd_embed.sca import save_sca
from timekd_embed.table import load_csv
from timekd_embed.windows import SPLITS, write_windows


def leftovers(folder: Path) -> list[str]:
    """Every file under `folder`, hidden temporaries included."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


# --------------------------------------------------------------------------- byte-reproducible files


def test_the_same_tensors_and_metadata_give_the_same_bytes(tmp_path):
    # safetensors keeps metadata in a hash map whose order differs per map: store sorts it.
    tensors = {"embeddings": torch.arange(12, dtype=torch.float32).view(3, 4), "window_start": torch.arange(3)}
    metadata = {k: f"value {k}" for k in ("model", "seed", "precision", "fidelity", "devices", "split", "dataset")}
    for k in range(4):
        store.write_tensors(tmp_path / f"{k}.safetensors", tensors, metadata)
    first = (tmp_path / "0.safetensors").read_bytes()
    assert all((tmp_path / f"{k}.safetensors").read_bytes() == first for k in range(1, 4))
    back, meta = records.read_tensors(tmp_path / "0.safetensors")
    assert meta == metadata and all(torch.equal(back[k], tensors[k]) for k in tensors)


# --------------------------------------------------------------------------- full disk


def _disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_full_disk_while_writing_tensors_leaves_nothing_and_the_rerun_writes_them(tmp_path, monkeypatch):
    out = tmp_path / "embeddings" / "train.safetensors"
    tensors, metadata = {"embeddings": torch.ones(4, 3)}, {"seed": "2024"}

    def half_then_full(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\x00" * 64)       # part of the file made it to disk ...
        _disk_full()                                   # ... then the disk filled up

    monkeypatch.setattr(safetensors.torch, "save_file", half_then_full)
    with pytest.raises(OSError) as caught:
        store.write_tensors(out, tensors, metadata)
    assert caught.value.errno == errno.ENOSPC
    assert leftovers(tmp_path) == []                   # no final file, no temporary either

    monkeypatch.undo()                                 # space freed: the rerun writes the file
    store.write_tensors(out, tensors, metadata)
    assert torch.equal(records.read_tensors(out)[0]["embeddings"], tensors["embeddings"])


def test_a_full_disk_while_writing_json_leaves_nothing(tmp_path, monkeypatch):
    out = tmp_path / "validation" / "shapes.json"
    real_write_bytes = Path.write_bytes

    def half_then_full(self, data):
        real_write_bytes(self, data[: len(data) // 2])
        _disk_full()

    monkeypatch.setattr(Path, "write_bytes", half_then_full)
    with pytest.raises(OSError, match="No space left on device"):
        store.write_json(out, {"passed": True, "files": list(range(100))})
    assert leftovers(tmp_path) == []
    monkeypatch.undo()
    store.write_json(out, {"passed": True})
    assert json.loads(out.read_text()) == {"passed": True}


# --------------------------------------------------------------------------- out of memory


@pytest.fixture(scope="module")
def small_split(tmp_path_factory, weather_csv) -> tuple[Path, Path]:
    """Windows of the first 400 rows of weather.csv and SCA weights for the tiny model."""
    folder = tmp_path_factory.mktemp("small_split")
    with open(weather_csv, encoding="utf-8", newline="") as f:
        (folder / "weather.csv").write_text("".join(next(f) for _ in range(401)), encoding="utf-8", newline="")
    out = {s: str(folder / f"{s}.parquet") for s in SPLITS}
    write_windows(load_csv(folder / "weather.csv"), "custom", 96, [24], out)
    save_sca(folder / "sca.safetensors", n_vars=21, d_model=64, seed=2024)
    return Path(out["train"]), folder / "sca.safetensors"


def test_out_of_memory_names_the_budget_to_lower(small_split, tiny_model_dir, tmp_path, monkeypatch, capsys,
                                                 job_logging):
    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 23.65 GiB total)")

    monkeypatch.setattr(GPT2MLP, "forward", oom)     # the widest activations: where a too-large batch fails on a GPU
    settings = weather_settings(tiny_model_dir, name=NAME, limit_windows=2)
    out, log = tmp_path / "train.safetensors", tmp_path / "extract.log"
    # In a job: one sentence on stderr and in the log, exit 1, no stack dump.
    with pytest.raises(SystemExit) as exit_, job(str(log)):
        extract_one(settings, *small_split, out, tmp_path / "train.json", batch_tokens=4096)
    stderr = capsys.readouterr().err
    assert exit_.value.code == 1 and "Traceback" not in stderr and "Tried to allocate" not in stderr
    sentence = ("pred_len 24, split train: cpu ran out of memory with batch_tokens = 4096; "
                "lower config key batch_tokens (e.g. to 2048) and rerun.")
    assert sentence in stderr and sentence in log.read_text()
    assert leftovers(tmp_path) == ["extract.log"]


# --------------------------------------------------------------------------- Ctrl-C and kill -9

# tests/runs.py: four ranges (two horizons, two ranges each) run one job at a time, so that the
# signals land at known points: Ctrl-C as the first range starts, kill -9 right after one finished.
BEFORE_EXTRACTION = ["sca.safetensors", "windows/test.parquet", "windows/train.parquet", "windows/val.parquet"]


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory, tiny_model_dir, weather_csv) -> dict:
    return resumed_run(tmp_path_factory, tiny_model_dir, weather_csv)


def test_ctrl_c_leaves_no_complete_looking_file_and_no_lock(interrupted):
    seen = interrupted["sigint"]
    assert seen["rc"] != 0 and "Terminating processes on user request" in seen["output"]
    assert seen["files"] == BEFORE_EXTRACTION
    assert not seen["locked"]


def test_kill_9_keeps_only_the_finished_range_and_the_lock(interrupted):
    seen = interrupted["sigkill"]
    assert seen["rc"] == -signal.SIGKILL and seen["finished"] is not None
    wildcards = dict(part.split("=") for part in seen["finished"].split(", "))
    start, stop = int(wildcards["start"]), int(wildcards["stop"])
    shard = f"{wildcards['pred_len']}/train.shards/{start}-{stop}"
    # the finished range is complete under its name; nothing else looks like a result
    assert seen["shards"] == {f"{shard}.safetensors": list(range(start, stop))}
    assert seen["files"] == sorted(BEFORE_EXTRACTION + [f"embeddings/{shard}.safetensors",
                                                        f"embeddings/{shard}.json"])
    assert seen["locked"]                                              # hence `snakemake --unlock` first


def test_the_rerun_computes_only_what_is_missing_with_the_bytes_of_an_uninterrupted_run(interrupted,
                                                                                         tmp_path_factory,
                                                                                         tiny_model_dir, weather_csv):
    unlock, rerun = interrupted["unlock"], interrupted["rerun"]
    assert unlock.returncode == 0, unlock.stderr[-2000:]
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert interrupted["sigkill"]["finished"] not in rerun.stdout + rerun.stderr   # not computed again
    assert rerun.stderr.count("rule extract:") == 3
    clean = uninterrupted_run(tmp_path_factory, tiny_model_dir, weather_csv)
    # Same config, inputs and cores, CPU fp32, other processes: byte-identical (the timing JSON beside
    # each differs). tests/test_manifest.py compares every artifact and both manifests.
    for target in EMBEDDINGS.values():
        assert (interrupted["work"] / target).read_bytes() == (clean / target).read_bytes(), target
