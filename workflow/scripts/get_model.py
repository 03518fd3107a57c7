"""Rule get_model (rules/resources.smk): download a hub model's files into the local cache folder.

Outputs: the model's safetensors, config and tokenizer files under resources/models/<id>/, and its
record (timekd_embed.resources.fetch_model).
Params: repo (the hub id), revision (the commit).
"""

import logging

from timekd_embed.jobs import job
from timekd_embed.model_files import model_source
from timekd_embed.resources import fetch_model

with job(snakemake.log[0]):
    record = fetch_model(model_source({"name_or_path": snakemake.params.repo, "revision": snakemake.params.revision}))
    # A line after any earlier attempt's error: the manifest lists this log as the download's record.
    logging.getLogger("timekd_embed").info("wrote %s at commit %s", ", ".join(record["files"]), record["revision"])
