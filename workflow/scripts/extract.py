"""Rule extract (rules/extract.smk): the teacher embeddings of one window range of a split.

Inputs: windows (the split's Parquet), sca (sca.safetensors), model (the model files, tracked).
Outputs: embeddings and stats: one temporary shard file and its JSON per horizon of params.pred_lens,
in that order. Wildcards: split, start, stop (the window range [start, stop)).
Params: settings (what decides the embeddings: settings.Settings), pred_lens (the horizons of a shared
job, else the {pred_len} wildcard's), tracked (a rerun trigger only). Resources: gpu.
The speed-only keys and the model's location are read from the config (settings.Runtime,
settings.model_location): as params they would rerun jobs.
"""

from timekd_embed.extract import extract_horizons
from timekd_embed.jobs import job
from timekd_embed.settings import Runtime, Settings, model_location

runtime = Runtime.from_config(snakemake.config)
gpus = 0 if runtime.device == "cpu" else snakemake.resources.gpu
with job(snakemake.log[0], snakemake.threads, gpus) as log_file:
    pred_lens = snakemake.params.pred_lens
    outputs = dict(zip(pred_lens, zip(snakemake.output.embeddings, snakemake.output.stats)))
    wildcards = snakemake.wildcards
    settings = Settings.from_params(snakemake.params.settings, model_location(snakemake.config))
    extract_horizons(settings, runtime, wildcards.split, pred_lens,
                     snakemake.input.windows, snakemake.input.sca, outputs, log_file,
                     shard=(int(wildcards.start), int(wildcards.stop)))
