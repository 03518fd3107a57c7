import sys

sys.path.insert(0, f"{snakemake.scriptdir}/..")  # the timekd_embed package, also in --sdm conda envs

from timekd_embed.extract import extract_split
from timekd_embed.jobs import job
from timekd_embed.settings import Settings

wildcards = snakemake.wildcards
gpus = 0 if snakemake.config["device"] == "cpu" else snakemake.resources.gpu
with job(snakemake.log[0], snakemake.threads, gpus) as log_file:
    settings = Settings.from_config(snakemake.config, int(wildcards.pred_len), wildcards.split)
    extract_split(settings, snakemake.input.windows, snakemake.input.sca, snakemake.output.embeddings,
                  snakemake.output.stats, log_file, shard=(int(wildcards.start), int(wildcards.stop)))
