"""Rule gather (rules/extract.smk): a horizon's window-range shards joined into its final file.

Inputs: embeddings and stats (every shard of one (pred_len, split), in range order), windows (the
split's Parquet, whose row count gives the windows the file must hold). Outputs: embeddings
(results/<name>/embeddings/<P>/<split>.safetensors) and stats (its JSON).
Params: settings (seq_len and limit_windows count the windows), tracked (a rerun trigger only).
"""

from timekd_embed.jobs import job
from timekd_embed.records import check_record
from timekd_embed.settings import Settings, model_location
from timekd_embed.shards import gather, parquet_rows, planned_windows

with job(snakemake.log[0]):
    settings = Settings.from_params(snakemake.params.settings, model_location(snakemake.config))
    check_record(snakemake.input.windows)  # its row count decides the windows the file must hold
    # The windows this file must hold, counted from the windows file it was made from.
    expected = planned_windows(parquet_rows(snakemake.input.windows), settings.seq_len,
                               int(snakemake.wildcards.pred_len), settings.limit_windows)
    gather(snakemake.input.embeddings, snakemake.input.stats, snakemake.output.embeddings, snakemake.output.stats,
           expected)
