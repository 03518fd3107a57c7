import sys

sys.path.insert(0, f"{snakemake.scriptdir}/..")  # the timekd_embed package, also in --sdm conda envs

from timekd_embed.jobs import job
from timekd_embed.resources import fetch_dataset

with job(snakemake.log[0]):
    fetch_dataset(snakemake.params.name, snakemake.output[0])
