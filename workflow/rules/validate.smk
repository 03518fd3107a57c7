# Stage 3: validation. `parity` recomputes a sample of each horizon in fp32 (so it holds
# GPUs like an extraction job); with fp32 production there is nothing to compare and no
# parity job. `validate` checks every file and writes the report items: one page per
# (horizon, split), a histogram per horizon, a summary (labels: horizon, split; every label value
# a string: the report's JavaScript sorts them as text, and a number left its pages blank).
# Changing only the `parity` settings reruns these rules, never an extraction.
from timekd_embed.sampling import sample_sizes

MEASURE_PARITY = config["precision"] != "fp32"
REPORT_ITEM = f"{RESULTS}/validation/report/{{pred_len}}_{{split}}.html"
HISTOGRAM = f"{RESULTS}/validation/cosine_{{pred_len}}.png"
SUMMARY = f"{RESULTS}/validation/summary.html"
REPORT_PAGES = expand(REPORT_ITEM, pred_len=config["pred_lens"], split=config["splits"])
HISTOGRAM_FILES = (
    expand(HISTOGRAM, pred_len=config["pred_lens"]) if MEASURE_PARITY else []
)


# The parity files of every horizon; none when production runs in fp32.
PARITY_FILES = expand(PARITY, pred_len=config["pred_lens"]) if MEASURE_PARITY else []
# {P: {split: windows}} the parity jobs sample, known at plan time (for the captions).
PARITY_SAMPLE = {
    P: sample_sizes(
        {
            s: planned_windows(ROWS[s], config["seq_len"], P, config["limit_windows"])
            for s in config["splits"]
        },
        config["parity"]["windows"],
    )
    for P in (config["pred_lens"] if MEASURE_PARITY else [])
}


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
    threads: EXTRACT_THREADS  # the CPU: every core; GPUs: 2 per GPU (common.smk)
    resources:
        gpu=config["gpus_per_job"],
    params:
        settings=EMBEDDING_SETTINGS,
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
        parity=PARITY_FILES,
        windows=expand(WINDOWS, split=config["splits"]),
        sca=SCA,
    output:
        shapes=f"{RESULTS}/validation/shapes.json",
        summary=report(
            SUMMARY,
            caption="../report/summary.rst",
            category="Summary",
        ),
        pages=[
            report(
                REPORT_ITEM.format(pred_len=P, split=s),
                caption="../report/item.rst",
                category="Embeddings",
                labels={"horizon": str(P), "split": s},
            )
            for P in config["pred_lens"]
            for s in config["splits"]
        ],
        histograms=[
            report(
                HISTOGRAM.format(pred_len=P),
                caption="../report/histogram.rst",
                category="Parity with fp32",
                labels={"horizon": str(P), "split": ", ".join(config["splits"])},
            )
            for P in (config["pred_lens"] if MEASURE_PARITY else [])
        ],
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
        precision=config["precision"],
        # What the parity jobs sample, for the captions: {P: {split: windows}}.
        parity_sample=PARITY_SAMPLE,
        min_cosine=config["parity"]["min_cosine"],
    script:
        "../scripts/validate.py"
