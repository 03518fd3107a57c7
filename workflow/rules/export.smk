# Opt-in stage: the published TimeKD training layout, so that its train.py reads these
# embeddings unchanged: <export_root>/<name>/<P>/<split>/<i>.h5, one file per window,
# dataset `embeddings` (N, d) float32. Not part of `all`: snakemake --cores 8 export_timekd
EXPORT = f"{config['export_root']}/{NAME}/{{pred_len}}/{{split}}"


rule export_h5:
    input:
        EMBEDDINGS,
    output:
        directory(EXPORT),
    log:
        f"{LOGS}/export_{{pred_len}}_{{split}}.log",
    benchmark:
        f"{BENCHMARKS}/export_{{pred_len}}_{{split}}.tsv"
    conda:
        ENV
    script:
        "../scripts/export.py"


rule export_timekd:
    input:
        expand(EXPORT, pred_len=config["pred_lens"], split=config["splits"]),
