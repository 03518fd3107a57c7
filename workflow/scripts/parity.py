"""Rule parity (rules/validate.smk): one horizon's stored embeddings against an fp32 recomputation.

Inputs: embeddings and windows (one per configured split), sca. Output:
results/<name>/validation/parity_<P>.json (timekd_embed.parity.parity_report, plus every cosine).
Params: settings (settings.Settings), parity (the config's parity section: windows, min_cosine),
splits. Resources: gpu. The speed-only keys and the model's location are read from the config
(settings.Runtime, settings.model_location).
Raises InputError (through require_parity) when the cosine falls below min_cosine.
"""

import logging

from timekd_embed.jobs import job
from timekd_embed.parity import parity_report, require_parity
from timekd_embed.settings import Runtime, Settings, model_location
from timekd_embed.store import write_json

runtime = Runtime.from_config(snakemake.config)
gpus = 0 if runtime.device == "cpu" else snakemake.resources.gpu
with job(snakemake.log[0], snakemake.threads, gpus):
    params = snakemake.params
    embedding_paths = dict(zip(params.splits, snakemake.input.embeddings))
    windows_paths = dict(zip(params.splits, snakemake.input.windows))
    settings = Settings.from_params(params.settings, model_location(snakemake.config))
    report, cosines = parity_report(settings, runtime, int(snakemake.wildcards.pred_len),
                                    embedding_paths, windows_paths, snakemake.input.sca, params.parity["windows"],
                                    params.parity["min_cosine"])
    logging.getLogger("timekd_embed.parity").info("fp32 parity: %s", report["fp32_parity"])
    require_parity(report)
    write_json(snakemake.output[0], report | {"cosines": cosines.tolist()})
