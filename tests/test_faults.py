"""Faults: a full disk, CUDA out of memory, Ctrl-C and kill -9 leave nothing that looks complete,
the rerun finishes the job, and its result equals an uninterrupted run byte for byte.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from transformers.models.gpt2.modeling_gpt2 import GPT2MLP

from test_manifest import NAME, SNAKEMAKE, snakemake, tiny_config
from timekd_embed import store
from timekd_embed.extract import Settings, extract_split, save_sca
from timekd_embed.jobs import job
from timekd_embed.table import load_csv
from timekd_embed.windows import SPLITS, write_windows

EMBEDDINGS = f"results/{NAME}/embeddings/24/train.safetensors"


# With the tiny model the extraction runs at tens of windows per second: this many give the
# signals below several seconds to land while it computes.
FAULT_WINDOWS = 400


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_model_dir, weather_csv) -> Path:
    """One run to EMBEDDINGS, uninterrupted, of `tiny_config` with FAULT_WINDOWS windows."""
    work = tmp_path_factory.mktemp("uninterrupted")
    (work / "resources").mkdir()
    shutil.copy(weather_csv, work / "resources" / "weather.csv")
    run = snakemake(work, tiny_config(tiny_model_dir) | {"limit_windows": FAULT_WINDOWS}, "--cores", "2", EMBEDDINGS)
    assert run.returncode == 0, run.stderr[-3000:]
    return work


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
    back, meta = store.read_tensors(tmp_path / "0.safetensors")
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

    monkeypatch.setattr(store, "save_file", half_then_full)
    with pytest.raises(OSError) as caught:
        store.write_tensors(out, tensors, metadata)
    assert caught.value.errno == errno.ENOSPC
    assert leftovers(tmp_path) == []                   # no final file, no temporary either

    monkeypatch.undo()                                 # space freed: the rerun writes the file
    store.write_tensors(out, tensors, metadata)
    assert torch.equal(store.read_tensors(out)[0]["embeddings"], tensors["embeddings"])


def test_a_full_disk_while_writing_json_leaves_nothing(tmp_path, monkeypatch):
    out = tmp_path / "validation" / "shapes.json"
    real_write_text = Path.write_text

    def half_then_full(self, text, *args, **kwargs):
        real_write_text(self, text[: len(text) // 2])
        _disk_full()

    monkeypatch.setattr(Path, "write_text", half_then_full)
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


@pytest.fixture
def job_logging():
    """job() configures the root logger for a job process; put pytest's back afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in set(root.handlers) - set(handlers):
        handler.close()
    root.handlers[:], root.level = handlers, level


def test_out_of_memory_names_the_budget_to_lower(small_split, tiny_model_dir, tmp_path, monkeypatch, capsys,
                                                 job_logging):
    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 23.65 GiB total)")

    monkeypatch.setattr(GPT2MLP, "forward", oom)     # the widest activations: where a too-large batch fails on a GPU
    settings = Settings(name=NAME, template=None, pred_len=24, split="train", model=str(tiny_model_dir),
                        revision=None, precision="fp32", fidelity="reference", limit_windows=2, device="cpu",
                        batch_tokens=4096)
    out, log = tmp_path / "train.safetensors", tmp_path / "extract.log"
    # In a job: one sentence on stderr and in the log, exit 1, no stack dump.
    with pytest.raises(SystemExit) as exit_, job(str(log)):
        extract_split(settings, *small_split, out, tmp_path / "train.json")
    stderr = capsys.readouterr().err
    assert exit_.value.code == 1 and "Traceback" not in stderr and "Tried to allocate" not in stderr
    sentence = ("pred_len 24, split train: cpu ran out of memory with batch_tokens = 4096; "
                "lower config key batch_tokens (e.g. to 2048) and rerun.")
    assert sentence in stderr and sentence in log.read_text()
    assert leftovers(tmp_path) == ["extract.log"]


# --------------------------------------------------------------------------- Ctrl-C and kill -9


def _interrupt(work: Path, sig: signal.Signals, ready) -> tuple[int, str, str]:
    """Start the extraction, send `sig` to the whole process group once `ready(log text)`; (rc, output, log).

    The process gets a session of its own, so the signal reaches snakemake and its jobs,
    like Ctrl-C in a terminal. Only what this run appended to the job's log counts.
    """
    logs = work / "results" / NAME / "logs"
    before = {p: p.stat().st_size for p in logs.glob("extract_24_train*.log")}
    output = work / f"snakemake-{sig.name}.out"
    with open(output, "w") as out:
        process = subprocess.Popen(SNAKEMAKE + ["-d", str(work), "--configfile", str(work / "config.yaml"),
                                                "--cores", "2", EMBEDDINGS],
                                   stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline, text = time.monotonic() + 600, None
        while process.poll() is None and time.monotonic() < deadline:
            found = sorted(logs.glob("extract_24_train*.log"))
            if found:
                with open(found[0], errors="replace") as f:
                    f.seek(before.get(found[0], 0))
                    text = f.read()
                if ready(text):
                    os.killpg(process.pid, sig)
                    break
            time.sleep(0.02)
        process.wait(timeout=120)
    assert text is not None and ready(text), \
        f"the job finished or failed before it could be interrupted:\n{output.read_text()[-3000:]}"
    return process.returncode, output.read_text(), text


@pytest.fixture(scope="module")
def interrupted(uninterrupted, tmp_path_factory) -> dict:
    """Ctrl-C as the extraction job starts, kill -9 in the middle of it, then the documented rerun."""
    work = tmp_path_factory.mktemp("interrupted")
    shutil.copytree(uninterrupted / "resources", work / "resources")
    for part in ("windows", "sca.safetensors"):   # the stages before extraction, finished
        copy = shutil.copytree if (uninterrupted / "results" / NAME / part).is_dir() else shutil.copy2
        copy(uninterrupted / "results" / NAME / part, work / "results" / NAME / part)
    shutil.copytree(uninterrupted / ".snakemake" / "metadata", work / ".snakemake" / "metadata")
    shutil.copy2(uninterrupted / "config.yaml", work / "config.yaml")
    seen = {}
    rc, output, _ = _interrupt(work, signal.SIGINT, ready=lambda log: True)
    seen["sigint"] = {"rc": rc, "output": output, "files": leftovers(work / "results" / NAME),
                      "locked": any((work / ".snakemake" / "locks").glob("*"))}
    rc, output, log = _interrupt(work, signal.SIGKILL, ready=lambda log: "P=24 train" in log)
    seen["sigkill"] = {"rc": rc, "log": log, "files": leftovers(work / "results" / NAME),
                       "locked": any((work / ".snakemake" / "locks").glob("*"))}
    # The rerun README documents: after kill -9, unlock, then the same command.
    base = SNAKEMAKE + ["-d", str(work), "--configfile", str(work / "config.yaml")]
    unlock = subprocess.run(base + ["--unlock"], capture_output=True, text=True, timeout=300)
    rerun = subprocess.run(base + ["--cores", "2", EMBEDDINGS], capture_output=True, text=True, timeout=600)
    seen["rerun"] = {"unlock": unlock, "rerun": rerun}
    seen["work"] = work
    return seen


def _outputs(files: list[str]) -> list[str]:
    """What could pass for a result: no logs, benchmarks or hidden temporaries."""
    return [f for f in files if not f.startswith(("logs/", "benchmarks/")) and not Path(f).name.startswith(".")]


BEFORE_EXTRACTION = ["sca.safetensors", "windows/test.parquet", "windows/train.parquet", "windows/val.parquet"]


def test_ctrl_c_leaves_no_complete_looking_file_and_no_lock(interrupted):
    seen = interrupted["sigint"]
    assert seen["rc"] != 0 and "Terminating processes on user request" in seen["output"]
    assert _outputs(seen["files"]) == BEFORE_EXTRACTION
    assert not seen["locked"]


def test_kill_9_mid_extraction_leaves_no_complete_looking_file(interrupted):
    seen = interrupted["sigkill"]
    assert seen["rc"] == -signal.SIGKILL
    assert "P=24 train" in seen["log"] and "100%" not in seen["log"]    # killed while computing
    assert _outputs(seen["files"]) == BEFORE_EXTRACTION
    assert seen["locked"]                                              # hence `snakemake --unlock` first


def test_the_rerun_finishes_with_the_bytes_of_an_uninterrupted_run(interrupted, uninterrupted):
    unlock, rerun = interrupted["rerun"]["unlock"], interrupted["rerun"]["rerun"]
    assert unlock.returncode == 0, unlock.stderr[-2000:]
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    got = (interrupted["work"] / EMBEDDINGS).read_bytes()
    want = (uninterrupted / EMBEDDINGS).read_bytes()
    # Same config and inputs, CPU fp32, another process: byte-identical (the timing JSON beside it differs).
    assert got == want
