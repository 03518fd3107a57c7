"""Rule export_h5 (rules/export.smk): one horizon and split in the published training layout.

Input: the gathered embeddings file results/<name>/embeddings/<P>/<split>.safetensors.
Output: the folder <export_root>/<name>/<P>/<split>/ with one <i>.h5 per window (dataset `embeddings`,
(N, d) float32), published whole (timekd_embed.export.export_split). Params: none.
"""


from timekd_embed.export import export_split
from timekd_embed.jobs import job

with job(snakemake.log[0]) as log_file:
    export_split(snakemake.input[0], snakemake.output[0], log_file)
