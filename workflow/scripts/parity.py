import sys

sys.path.insert(0, f"{snakemake.scriptdir}/..")  # the timekd_embed package, also in --sdm conda envs

from timekd_embed.errors import InputError
from timekd_embed.jobs import job
from timekd_embed.parity import parity_report
from timekd_embed.store import write_json

with job(snakemake.log[0], snakemake.threads):
    p, cfg = snakemake.params, snakemake.config
    embeddings = dict(zip(p.splits, snakemake.input.embeddings))
    windows = dict(zip(p.splits, snakemake.input.windows))
    runtime = {"device": cfg["device"], "gpus_per_job": cfg["gpus_per_job"]}
    report, cosines = parity_report(embeddings, windows, snakemake.input.sca, p.parity["windows"],
                                    p.parity["min_cosine"], runtime)
    report["cosines"] = cosines.tolist()
    if not report["passed"]:
        worst = report["fp32_parity"]["cosine_min"]
        raise InputError(f"pred_len {report['pred_len']}: the lowest cosine similarity between {report['precision']} "
                         f"and fp32 embeddings is {worst:.6f}, under parity.min_cosine = {p.parity['min_cosine']}; "
                         "use precision fp32 or bf16, or check the model weights.")
    write_json(snakemake.output[0], report)
