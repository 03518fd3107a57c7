"""The cluster profiles: what each extraction job asks for, and the SLURM submission it becomes."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from conftest import ROOT, WEATHER_CSV
from helpers import snakemake_command


def dry_run(tmp_path, profile: str, *extra: str, targets: tuple[str, ...] = ()) -> str:
    config = tmp_path / "config.yaml"
    config.write_text(f"dataset: {{name: weather, csv: {WEATHER_CSV}}}\npred_lens: [24]\n")
    result = snakemake_command([*targets, "-n", "--profile", str(ROOT / "profiles" / profile),
                                "--configfile", str(config), *extra], cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def extract_resources(stdout: str, rule: str = "extract") -> dict:
    """The resources line of the first planned job of `rule`, as a dict of strings."""
    job = stdout.split(f"rule {rule}:")[1].split("\n\n")[0]
    line = next(text for text in job.splitlines() if text.strip().startswith("resources:"))
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


def slurm_submission(resources: dict) -> tuple[str, str]:
    """The plugin's own sbatch line for a job with these resources, and the srun line its job step runs."""
    from snakemake_executor_plugin_slurm.submit_string import get_submit_command
    from snakemake_executor_plugin_slurm.utils import set_gres_string
    from snakemake_executor_plugin_slurm.validation import validate_slurm_extra
    from snakemake_executor_plugin_slurm_jobstep import get_cpu_setting, get_gpu_setting, get_node_setting

    typed = Resources({k: int(v) if v.lstrip("-").isdigit() else v for k, v in resources.items()})
    job = SimpleNamespace(resources=typed, threads=8)
    validate_slurm_extra(job)
    params = {"run_uuid": "x", "slurm_logfile": "log", "comment_str": "job", "account": "",
              "partition": f"-p {typed.slurm_partition}", "workdir": "/work"}
    sbatch = get_submit_command(job, params) + set_gres_string(job)
    # the job step, as snakemake-executor-plugin-slurm-jobstep starts it inside the allocation
    srun = f"srun -n1 --cpu-bind=q {get_cpu_setting(job, True)} {get_gpu_setting(job)} {get_node_setting(job)}"
    return sbatch, srun


@pytest.mark.parametrize("rule, target", [("extract", None), ("parity", None), ("preflight", "preflight")])
def test_every_gpu_job_is_one_slurm_task_holding_all_its_gpus(tmp_path, weather_csv, rule, target):
    """With --ntasks-per-gpu=1 a gpu=2 job runs twice, each copy with one GPU, both
    writing the same file. The plugin reads `tasks` as tasks per GPU for GPU jobs, so a `tasks: 1`
    from a user's or a site's default resources is simulated here; the job must stay one task."""
    resources = extract_resources(dry_run(tmp_path, "slurm", targets=(target,) if target else ()), rule)
    resources["tasks"] = "1"
    sbatch, srun = slurm_submission(resources)
    assert "--ntasks-per-gpu" not in sbatch, sbatch
    for arg in ("--gpus=a100:2", "--nodes=1", "--ntasks-per-node=1", "--cpus-per-gpu=4"):
        assert arg in sbatch, sbatch
    assert "-n1" in srun and "--gpus=2" in srun and "--nodes=1" in srun, srun
