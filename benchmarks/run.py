"""Benchmark of the teacher extraction on the machine it runs on.

    python -m benchmarks.run --out docs/benchmarks.md               # `make bench`
    python -m benchmarks.run --out docs/benchmarks.md --device cuda --precision fp16
    python -m benchmarks.run --out docs/benchmarks.md --only families   # one section into the last report

A GPT-2-small-shaped model with random weights (the speed and memory of a transformer do
not depend on its weight values) reads real weather windows of the train split. Measured:
1. per horizon: windows/s, tokens/s and seconds per window of `embed_windows`, after a warm-up;
2. per horizon: peak memory, each horizon in a fresh subprocess so that ru_maxrss (and
   torch.cuda.max_memory_allocated) belongs to that horizon alone; on the CPU, where the timed
   runs use a small token budget, a memory probe at the workflow's budget (`memory_probe`);
3. the dense matmul throughput in the same precision (the roofline) and the fraction of it
   the extraction achieves, counting the FLOPs the published code computes (`naive_flops`);
4. the published way side by side: one prompt per forward, eager attention with the
   attention probabilities returned, a Python double loop for the mask, inside no_grad;
5. the exact savings one at a time on the same window (`run_savings`), each against the
   plain batched path: seconds, positions through the model, largest difference;
5b. the whole job (`run_whole`): the same windows through one job per horizon (summed over
   the horizons) and through the shared trie of all horizons, interleaved in one process;
6. prompt building and tokenization on their own: `SplitPrompts.window_ids` against
   building the text and calling the GPT-2 tokenizer per prompt (the published route);
7. per teacher family (benchmarks/families.py): a Qwen2.5-0.5B- and a Llama-3.2-1B-shaped random
   model with their real tokenizers, and GPT-2 small, the workflow against the plain reference
   (tests/plain_teacher.py) on the same windows at P = 24 and 192: model positions, s/window and
   peak memory, each way in a fresh process;
8. the issue's targets, met or not met, with the measured number.
Writes the Markdown report given by --out and a JSON file with all figures beside it.
Every figure in both comes from this run; rerunning rewrites them.

This file owns the command line and the orchestration: it spawns each measurement in a fresh
interpreter (benchmarks/workers.py, benchmarks/baseline.py), derives the targets
(benchmarks/targets.py) and writes both files through the package's atomic writer
(benchmarks/render.py renders the Markdown). Run it from the repository root, with the package
importable (`make bench` does both).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from benchmarks.common import (
    BASELINE_P,
    DATASET,
    FIDELITY,
    GPT2_SMALL,
    ROOT,
    SEED,
    SPLIT,
    bench_env,
    devices_for,
    elapsed,
    make_model_dir,
    matmul_roofline,
    progress,
    quiet_libraries,
    train_split,
    workflow_batch_tokens,
)
from benchmarks.families import SHAPES, family_section
from benchmarks.render import fmt, render_markdown
from benchmarks.targets import summarize
from benchmarks.workers import WHOLE_ROUNDS, worker_main
from timekd_embed import __version__
from timekd_embed.errors import InputError
from timekd_embed.store import write_text

CSV_CANDIDATES = ("../shared/data/weather/weather.csv", "resources/weather.csv")
TOKENIZER_CANDIDATES = ("../shared/data/gpt2-tokenizer",)
TOKENIZERS_CANDIDATES = ("../shared/data/tokenizers",)
# Windows per horizon: one window costs a GPT-2-small CPU 0.5-2 minutes per horizon on 2 cores,
# so the CPU default keeps `make bench` near 10 minutes; a GPU needs hundreds so that its batches
# are full and the rate is not launch-bound.
DEFAULT_WINDOWS = {"cpu": 1, "cuda": 256}
WHOLE_WINDOWS = {"cpu": 2, "cuda": 64}
# The shares of the token budget a batch's heads and stems are measured at (packing.PREFIX_SHARE is 1/6).
PREFIX_SHARES = (1.0, 1 / 2, 1 / 4, 1 / 6)   # the whole-job section runs every horizon twice over, per window
# The family section on 2 CPU cores: the plain reference at P = 192 runs about 35,000 (Llama 3) to
# 60,000 (Qwen2) prompt tokens per window through every layer, so the CPU run keeps the first two
# layers of each model (full width); about 15 minutes for the three families with one window.
FAMILY_LAYERS, FAMILY_WINDOWS = 2, 1


# ----------------------------------------------------------------------------- options


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line, with the per-device defaults filled in.

    Returns:
        The options; device is "cpu" or "cuda" (`auto` resolved), csv and tokenizer are found paths.

    Exits:
        With one sentence when --device cuda has no CUDA device, a default input is missing, or a
        count is below 1.
    """
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks.md"),
                        help="Markdown report; the JSON goes beside it with the suffix .json")
    parser.add_argument("--csv", type=Path, default=None,
                        help=f"weather.csv (default: first of {', '.join(CSV_CANDIDATES)})")
    parser.add_argument("--tokenizer", type=Path, default=None,
                        help=f"folder with the GPT-2 vocab.json and merges.txt (default: {TOKENIZER_CANDIDATES[0]})")
    parser.add_argument("--pred-lens", type=int, nargs="+", default=[24, 36, 48, 96, 192])
    parser.add_argument("--windows", type=int, default=None,
                        help=f"windows per horizon (default {DEFAULT_WINDOWS['cpu']} on CPU, "
                             f"{DEFAULT_WINDOWS['cuda']} on CUDA)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--precision", choices=["fp32", "fp16", "bf16"], default=None,
                        help="default fp32 on CPU, fp16 on CUDA")
    parser.add_argument("--batch-tokens", type=int, default=None,
                        help="token budget of the timed runs (default: the workflow's batch_tokens; a batch's "
                             "heads and stems take a sixth of it, so a few windows fill batches as a whole job does)")
    parser.add_argument("--probe-batch-tokens", type=int, default=None,
                        help="token budget of the CPU memory probe (default: the workflow's batch_tokens)")
    parser.add_argument("--whole-windows", type=int, default=None,
                        help="windows of the whole-job section (default: 2 on the CPU, 64 on a GPU)")
    parser.add_argument("--only", choices=["whole", "families"], default=None,
                        help="run only this section and write it into the existing --out report (and its JSON)")
    parser.add_argument("--families", nargs="+", choices=list(SHAPES), default=list(SHAPES),
                        help="teacher families of the family section (default: all)")
    parser.add_argument("--family-windows", type=int, default=FAMILY_WINDOWS,
                        help=f"windows of the family section, the same at every horizon (default {FAMILY_WINDOWS})")
    parser.add_argument("--family-layers", type=int, default=FAMILY_LAYERS,
                        help=f"first layers of each family's model (default {FAMILY_LAYERS}; 0: every layer)")
    parser.add_argument("--family-pred-lens", type=int, nargs="+", default=[24, 192])
    parser.add_argument("--family-size", choices=["public", "tiny"], default="public",
                        help="the published widths, or width 64 (for tests)")
    parser.add_argument("--tokenizers", type=Path, default=None,
                        help=f"folder with the qwen2/ and llama3/ tokenizers (default: {TOKENIZERS_CANDIDATES[0]})")
    # Internal: the parent runs each measurement in a fresh process through these.
    parser.add_argument("--worker", choices=["horizon", "baseline", "savings", "whole", "share", "family"],
                        help=argparse.SUPPRESS)
    parser.add_argument("--family", choices=list(SHAPES), help=argparse.SUPPRESS)
    parser.add_argument("--way", choices=["workflow", "plain"], help=argparse.SUPPRESS)
    parser.add_argument("--out-name", help=argparse.SUPPRESS)
    parser.add_argument("--prefix-share", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--pred-len", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--memory-probe", action="store_true", help=argparse.SUPPRESS)
    # The horizon worker's matmul rate right after it (make gpu-check leaves it out on the CPU, where an
    # emulated fp16 matmul of that size takes minutes).
    parser.add_argument("--roofline", action=argparse.BooleanOptionalAction, default=True, help=argparse.SUPPRESS)
    # The whole-job worker's rounds of each way (make gpu-check runs one on the CPU).
    parser.add_argument("--whole-rounds", type=int, default=WHOLE_ROUNDS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.device = resolve_device(args.device)
    args.precision = args.precision or ("fp16" if args.device == "cuda" else "fp32")
    if args.windows is None:
        args.windows = DEFAULT_WINDOWS[args.device]
    if args.whole_windows is None:
        args.whole_windows = WHOLE_WINDOWS[args.device]
    if args.batch_tokens is None:
        args.batch_tokens = workflow_batch_tokens(args.device)
    if args.probe_batch_tokens is None:
        args.probe_batch_tokens = workflow_batch_tokens(args.device)
    args.csv = args.csv or first_existing(CSV_CANDIDATES, "weather.csv", "--csv")
    args.tokenizer = args.tokenizer or first_existing(TOKENIZER_CANDIDATES, "the GPT-2 tokenizer folder", "--tokenizer")
    if args.tokenizers is None and not args.worker and (args.only == "families" or args.only is None):
        args.tokenizers = first_existing(TOKENIZERS_CANDIDATES, "the qwen2/llama3 tokenizer folders", "--tokenizers")
    if min(args.windows, args.batch_tokens, args.probe_batch_tokens, args.family_windows) < 1:
        parser.error("--windows, --batch-tokens, --probe-batch-tokens and --family-windows must be at least 1")
    if args.family_layers < 0:
        parser.error("--family-layers must be 0 (every layer) or more")
    return args


def resolve_device(device: str) -> str:
    """The device, "cpu" or "cuda", with `auto` resolved as a workflow job resolves it (devices.resolve_devices)."""
    try:
        return "cuda" if devices_for(device)[0].startswith("cuda") else "cpu"
    except InputError:
        sys.exit("bench: --device cuda but no CUDA device is visible; use --device cpu or auto.")


def first_existing(candidates: tuple[str, ...], what: str, option: str) -> Path:
    """The first of `candidates` under the working folder or the repository root; else exit naming `option`."""
    for candidate in candidates:
        for base in (Path.cwd(), ROOT):
            if (base / candidate).exists():
                return (base / candidate).resolve()
    sys.exit(f"bench: {what} not found at {', '.join(candidates)}; pass {option}.")


# ----------------------------------------------------------------------------- parent


def spawn(args, worker: str, workdir: Path, pred_len: int, probe: bool = False, prefix_share: float | None = None
          ) -> dict:
    """Run one worker in a fresh interpreter and return its JSON result."""
    out = workdir / f"{worker}_P{pred_len}.json"
    cmd = [sys.executable, "-m", "benchmarks.run", "--worker", worker, "--pred-len", str(pred_len),
           "--workdir", str(workdir), "--csv", str(args.csv), "--tokenizer", str(args.tokenizer),
           "--device", args.device, "--precision", args.precision,
           "--windows", str(args.whole_windows if worker in ("whole", "share") else args.windows),
           "--batch-tokens", str(args.batch_tokens), "--probe-batch-tokens", str(args.probe_batch_tokens),
           "--pred-lens", *map(str, args.pred_lens)]           # the whole job runs every one of them
    cmd += ["--memory-probe"] if probe else []
    cmd += ["--prefix-share", repr(prefix_share)] if prefix_share is not None else []
    subprocess.run(cmd, check=True, env=bench_env())
    return json.loads(out.read_text())


def probe_horizon(args) -> int | None:
    """Where the CPU memory probe runs: the longest horizon up to 192 (else the longest).

    At a fixed token budget the MLP activations are the same for every horizon and the mask and
    attention grow with the prompt length, so the longest horizon has the highest peak; one probe
    there bounds them all and saves minutes.
    """
    if args.device != "cpu" or args.probe_batch_tokens <= args.batch_tokens:
        return None
    upto = [P for P in args.pred_lens if P <= 192]
    return max(upto or args.pred_lens)


def machine(device: str) -> dict:
    """The CPU, memory, GPU, library versions, date and load average of this run, for the report."""
    import tokenizers
    import transformers
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or "unknown")
    mem_kib = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal"))
    info = {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "ram_bytes": mem_kib * 1024, "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "tokenizers": tokenizers.__version__,
            "timekd_embed": __version__, "os": platform.platform(), "gpu": None,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            # Other work on the machine slows every figure; the load average says how much there was.
            "load_average_at_start": os.getloadavg()}
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_memory_bytes"] = torch.cuda.get_device_properties(0).total_memory
    return info


def run_settings(args) -> dict:
    """The options every figure depends on, for the report."""
    return {"device": args.device, "precision": args.precision, "windows": args.windows,
            "batch_tokens": args.batch_tokens, "probe_batch_tokens": args.probe_batch_tokens,
            "pred_lens": args.pred_lens, "csv": str(args.csv), "dataset": DATASET, "split": SPLIT,
            "fidelity": FIDELITY, "model": "GPT-2-small shape, random weights", "seed": SEED}


def whole_job(args, workdir: Path) -> dict:
    """The whole-job section: one job per horizon against the shared trie, then the shared trie at
    each of PREFIX_SHARES, each share in a fresh process (its peak RSS is its own)."""
    progress(f"whole job: every horizon, one job per horizon against the shared trie, {args.whole_windows} windows")
    section = spawn(args, "whole", workdir, args.pred_lens[0])
    section["prefix_shares"] = []
    for share in PREFIX_SHARES:
        progress(f"whole job: the shared trie with heads and stems at {share:.3g} of the budget")
        section["prefix_shares"].append(spawn(args, "share", workdir, args.pred_lens[0], prefix_share=share))
    return section


def measure(args) -> dict:
    """Every measurement, each horizon and the baseline in a fresh process; returns the report."""
    from timekd_embed.sca import save_sca
    report = {"settings": run_settings(args), "machine": machine(args.device)}
    progress(f"{report['machine']['cpu']}, {args.device}, {args.precision}, {args.windows} window(s) per horizon")
    with tempfile.TemporaryDirectory(prefix="timekd-bench-") as tmp:
        workdir = Path(tmp)
        progress("writing GPT-2-small (and a 1-layer copy for the memory probe) with random weights")
        make_model_dir(workdir / "model", args.tokenizer)
        make_model_dir(workdir / "model-1layer", args.tokenizer, n_layer=1)
        n_vars = len(train_split(args.csv).variables)
        save_sca(workdir / "sca.safetensors", n_vars=n_vars, d_model=GPT2_SMALL["n_embd"], seed=SEED)
        report["roofline"] = matmul_roofline(args.device, args.precision)
        report["horizons"] = []
        probe_at = probe_horizon(args)
        for P in args.pred_lens:
            progress(f"horizon P={P} in a fresh process")
            report["horizons"].append(spawn(args, "horizon", workdir, P, probe=P == probe_at))
        progress(f"baseline: the published way at P={BASELINE_P}")
        report["baseline"] = spawn(args, "baseline", workdir, BASELINE_P)
        progress(f"exact savings one at a time at P={BASELINE_P}")
        report["savings"] = spawn(args, "savings", workdir, BASELINE_P)
        report["whole_job"] = whole_job(args, workdir)
        report["families"] = family_section(args, workdir)
    report["total_wall_s"] = elapsed()
    report["machine"]["load_average_at_end"] = os.getloadavg()
    summarize(report)
    return report


def measure_only(args, json_path: Path) -> dict:
    """The section args.only alone, merged into the report of an earlier full run (its JSON)."""
    from timekd_embed.sca import save_sca
    if not json_path.exists():             # the targets and the Markdown need the full run's figures
        sys.exit(f"bench: --only {args.only} adds its section to an earlier full run's {json_path}, which does not "
                 f"exist; run without --only first (make bench).")
    report = json.loads(json_path.read_text())
    with tempfile.TemporaryDirectory(prefix="timekd-bench-") as tmp:
        workdir = Path(tmp)
        if args.only == "families":
            report["families"] = family_section(args, workdir)
        else:
            make_model_dir(workdir / "model", args.tokenizer)
            save_sca(workdir / "sca.safetensors", n_vars=len(train_split(args.csv).variables),
                     d_model=GPT2_SMALL["n_embd"], seed=SEED)
            report["whole_job"] = whole_job(args, workdir)
            report["whole_job"]["machine"] = machine(args.device) | {"load_average_at_end": os.getloadavg()}
    summarize(report)
    return report


def main(argv: list[str] | None = None) -> None:
    """`make bench`: measure, then write --out and its JSON; with --worker, run that one worker instead."""
    args = parse_args(argv)
    if args.worker:
        worker_main(args)
        return
    json_path = args.out.with_suffix(".json")
    if args.only:
        report = measure_only(args, json_path)
    else:
        report = measure(args)
    write_text(json_path, json.dumps(report, indent=2) + "\n")
    write_text(args.out, render_markdown(report, json_path.name))
    for target in report["targets"]:
        progress(f"target: {target['target']}: {fmt(target['measured'])} {target['unit']} -> {target['status']}")
    progress(f"wrote {args.out} and {json_path} in {elapsed():.0f} s")


if __name__ == "__main__":
    quiet_libraries()  # process-wide logging levels: only when this is the bench's own process
    main()
