"""Rule gather (rules/extract.smk): a horizon's window-range shards joined into its final file.

Inputs: embeddings and stats (every shard of one (pred_len, split), in range order), windows (the
split's Parquet, whose row count gives the windows the file must hold). Outputs: embeddings
(results/<name>/embeddings/<P>/<split>.safetensors) and stats (its JSON).
Params: settings and tracked (rerun triggers only).
"""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/..")  # the timekd_embed package, also in --sdm conda envs

from timekd_embed.jobs import job
from timekd_embed.shards import gather, parquet_rows, planned_windows

with job(snakemake.log[0]):
    config = snakemake.config
    # The windows this file must hold, counted from the windows file it was made from.
    expected = planned_windows(parquet_rows(snakemake.input.windows), config["seq_len"],
                               int(snakemake.wildcards.pred_len), config["limit_windows"])
    gather(snakemake.input.embeddings, snakemake.input.stats, snakemake.output.embeddings, snakemake.output.stats,
           expected)
