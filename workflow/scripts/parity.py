import logging
import sys

sys.path.insert(0, f"{snakemake.scriptdir}/..")  # the timekd_embed package, also in --sdm conda envs

from timekd_embed.jobs import job
from timekd_embed.parity import parity_report, require_parity
from timekd_embed.store import write_json

gpus = 0 if snakemake.config["device"] == "cpu" else snakemake.resources.gpu
with job(snakemake.log[0], snakemake.threads, gpus):
    p, cfg = snakemake.params, snakemake.config
    embeddings = dict(zip(p.splits, snakemake.input.embeddings))
    windows = dict(zip(p.splits, snakemake.input.windows))
    runtime = {k: cfg[k] for k in ("device", "gpus_per_job", "batch_tokens")}
    report, cosines = parity_report(embeddings, windows, snakemake.input.sca, p.parity["windows"],
                                    p.parity["min_cosine"], runtime)
    logging.getLogger("timekd_embed.parity").info("fp32 parity: %s", report["fp32_parity"])
    require_parity(report)
    write_json(snakemake.output[0], report | {"cosines": cosines.tolist()})
