import sys

sys.path.insert(0, f"{snakemake.scriptdir}/..")  # the timekd_embed package, also in --sdm conda envs

from timekd_embed.extract import Settings, extract_split
from timekd_embed.jobs import job

cfg, w = snakemake.config, snakemake.wildcards
gpus = 0 if cfg["device"] == "cpu" else snakemake.resources.gpu
with job(snakemake.log[0], snakemake.threads, gpus) as log_file:
    s = snakemake.params.settings
    settings = Settings(
        name=s["name"], template=s["template"], pred_len=int(w.pred_len), split=w.split,
        model=s["model"]["name_or_path"], revision=s["model"]["revision"], precision=s["precision"],
        fidelity=s["fidelity"], limit_windows=s["limit_windows"], layers=s["model"].get("layers"),
        # runtime only: these change the speed, not the embeddings
        device=cfg["device"], gpus_per_job=cfg["gpus_per_job"], batch_tokens=cfg["batch_tokens"],
        placement=cfg["placement"],
    )
    extract_split(settings, snakemake.input.windows, snakemake.input.sca, snakemake.output.embeddings,
                  snakemake.output.stats, log_file, shard=(int(w.start), int(w.stop)))
