"""Rule validate: check every embeddings file, write shapes.json and the report items (timekd_embed.report)."""

import json
import sys
from pathlib import Path

sys.path.insert(0, f"{snakemake.scriptdir}/..")  # the timekd_embed package, also in --sdm conda envs

from timekd_embed.jobs import job
from timekd_embed.report import write_report
from timekd_embed.store import write_json
from timekd_embed.validate import check_all

with job(snakemake.log[0]):
    p, inp, out = snakemake.params, snakemake.input, snakemake.output
    keys = [(P, s) for P in p.pred_lens for s in p.splits]  # the order of expand() and of the items in the rule
    shapes = check_all(dict(zip(keys, inp.embeddings)), dict(zip(p.splits, inp.windows)), inp.sca, p.limit_windows)
    stats = {k: json.loads(Path(path).read_text()) for k, path in zip(keys, inp.stats)}
    parity = {P: json.loads(Path(path).read_text()) for P, path in zip(p.pred_lens, inp.parity)}  # empty in fp32
    write_json(out.shapes, shapes)
    write_report(out.summary, dict(zip(keys, out.pages)), dict(zip(p.pred_lens, out.histograms)), p.name, shapes,
                 stats, parity, p.precision)
