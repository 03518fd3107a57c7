import sys

sys.path.insert(0, f"{snakemake.scriptdir}/..")  # the timekd_embed package, also in --sdm conda envs

from timekd_embed.jobs import job
from timekd_embed.shards import gather, parquet_rows, planned_windows

with job(snakemake.log[0]):
    cfg = snakemake.config
    # The windows this file must hold, counted from the windows file it was made from.
    expected = planned_windows(parquet_rows(snakemake.input.windows), cfg["seq_len"],
                               int(snakemake.wildcards.pred_len), cfg["limit_windows"])
    gather(snakemake.input.embeddings, snakemake.input.stats, snakemake.output.embeddings, snakemake.output.stats,
           expected)
