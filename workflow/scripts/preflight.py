"""Rule preflight (rules/preflight.smk): check the machine and the model before a long run.

Inputs: csv (or get_data's record of it), model (the model files, or get_model's record).
Outputs: json and md, results/<name>/preflight.{json,md} (timekd_embed.preflight.main, as
`timekd-embed preflight` runs it). Params: windows (sample
windows per horizon). Resources: gpu. Raises InputError when a check failed; the report is written first.
"""

from pathlib import Path

from timekd_embed.jobs import job
from timekd_embed.preflight import main

with job(snakemake.log[0], snakemake.threads):
    main(snakemake.config, snakemake.params.windows, Path(snakemake.output.json).parent)
