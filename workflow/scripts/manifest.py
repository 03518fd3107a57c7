"""Rule manifest (rules/manifest.smk): MANIFEST.json of a finished run (timekd_embed.manifest).

Inputs: named by the rule that made them (windows, sca, gather, parity, validate) plus
<rule>_records (their logs and benchmarks). Output: results/<name>/MANIFEST.json.
Params: config_hash (rerun trigger), own_files (this job's own log and benchmark, listed
although the benchmark is written after the job).
"""

from pathlib import Path

from timekd_embed.jobs import job
from timekd_embed.manifest import build, write

with job(snakemake.log[0]):
    # The rule's named inputs are the rules that made them, `<rule>_records` their run records
    # (see manifest.smk).
    outputs = {name: [paths] if isinstance(paths, str) else list(paths) for name, paths in snakemake.input.items()}
    own_files = [*snakemake.log, *snakemake.params.own_files]  # the benchmark is written after the job
    write(snakemake.output[0], build(Path(snakemake.output[0]).parent, outputs, snakemake.config, own_files))
