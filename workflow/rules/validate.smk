# Stage 3: validation. `parity` recomputes a sample of each horizon in fp32 (so it holds
# GPUs like an extraction job); `validate` checks every file and writes the report.
# Changing only the `parity` settings reruns these rules, never an extraction.


rule parity:
    input:
        embeddings=expand(EMBEDDINGS, split=config["splits"], allow_missing=True),
        windows=expand(WINDOWS, split=config["splits"]),
        sca=SCA,
    output:
        PARITY,
    log:
        f"{LOGS}/parity_{{pred_len}}.log",
    benchmark:
        f"{BENCHMARKS}/parity_{{pred_len}}.tsv"
    conda:
        ENV
    threads: 8  # capped at --cores; CPU runs use them all
    resources:
        gpu=config["gpus_per_job"],
    params:
        parity=config["parity"],
        splits=config["splits"],
    script:
        "../scripts/parity.py"


rule validate:
    input:
        embeddings=all_embeddings(),
        stats=expand(
            EMBEDDING_STATS, pred_len=config["pred_lens"], split=config["splits"]
        ),
        parity=expand(PARITY, pred_len=config["pred_lens"]),
        windows=expand(WINDOWS, split=config["splits"]),
        sca=SCA,
    output:
        shapes=f"{RESULTS}/validation/shapes.json",
        report=report(
            f"{RESULTS}/validation/report.md",
            caption="../report/validation.rst",
            category="Validation",
        ),
        histogram=report(
            f"{RESULTS}/validation/cosine_histogram.png",
            caption="../report/histogram.rst",
            category="Validation",
        ),
    log:
        f"{LOGS}/validate.log",
    benchmark:
        f"{BENCHMARKS}/validate.tsv"
    conda:
        ENV
    params:
        name=NAME,
        pred_lens=config["pred_lens"],
        splits=config["splits"],
        limit_windows=config["limit_windows"],
    script:
        "../scripts/validate.py"
