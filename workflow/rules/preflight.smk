# Before the day-long run: speed, memory, ETA and fp32 parity on a few windows of every
# horizon, with the configured model, precision, placement and GPUs (timekd_embed/preflight.py).
# Not part of `all`: `snakemake --cores 8 --resources gpu=2 preflight` (or `make preflight`).
# It holds GPUs like an extraction job; it fails, naming the check, when one fails.


rule preflight:
    input:
        **WINDOWS_INPUT,
        model=MODEL_INPUTS,
    output:
        json=f"{RESULTS}/preflight.json",
        md=f"{RESULTS}/preflight.md",
    log:
        f"{LOGS}/preflight.log",
    benchmark:
        f"{BENCHMARKS}/preflight.tsv"
    conda:
        ENV
    threads: EXTRACT_THREADS
    resources:
        gpu=config["gpus_per_job"],
    params:
        windows=8,
    script:
        "../scripts/preflight.py"
