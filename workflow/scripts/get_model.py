"""Rule get_model (rules/resources.smk): a hub model's files at its pinned commit, each checked against
the hub's own hash, in the local folder resources/models/<id>/ (timekd_embed.resources.fetch_model).

Output: the record, resources/models/<id>/download.json (repo, commit, each file's sha256); the model
files are no output, so no Snakemake command deletes them. Params: repo (the hub id), revision (the commit).
"""

import logging

from timekd_embed.jobs import job
from timekd_embed.model_files import model_source
from timekd_embed.resources import fetch_model
from timekd_embed.store import write_json

with job(snakemake.log[0]):
    record = fetch_model(model_source({"name_or_path": snakemake.params.repo, "revision": snakemake.params.revision}))
    write_json(snakemake.output[0], record)
    # A line after any earlier attempt's error: the manifest lists this log as the download's record.
    logging.getLogger("timekd_embed").info("checked %s at commit %s", ", ".join(record["files"]), record["revision"])
