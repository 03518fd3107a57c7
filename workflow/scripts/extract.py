import sys

sys.path.insert(0, f"{snakemake.scriptdir}/..")  # the timekd_embed package, also in --sdm conda envs

from timekd_embed.extract import Settings, extract_horizons
from timekd_embed.jobs import job

cfg, w = snakemake.config, snakemake.wildcards
gpus = 0 if cfg["device"] == "cpu" else snakemake.resources.gpu
# One job per (pred_len, split, range), or with share_horizons one per (split, range) for every pred_len.
pred_lens = [int(w.pred_len)] if hasattr(w, "pred_len") else [int(P) for P in snakemake.params.pred_lens]
with job(snakemake.log[0], snakemake.threads, gpus) as log_file:
    s = snakemake.params.settings
    settings = Settings(
        name=s["name"], template=s["template"], pred_len=pred_lens[0], split=w.split,
        model=s["model"]["name_or_path"], revision=s["model"]["revision"], precision=s["precision"],
        fidelity=s["fidelity"], limit_windows=s["limit_windows"],
        # runtime only: these change the speed, not the embeddings
        device=cfg["device"], gpus_per_job=cfg["gpus_per_job"], batch_tokens=cfg["batch_tokens"],
        placement=cfg["placement"],
    )
    embeddings, stats = snakemake.output.embeddings, snakemake.output.stats
    if isinstance(embeddings, str):  # one horizon: plain paths, not lists
        embeddings, stats = [embeddings], [stats]
    outputs = dict(zip(pred_lens, zip(embeddings, stats)))
    extract_horizons(settings, pred_lens, snakemake.input.windows, snakemake.input.sca, outputs, log_file,
                     shard=(int(w.start), int(w.stop)))
