import sys
from pathlib import Path

sys.path.insert(0, f"{snakemake.scriptdir}/..")  # the timekd_embed package, also in --sdm conda envs

from timekd_embed.jobs import job
from timekd_embed.manifest import build, write

with job(snakemake.log[0]):
    # The rule's named inputs are the rules that made them (see manifest.smk).
    artifacts = {rule: list(paths) for rule, paths in snakemake.input.items()}
    write(snakemake.output[0], build(Path(snakemake.output[0]).parent, artifacts, snakemake.config))
