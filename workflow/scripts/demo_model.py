"""Rule demo_model: the tiny seeded GPT-2 folder of the demo (timekd_embed.demo)."""

import sys
from pathlib import Path

sys.path.insert(0, f"{snakemake.scriptdir}/..")  # the timekd_embed package, also in --sdm conda envs

from timekd_embed.demo import build_model_folder
from timekd_embed.jobs import job

with job(snakemake.log[0]):
    p = snakemake.params
    build_model_folder(Path(snakemake.output[0]).parent, p.seed, p.n_layer, p.n_embd, p.n_head)
