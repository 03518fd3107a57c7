import logging
import sys

sys.path.insert(0, f"{snakemake.scriptdir}/..")  # the timekd_embed package, also in --sdm conda envs

from timekd_embed.cadence import check_cadence, template_note
from timekd_embed.errors import InputError
from timekd_embed.jobs import job
from timekd_embed.store import sha256_file
from timekd_embed.table import load_csv
from timekd_embed.windows import SPLITS, write_windows

with job(snakemake.log[0]):
    p = snakemake.params
    csv = snakemake.input[0]
    if p.sha256 is not None and (actual := sha256_file(csv)) != p.sha256:
        raise InputError(f"{csv}: sha256 is {actual} but config key dataset.sha256 expects {p.sha256}; "
                         "fetch the right file or correct the hash.")
    # p.layout is concrete: validate_config resolved "auto" from the dataset name.
    table = load_csv(csv, target=p.target, layout=p.layout, date_format=p.date_format)
    check_cadence(table, p.name, p.layout)
    note = template_note(p.name, p.template, table.irregularities["gaps"]["usual_step_seconds"], table.path)
    if note:
        logging.getLogger("timekd_embed.cadence").warning(note)
    # Window counts for the configured horizons go into the metadata (see windows.smk).
    write_windows(table, p.layout, p.seq_len, snakemake.config["pred_lens"], dict(zip(SPLITS, snakemake.output)),
                  template_note=note)
