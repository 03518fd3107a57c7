"""`make wheelhouse` on a machine with network, then `make bootstrap SITE_TORCH=1 WHEELHOUSE=...`
with no index at all and the site's torch, in CI's size.

What it proves: on a copy of this repository whose pyproject.toml keeps a part of the pins
(every pin that `timekd-embed inspect` imports, accelerate, which requires a torch, and the
demo extra, whose `future` publishes no wheel), `make wheelhouse SITE_TORCH=1` downloads them
and all they need as wheels for this Python on manylinux_2_28 x86_64 without any torch or CUDA
library; `make bootstrap` then installs the package from those wheels alone (pip --no-index, its
configuration files ignored, any index or proxy a dead address), next to a torch found on
PYTHONPATH as a site's module provides it; it warns that this torch is the site's, a job logs the
same warning, and the installed `timekd-embed inspect` prints what this checkout's prints.
What it does not: the other pins (snakemake, pyarrow, matplotlib and the test extra; a full
wheelhouse downloads about 160 MB and takes minutes), another Python version or platform than
this machine's (the tags pip is given are checked against this machine only), and torch itself
from a wheelhouse (never downloaded in a test: the CPU build is about 190 MB, the CUDA one GBs).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import yaml

from conftest import ROOT
from helpers import timekd_embed

# The pins kept in the copy's pyproject.toml: what `inspect` imports, and accelerate (it requires a torch).
KEPT = {"torch", "transformers", "huggingface_hub", "tokenizers", "safetensors", "accelerate", "pandas", "numpy",
        "jsonschema", "pyyaml", "tqdm", "pyarrow"}
DEAD = "http://127.0.0.1:9"   # nothing listens there: any index or proxy use fails


def copy_with_some_pins(destination: Path) -> Path:
    """This repository's sources (no venv, results or caches) with only the KEPT base pins."""
    ignore = shutil.ignore_patterns(".git", ".venv", "results", "resources", ".snakemake", "wheelhouse", "__pycache__",
                                    "*.egg-info", ".pytest_cache", "report.html")
    shutil.copytree(ROOT, destination, ignore=ignore)
    pyproject = destination / "pyproject.toml"
    lines, inside = [], False
    for line in pyproject.read_text().splitlines(keepends=True):
        inside = (inside or line.startswith("dependencies = [")) and not line.startswith("]")
        pin = re.match(r'\s*"([A-Za-z0-9_.-]+)==', line)
        if not (inside and pin and pin.group(1) not in KEPT):
            lines.append(line)
    pyproject.write_text("".join(lines))
    return destination


def site_torch(folder: Path) -> Path:
    """A folder with torch and what it requires (links into this venv), as `module load pytorch` puts
    one on PYTHONPATH: the site's torch, outside the venv that bootstrap makes."""
    from packaging.requirements import Requirement

    folder.mkdir()
    todo, seen = ["torch"], set()
    while todo:
        dist = metadata.distribution(todo.pop())
        if dist.metadata["Name"].lower() in seen:
            continue
        seen.add(dist.metadata["Name"].lower())
        for top in {Path(str(file)).parts[0] for file in dist.files}:
            source = Path(dist.locate_file(top))
            if top not in ("..", "__pycache__") and not top.endswith(".pth") and source.exists() \
                    and not (folder / top).exists():
                (folder / top).symlink_to(source)
        todo += [Requirement(line).name for line in dist.requires or []
                 if Requirement(line).marker is None or Requirement(line).marker.evaluate({"extra": ""})]
    return folder


def offline(site: Path) -> dict:
    """No pip configuration, no index, no proxy that works; the site's torch on PYTHONPATH."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PIP_")}
    return env | {"PIP_CONFIG_FILE": os.devnull, "PIP_INDEX_URL": f"{DEAD}/simple", "PIP_NO_CACHE_DIR": "1",
                  "http_proxy": DEAD, "https_proxy": DEAD, "HTTP_PROXY": DEAD, "HTTPS_PROXY": DEAD,
                  "PYTHONPATH": str(site), "HF_HUB_OFFLINE": "1"}


def test_an_offline_bootstrap_from_a_wheelhouse_with_the_site_torch(tmp_path, tiny_model_dir):
    clone = copy_with_some_pins(tmp_path / "clone")
    python = f"PYTHON={os.path.realpath(sys._base_executable)}"   # this venv's Python: the site torch's
    made = subprocess.run(["make", "wheelhouse", "SITE_TORCH=1", "EXTRAS=demo", python], cwd=clone,
                          capture_output=True, text=True, timeout=600)
    assert made.returncode == 0, made.stderr[-3000:]
    wheels = sorted(path.name for path in (clone / "wheelhouse").glob("*.whl"))
    assert not [name for name in wheels if name.startswith(("torch-", "nvidia", "triton"))], wheels
    assert any(name.startswith("pandas-3.1.1-") and "manylinux_2_28_x86_64" in name for name in wheels), wheels
    assert "future-0.18.3-py3-none-any.whl" in wheels       # built here: it publishes no wheel

    env = offline(site_torch(tmp_path / "site"))
    boot = subprocess.run(["make", "bootstrap", "SITE_TORCH=1", "WHEELHOUSE=wheelhouse", "EXTRAS=demo", python],
                          cwd=clone, capture_output=True, text=True, timeout=600, env=env)
    assert boot.returncode == 0, boot.stdout[-2000:] + boot.stderr[-3000:]
    assert f"WARNING: torch {metadata.version('torch')} from {tmp_path / 'site'} is the site's, not the pinned " \
           "torch==2.13.0: results may differ in the last bits" in boot.stdout + boot.stderr
    venv = clone / ".venv" / "bin"
    assert (clone / ".venv" / ".site-torch").read_text().strip() == "1"

    job = subprocess.run([venv / "python", "-c", "from timekd_embed.jobs import job\nwith job(None):\n    pass"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert job.returncode == 0 and f"WARNING timekd_embed: torch {metadata.version('torch')} from " \
                                   f"{tmp_path / 'site'} is not the pinned torch==2.13.0" in job.stderr, job.stderr

    config = tmp_path / "demo.yaml"
    config.write_text(yaml.safe_dump({"dataset": {"name": "demo", "csv": str(clone / ".test/data/demo.csv")},
                                      "seq_len": 48, "model": {"name_or_path": str(tiny_model_dir)}}))
    args = ["inspect", "--configfile", str(config), "--pred-len", "24", "--split", "train", "--window", "0",
            "--variable", "OT"]
    installed = subprocess.run([venv / "timekd-embed", *args], capture_output=True, text=True, env=env, timeout=120)
    assert installed.returncode == 0, installed.stderr[-3000:]
    here = timekd_embed(*args)
    assert here.returncode == 0, here.stderr[-3000:]
    shown = json.loads(installed.stdout)
    assert [row["variable"] for row in shown] == ["OT"] and shown[0]["gt_ids"]
    assert installed.stdout == here.stdout

