"""Rule get_data (rules/resources.smk): download a known dataset's CSV (timekd_embed.resources).

Output: the CSV at the configured path. Params: name (the dataset's name in the known list).
"""

import logging

from timekd_embed.jobs import job
from timekd_embed.resources import fetch_dataset

with job(snakemake.log[0]):
    sha256 = fetch_dataset(snakemake.params.name, snakemake.output[0])
    # A line after any earlier attempt's error: the manifest lists this log as the download's record.
    logging.getLogger("timekd_embed").info("wrote %s (sha256 %s)", snakemake.output[0], sha256)
