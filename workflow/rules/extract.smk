# Stage 2: per-horizon extraction. Each job holds `gpus_per_job` GPUs (default 2), so
# `snakemake --cores 8 --resources gpu=2` runs them one after another with both GPUs.
# Only the params below change an embedding; device, gpus_per_job and batch_tokens
# change only the speed, so they are read from the config by the script instead.


rule sca:
    input:
        WINDOWS.format(split="train"),
    output:
        SCA,
    log:
        f"{LOGS}/sca.log",
    benchmark:
        f"{BENCHMARKS}/sca.tsv"
    conda:
        ENV
    params:
        seed=config["seed"],
        model=config["model"],
    script:
        "../scripts/sca.py"


rule extract:
    input:
        windows=WINDOWS,
        sca=SCA,
    output:
        embeddings=EMBEDDINGS,
        stats=EMBEDDING_STATS,
    log:
        f"{LOGS}/extract_{{pred_len}}_{{split}}.log",
    benchmark:
        f"{BENCHMARKS}/extract_{{pred_len}}_{{split}}.tsv"
    conda:
        ENV
    threads: 8  # capped at --cores; CPU runs use them all
    resources:
        gpu=config["gpus_per_job"],
    params:
        name=NAME,
        template=config["dataset"]["template"],
        model=config["model"],
        precision=config["precision"],
        fidelity=config["fidelity"],
        limit_windows=config["limit_windows"],
    script:
        "../scripts/extract.py"
