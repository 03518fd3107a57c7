"""Rule validate (rules/validate.smk): check every embeddings file, write shapes.json and the report.

Inputs: embeddings and stats (every (pred_len, split), in expand() order), parity (one JSON per
horizon; none in fp32), windows (one Parquet per split), sca. Outputs: shapes (validation/shapes.json),
summary, pages (one report item per (pred_len, split)), histograms (one per horizon; none in fp32).
Params: name, pred_lens, splits, limit_windows, precision; parity_sample and min_cosine for the captions.
Raises InputError (timekd_embed.validate.check_all) on the first file with a wrong shape or metadata.
"""

from timekd_embed.jobs import job
from timekd_embed.records import read_json
from timekd_embed.report import write_report
from timekd_embed.store import write_json
from timekd_embed.validate import check_all

with job(snakemake.log[0]):
    params, inputs, outputs = snakemake.params, snakemake.input, snakemake.output
    # The order of expand() and of the items in the rule.
    keys = [(P, split) for P in params.pred_lens for split in params.splits]
    shapes = check_all(dict(zip(keys, inputs.embeddings)), dict(zip(params.splits, inputs.windows)), inputs.sca,
                       params.limit_windows)
    stats = {key: read_json(path) for key, path in zip(keys, inputs.stats)}
    parity = {P: read_json(path) for P, path in zip(params.pred_lens, inputs.parity)}  # none in fp32
    write_json(outputs.shapes, shapes)
    write_report(outputs.summary, dict(zip(keys, outputs.pages)), dict(zip(params.pred_lens, outputs.histograms)),
                 params.name, shapes, stats, parity, params.precision)
