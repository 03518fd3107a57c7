"""The cluster profiles: what each extraction job asks for, and the SLURM submission it becomes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

from conftest import ROOT, WEATHER_CSV

SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")


def dry_run(tmp_path, profile: str, *extra: str) -> str:
    config = tmp_path / "config.yaml"
    config.write_text(f"dataset: {{name: weather, csv: {WEATHER_CSV}}}\npred_lens: [24]\n")
    result = subprocess.run([SNAKEMAKE, "-n", "--profile", str(ROOT / "profiles" / profile), "--configfile",
                             str(config), *extra], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def extract_resources(stdout: str) -> dict:
    """The resources line of the first planned extraction job, as a dict of strings."""
    job = stdout.split("rule extract:")[1].split("\n\n")[0]
    line = next(l for l in job.splitlines() if l.strip().startswith("resources:"))
    return dict(kv.split("=", 1) for kv in line.split("resources:")[1].strip().split(", "))


class Resources(dict):
    __getattr__ = dict.get


def test_default_profile_holds_two_gpus_per_job(tmp_path, weather_csv):
    resources = extract_resources(dry_run(tmp_path, "default"))
    assert resources["gpu"] == "2"


def test_slurm_submission_of_an_extraction_job(tmp_path, weather_csv):
    from snakemake_executor_plugin_slurm.submit_string import get_submit_command
    from snakemake_executor_plugin_slurm.utils import set_gres_string

    resources = extract_resources(dry_run(tmp_path, "slurm"))
    assert {k: resources[k] for k in ("gpu", "gpu_model", "cpus_per_gpu", "slurm_partition", "mem_mb", "runtime")} == {
        "gpu": "2", "gpu_model": "a100", "cpus_per_gpu": "4", "slurm_partition": "gpu", "mem_mb": "32000",
        "runtime": "120"}
    typed = Resources({k: int(v) if v.isdigit() else v for k, v in resources.items()})
    job = SimpleNamespace(resources=typed, threads=8)
    params = {"run_uuid": "x", "slurm_logfile": "log", "comment_str": "extract", "account": "",
              "partition": f"-p {typed.slurm_partition}", "workdir": "/work"}
    call = get_submit_command(job, params) + set_gres_string(job)
    for arg in ("-p gpu", "-t 120", "--mem 32000", "--cpus-per-gpu=4", "--gpus=a100:2"):
        assert arg in call, call


def test_kubernetes_profile_asks_for_nvidia_gpus(tmp_path, weather_csv):
    # The kubernetes executor needs a reachable storage provider even for a dry run, so the
    # profile's resources are planned with the local executor here.
    resources = extract_resources(dry_run(tmp_path, "kubernetes", "--executor", "local"))
    assert resources["gpu"] == "2" and resources["gpu_manufacturer"] == "nvidia"
