"""get_data and get_model with the real snakemake CLI, offline, from a pre-filled Hugging Face cache.

The cache is built as huggingface_hub documents its layout ("Understand caching"):
<cache>/<type>s--<org>--<name>/refs/main holds the commit, blobs/<etag> the bytes, and
snapshots/<commit>/<path> links to the blob. The live download is not exercised here
(no network on the test machines).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import yaml

from conftest import make_model_dir
from helpers import snakemake, weather_rows

WEATHER_SHA256 = "34ee981d07313e51da2a50bb600072c8ae4a69cb4b0651f4cb93a069d7a2ba63"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def fill_cache(cache: Path, repo_folder: str, files: dict[str, Path], commit: str = COMMIT) -> None:
    """One snapshot of a repository in huggingface_hub's cache layout."""
    repo = cache / repo_folder
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "blobs").mkdir(exist_ok=True)
    for name, source in files.items():
        data = source.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        link = repo / "snapshots" / commit / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))


def offline_snakemake(workdir: Path, cache: Path, config: dict, *args: str) -> subprocess.CompletedProcess:
    return snakemake(workdir, config, *args, "--cores", "1", env={"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache)})


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


WEATHER = {"dataset": {"name": "weather", "csv": "resources/weather.csv"}}


def test_get_data_fetches_the_pinned_csv_from_the_hub_cache(tmp_path, weather_csv, tiny_model_dir):
    cache = tmp_path / "hub"
    fill_cache(cache, "datasets--thuml--Time-Series-Library", {"weather/weather.csv": weather_csv})
    work = tmp_path / "work"
    work.mkdir()
    config = WEATHER | {"model": {"name_or_path": str(tiny_model_dir)}}
    plan = offline_snakemake(work, cache, config, "-n")
    assert plan.returncode == 0, plan.stderr[-3000:]
    assert "rule get_data:" in plan.stdout           # planned from the known row count before the download
    result = offline_snakemake(work, cache, config, "resources/weather.csv")
    assert result.returncode == 0, result.stderr[-3000:]
    assert sha256(work / "resources" / "weather.csv") == WEATHER_SHA256
    assert not list((work / "resources").glob(".*.tmp"))


def test_get_data_refuses_a_hub_copy_with_another_hash(tmp_path, weather_csv, tiny_model_dir):
    cache = tmp_path / "hub"
    other = weather_rows(tmp_path / "short.csv", 1500)
    fill_cache(cache, "datasets--thuml--Time-Series-Library", {"weather/weather.csv": other})
    work = tmp_path / "work"
    work.mkdir()
    result = offline_snakemake(work, cache, WEATHER | {"model": {"name_or_path": str(tiny_model_dir)}},
                               "resources/weather.csv")
    assert result.returncode != 0
    log = (work / "results" / "weather" / "logs" / "get_data.log").read_text()
    assert f"has sha256 {sha256(other)}, not the pinned {WEATHER_SHA256}" in log
    assert "Traceback" not in log
    assert not (work / "resources" / "weather.csv").exists()


def test_get_data_offline_without_the_file_says_what_to_download_and_where(tmp_path, tiny_model_dir):
    work = tmp_path / "work"
    work.mkdir()
    result = offline_snakemake(work, tmp_path / "empty-cache",
                               WEATHER | {"model": {"name_or_path": str(tiny_model_dir)}}, "resources/weather.csv")
    assert result.returncode != 0
    log = (work / "results" / "weather" / "logs" / "get_data.log").read_text()
    sentence = [line for line in log.splitlines() if "ERROR" in line]
    assert len(sentence) == 1 and "Traceback" not in log
    assert ("download https://huggingface.co/datasets/thuml/Time-Series-Library/blob/main/weather/weather.csv "
            f"(sha256 {WEATHER_SHA256}) and put it at resources/weather.csv") in sentence[0]


def test_an_unknown_dataset_without_its_csv_is_one_sentence(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    result = offline_snakemake(work, tmp_path / "empty-cache", {"dataset": {"name": "mine", "csv": "data/mine.csv"}},
                               "-n")
    assert result.returncode != 0
    assert "data/mine.csv not found: put the mine CSV there or set dataset.csv in the config." in result.stderr
    assert "Traceback" not in result.stderr


def test_get_model_downloads_a_hub_model_once_at_its_commit(tmp_path, weather_csv):
    model = make_model_dir(tmp_path / "tiny")
    cache = tmp_path / "hub"
    files = {name: model / name for name in ("config.json", "model.safetensors", "vocab.json", "merges.txt")}
    fill_cache(cache, "models--someone--tiny-gpt2", files)
    work = tmp_path / "work"
    work.mkdir()
    config = {"dataset": {"name": "weather", "csv": str(weather_csv)}, "pred_lens": [24], "splits": ["train"],
              "model": {"name_or_path": "someone/tiny-gpt2", "revision": COMMIT}, "precision": "fp32",
              "limit_windows": 1}
    folder = work / "resources" / "models" / "someone" / "tiny-gpt2"
    target = "results/weather/embeddings/24/train.safetensors"
    result = offline_snakemake(work, cache, config, target)
    assert result.returncode == 0, result.stderr[-3000:]
    record = yaml.safe_load((folder / "download.json").read_text())
    assert record["repo"] == "someone/tiny-gpt2" and record["revision"] == COMMIT
    for name, source in files.items():
        assert record["files"][name] == sha256(source) == sha256(folder / name)
    from timekd_embed.records import read_metadata
    meta = read_metadata(work / target)
    assert meta["revision"] == COMMIT and meta["weights_sha256"] == sha256(files["model.safetensors"])

    # Downloaded once: the next plan has nothing to do; another commit plans the download and the extraction.
    again = offline_snakemake(work, cache, config, target, "-n")
    assert "Nothing to be done" in again.stdout + again.stderr
    other = offline_snakemake(work, cache, config | {"model": {"name_or_path": "someone/tiny-gpt2",
                                                               "revision": "f" * 40}}, target, "-n")
    assert other.returncode == 0, other.stderr[-3000:]
    assert "rule get_model:" in other.stdout and "rule extract:" in other.stdout
    assert "rule windows:" not in other.stdout


def test_a_hub_id_without_a_commit_is_one_sentence(tmp_path, weather_csv):
    work = tmp_path / "work"
    work.mkdir()
    config = {"dataset": {"name": "weather", "csv": str(weather_csv)},
              "model": {"name_or_path": "someone/tiny-gpt2", "revision": "main"}}
    result = offline_snakemake(work, tmp_path / "empty-cache", config, "-n")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "config key model.revision must be a commit (40 hex digits" in result.stderr
