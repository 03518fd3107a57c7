"""get_data and get_model with the real snakemake CLI, offline, from a pre-filled Hugging Face cache.

The cache is built as huggingface_hub documents its layout ("Understand caching"):
<cache>/<type>s--<org>--<name>/refs/main holds the commit, blobs/<etag> the bytes, and
snapshots/<commit>/<path> links to the blob; the etag is the file's sha256 for a file the hub
stores with git LFS, its git blob sha1 otherwise. The live download is not exercised here
(no network on the test machines).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import yaml

from conftest import TOKENIZER_DIR, make_model_dir, need
from helpers import snakemake, weather_rows

WEATHER_SHA256 = "34ee981d07313e51da2a50bb600072c8ae4a69cb4b0651f4cb93a069d7a2ba63"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


LFS = (".safetensors", ".csv")  # what the hub stores with git LFS here; every other file is in git


def etag(name: str, data: bytes) -> str:
    """The hub's name of a file's bytes: sha256 for an LFS file, else git's blob sha1."""
    if name.endswith(LFS):
        return hashlib.sha256(data).hexdigest()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def fill_cache(cache: Path, repo_folder: str, files: dict[str, Path], commit: str = COMMIT) -> None:
    """One snapshot of a repository in huggingface_hub's cache layout."""
    repo = cache / repo_folder
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "blobs").mkdir(exist_ok=True)
    for name, source in files.items():
        data = source.read_bytes()
        blob = repo / "blobs" / etag(name, data)
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
    result = offline_snakemake(work, cache, config, "fetch")
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
                               "fetch")
    assert result.returncode != 0
    log = (work / "results" / "weather" / "logs" / "get_data.log").read_text()
    assert f"has sha256 {sha256(other)}, not the pinned {WEATHER_SHA256}" in log
    assert "Traceback" not in log
    assert not (work / "resources" / "weather.csv").exists()


def test_get_data_offline_without_the_file_says_what_to_download_and_where(tmp_path, tiny_model_dir):
    work = tmp_path / "work"
    work.mkdir()
    result = offline_snakemake(work, tmp_path / "empty-cache",
                               WEATHER | {"model": {"name_or_path": str(tiny_model_dir)}}, "fetch")
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


# --------------------------------------------------------------------------- the user's files are inputs, never outputs


def identity(paths: list[Path]) -> dict[str, tuple[str, int]]:
    """Each file's sha256 and inode: a file deleted, rewritten or replaced by another shows in one of them."""
    return {str(path): (sha256(path), path.stat().st_ino) for path in paths}


TINY_RUN = {"pred_lens": [24], "splits": ["train"], "limit_windows": 1, "precision": "fp32", "device": "cpu"}
FORCING = (["--forceall"], ["-R", "get_data"], ["--touch"], ["--delete-temp-output"], ["--delete-all-output"])


def test_forcing_and_cleaning_never_delete_or_replace_the_users_csv_and_model_folder(tmp_path, tiny_model_dir):
    """The issue's case: for dataset weather with the user's own 3,000-row data.csv, get_data declared the CSV
    its output, so `--forceall` offline deleted it and then said "data.csv not found" (online it put the
    official weather.csv in its place)."""
    work = tmp_path / "work"
    csv = weather_rows(work / "data.csv", 3000)
    model = Path(shutil.copytree(tiny_model_dir, work / "mymodel"))
    config = {"dataset": {"name": "weather", "csv": "data.csv"}, "model": {"name_or_path": "mymodel"}} | TINY_RUN
    mine = [csv, *sorted(model.iterdir())]
    before = identity(mine)
    for args in FORCING:
        result = offline_snakemake(work, tmp_path / "empty-cache", config, *args)
        assert result.returncode == 0, (args, result.stderr[-3000:])
        assert identity(mine) == before, args
    assert (work / "results" / "weather" / "logs" / "windows.log").exists()  # the run did happen
    assert not (work / "results" / "weather" / "windows" / "train.parquet").exists()  # and its outputs went


def test_a_verified_download_is_kept_by_forcing_and_cleaning(tmp_path, weather_csv, tiny_model_dir):
    """Once downloaded and checked, weather.csv is an input like any CSV: forcing or cleaning offline, with a
    hub cache that no longer has it, neither downloads it again nor removes it."""
    cache = tmp_path / "hub"
    fill_cache(cache, "datasets--thuml--Time-Series-Library", {"weather/weather.csv": weather_csv})
    work = tmp_path / "work"
    work.mkdir()
    config = WEATHER | {"model": {"name_or_path": str(tiny_model_dir)}} | TINY_RUN
    target = "results/weather/windows/train.parquet"
    first = offline_snakemake(work, cache, config, target)
    assert first.returncode == 0, first.stderr[-3000:]
    csv = work / "resources" / "weather.csv"
    assert sha256(csv) == WEATHER_SHA256
    before = identity([csv])
    for args in (["--forceall", target], ["-R", "get_data", target], ["--delete-all-output", target]):
        result = offline_snakemake(work, tmp_path / "empty-cache", config, *args)
        assert result.returncode == 0, (args, result.stderr[-3000:])
        assert identity([csv]) == before, args


HUB_FILES = ("config.json", "model.safetensors", "vocab.json", "merges.txt")


def hub_model_config(work: Path) -> dict:
    """A hub model on a 3,000-row copy of weather.csv in `work` (never the shared file: these runs force), under
    a dataset name without a download, so that only get_model fetches."""
    weather_rows(work / "data.csv", 3000)
    return {"dataset": {"name": "mine", "csv": "data.csv"},
            "model": {"name_or_path": "someone/tiny-gpt2", "revision": COMMIT}} | TINY_RUN


def test_a_hub_models_files_put_in_its_folder_are_kept_by_forcing_and_cleaning(tmp_path, tiny_model_dir):
    """The same for a hub model: its files, copied by hand into resources/models/<id>/ (as README "Copying
    results" says), were get_model's outputs; `--forceall` deleted them and copied the hub cache's over them."""
    cache = tmp_path / "hub"
    fill_cache(cache, "models--someone--tiny-gpt2", {name: tiny_model_dir / name for name in HUB_FILES})
    work = tmp_path / "work"
    config = hub_model_config(work)
    folder = work / "resources" / "models" / "someone" / "tiny-gpt2"
    folder.mkdir(parents=True)
    mine = [Path(shutil.copy2(tiny_model_dir / name, folder / name)) for name in HUB_FILES]
    before = identity(mine)
    # First with the hub cache, which checks them; then offline without it: the checked files stand in.
    for hub, args in ((cache, ["--forceall", "fetch"]), (tmp_path / "empty", ["--forceall", "fetch"]),
                      (tmp_path / "empty", ["-R", "get_model", "fetch"]),
                      (tmp_path / "empty", ["--delete-all-output", "fetch"])):
        result = offline_snakemake(work, hub, config, *args)
        assert result.returncode == 0, (args, result.stderr[-3000:])
        assert identity(mine) == before, args
    record = json.loads((folder / "download.json").read_text()) if (folder / "download.json").exists() else None
    assert record is None  # --delete-all-output removed the record, the workflow's own file, and only it


# --------------------------------------------------------------------------- checked against the hub's own hashes


def test_a_damaged_blob_in_the_hub_cache_is_one_sentence_naming_it(tmp_path, tiny_model_dir):
    """The issue's case: model.safetensors damaged in the hub cache (same size, 1 MiB zeroed) was copied and
    recorded as the pinned commit's weights: rc 0, and embeddings off by up to 0.19."""
    cache = tmp_path / "hub"
    fill_cache(cache, "models--someone--tiny-gpt2", {name: tiny_model_dir / name for name in HUB_FILES})
    weights = (tiny_model_dir / "model.safetensors").read_bytes()
    blob = cache / "models--someone--tiny-gpt2" / "blobs" / hashlib.sha256(weights).hexdigest()
    damaged = bytearray(weights)
    middle = len(damaged) // 2
    damaged[middle:middle + 2**20] = bytes(2**20)
    blob.write_bytes(bytes(damaged))
    assert blob.stat().st_size == len(weights)
    work = tmp_path / "work"
    result = offline_snakemake(work, cache, hub_model_config(work), "fetch")
    assert result.returncode != 0
    log = (work / "results" / "mine" / "logs" / "get_model.log").read_text()
    sentences = [line for line in log.splitlines() if "ERROR" in line]
    assert len(sentences) == 1 and "Traceback" not in log, log
    assert f"{blob.resolve()} in the Hugging Face cache is damaged" in sentences[0]
    assert "delete that file and rerun where the hub can be reached (HF_HUB_OFFLINE is set)" in sentences[0]
    assert not (work / "resources" / "models" / "someone" / "tiny-gpt2" / "model.safetensors").exists()


def test_a_sharded_checkpoint_is_fetched_checked_recorded_and_tracked(tmp_path):
    """Every file of the commit that makes the model: the index and each shard it lists, config.json and the
    tokenizer files (get_model fetched model.safetensors, config.json, vocab.json and merges.txt only)."""
    import torch
    from transformers import GPT2Config, GPT2Model, GPT2TokenizerFast

    from timekd_embed.fingerprint import tracked_model_files
    from timekd_embed.model_files import model_source
    from timekd_embed.records import read_metadata

    source = tmp_path / "sharded"
    torch.manual_seed(0)
    GPT2Model(GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=50257)).save_pretrained(source,
                                                                                          max_shard_size="5MB")
    GPT2TokenizerFast.from_pretrained(need(TOKENIZER_DIR)).save_pretrained(source)
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(TOKENIZER_DIR / name, source / name)
    files = {path.name: path for path in sorted(source.iterdir())}
    shards = sorted(name for name in files if name.startswith("model-"))
    assert len(shards) == 2 and "model.safetensors.index.json" in files and "tokenizer.json" in files
    cache = tmp_path / "hub"
    fill_cache(cache, "models--someone--sharded-gpt2", files)
    work = tmp_path / "work"
    model = {"name_or_path": "someone/sharded-gpt2", "revision": COMMIT}
    config = hub_model_config(work) | {"model": model}
    target = "results/mine/embeddings/24/train.safetensors"
    result = offline_snakemake(work, cache, config, target)
    assert result.returncode == 0, result.stderr[-3000:]
    folder = work / "resources" / "models" / "someone" / "sharded-gpt2"
    record = json.loads((folder / "download.json").read_text())
    assert record["files"] == {name: sha256(path) for name, path in files.items()}
    assert sorted(tracked_model_files(model_source(model, work))) == sorted(folder / name for name in files)
    # The embeddings record the shards' identity: `sha256sum model-*.safetensors | sha256sum` in the folder.
    listing = "".join(f"{sha256(files[name])}  {name}\n" for name in shards)
    assert read_metadata(work / target)["weights_sha256"] == hashlib.sha256(listing.encode()).hexdigest()
