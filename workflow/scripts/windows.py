"""Rule windows (rules/windows.smk): CSV -> checked table -> split borders -> one Parquet per split.

Input: csv (the dataset CSV), or download (get_data's record of the CSV it fetched).
Outputs: results/<name>/windows/{train,val,test}.parquet (windows.write_windows).
Params: layout (concrete: config validation resolved "auto"), name, target, seq_len, sha256 (None:
unchecked), date_format, template; input_sha256 and package are rerun triggers.
Raises InputError when the CSV's sha256 differs from dataset.sha256, and for any bad row or column.
"""

import logging

from timekd_embed.cadence import check_cadence, template_note
from timekd_embed.errors import InputError
from timekd_embed.jobs import job
from timekd_embed.records import read_json, sha256_file
from timekd_embed.table import load_csv
from timekd_embed.windows import SPLITS, write_windows

with job(snakemake.log[0]):
    params = snakemake.params
    inputs = dict(snakemake.input.items())
    csv = inputs["csv"] if "csv" in inputs else read_json(inputs["download"])["csv"]
    if params.sha256 is not None and (actual := sha256_file(csv)) != params.sha256:
        raise InputError(f"{csv}: sha256 is {actual} but config key dataset.sha256 expects {params.sha256}; "
                         "fetch the right file or correct the hash.")
    # params.layout is concrete: validate_config resolved "auto" from the dataset name.
    table = load_csv(csv, target=params.target, layout=params.layout, date_format=params.date_format)
    check_cadence(table, params.name, params.layout)
    note = template_note(params.name, params.template, table.irregularities["gaps"]["usual_step_seconds"],
                         table.path)
    if note:
        logging.getLogger("timekd_embed.cadence").warning(note)
    # Window counts for the configured horizons go into the metadata (see windows.smk).
    write_windows(table, params.layout, params.seq_len, snakemake.config["pred_lens"],
                  dict(zip(SPLITS, snakemake.output)), template_note=note)
