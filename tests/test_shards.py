"""Window ranges planned before the windows exist, and gathering them."""

import json

import pytest
import torch

from helpers import extract_one
from timekd_embed.errors import InputError
from timekd_embed.records import read_tensors
from timekd_embed.shards import csv_rows, gather, planned_windows, ranges, split_rows
from timekd_embed.store import write_json, write_tensors


def test_ranges_cover_every_window_once():
    assert ranges(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert ranges(8, 4) == [(0, 4), (4, 8)]
    assert ranges(5, None) == [(0, 5)]
    assert ranges(0, 4) == []


def test_planned_counts_match_the_spec_for_weather(weather_csv):
    assert csv_rows(weather_csv) == 52696
    rows = split_rows(weather_csv, {"train": "/nonexistent/a", "val": "/nonexistent/b"}, 96, "custom")
    assert (rows["train"], rows["val"], rows["test"]) == (36887, 5366, 10635)
    assert planned_windows(rows["train"], 96, 24, None) == 36792 - 24
    assert planned_windows(rows["val"], 96, 192, 100) == 100


def shard(path, start, stop, **meta):
    write_tensors(path, {"embeddings": torch.full((stop - start, 2, 3), float(start)),
                         "window_start": torch.arange(start, stop)},
                  {"model": "m", "window_range": json.dumps([start, stop])} | meta)
    stats = path.with_suffix(".json")
    write_json(stats, {"windows": stop - start, "tokens": 10, "tokens_computed": 6, "wall_s": 2.0,
                       "longest_prompt": 300 + start, "peak_memory_bytes": {"cpu_rss": 100 + start},
                       "windows_per_s": 0, "tokens_per_s": 0})
    return str(path), str(stats)


def test_gather_joins_in_window_order_and_merges_the_stats(tmp_path):
    a, b = shard(tmp_path / "0-2.safetensors", 0, 2), shard(tmp_path / "2-3.safetensors", 2, 3)
    gather([a[0], b[0]], [a[1], b[1]], str(tmp_path / "out.safetensors"), str(tmp_path / "out.json"))
    tensors, meta = read_tensors(tmp_path / "out.safetensors")
    assert tensors["window_start"].tolist() == [0, 1, 2]
    assert tensors["embeddings"][:, 0, 0].tolist() == [0.0, 0.0, 2.0]
    assert meta["window_range"] == "[0, 3]" and meta["shards"] == "2" and meta["model"] == "m"
    stats = json.loads((tmp_path / "out.json").read_text())
    assert (stats["windows"], stats["wall_s"], stats["windows_per_s"], stats["longest_prompt"]) == (3, 4.0, 0.75, 302)
    assert stats["peak_memory_bytes"] == {"cpu_rss": 102}


def test_gather_refuses_shards_made_with_other_settings(tmp_path):
    a, b = shard(tmp_path / "0-2.safetensors", 0, 2), shard(tmp_path / "2-3.safetensors", 2, 3, model="other")
    with pytest.raises(InputError, match=r"2-3.safetensors: made with other settings than .*0-2.safetensors \(model\)"):
        gather([a[0], b[0]], [a[1], b[1]], str(tmp_path / "out.safetensors"), str(tmp_path / "out.json"))
    assert not (tmp_path / "out.safetensors").exists()


def test_shards_made_with_other_speed_settings_gather(tmp_path, weather_csv, tiny_model_dir):
    """Following the out-of-memory advice (a lower batch_tokens) for some ranges keeps the run whole."""
    from timekd_embed.config import validate_config
    from timekd_embed.sca import save_sca
    from timekd_embed.settings import Settings
    from timekd_embed.table import load_csv
    from timekd_embed.windows import SPLITS, write_windows

    with open(weather_csv, encoding="utf-8", newline="") as f:  # 400 rows: train has 160 windows at P=24
        (tmp_path / "weather.csv").write_text("".join(next(f) for _ in range(401)), encoding="utf-8", newline="")
    out = {s: str(tmp_path / f"{s}.parquet") for s in SPLITS}
    write_windows(load_csv(tmp_path / "weather.csv"), "custom", 96, [24], out)
    save_sca(tmp_path / "sca.safetensors", n_vars=21, d_model=64, seed=2024)
    config = validate_config({"dataset": {"name": "weather", "csv": "unused.csv"}, "model": {"name_or_path": str(
        tiny_model_dir)}, "precision": "fp32", "device": "cpu", "gpus_per_job": 1, "limit_windows": 3})
    paths = []
    for (start, stop), batch_tokens in (((0, 2), 4096), ((2, 3), 1024)):
        shard_path, stats = tmp_path / f"{start}-{stop}.safetensors", tmp_path / f"{start}-{stop}.json"
        extract_one(Settings.from_config(config), out["train"], tmp_path / "sca.safetensors", shard_path, stats,
                    shard=(start, stop), batch_tokens=batch_tokens)
        paths.append((str(shard_path), str(stats)))
    gather([p for p, _ in paths], [s for _, s in paths], str(tmp_path / "out.safetensors"), str(tmp_path / "o.json"))
    tensors, meta = read_tensors(tmp_path / "out.safetensors")
    assert tensors["window_start"].tolist() == [0, 1, 2]
    assert "batch_tokens" not in json.loads(meta["settings"])  # recorded under "runtime", for information only
    assert '"batch_tokens": 1024' in meta["runtime"] and '"batch_tokens": 4096' in meta["runtime"]
