import sys

sys.path.insert(0, f"{snakemake.scriptdir}/..")  # the timekd_embed package, also in --sdm conda envs

from timekd_embed.extract import save_sca
from timekd_embed.jobs import job
from timekd_embed.lm import load_config
from timekd_embed.windows import read_windows

with job(snakemake.log[0]):
    model = snakemake.params.model
    d_model = load_config(model["name_or_path"], model["revision"]).n_embd
    n_vars = len(read_windows(snakemake.input[0]).variables)
    save_sca(snakemake.output[0], n_vars, d_model, snakemake.params.seed)
