"""The sha256 record every write leaves beside its file, and the readers that check it."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys

import pytest
import torch

from conftest import ROOT
from timekd_embed import records, store
from timekd_embed.errors import InputError
from timekd_embed.sca import load_sca, save_sca


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_every_write_leaves_a_record_that_sha256sum_checks(tmp_path):
    store.write_tensors(tmp_path / "a.safetensors", {"x": torch.arange(6.0)}, {"seed": "1"})
    store.write_json(tmp_path / "b.json", {"windows": 3})
    store.write_text(tmp_path / "c.html", "<p>page</p>\n")
    for name in ("a.safetensors", "b.json", "c.html"):
        record = tmp_path / f".{name}.sha256"
        assert record.read_text() == f"{sha256((tmp_path / name).read_bytes())}  {name}\n"
        checked = subprocess.run(["sha256sum", "-c", record.name], cwd=tmp_path, capture_output=True, text=True)
        assert checked.returncode == 0 and checked.stdout == f"{name}: OK\n"
    store.write_json(tmp_path / "cache.json", {}, record=False)      # a cache is no output: no record
    assert not (tmp_path / ".cache.json.sha256").exists()


def test_a_byte_flipped_in_a_finished_sca_file_is_refused_by_its_readers(tmp_path):
    """The issue's case: one byte flipped in the middle of sca.safetensors (its mtime changes), and the rerun
    extracted every embedding from the damaged weights."""
    sca = tmp_path / "sca.safetensors"
    save_sca(sca, n_vars=3, d_model=16, seed=2024)
    written = sca.read_bytes()
    damaged = bytearray(written)
    damaged[len(damaged) // 2] ^= 0x01
    sca.write_bytes(bytes(damaged))
    sentence = (f"{sca}: damaged: its sha256 is {sha256(bytes(damaged))}, not the {sha256(written)} recorded when it "
                f"was written; rerun the workflow with --forcerun {sca} to write it again (and what was made from "
                "it).")
    for reader in (records.read_tensors, load_sca, records.check_record):   # load_sca: what every extraction job calls
        with pytest.raises(InputError) as caught:
            reader(sca)
        assert str(caught.value) == sentence


def test_a_file_without_its_record_or_with_another_files_record_is_refused(tmp_path):
    path = tmp_path / "stats.json"
    store.write_json(path, {"windows": 3})
    assert records.read_json(path) == {"windows": 3}
    record = tmp_path / ".stats.json.sha256"
    record.write_text(record.read_text().replace("stats.json", "other.json"))
    with pytest.raises(InputError, match=re.escape(f"{record}: not the sha256 record of stats.json, so its bytes "
                                                   f"cannot be checked; rerun the workflow with --forcerun {path} to "
                                                   "write it again (and what was made from it).")):
        records.read_json(path)
    record.unlink()
    with pytest.raises(InputError, match=r"stats.json: its sha256 record .stats.json.sha256 is missing beside it"):
        records.read_json(path)


KILLED_AFTER_ONE_RENAME = """
import os, sys
sys.path.insert(0, sys.argv[2])
from timekd_embed import records, store
real = os.replace
def replace_then_die(source, target):
    real(source, target)
    os._exit(9)  # killed right after the first rename: nothing of the writer's cleanup runs
os.replace = replace_then_die
store.write_json(sys.argv[1], {"windows": 3})
"""


def test_a_kill_between_the_renames_leaves_no_new_file_without_its_record(tmp_path):
    path = tmp_path / "shapes.json"
    killed = subprocess.run([sys.executable, "-c", KILLED_AFTER_ONE_RENAME, str(path), str(ROOT / "workflow")])
    assert killed.returncode == 9
    assert not path.exists() and (tmp_path / ".shapes.json.sha256").is_file()   # the record went first
    with pytest.raises(InputError, match="shapes.json: file not found; run the workflow to create it."):
        records.read_json(path)
    store.write_json(path, {"windows": 3})                  # the rerun writes both
    assert records.read_json(path) == {"windows": 3}
    assert json.loads(path.read_text()) == {"windows": 3}
