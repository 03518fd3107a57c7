"""Rule extract (rules/extract.smk): the teacher embeddings of one window range of a split.

Inputs: windows (the split's Parquet), sca (sca.safetensors), model (the model files, tracked).
Outputs: embeddings and stats: one temporary shard file and its JSON per horizon; with
share_horizons, lists over every configured pred_len (one job embeds them all), otherwise one
horizon (the {pred_len} wildcard). Wildcards: split, start, stop (the window range [start, stop)).
Params: settings and tracked (rerun triggers only; the job reads its settings from the config
through Settings.from_config), pred_lens (share_horizons only). Resources: gpu.
"""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/..")  # the timekd_embed package, also in --sdm conda envs

from timekd_embed.extract import extract_horizons
from timekd_embed.jobs import job
from timekd_embed.settings import Settings

wildcards = snakemake.wildcards
gpus = 0 if snakemake.config["device"] == "cpu" else snakemake.resources.gpu
# One job per (pred_len, split, range), or with share_horizons one per (split, range) for every pred_len.
if hasattr(wildcards, "pred_len"):
    pred_lens = [int(wildcards.pred_len)]
else:
    pred_lens = [int(P) for P in snakemake.params.pred_lens]
with job(snakemake.log[0], snakemake.threads, gpus) as log_file:
    settings = Settings.from_config(snakemake.config, pred_lens[0], wildcards.split)
    embeddings, stats = snakemake.output.embeddings, snakemake.output.stats
    if isinstance(embeddings, str):  # one horizon: plain paths, not lists
        embeddings, stats = [embeddings], [stats]
    outputs = dict(zip(pred_lens, zip(embeddings, stats)))
    extract_horizons(settings, pred_lens, snakemake.input.windows, snakemake.input.sca, outputs, log_file,
                     shard=(int(wildcards.start), int(wildcards.stop)))
