# Stage 0: what the first run fetches from the network, once: a known dataset's CSV and a hub
# model at a pinned commit, each file checked against the hub's own hash (timekd_embed/resources.py,
# hub.py). Both are localrules, so cluster nodes without internet never download.
# What they put in place is never their output, only their record is: a CSV or model file
# that is there, put by the user or by an earlier download, is an input, so no Snakemake command
# that forces, reruns or cleans outputs (--forceall, -R, --delete-all-output, --touch) deletes or
# replaces it; and get_data runs only for a CSV that is missing (common.smk).


if KNOWN:

    localrules:
        get_data,

    rule get_data:
        output:
            DATA_RECORD,
        log:
            f"{LOGS}/get_data.log",
        conda:
            ENV
        params:
            name=NAME,
            # Where the CSV goes: a missing CSV elsewhere is fetched there.
            csv=CSV,
        script:
            "../scripts/get_data.py"


if MODEL.hub:

    localrules:
        get_model,

    rule get_model:
        output:
            f"{MODEL.folder}/{RECORD}",
        log:
            f"{LOGS}/get_model.log",
        conda:
            ENV
        params:
            repo=MODEL.name,
            revision=MODEL.revision,
        script:
            "../scripts/get_model.py"


localrules:
    fetch,


# `snakemake --cores 1 fetch`: the CSV and the model, and nothing else (make preflight runs it).
rule fetch:
    input:
        **WINDOWS_INPUT,
        model=MODEL_INPUTS,
