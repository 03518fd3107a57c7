"""Rule get_data (rules/resources.smk): download a known dataset's CSV that is missing (timekd_embed.resources).

Output: its record (resources/downloads/<name>.json: where the CSV is, its sha256, where it came
from); the CSV itself is no output, so no Snakemake command deletes it. Params: name (the
dataset's name in the known list), csv (where it goes; a file there is never written over).
"""

import logging

from timekd_embed.jobs import job
from timekd_embed.resources import fetch_dataset
from timekd_embed.store import write_json

with job(snakemake.log[0]):
    record = fetch_dataset(snakemake.params.name, snakemake.params.csv)
    write_json(snakemake.output[0], record)
    # A line after any earlier attempt's error: the manifest lists this log as the download's record.
    logging.getLogger("timekd_embed").info("%s %s (sha256 %s)", "wrote" if record["downloaded_from"] else "found",
                                           record["csv"], record["sha256"])
