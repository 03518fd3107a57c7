import sys

sys.path.insert(0, f"{snakemake.scriptdir}/..")  # the timekd_embed package, also in --sdm conda envs

from timekd_embed.jobs import job
from timekd_embed.shards import gather

with job(snakemake.log[0]):
    gather(snakemake.input.embeddings, snakemake.input.stats, snakemake.output.embeddings, snakemake.output.stats)
