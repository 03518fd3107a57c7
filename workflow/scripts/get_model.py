"""Rule get_model (rules/resources.smk): download a hub model's files into the local cache folder.

Outputs: the model's safetensors, config and tokenizer files under resources/models/<id>/, and its
record (timekd_embed.resources.fetch_model).
Params: repo (the hub id), revision (the commit).
"""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/..")  # the timekd_embed package, also in --sdm conda envs

from timekd_embed.fingerprint import model_source
from timekd_embed.jobs import job
from timekd_embed.resources import fetch_model

with job(snakemake.log[0]):
    fetch_model(model_source({"name_or_path": snakemake.params.repo, "revision": snakemake.params.revision}))
