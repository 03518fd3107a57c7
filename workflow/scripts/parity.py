"""Rule parity (rules/validate.smk): one horizon's stored embeddings against an fp32 recomputation.

Inputs: embeddings and windows (one per configured split), sca. Output:
results/<name>/validation/parity_<P>.json (timekd_embed.parity.parity_report, plus every cosine).
Params: parity (the config's parity section: windows, min_cosine), splits. Resources: gpu.
Raises InputError (through require_parity) when the cosine falls below min_cosine.
"""

import logging
import sys

sys.path.insert(0, f"{snakemake.scriptdir}/..")  # the timekd_embed package, also in --sdm conda envs

from timekd_embed.jobs import job
from timekd_embed.parity import parity_report, require_parity
from timekd_embed.settings import Settings
from timekd_embed.store import write_json

gpus = 0 if snakemake.config["device"] == "cpu" else snakemake.resources.gpu
with job(snakemake.log[0], snakemake.threads, gpus):
    params = snakemake.params
    settings = Settings.from_config(snakemake.config, int(snakemake.wildcards.pred_len), params.splits[0])
    embedding_paths = dict(zip(params.splits, snakemake.input.embeddings))
    windows_paths = dict(zip(params.splits, snakemake.input.windows))
    report, cosines = parity_report(settings, embedding_paths, windows_paths, snakemake.input.sca,
                                    params.parity["windows"], params.parity["min_cosine"])
    logging.getLogger("timekd_embed.parity").info("fp32 parity: %s", report["fp32_parity"])
    require_parity(report)
    write_json(snakemake.output[0], report | {"cosines": cosines.tolist()})
