"""Rule sca (rules/extract.smk): the seeded subtractive cross attention layer's weights.

Inputs: windows (the train split's Parquet, for the variable count N), model (the model files:
checked here first, for d_model). Output: results/<name>/sca.safetensors (sca.save_sca).
Params: seed; model_config and package are rerun triggers. The model's location and revision are read
from the config (settings.model_location): a location is no param.
"""

from timekd_embed.checkpoint import check_model
from timekd_embed.jobs import job
from timekd_embed.sca import save_sca
from timekd_embed.settings import model_location
from timekd_embed.windows import read_windows

with job(snakemake.log[0]):
    # The first job that reads the model: a broken model folder fails here, before any extraction.
    d_model = check_model(model_location(snakemake.config), snakemake.config["model"]["revision"])[0].hidden_size
    n_vars = len(read_windows(snakemake.input[0]).variables)
    save_sca(snakemake.output[0], n_vars, d_model, snakemake.params.seed)
