# Config validation, paths and helpers shared by every stage.
import os
import sys
from pathlib import Path

sys.path.insert(
    0, str(Path(workflow.basedir) / "workflow")
)  # the package, even before `pip install -e .`

from timekd_embed.config import config_origins, validate_config
from timekd_embed.demo import DEMO_MODEL, DEMO_SHAPE
from timekd_embed.errors import InputError
from timekd_embed.planning import (
    cpu_hint,
    extraction_threads,
    job_device,
    model_dims,
    seconds_per_window,
    shard_size,
    visible_gpus,
)
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


def input_csv():
    """The CSV, or one clear sentence when it is missing and the windows must be made."""
    csv = config["dataset"]["csv"]
    have_windows = all(Path(WINDOWS.format(split=s)).exists() for s in SPLITS)
    if not Path(csv).is_file() and not have_windows:
        source = (
            "weather.csv there (from the Autoformer / Time-Series-Library dataset collection, sha256 "
            "34ee981d07313e51da2a50bb600072c8ae4a69cb4b0651f4cb93a069d7a2ba63)"
            if NAME == "weather"
            else f"the {NAME} CSV there"
        )
        fail(f"{csv} not found: put {source} or set dataset.csv in the config.")
    return csv


def all_embeddings():
    return expand(EMBEDDINGS, pred_len=config["pred_lens"], split=config["splits"])


CSV = input_csv()

# Every config key that changes an embedding (settings.py); the extraction rules take them
# as params, so that changing one reruns the extraction. Keys that change only the speed
# (device, gpus_per_job, placement, batch_tokens) are read by the scripts instead.
EMBEDDING_SETTINGS = embedding_settings(config)


def plan_rows():
    """Rows per split, known before the windows stage runs, to plan the window ranges."""
    layout = resolve_layout(config["dataset"]["layout"], NAME)
    windows = {s: WINDOWS.format(split=s) for s in SPLITS}
    try:
        rows = split_rows(CSV, windows, config["seq_len"], layout)
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


def count_variables():
    """Variables N of the dataset: the CSV's header (or the windows' metadata), for the estimates."""
    if Path(CSV).is_file():
        with open(CSV, encoding="utf-8", errors="replace") as f:
            return max(1, len(f.readline().split(",")) - 1)
    from timekd_embed.windows import read_windows

    return len(read_windows(WINDOWS.format(split="train")).variables)


# Where the extraction jobs run (planning.py; `device: auto` follows the GPUs visible here),
# and so their threads and, for `shard_windows: auto`, their window ranges.
JOB_DEVICE = job_device(config["device"], visible_gpus())
N_VARS = count_variables()
# The model's size before it exists, for the demo's model (rule demo_model builds it).
MODEL_DIMS = (
    (DEMO_SHAPE["n_layer"], DEMO_SHAPE["n_embd"])
    if Path(config["model"]["name_or_path"]) == Path(DEMO_MODEL)
    else model_dims(config["model"]["name_or_path"])
)
EXTRACT_THREADS = extraction_threads(
    JOB_DEVICE, config["gpus_per_job"], os.cpu_count() or 1
)


def shard_windows(pred_len):
    """Windows per extraction job of horizon `pred_len` (config key shard_windows)."""
    seconds = seconds_per_window(
        JOB_DEVICE,
        pred_len,
        N_VARS,
        MODEL_DIMS,
        config["precision"],
        config["gpus_per_job"],
    )
    return shard_size(config["shard_windows"], seconds)


if config["device"] == "auto" and JOB_DEVICE == "cpu" and workflow.is_main_process:
    print(
        cpu_hint(
            {
                P: sum(
                    planned_windows(
                        ROWS[s], config["seq_len"], P, config["limit_windows"]
                    )
                    for s in config["splits"]
                )
                for P in config["pred_lens"]
            },
            N_VARS,
            config["model"]["name_or_path"],
            MODEL_DIMS,
            config["precision"],
        ),
        file=sys.stderr,
    )


def horizon_windows(split, pred_len):
    """Windows of one (pred_len, split): rows - seq_len - pred_len + 1, at most limit_windows."""
    return planned_windows(
        ROWS[split], config["seq_len"], int(pred_len), config["limit_windows"]
    )


def job_ranges(split):
    """Window ranges of the shared extraction jobs of a split (share_horizons: true).

    The longest horizon has the fewest windows (n_min), the shortest the most (n_max). The
    ranges cut 0..n_min-1 in `shard_windows` steps and the last one is stretched to n_max,
    so every range holds at least one window of every horizon. The job of range [a, b)
    writes, for horizon P, windows a..min(b, n_P)-1: each P's shards cover exactly
    0..n_P-1. The last job is longer by at most max(pred_lens) - min(pred_lens) windows.
    """
    counts = [horizon_windows(split, P) for P in config["pred_lens"]]
    planned = ranges(min(counts), job_shard_windows())
    return planned[:-1] + [(planned[-1][0], max(counts))]


def job_shard_windows():
    """Windows per shared extraction job: every horizon's work per window counted (the shared
    prefix makes a job shorter than the sum, so `auto` errs towards shorter jobs)."""
    seconds = sum(
        seconds_per_window(
            JOB_DEVICE,
            P,
            N_VARS,
            MODEL_DIMS,
            config["precision"],
            config["gpus_per_job"],
        )
        for P in config["pred_lens"]
    )
    return shard_size(config["shard_windows"], seconds)


def shard_ranges(wildcards):
    if config["share_horizons"]:
        return job_ranges(wildcards.split)
    return ranges(
        horizon_windows(wildcards.split, wildcards.pred_len),
        shard_windows(int(wildcards.pred_len)),
    )


def shard_files(pattern):
    """Input function: the shard files of one (pred_len, split) for `pattern`."""
    return lambda wildcards: [
        pattern.format(
            pred_len=wildcards.pred_len, split=wildcards.split, start=a, stop=b
        )
        for a, b in shard_ranges(wildcards)
    ]
