# Stage 4: MANIFEST.json lists every artifact with its sha256, size and the rule that made
# it, the config hash and the versions; `timekd-embed verify results/<name>` rechecks it.
# It runs last. Each named input is named after the rule that made those files.
from timekd_embed.config import config_hash
from timekd_embed.manifest import recorded_config


rule manifest:
    input:
        windows=rules.windows.output,
        sca=rules.sca.output,
        # expand() of path patterns, not of rules.<name>.output: with a default storage
        # provider (the kubernetes profile) those carry storage flags expand() refuses.
        gather=expand(
            [EMBEDDINGS, EMBEDDING_STATS],
            pred_len=config["pred_lens"],
            split=config["splits"],
        ),
        parity=PARITY_FILES,
        validate=rules.validate.output,
    output:
        f"{RESULTS}/MANIFEST.json",
    log:
        f"{LOGS}/manifest.log",
    benchmark:
        f"{BENCHMARKS}/manifest.tsv"
    conda:
        ENV
    params:
        # Only keys that decide the artifacts: a runtime-only change reruns nothing.
        config_hash=config_hash(recorded_config(config)),
    script:
        "../scripts/manifest.py"
