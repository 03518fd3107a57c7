import json
import sys

sys.path.insert(0, f"{snakemake.scriptdir}/..")  # the timekd_embed package, also in --sdm conda envs

from timekd_embed.jobs import job
from timekd_embed.report import histogram, write_report
from timekd_embed.store import write_json
from timekd_embed.validate import check_all

with job(snakemake.log[0]):
    p, inp = snakemake.params, snakemake.input
    keys = [(P, s) for P in p.pred_lens for s in p.splits]  # the order of expand() in the rule
    shapes = check_all(dict(zip(keys, inp.embeddings)), dict(zip(p.splits, inp.windows)), inp.sca, p.limit_windows)
    stats = {k: json.loads(open(path).read()) for k, path in zip(keys, inp.stats)}
    parity = {P: json.loads(open(path).read()) for P, path in zip(p.pred_lens, inp.parity)}
    write_json(snakemake.output.shapes, shapes)
    histogram(parity, snakemake.output.histogram)
    write_report(snakemake.output.report, p.name, shapes, stats, parity)
