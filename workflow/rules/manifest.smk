# Stage 4: MANIFEST.json lists every file of the results folder with its sha256, size and
# the rule that made it, in two lists: the artifacts (the same bytes for the same inputs,
# config and versions) and the run records (timings and host names, different on every
# run), plus the config hash and the versions. `timekd-embed verify results/<name>` rechecks
# it, also against another run's manifest. It runs last. Each named input is named after
# the rule that made those files; `<rule>_records` names that rule's run records (the
# files of logs/ and benchmarks/ are records too, found by the script).
from timekd_embed.config import config_hash
from timekd_embed.manifest import recorded_config


rule manifest:
    input:
        windows=rules.windows.output,
        sca=rules.sca.output,
        # expand() of path patterns, not of rules.<name>.output: with a default storage
        # provider (the kubernetes profile) those carry storage flags expand() refuses.
        gather=expand(EMBEDDINGS, pred_len=config["pred_lens"], split=config["splits"]),
        parity=PARITY_FILES,  # none in fp32
        validate=[rules.validate.output.shapes, *HISTOGRAM_FILES],
        # wall time, speed, peak memory and host of each extraction
        gather_records=expand(
            EMBEDDING_STATS, pred_len=config["pred_lens"], split=config["splits"]
        ),
        # the report's pages: tables of times and speeds
        validate_records=[SUMMARY, *REPORT_PAGES],
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
        # Written while (the log) or after (the benchmark) the manifest is made: left out.
        own_files=[f"{LOGS}/manifest.log", f"{BENCHMARKS}/manifest.tsv"],
    script:
        "../scripts/manifest.py"
