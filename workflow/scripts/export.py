import sys

sys.path.insert(0, f"{snakemake.scriptdir}/..")  # the timekd_embed package, also in --sdm conda envs

from timekd_embed.export import export_split
from timekd_embed.jobs import job

with job(snakemake.log[0]) as log_file:
    export_split(snakemake.input[0], snakemake.output[0], log_file)
