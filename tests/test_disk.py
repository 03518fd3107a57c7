"""A full disk and a read-only folder, for real: every writer on a small tmpfs ends in one sentence
naming its file, and leaves nothing partial.

Mounting needs root (CI runs as root); elsewhere these tests skip, saying why, and in CI (CI=true)
a refused mount fails them.
"""

from __future__ import annotations

import errno
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import ROOT
from helpers import snakemake, timekd_embed_in_process
from runs import OFFLINE, RUN_CONFIG, new_work
from timekd_embed.jobs import job
from timekd_embed.report import histogram
from timekd_embed.store import write_json, write_tensors
from timekd_embed.table import load_csv
from timekd_embed.windows import SPLITS, write_windows

FREE_SENTENCE = "; free some space and rerun (nothing partial was kept)."


def mount(*args: str) -> None:
    result = subprocess.run(["mount", *args], capture_output=True, text=True)
    if result.returncode != 0:
        reason = (f"`mount {' '.join(args)}` was refused ({result.stderr.strip() or result.returncode}): these "
                  "tests mount a small tmpfs, which needs root")
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)


@pytest.fixture
def small_disk(tmp_path):
    """`small_disk(size)`: a fresh tmpfs of `size` (mount's syntax: 64k, 1m) under tmp_path; unmounted after."""
    mounted = []

    def make(size: str, name: str = "disk") -> Path:
        folder = tmp_path / name
        folder.mkdir()
        mount("-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(folder))
        mounted.append(folder)
        return folder

    yield make
    for folder in reversed(mounted):
        subprocess.run(["umount", "-l", str(folder)], check=False)


def fill(disk: Path) -> None:
    """Take every free byte of `disk`."""
    with open(disk / "filler", "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError as error:
            assert error.errno == errno.ENOSPC


def in_a_job(capsys, write, log: Path | None = None) -> str:
    """Run `write` as a job's body; its exit code must be 1 and its stderr one sentence: that sentence."""
    with pytest.raises(SystemExit) as exit_:
        with job(str(log) if log else None):
            write()
    err = capsys.readouterr().err
    assert exit_.value.code == 1 and "Traceback" not in err and "Logging error" not in err, err
    errors = [line.split("ERROR timekd_embed: ", 1)[1] for line in err.splitlines() if "ERROR timekd_embed: " in line]
    assert len(errors) == 1, err
    return errors[0]


def files(folder: Path) -> list[str]:
    """Every file under `folder`, hidden ones included, but the filler."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and p.name != "filler")


def test_safetensors_on_a_full_disk(small_disk, capsys, job_logging):
    """The issue's case: the extraction showed a `SafetensorError ... No space left on device` traceback
    (safetensors raises its own type, not OSError)."""
    disk = small_disk("256k")
    out = disk / "embeddings" / "24" / "train.safetensors"
    sentence = in_a_job(capsys, lambda: write_tensors(out, {"embeddings": torch.ones(512, 1024)}, {"seed": "1"}))
    assert sentence == f"no space left on the device while writing {out}{FREE_SENTENCE}"
    assert files(disk) == []


def test_parquet_windows_on_a_full_disk(small_disk, capsys, job_logging, weather_csv):
    """The windows stage said "a file"; it names the file now."""
    disk = small_disk("512k")
    table = load_csv(weather_csv)
    out = {s: str(disk / "windows" / f"{s}.parquet") for s in SPLITS}
    sentence = in_a_job(capsys, lambda: write_windows(table, "custom", 96, [24], out))
    assert sentence in [f"no space left on the device while writing {path}{FREE_SENTENCE}" for path in out.values()]
    assert files(disk) == []


def test_json_on_a_full_disk(small_disk, capsys, job_logging):
    disk = small_disk("64k")
    out = disk / "validation" / "shapes.json"
    sentence = in_a_job(capsys, lambda: write_json(out, {"files": list(range(50_000))}))
    assert sentence == f"no space left on the device while writing {out}{FREE_SENTENCE}"
    assert files(disk) == []


def test_the_histogram_on_a_full_disk(small_disk, capsys, job_logging):
    disk = small_disk("64k")
    fill(disk)
    out = disk / "validation" / "cosine_24.png"
    cosines = list(1 - np.random.default_rng(0).uniform(1e-6, 1e-3, 500))
    sentence = in_a_job(capsys, lambda: histogram(24, cosines, "fp16", out))
    assert sentence == f"no space left on the device while writing {out}{FREE_SENTENCE}"
    assert files(disk) == []


def test_a_log_on_the_full_disk_gives_one_note_and_the_sentence(small_disk, capsys, job_logging):
    """The issue's case: with the job's own log on the full disk, the sentence came between five
    `--- Logging error ---` tracebacks."""
    disk = small_disk("64k")
    (disk / "logs").mkdir()
    fill(disk)
    out = disk / "validation" / "shapes.json"

    def a_job_that_logs_then_writes():
        for step in range(5):
            logging.getLogger("timekd_embed.validate").info("step %d of the job", step)
        write_json(out, {"passed": True})

    sentence = in_a_job(capsys, a_job_that_logs_then_writes, log=disk / "logs" / "validate.log")
    assert sentence == f"no space left on the device while writing {out}{FREE_SENTENCE}"
    assert files(disk) == ["logs/validate.log"]


EXPORT_ON_A_FULL_DISK = """
import sys
sys.path.insert(0, sys.argv[1])
from timekd_embed.export import export_split
from timekd_embed.jobs import job
with job(None):
    export_split(sys.argv[2], sys.argv[3])
"""


def test_the_hdf5_export_on_a_full_disk(small_disk, tmp_path):
    """The issue's case: the export died with SIGSEGV after h5py's errors and left a hidden temporary file."""
    source = tmp_path / "train.safetensors"
    write_tensors(source, {"embeddings": torch.ones(60, 21, 64), "window_start": torch.arange(60)}, {})
    disk = small_disk("256k")                     # room for some of the 60 files of 5.4 kB each, not all
    out = disk / "weather" / "24" / "train"
    # In a process of its own: a crash in h5py's cleanup would take the test runner with it.
    run = subprocess.run([sys.executable, "-c", EXPORT_ON_A_FULL_DISK, str(ROOT / "workflow"), str(source), str(out)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 1, (run.returncode, run.stderr[-3000:])
    assert "Traceback" not in run.stderr and "HDF5" not in run.stderr, run.stderr[-3000:]
    errors = [line for line in run.stderr.splitlines() if "ERROR timekd_embed: " in line]
    assert len(errors) == 1 and errors[0].endswith(FREE_SENTENCE), run.stderr
    written = errors[0].split("while writing ")[1].removesuffix(FREE_SENTENCE)
    assert Path(written).parent == disk / "weather" / "24" / ".train.partial"
    # Nothing partial: no temporary file, and every file in the staging folder complete (a rerun keeps them).
    left = files(disk)
    assert left and all(name.startswith("weather/24/.train.partial/") for name in left)
    names = [name.rsplit("/", 1)[1] for name in left]
    assert not [name for name in names if name.endswith(".tmp")]
    sizes = {(disk / name).stat().st_size for name in left if name.endswith(".h5")}
    assert len(sizes) == 1


def test_a_refused_write_in_a_job_is_one_sentence(small_disk, capsys, job_logging):
    disk = small_disk("64k")
    (disk / "validation").mkdir()
    mount("-o", "remount,ro", str(disk))
    out = disk / "validation" / "shapes.json"
    sentence = in_a_job(capsys, lambda: write_json(out, {"passed": True}))
    assert sentence == (f"cannot write {out} (Read-only file system): its folder is read-only or not yours to "
                        "write; make it writable, or run in another working directory (snakemake -d), and rerun "
                        "(nothing partial was kept).")


def test_a_read_only_results_folder_stops_the_run_in_one_sentence(small_disk, tmp_path, tiny_model_dir, weather_csv):
    """The issue's case: Snakemake's 60-line traceback when it could not remove a job's old output there."""
    work = new_work(tmp_path / "work", tiny_model_dir, weather_csv)
    results = small_disk("1m", name="work/results")
    for folder in ("weather/windows", "weather/logs", "weather/benchmarks"):   # a run's folders, outputs missing
        (results / folder).mkdir(parents=True)
    mount("-o", "remount,ro", str(results))
    run = snakemake(work, RUN_CONFIG, "--cores", "1", env=OFFLINE)
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr[-3000:]
    errors = [line for line in run.stderr.splitlines() if line.startswith("Error")]
    assert errors == ["Error: results/weather cannot be written (results/weather/MANIFEST.json is to be written "
                      "there): the folder is read-only or not yours to write; make it writable, or run in another "
                      "working directory (snakemake -d)."]
    assert not any((work / ".snakemake" / "locks").glob("*"))   # Snakemake's lock is released


def test_the_preflight_report_on_a_full_disk(small_disk, tmp_path, weather_csv, tiny_model_dir):
    """`timekd-embed preflight` writes its report outside any job: the command says it in one sentence too."""
    disk = small_disk("64k")
    fill(disk)
    config = tmp_path / "my.yaml"
    config.write_text(yaml.safe_dump({"dataset": {"name": "weather", "csv": str(weather_csv)}, "pred_lens": [24],
                                      "splits": ["train"], "limit_windows": 4, "precision": "fp32", "device": "cpu",
                                      "model": {"name_or_path": str(tiny_model_dir)}}))
    result = timekd_embed_in_process("preflight", "--configfile", str(config), "--windows", "1", "--out",
                                     str(disk / "preflight"), cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    said = [line for line in result.stderr.splitlines() if line.startswith("Error")]
    assert said == [f"Error: no space left on the device while writing {disk / 'preflight' / 'preflight.json'}"
                    f"{FREE_SENTENCE}"]
    assert files(disk) == []
