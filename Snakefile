# TimeKD teacher embeddings: raw CSV -> windows -> per-horizon extraction -> validation.
# Run: snakemake --cores 8 --resources gpu=2   (README.md; every config key: config/README.md)
import atexit

from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/resources.smk"
include: "workflow/rules/demo.smk"
include: "workflow/rules/windows.smk"
include: "workflow/rules/extract.smk"
include: "workflow/rules/validate.smk"
include: "workflow/rules/export.smk"
include: "workflow/rules/manifest.smk"
include: "workflow/rules/preflight.smk"  # not part of all


rule all:
    input:
        all_embeddings(),
        rules.validate.output,
        rules.manifest.output,


onerror:
    # Snakemake prints its footer (the log's path, the WorkflowError) after this handler; run
    # at exit, the failed jobs' sentences are the last lines the user reads.
    atexit.register(print_failures, log)
