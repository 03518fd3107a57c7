"""MANIFEST.json and `timekd-embed verify` on a finished tiny run; copied results stay up to date.

The finished run (real weather.csv, tiny GPT-2 folder, HF_HUB_OFFLINE=1) is made once per
session by `finished_run`; tests/test_faults.py compares its interrupted runs with it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from conftest import ROOT
from timekd_embed.config import config_hash
from timekd_embed.errors import InputError
from timekd_embed.manifest import MANIFEST, recorded_config, verify

BIN = Path(sys.executable).parent
SNAKEMAKE = [str(BIN / "snakemake"), "-s", str(ROOT / "Snakefile")]
NAME = "weather"

# Every artifact of rule all, relative to results/<name>, with the rule that makes it.
EXPECTED = {
    "windows/train.parquet": "windows", "windows/val.parquet": "windows", "windows/test.parquet": "windows",
    "sca.safetensors": "sca",
    "embeddings/24/train.safetensors": "gather", "embeddings/24/train.json": "gather",
    # fp32: no parity job, no histogram (nothing to compare)
    "validation/shapes.json": "validate", "validation/summary.html": "validate",
    "validation/report/24_train.html": "validate",
}


def snakemake(workdir: Path, config: dict, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    configfile = workdir / "config.yaml"
    configfile.write_text(yaml.safe_dump(config))
    return subprocess.run(SNAKEMAKE + ["-d", str(workdir), "--configfile", str(configfile), *args],
                          capture_output=True, text=True, timeout=900, env=os.environ | (env or {}))


def tiny_config(model_dir: Path) -> dict:
    """A few seconds of extraction on the CPU in fp32: 8 windows of one horizon and split.

    The CSV path is relative, like the default, so that a copy of the folder elsewhere
    uses the same config.
    """
    return {"dataset": {"name": NAME, "csv": "resources/weather.csv"}, "pred_lens": [24], "splits": ["train"],
            "limit_windows": 8, "precision": "fp32", "device": "cpu", "model": {"name_or_path": str(model_dir)},
            "parity": {"windows": 2, "min_cosine": 0.99}}


_FINISHED: dict[str, Path] = {}


def finished_run(tmp_path_factory, model_dir: Path, weather_csv: Path) -> Path:
    """The working folder of one uninterrupted run of `tiny_config`, made once per session."""
    if "work" not in _FINISHED:
        work = tmp_path_factory.mktemp("finished_run")
        (work / "resources").mkdir()
        shutil.copy(weather_csv, work / "resources" / "weather.csv")
        # Offline on purpose: a local model folder must never touch the network.
        run = snakemake(work, tiny_config(model_dir), "--cores", "2", env={"HF_HUB_OFFLINE": "1"})
        assert run.returncode == 0, run.stderr[-3000:]
        _FINISHED["work"] = work
    return _FINISHED["work"]


@pytest.fixture(scope="module")
def work(tmp_path_factory, tiny_model_dir, weather_csv) -> Path:
    return finished_run(tmp_path_factory, tiny_model_dir, weather_csv)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def verify_cli(folder: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "timekd-embed"), "verify", str(folder)], capture_output=True, text=True,
                          timeout=300)


def test_an_offline_run_with_a_local_model_lists_every_artifact_in_its_manifest(work, tiny_model_dir):
    results = work / "results" / NAME
    manifest = json.loads((results / MANIFEST).read_text())
    assert {a["path"]: a["rule"] for a in manifest["artifacts"]} == EXPECTED
    for artifact in manifest["artifacts"]:
        path = results / artifact["path"]
        assert artifact["sha256"] == sha256(path) and artifact["size"] == path.stat().st_size
    config = manifest["config"]
    assert manifest["config_hash"] == config_hash(config)
    # Only the keys that decide the artifacts: not the runtime ones, not where the CSV lies.
    assert config == recorded_config(config) and "device" not in config and "csv" not in config["dataset"]
    assert config["model"]["name_or_path"] == str(tiny_model_dir) and config["pred_lens"] == [24]
    assert manifest["versions"]["torch"] == torch.__version__
    assert manifest["versions"]["timekd-embed"] and manifest["versions"]["python"]


def test_verify_passes_on_a_fresh_run(work):
    result = verify_cli(work / "results" / NAME)
    assert result.returncode == 0, result.stderr
    assert f"all {len(EXPECTED)} artifacts match" in result.stdout


def test_verify_names_every_changed_missing_and_unlisted_file(work, tmp_path):
    copy = tmp_path / NAME
    shutil.copytree(work / "results" / NAME, copy)
    embeddings = copy / "embeddings" / "24" / "train.safetensors"
    data = bytearray(embeddings.read_bytes())
    data[-1] ^= 1                                         # one flipped bit in the last float
    embeddings.write_bytes(bytes(data))
    (copy / "validation" / "shapes.json").unlink()
    (copy / "windows" / "extra.parquet").write_bytes(b"not from this run")
    (copy / "windows" / ".train.parquet.abc123.tmp").write_bytes(b"half")  # an interrupted write
    (copy / "logs" / "anything.log").write_text("logs are not artifacts\n")

    result = verify_cli(copy)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 3, result.stderr
    assert any(str(embeddings) in e and "differ from the manifest" in e and "rule gather" in e for e in errors)
    assert any(str(copy / "validation" / "shapes.json") in e and "missing" in e for e in errors)
    assert any(str(copy / "windows" / "extra.parquet") in e and "not in the manifest" in e for e in errors)
    assert "leftover of an interrupted write" in result.stderr and "Traceback" not in result.stderr
    assert "3 problem(s)" in result.stderr


def test_verify_reports_an_edited_manifest_and_a_missing_one(work, tmp_path):
    copy = tmp_path / NAME
    shutil.copytree(work / "results" / NAME, copy)
    manifest = json.loads((copy / MANIFEST).read_text())
    manifest["config"]["seed"] += 1                        # claims another config than the run had
    (copy / MANIFEST).write_text(json.dumps(manifest))
    problems, notes, n = verify(copy)
    assert n == len(EXPECTED) and notes == []
    assert len(problems) == 1 and "config_hash" in problems[0] and "edited" in problems[0]

    manifest["artifacts"][0]["path"] = "../../outside.txt"   # verify never reads outside the folder
    (copy / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(InputError, match=r"artifact 0 is not a relative path .* inside"):
        verify(copy)

    (copy / MANIFEST).unlink()
    with pytest.raises(InputError, match=r"MANIFEST.json does not exist; run the workflow to completion"):
        verify(copy)


def test_copied_results_are_up_to_date_without_the_csv(work, tmp_path):
    """What rsync -a of results/ and .snakemake/metadata gives another machine (README)."""
    other = tmp_path / "elsewhere"
    shutil.copytree(work / "results", other / "results", copy_function=shutil.copy2)  # keeps mtimes
    shutil.copytree(work / ".snakemake" / "metadata", other / ".snakemake" / "metadata", copy_function=shutil.copy2)
    config = yaml.safe_load((work / "config.yaml").read_text())
    assert not (other / config["dataset"]["csv"]).exists()
    dry = snakemake(other, config, "-n", "--cores", "2")
    assert dry.returncode == 0, dry.stderr[-2000:]
    assert "Nothing to be done" in dry.stdout + dry.stderr
    assert verify(other / "results" / NAME)[0] == []
