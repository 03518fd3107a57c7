import sys

sys.path.insert(0, f"{snakemake.scriptdir}/..")  # the timekd_embed package, also in --sdm conda envs

from timekd_embed.extract import Settings, extract_split
from timekd_embed.jobs import job

gpus = 0 if snakemake.config["device"] == "cpu" else snakemake.resources.gpu
with job(snakemake.log[0], snakemake.threads, gpus) as log_file:
    p, cfg = snakemake.params, snakemake.config
    settings = Settings(
        name=p.name, template=p.template, pred_len=int(snakemake.wildcards.pred_len),
        split=snakemake.wildcards.split, model=p.model["name_or_path"], revision=p.model["revision"],
        precision=p.precision, fidelity=p.fidelity, limit_windows=p.limit_windows,
        device=cfg["device"], gpus_per_job=cfg["gpus_per_job"], batch_tokens=cfg["batch_tokens"],
    )
    extract_split(settings, snakemake.input.windows, snakemake.input.sca, snakemake.output.embeddings,
                  snakemake.output.stats, log_file)
