# Stage 2: extraction. Each split is cut into window ranges of `shard_windows`; with
# share_horizons (default) one job per range computes every horizon and writes one shard
# per horizon, else each (horizon, split) has its own ranges and jobs. Every job holds
# `gpus_per_job` GPUs (default 2), so
# `snakemake --cores 8 --resources gpu=2` runs them one after another with both GPUs.
# `gather` joins a horizon's ranges into its final file. The params (EMBEDDING_SETTINGS,
# common.smk) are the config keys that change an embedding; EMBEDDING_TRACKED the content
# of the model files (ancient inputs: their timestamps do not count) and the package version.


rule sca:
    input:
        windows=WINDOWS.format(split="train"),
        model=MODEL_INPUTS,
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
        # The SCA's shape comes from the model's config.json (its width); the script reads where
        # the model is from the config (settings.model_location): a location is no param.
        model_config=MODEL_CONFIG_TRACKED,
        package=PACKAGE,
    script:
        "../scripts/sca.py"


rule extract:
    input:
        windows=WINDOWS,
        sca=SCA,
        model=MODEL_INPUTS,
    output:
        embeddings=temp(per_job(SHARD)),
        stats=temp(per_job(SHARD_STATS)),
    log:
        f"{LOGS}/extract_{EXTRACT_JOB}.log",
    benchmark:
        f"{BENCHMARKS}/extract_{EXTRACT_JOB}.tsv"
    conda:
        ENV
    threads: EXTRACT_THREADS  # the CPU: every core; GPUs: 2 per GPU (common.smk)
    resources:
        gpu=config["gpus_per_job"],
    params:
        settings=EMBEDDING_SETTINGS,
        tracked=EMBEDDING_TRACKED,
        # The horizons whose shards the job writes: they follow from its outputs, so (as a
        # function of `output`) they are no rerun trigger of their own; dropping a horizon
        # from pred_lens must not rerun the jobs of the others.
        pred_lens=lambda wildcards, output: job_pred_lens(wildcards),
    script:
        "../scripts/extract.py"


rule gather:
    input:
        embeddings=shard_files(SHARD),
        stats=shard_files(SHARD_STATS),
        # To check the gathered count against the current windows file.
        windows=WINDOWS,
    output:
        embeddings=EMBEDDINGS,
        stats=EMBEDDING_STATS,
    log:
        f"{LOGS}/gather_{{pred_len}}_{{split}}.log",
    benchmark:
        f"{BENCHMARKS}/gather_{{pred_len}}_{{split}}.tsv"
    conda:
        ENV
    params:
        # The shards are temporary: the params here let a changed setting rerun them.
        settings=EMBEDDING_SETTINGS,
        tracked=EMBEDDING_TRACKED,
    script:
        "../scripts/gather.py"
