"""The sha256 cache behind the rules' content params: what makes it hash a file again, and what it
does with a cache file that is not its own."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from timekd_embed.fingerprint import Sha256Cache

BEFORE = b"date,OT\n2020-01-01 00:10:00,1.0\n2020-01-01 00:20:00,2.0\n"
AFTER = b"date,OT\n2020-01-01 00:10:00,7.0\n2020-01-01 00:20:00,2.0\n"  # one digit other, same size


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def cached(cache_file: Path, path: Path, hashed_later_s: float = 0) -> None:
    """The cache as a dry run leaves it after hashing `path`, optionally as if hashed `hashed_later_s`
    seconds after the moment it really was (an entry made long after the file's last change)."""
    cache = Sha256Cache(cache_file)
    assert cache.sha256(path) == sha256(path.read_bytes())
    cache.save()
    if hashed_later_s:
        entries = json.loads(cache_file.read_text())
        entry = entries[str(path.resolve())]
        entry["hashed_ns"] = entry.get("hashed_ns", 0) + int(hashed_later_s * 1e9)
        cache_file.write_text(json.dumps(entries))


def plant(cache_file: Path, path: Path, digest: str) -> None:
    """Another digest under the file's entry: returned as is only when the entry is trusted."""
    entries = json.loads(cache_file.read_text())
    entries[str(path.resolve())]["sha256"] = digest
    cache_file.write_text(json.dumps(entries))


@pytest.mark.parametrize("replace", ["cp -p", "touch -r", "in place, times put back"])
def test_a_same_size_replacement_that_keeps_the_timestamp_is_hashed_again(tmp_path, replace):
    """The issue's case: a CSV replaced by another of the same size with its timestamp kept planned
    "Nothing to be done" (the cache trusted path, size and mtime)."""
    csv, other, cache_file = tmp_path / "data.csv", tmp_path / "other.csv", tmp_path / "cache.json"
    csv.write_bytes(BEFORE)
    os.utime(csv, ns=(1_600_000_000 * 10**9, 1_600_000_000 * 10**9))  # an old file, as a dataset is
    cached(cache_file, csv, hashed_later_s=60)                         # hashed by a dry run long after
    plant(cache_file, csv, "0" * 64)
    assert Sha256Cache(cache_file).sha256(csv) == "0" * 64             # trusted: nothing was read again
    other.write_bytes(AFTER)
    os.utime(other, ns=(1_600_000_000 * 10**9, 1_600_000_000 * 10**9))
    if replace == "cp -p":
        subprocess.run(["cp", "-p", str(other), str(csv)], check=True)
    elif replace == "touch -r":
        shutil.copyfile(other, csv)
        subprocess.run(["touch", "-r", str(other), str(csv)], check=True)
    else:
        before = csv.stat()
        with open(csv, "r+b") as f:
            f.write(AFTER)
        os.utime(csv, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert csv.stat().st_size == len(BEFORE) and csv.stat().st_mtime_ns == 1_600_000_000 * 10**9
    assert Sha256Cache(cache_file).sha256(csv) == sha256(AFTER)


def test_an_entry_hashed_within_a_timestamp_tick_of_the_last_change_is_hashed_again(tmp_path):
    """As git's racy-git rule: on a filesystem with 1-second timestamps a write in the same second as the
    hash keeps size, mtime and ctime, so such an entry is never trusted; one hashed later is."""
    csv, cache_file = tmp_path / "data.csv", tmp_path / "cache.json"
    csv.write_bytes(BEFORE)
    cached(cache_file, csv)                                  # hashed right after the write
    plant(cache_file, csv, "0" * 64)
    assert Sha256Cache(cache_file).sha256(csv) == sha256(BEFORE)   # not trusted: read again
    cached(cache_file, csv, hashed_later_s=Sha256Cache.RACY_NS / 1e9 + 0.5)
    plant(cache_file, csv, "0" * 64)
    assert Sha256Cache(cache_file).sha256(csv) == "0" * 64         # trusted


DAMAGED_CACHES = {
    "a list": b"[]",
    "an entry of another shape": json.dumps({"/data.csv": {"size": 3, "sha256": "ab"}}).encode(),
    "an entry that is not a mapping": json.dumps({"/data.csv": [1, 2]}).encode(),
    "a truncated write": b'{"/data.csv": {"size": 63, "mtime_ns": 16',
    "binary junk": bytes(range(256)) * 4,
}


@pytest.mark.parametrize("content", list(DAMAGED_CACHES))
def test_a_damaged_cache_is_a_missing_one_with_one_log_line(tmp_path, caplog, content):
    """The issue's case: sha256.json holding [] stopped every command (-n too) with an AttributeError."""
    csv, cache_file = tmp_path / "data.csv", tmp_path / "cache.json"
    csv.write_bytes(BEFORE)
    cache_file.write_bytes(DAMAGED_CACHES[content])
    with caplog.at_level(logging.WARNING):
        cache = Sha256Cache(cache_file)
        assert cache.sha256(csv) == sha256(BEFORE)
    lines = [record.getMessage() for record in caplog.records]
    assert len(lines) == 1 and lines[0].startswith(f"{cache_file}: ") and "hashing the files again" in lines[0]
    cache.save()                                             # rewritten whole, in its own shape
    assert list(json.loads(cache_file.read_text())) == [str(csv.resolve())]
    caplog.clear()
    assert Sha256Cache(cache_file).sha256(csv) == sha256(BEFORE) and caplog.records == []
