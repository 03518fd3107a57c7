# Stage 0: what the first run fetches from the network, once. Both are localrules, so
# cluster nodes without internet never download. get_data: a known dataset's CSV (the
# official THUML copy on the Hugging Face hub, checked against its pinned sha256).
# get_model: a hub model's safetensors, config and tokenizer files at a pinned commit,
# into resources/models/<id>/. A local model folder is used in place.


if GET_DATA:

    localrules:
        get_data,

    rule get_data:
        output:
            CSV,
        log:
            f"{LOGS}/get_data.log",
        conda:
            ENV
        params:
            name=NAME,
        script:
            "../scripts/get_data.py"


if MODEL.hub:

    localrules:
        get_model,

    rule get_model:
        output:
            [str(p) for p in tracked_model_files(MODEL)],
            record=f"{MODEL.folder}/{RECORD}",
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
        CSV,
        MODEL_INPUTS,
