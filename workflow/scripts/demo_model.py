"""Rule demo_model (rules/demo.smk): the tiny seeded GPT-2 folder of the demo (timekd_embed.demo).

Outputs: the model folder's files (demo.MODEL_FILES). Params: seed, n_layer, n_embd, n_head.
"""

from pathlib import Path

from timekd_embed.demo import build_model_folder
from timekd_embed.jobs import job

with job(snakemake.log[0]):
    params = snakemake.params
    build_model_folder(Path(snakemake.output[0]).parent, params.seed, params.n_layer, params.n_embd,
                       params.n_head)
