# Config validation, paths and helpers shared by every stage.
import sys
from pathlib import Path

sys.path.insert(
    0, str(Path(workflow.basedir) / "workflow")
)  # the package, even before `pip install -e .`

from timekd_embed.config import config_origins, validate_config
from timekd_embed.errors import InputError
from timekd_embed.fingerprint import (
    MODEL_RECORD,
    Sha256Cache,
    csv_fingerprint,
    local_model,
    model_config_fingerprint,
    model_files,
    model_fingerprint,
    model_source,
    package_version,
)
from timekd_embed.resources import KNOWN_DATASETS
from timekd_embed.settings import embedding_settings
from timekd_embed.shards import planned_windows, ranges, split_rows
from timekd_embed.windows import SPLITS, resolve_layout


def fail(message):
    """One sentence on stderr and a non-zero exit, instead of a traceback."""
    print(f"Error: {message}", file=sys.stderr)
    sys.exit(1)


try:
    _valid = validate_config(
        config,
        " + ".join(map(str, workflow.configfiles)) or "config",
        config_origins(
            workflow.configfiles,
            workflow.config_settings.configfiles,
            workflow.config_settings.config,
        ),
    )
except InputError as error:
    fail(error)
config.clear()
config.update(_valid)

NAME = config["dataset"]["name"]
RESULTS = f"results/{NAME}"
WINDOWS = f"{RESULTS}/windows/{{split}}.parquet"
SCA = f"{RESULTS}/sca.safetensors"
EMBEDDINGS = f"{RESULTS}/embeddings/{{pred_len}}/{{split}}.safetensors"
EMBEDDING_STATS = f"{RESULTS}/embeddings/{{pred_len}}/{{split}}.json"
SHARD = (
    f"{RESULTS}/embeddings/{{pred_len}}/{{split}}.shards/{{start}}-{{stop}}.safetensors"
)
SHARD_STATS = (
    f"{RESULTS}/embeddings/{{pred_len}}/{{split}}.shards/{{start}}-{{stop}}.json"
)
PARITY = f"{RESULTS}/validation/parity_{{pred_len}}.json"
LOGS = f"{RESULTS}/logs"
BENCHMARKS = f"{RESULTS}/benchmarks"
ENV = "../../envs/timekd-embed.yaml"


wildcard_constraints:
    split="|".join(SPLITS),
    pred_len=r"\d+",
    start=r"\d+",
    stop=r"\d+",


WINDOWS_FILES = [WINDOWS.format(split=s) for s in SPLITS]
HAVE_WINDOWS = all(Path(p).is_file() for p in WINDOWS_FILES)
# A known dataset's CSV, when absent, is downloaded by get_data (resources.smk; a rule
# also when the file is there, so that it can be named as a target); results copied
# without their CSV keep using their windows files instead.
KNOWN = KNOWN_DATASETS.get(NAME)
GET_DATA = KNOWN is not None and (
    Path(config["dataset"]["csv"]).is_file() or not HAVE_WINDOWS
)


def input_csv():
    """The CSV, or one clear sentence when it is missing, cannot be fetched and the windows must be made."""
    csv = config["dataset"]["csv"]
    if not Path(csv).is_file() and not HAVE_WINDOWS and KNOWN is None:
        fail(
            f"{csv} not found: put the {NAME} CSV there or set dataset.csv in the config."
        )
    return csv


def all_embeddings():
    return expand(EMBEDDINGS, pred_len=config["pred_lens"], split=config["splits"])


CSV = input_csv()

# What decides an output, by content (fingerprint.py): the rules carry these as params,
# so a changed file reruns exactly its downstream and a touched one (same bytes) nothing.
# The CSV and model files are `ancient` inputs: their timestamps never rerun anything.
_sha256 = Sha256Cache()
try:
    MODEL = model_source(config["model"])
    INPUT_SHA256 = csv_fingerprint(
        CSV, WINDOWS_FILES, KNOWN["sha256"] if KNOWN else None, _sha256
    )
    MODEL_TRACKED = model_fingerprint(MODEL, _sha256)
    MODEL_CONFIG_TRACKED = model_config_fingerprint(MODEL, _sha256)
except InputError as error:
    fail(error)
_sha256.save()
PACKAGE = package_version()
MODEL_INPUTS = [ancient(str(p)) for p in model_files(MODEL)]
MODEL_CONFIG_INPUT = [p for p in MODEL_INPUTS if Path(p).name == "config.json"]
if MODEL.hub:
    # get_model's record as a plain input: when get_model reruns (another commit), the jobs
    # after it rerun too; Snakemake never reruns a job for an upstream job whose outputs
    # it reads only as `ancient` inputs, whatever its params say.
    MODEL_INPUTS.append(f"{MODEL.folder}/{MODEL_RECORD}")
    MODEL_CONFIG_INPUT.append(f"{MODEL.folder}/{MODEL_RECORD}")
    # Every job loads the files get_model put in resources/models/<id>/ ("./": a folder,
    # never looked up on the hub), and records the commit they come from.
    config["model"] = local_model(config["model"])

# Every config key that changes an embedding (settings.py); the extraction rules take them
# as params, so that changing one reruns the extraction. Keys that change only the speed
# (device, gpus_per_job, placement, batch_tokens) are read by the scripts instead.
EMBEDDING_SETTINGS = embedding_settings(config)
# What else decides an embedding: the model's bytes and the code that computed it.
EMBEDDING_TRACKED = {"model": MODEL_TRACKED, "package": PACKAGE}


def plan_rows():
    """Rows per split, known before the windows stage runs, to plan the window ranges."""
    layout = resolve_layout(config["dataset"]["layout"], NAME)
    windows = {s: WINDOWS.format(split=s) for s in SPLITS}
    try:
        rows = split_rows(
            CSV, windows, config["seq_len"], layout, KNOWN["rows"] if KNOWN else None
        )
    except InputError as error:
        fail(error)
    for P in config["pred_lens"]:
        for split in config["splits"]:
            if planned_windows(rows[split], config["seq_len"], P, None) == 0:
                fail(
                    f"pred_len {P}: split {split} has {rows[split]} rows, fewer than seq_len + pred_len = "
                    f"{config['seq_len'] + P}; remove {P} from pred_lens or use a longer file."
                )
    return rows


ROWS = plan_rows()


def shard_ranges(wildcards):
    n = planned_windows(
        ROWS[wildcards.split],
        config["seq_len"],
        int(wildcards.pred_len),
        config["limit_windows"],
    )
    return ranges(n, config["shard_windows"])


def shard_files(pattern):
    """Input function: the shard files of one (pred_len, split) for `pattern`."""
    return lambda wildcards: [
        pattern.format(
            pred_len=wildcards.pred_len, split=wildcards.split, start=a, stop=b
        )
        for a, b in shard_ranges(wildcards)
    ]
