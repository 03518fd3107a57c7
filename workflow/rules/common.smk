# Config validation, paths and helpers shared by every stage.
import json
import os
import sys
from pathlib import Path

PACKAGE_DIR = str(Path(workflow.basedir) / "workflow")
sys.path.insert(0, PACKAGE_DIR)  # the package, even before `pip install -e .`
# ... and in every job's Python: script jobs inherit the environment (also in --sdm conda
# envs, and on cluster nodes, where each job's Snakemake reads this file again).
os.environ["PYTHONPATH"] = os.pathsep.join(
    [PACKAGE_DIR] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
)


envvars:
    "PYTHONPATH",


from timekd_embed.config import config_origins, validate_config
from timekd_embed.demo import DEMO_MODEL, DEMO_SEED, DEMO_SHAPE
from timekd_embed.errors import InputError
from timekd_embed.jobs import failure_summary
from timekd_embed.fingerprint import (
    Sha256Cache,
    csv_fingerprint,
    current_inputs,
    model_config_fingerprint,
    model_fingerprint,
    package_version,
    tracked_model_files,
)
from timekd_embed.model_files import RECORD, ModelSource, local_model, model_source
from timekd_embed.resources import KNOWN_DATASETS
from timekd_embed.store import unwritable_folder
from timekd_embed.planning import (
    cpu_hint,
    cpu_seconds,
    extraction_threads,
    job_device,
    model_dims,
    seconds_per_window,
    shard_size,
    too_slow,
    visible_gpus,
)
from timekd_embed.settings import Settings
from timekd_embed.shards import no_windows, planned_windows, ranges, split_rows
from timekd_embed.windows import SPLITS, resolve_layout


def fail(message):
    """One sentence on stderr and a non-zero exit, instead of a traceback."""
    print(f"Error: {message}", file=sys.stderr)
    sys.exit(1)


def print_failures(snakemake_logs):
    """Each failed job's one-sentence error from its log, on stderr (the Snakefile's onerror)."""
    summary = failure_summary(snakemake_logs)
    if summary:
        print(f"\n{summary}", file=sys.stderr)


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
KNOWN = KNOWN_DATASETS.get(NAME)


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


def after(path, changed):
    """`path` as an input that reruns this job when the job making it runs only if `changed`.

    Snakemake reruns every job after one that runs, unless the input is `ancient`; and it never
    looks at the params of a job whose ancient input comes from a job that runs. So an input
    from a rule that fetches or records (get_model) is ancient while what it provides is the same,
    and plain when it changed.
    """
    return path if changed else ancient(path)


CSV = input_csv()
# The user's CSV is an input, never an output: no command may delete or replace it. Only a
# known dataset's CSV that is missing (and not stood in for by the windows files of copied
# results) is fetched, by get_data, whose output is its record (resources.smk); the windows job
# then reads the CSV it put there.
DATA_RECORD = f"resources/downloads/{NAME}.json"
GET_DATA = KNOWN is not None and not Path(CSV).is_file() and not HAVE_WINDOWS
WINDOWS_INPUT = {"download": DATA_RECORD} if GET_DATA else {"csv": ancient(CSV)}

# What decides an output, by content (fingerprint.py): the rules carry these as params,
# so a changed file reruns exactly its downstream and a touched or moved one (same bytes)
# nothing. The CSV and model files are `ancient` inputs and no param holds a path.
_sha256 = Sha256Cache()
# The demo's model is built by rule demo_model (demo.smk) from its shape and seed, which
# then identify it; its files are that rule's outputs (demo.smk sets MODEL_INPUTS).
IS_DEMO = Path(config["model"]["name_or_path"]) == Path(DEMO_MODEL)
try:
    MODEL = (
        ModelSource(DEMO_MODEL, Path(DEMO_MODEL), False, None)
        if IS_DEMO
        else model_source(config["model"])
    )
    # The one answer to "what do the inputs hold now", also verify's (timekd-embed verify).
    INPUTS_NOW = current_inputs(CSV, MODEL, _sha256)
    if INPUTS_NOW.damaged:
        raise InputError(INPUTS_NOW.damaged[0])
    INPUT_SHA256 = csv_fingerprint(
        INPUTS_NOW, WINDOWS_FILES, KNOWN["sha256"] if KNOWN else None
    )
    MODEL_TRACKED = (
        {"demo_model": DEMO_SHAPE, "seed": DEMO_SEED}
        if IS_DEMO
        else model_fingerprint(MODEL, INPUTS_NOW)
    )
    MODEL_CONFIG_TRACKED = (
        MODEL_TRACKED if IS_DEMO else model_config_fingerprint(MODEL, INPUTS_NOW)
    )
except InputError as error:
    fail(error)
_sha256.save()
PACKAGE = package_version()
if MODEL.hub:
    # get_model's record, the jobs' only input of the model: its files are never an output
    # (resources.smk). Plain when get_model fetches another commit, so that what follows reruns.
    _RECORD = f"{MODEL.folder}/{RECORD}"
    try:
        _fetched = json.loads(Path(_RECORD).read_text())
    except (OSError, ValueError):
        _fetched = {}
    MODEL_INPUTS = [
        after(
            _RECORD,
            _fetched.get("repo") != MODEL.name
            or _fetched.get("revision") != MODEL.revision,
        )
    ]
    # Every job loads the files get_model put in resources/models/<id>/ ("./": a folder,
    # never looked up on the hub), and records the commit they come from.
    config["model"] = local_model(config["model"])
else:
    MODEL_INPUTS = [ancient(str(p)) for p in tracked_model_files(MODEL)]

# Every config key that changes an embedding (settings.py); the extraction rules take them
# as params, so that changing one reruns the extraction. Keys that change only the speed
# (device, gpus_per_job, placement, batch_tokens) are read by the scripts instead.
EMBEDDING_SETTINGS = Settings.from_config(config).as_params()
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
                fail(no_windows(split, rows[split], config["seq_len"], P))
    return rows


ROWS = plan_rows()


def count_variables():
    """Variables N of the dataset: the CSV's header (or the windows' metadata), for the estimates."""
    if Path(CSV).is_file():
        with open(CSV, encoding="utf-8", errors="replace") as f:
            return max(1, len(f.readline().split(",")) - 1)
    if not HAVE_WINDOWS:  # a known dataset that get_data downloads
        return KNOWN["variables"]
    from timekd_embed.windows import read_windows

    try:
        return len(read_windows(WINDOWS.format(split="train")).variables)
    except InputError as error:
        fail(error)


# Where the extraction jobs run (planning.py; `device: auto` follows the GPUs visible here),
# and so their threads and, for `shard_windows: auto`, their window ranges.
JOB_DEVICE = job_device(config["device"], visible_gpus())
N_VARS = count_variables()
# The model's size before it exists, for the demo's model (rule demo_model builds it).
MODEL_DIMS = (
    (DEMO_SHAPE["n_layer"], DEMO_SHAPE["n_embd"])
    if Path(config["model"]["name_or_path"]) == Path(DEMO_MODEL)
    else model_dims(
        config["model"]["name_or_path"],
        MODEL.name if MODEL.hub else None,
        config["model"]["layers"],
    )
)
EXTRACT_THREADS = extraction_threads(
    JOB_DEVICE, config["gpus_per_job"], os.cpu_count() or 1
)


def shard_windows(split, pred_len):
    """Windows per extraction job of one (horizon, split) (config key shard_windows)."""
    seconds = seconds_per_window(
        JOB_DEVICE,
        pred_len,
        N_VARS,
        MODEL_DIMS,
        config["precision"],
        config["gpus_per_job"],
        config["seq_len"],
    )
    return shard_size(
        config["shard_windows"], seconds, horizon_windows(split, pred_len)
    )


def plan_on_the_cpu():
    """On the CPU: the estimate of the extraction still to run, once, and the stop when it exceeds a day.

    Called by the gather jobs' input functions, so only for targets that extract (not `fetch`,
    `preflight`); only missing final files count, so a finished run plans (and reports) as before.
    A dry run (-n) only says that a real run would stop.
    """
    if JOB_DEVICE != "cpu" or PLANNED_ON_THE_CPU or not workflow.is_main_process:
        return
    PLANNED_ON_THE_CPU.append(True)
    windows, jobs = {}, 0
    for split in config["splits"]:
        missing = [
            P
            for P in config["pred_lens"]
            if not Path(EMBEDDINGS.format(pred_len=P, split=split)).is_file()
        ]
        if SHARE_HORIZONS and missing:
            missing = config["pred_lens"]  # the shared jobs compute every horizon
            jobs += len(job_ranges(split))
        for P in missing:
            windows[P] = windows.get(P, 0) + horizon_windows(split, P)
            if not SHARE_HORIZONS:
                jobs += len(ranges(horizon_windows(split, P), shard_windows(split, P)))
    if not windows:
        return
    args = (N_VARS, MODEL_DIMS, config["precision"])
    print(
        cpu_hint(
            windows,
            N_VARS,
            config["model"]["name_or_path"],
            MODEL_DIMS,
            config["precision"],
            jobs,
            config["seq_len"],
            config["device"],
        ),
        file=sys.stderr,
    )
    stop = too_slow(cpu_seconds(windows, jobs, *args, config["seq_len"]))
    if stop and not config["allow_slow_cpu"]:
        # workflow.dryrun is known here, in an input function, not when the Snakefile is read
        if not workflow.dryrun:
            fail(stop)
        print(f"Dry run: a real run stops here: {stop}", file=sys.stderr)


PLANNED_ON_THE_CPU = []  # plan_on_the_cpu has spoken (the gather jobs each call it)


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
    planned = ranges(min(counts), job_shard_windows(min(counts)))
    return planned[:-1] + [(planned[-1][0], max(counts))]


def job_shard_windows(n_windows):
    """Windows per shared extraction job over `n_windows`: every horizon's work per window counted
    (the shared prefix makes a job shorter than the sum, so `auto` errs towards shorter jobs).
    """
    seconds = sum(
        seconds_per_window(
            JOB_DEVICE,
            P,
            N_VARS,
            MODEL_DIMS,
            config["precision"],
            config["gpus_per_job"],
            config["seq_len"],
        )
        for P in config["pred_lens"]
    )
    return shard_size(config["shard_windows"], seconds, n_windows)


# With share_horizons (default) one job per (split, range) computes every pred_len and writes one
# shard per pred_len (their common prompt prefixes run once, packing.py; ranges from job_ranges,
# common.smk); else one job per (pred_len, split, range). When some horizons are finished and
# others are not (a horizon added to a finished run), every horizon gets jobs of its own: a shared
# job would compute the finished horizons again for nothing (a window gets the same bits either
# way; config/README.md). Snakemake does not rerun a finished horizon because its ranges or jobs
# are cut otherwise (the profile leaves out the "set of input files" trigger).
_FINISHED = [
    all(
        Path(EMBEDDINGS.format(pred_len=P, split=s)).is_file() for s in config["splits"]
    )
    for P in config["pred_lens"]
]
SHARE_HORIZONS = config["share_horizons"] and (all(_FINISHED) or not any(_FINISHED))
if SHARE_HORIZONS:
    EXTRACT_JOB = "{split}_{start}-{stop}"

    def per_job(pattern):
        return expand(pattern, pred_len=config["pred_lens"], allow_missing=True)

    def job_pred_lens(wildcards):
        return config["pred_lens"]

else:
    EXTRACT_JOB = "{pred_len}_{split}_{start}-{stop}"

    def per_job(pattern):
        return [pattern]

    def job_pred_lens(wildcards):
        return [int(wildcards.pred_len)]


def shard_ranges(wildcards):
    if SHARE_HORIZONS:
        return job_ranges(wildcards.split)
    return ranges(
        horizon_windows(wildcards.split, wildcards.pred_len),
        shard_windows(wildcards.split, int(wildcards.pred_len)),
    )


def shard_files(pattern):
    """Input function: the shard files of one (pred_len, split) for `pattern` (after the CPU plan)."""

    def files(wildcards):
        plan_on_the_cpu()
        return [
            pattern.format(
                pred_len=wildcards.pred_len, split=wildcards.split, start=a, stop=b
            )
            for a, b in shard_ranges(wildcards)
        ]

    return files


onstart:
    # Before any job: a read-only results folder (or one the user may not write) is one sentence,
    # not Snakemake's traceback when it cannot remove a job's old outputs there.
    _refused = unwritable_folder(
        sorted(
            str(path)
            for job in workflow.dag.needrun_jobs()
            for path in (*job.output, *job.log, *filter(None, [job.benchmark]))
            if not getattr(path, "is_storage", False)
        )
    )
    if _refused:
        fail(
            f"{_refused[1]} cannot be written ({_refused[0]} is to be written there): the folder is read-only "
            "or not yours to write; make it writable, or run in another working directory (snakemake -d)."
        )
