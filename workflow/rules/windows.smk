# Stage 1: CSV -> checked table -> split borders -> one Parquet per split.
# pred_lens is deliberately not a param: adding a horizon must not remake the windows
# (and with them every embedding); the per-horizon window counts in the metadata are
# those of the horizons configured when the file was written.


rule windows:
    input:
        # The CSV (ancient: tracked by content, params.input_sha256, not by its timestamp), or
        # get_data's record when it fetches a missing one (common.smk).
        **WINDOWS_INPUT,
    output:
        expand(WINDOWS, split=SPLITS),
    log:
        f"{LOGS}/windows.log",
    benchmark:
        f"{BENCHMARKS}/windows.tsv"
    conda:
        ENV
    params:
        layout=config["dataset"]["layout"],
        name=NAME,
        target=config["dataset"]["target"],
        seq_len=config["seq_len"],
        sha256=config["dataset"]["sha256"],
        date_format=config["dataset"]["date_format"],
        template=config["dataset"]["template"],
        input_sha256=INPUT_SHA256,
        package=PACKAGE,
    script:
        "../scripts/windows.py"
