"""Rule preflight (rules/preflight.smk): check the machine and the model before a long run.

Inputs: csv, model (the model files). Outputs: json and md, results/<name>/preflight.{json,md}
(timekd_embed.preflight). Params: windows (sample windows per horizon). Resources: gpu.
Raises InputError (through require_passed) when a check failed; the report is written first.
"""

import sys
from pathlib import Path

sys.path.insert(0, f"{snakemake.scriptdir}/..")  # the timekd_embed package, also in --sdm conda envs

from timekd_embed.jobs import job
from timekd_embed.preflight import held_gpus, require_passed, run_preflight, write_report

# The GPUs as an extraction job takes them, held until the checks end, and where they came from.
with job(snakemake.log[0], snakemake.threads), held_gpus(snakemake.config) as held:
    report = run_preflight(snakemake.config, snakemake.params.windows)
    report["machine"]["held_gpus"] = held
    _, md_path = write_report(report, Path(snakemake.output.json).parent)
    require_passed(report, md_path)
