import sys
from pathlib import Path

sys.path.insert(0, f"{snakemake.scriptdir}/..")  # the timekd_embed package, also in --sdm conda envs

from timekd_embed.jobs import job
from timekd_embed.preflight import require_passed, run_preflight, write_report

gpus = 0 if snakemake.config["device"] == "cpu" else snakemake.resources.gpu
with job(snakemake.log[0], snakemake.threads, gpus):
    report = run_preflight(snakemake.config, snakemake.params.windows)
    _, md_path = write_report(report, Path(snakemake.output.json).parent)
    require_passed(report, md_path)
