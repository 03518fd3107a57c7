"""Plan-time sizing without torch: where the jobs will run, how long they take, how many windows each.

Snakemake evaluates this on every invocation (and on every cluster job), so it reads only
small files: the environment, `/proc/driver/nvidia/gpus`, a model folder's config.json.
The figures below are measurements of this project (config/README.md, `shard_windows`, says
where each comes from); `make preflight` measures the machine at hand instead.
"""

from __future__ import annotations

import itertools
import json
import math
import os
from pathlib import Path

from .units import duration

# CPU seconds per window, GPT-2-small shape (12 layers, d = 768) in fp32, weather.csv (21 variables),
# 2 torch threads on a 2-core AMD EPYC: `make bench` of 2026-11-28 (docs/benchmarks.md, "Extraction per
# horizon", s / window), keyed by horizon P.
CPU_S_PER_WINDOW = {24: 8.37, 36: 8.4, 48: 9.38, 96: 11.5, 192: 19.3}
CPU_RATE_SOURCE = ("make bench on a 2-core AMD EPYC, GPT-2-small shape, fp32, 21 variables "
                   "(docs/benchmarks.md)")
# GPU windows per second and GPU, GPT-2 small in fp16, weather: the project's targets (docs/benchmarks.md,
# "Targets"); not yet measured on a GPU. Linear in P between them.
GPU_WINDOWS_PER_S = {24: 200.0, 192: 60.0}
# fp16 and bf16 on a CPU without half-precision matmul instructions (AVX2 only, as this project's 2-core
# AMD EPYC: no AVX-512 FP16 or BF16, no AMX), at GPT-2 small's width (d = 768): one weather window at
# P = 24 took 993 CPU-seconds in fp16 against 16.5 in fp32 (the same job, 2026-12-03; config/README.md,
# "Sizing"), 60x, so 62x on the model's part. torch 2.13's matmuls run there at about 1 GFLOP per
# CPU-second in fp16 and in bf16 at every width, while fp32 gets faster with the width (49.5 at 2048 x 768
# @ 768 x 768, 3.0-9.2 at d = 64): the factor is taken linear in d up to 768 (the demo's d = 64: 1/12 of
# it; its matmuls measured 1-3x) and constant beyond. A CPU with those instructions is much faster in
# half precision: `make preflight` measures the machine.
CPU_HALF_SLOWDOWN_768 = 62.0
REFERENCE_VARIABLES = 21
REFERENCE_DIMS = (12, 768)
REFERENCE_SEQ_LEN = 96
# The part of GPT-2 small's CPU time per window that does not shrink with the model (the masks, the
# SCA, the batches' Python side). A 2-layer d = 64 model took 0.02 of the 8.37 s above per window on
# weather (P = 24, fp32) and 0.06-0.19 of its scaled figure on the demo's 5 short variables (their
# fixed per-window work weighs more): 0.05 keeps both within a factor of two (config/README.md,
# "Sizing `shard_windows: auto`").
CPU_MODEL_FREE_SHARE = 0.05
# An extraction job's fixed start-up on the CPU: python and the imports, the split's prompts, the
# weights (benchmarks/startup.py: 5.7-16 s on a 2-core AMD EPYC; the slowest, as JOB_SECONDS keeps it).
CPU_JOB_STARTUP_S = 16.0
# A whole run on the CPU longer than this stops at plan time unless allow_slow_cpu is set.
SLOW_CPU_SECONDS = 86400.0
# Work per job that `shard_windows: auto` aims at. An extraction job's fixed start-up (python and
# imports, the split's prompts, the weights; benchmarks/startup.py, config/README.md) measured
# 11.9-16.0 s on a 2-core AMD EPYC at load 3.7, 5.7-5.9 s at load 1.4-1.7 since prompts build faster:
# it stays under 10% of a job that runs at least 9 x 16 s = 144 s, and an interruption loses at most
# 10 minutes while the real rate is no more than 2x slower than the figures above.
JOB_SECONDS = 300.0
# `auto` plans at most this many extraction jobs per split (per horizon and split without
# share_horizons): Snakemake plans thousands of jobs slowly (the default config on a CPU, fp16 at
# more than 300 s per window for all five horizons, gave 41,679 one-window jobs and a 4-minute dry run on a
# 2-core machine; capped, 200 jobs in 2.6 s), so there the jobs grow longer instead.
MAX_AUTO_JOBS = 100
# Known hub ids: (n_layer, n_embd): GPT-2's, and the teachers of config/examples/ (their files state
# the width and depth; docs/teacher.md, section 8), for the plan before get_model fetched them.
HUB_DIMS = {"gpt2": (12, 768), "distilgpt2": (6, 768), "gpt2-medium": (24, 1024), "gpt2-large": (36, 1280),
            "gpt2-xl": (48, 1600), "Qwen/Qwen2.5-7B": (28, 3584), "meta-llama/Llama-3.1-8B": (32, 4096),
            "mistralai/Mistral-7B-v0.1": (32, 4096), "microsoft/Phi-3-mini-4k-instruct": (32, 3072)}
# config.json's names of the depth and the width: GPT-2's, and every other family's (families.py).
DEPTH_WIDTH = (("n_layer", "n_embd"), ("num_hidden_layers", "hidden_size"))


def visible_gpus(environ: dict | None = None, proc: Path = Path("/proc/driver/nvidia/gpus")) -> int:
    """NVIDIA GPUs this process would see, without importing torch.

    Args:
        environ: the environment (default os.environ); CUDA_VISIBLE_DEVICES narrows the count.
        proc: the NVIDIA driver's folder with one entry per GPU (Linux).

    Returns:
        The number of GPUs (0 without the driver or with CUDA_VISIBLE_DEVICES empty or -1).
    """
    environ = os.environ if environ is None else environ
    present = len(list(proc.iterdir())) if proc.is_dir() else 0
    chosen = environ.get("CUDA_VISIBLE_DEVICES")
    if chosen is None:
        return present
    ids = [gpu_id for gpu_id in chosen.split(",") if gpu_id.strip()]
    if not ids or ids[0].strip() == "-1":
        return 0
    return min(len(ids), present)


def job_device(device: str, gpus: int, local: bool = True) -> str:
    """Where an extraction job runs, "cpu" or "cuda": `auto` is a GPU when this machine has `gpus`,
    or when the jobs run elsewhere (`local` False: a cluster's GPUs)."""
    if device == "auto":
        return "cuda" if gpus or not local else "cpu"
    return device


def model_dims(name_or_path: str, hub_id: str | None = None, layers: int | None = None) -> tuple[int, int]:
    """(blocks run, width) of a local folder's config.json (any supported family) or a known hub id.

    Args:
        name_or_path: the folder the jobs read (model.name_or_path, or resources/models/<id>/ for a hub id).
        hub_id: the hub id, looked up in HUB_DIMS while its folder is not fetched yet.
        layers: config key model.layers (only the first blocks run), or None.
    Returns:
        (n_layer, n_embd); GPT-2 small's for an unknown id or an unreadable config (the model check
        names the problem later).
    """
    dims = None
    config = Path(name_or_path) / "config.json"
    if config.is_file():
        try:
            raw = json.loads(config.read_text())
            dims = next((int(raw[depth]), int(raw[width])) for depth, width in DEPTH_WIDTH
                        if depth in raw and width in raw)
        except (ValueError, KeyError, TypeError, StopIteration):
            pass  # the model check names the problem when the first job runs
    if dims is None:
        dims = HUB_DIMS.get(hub_id or name_or_path, REFERENCE_DIMS)
    return (min(layers, dims[0]) if layers else dims[0]), dims[1]


def _interpolate(table: dict[int, float], pred_len: int) -> float:
    """Linear in P between the measured horizons, extended along the nearest segment."""
    keys = sorted(table)
    low, high = (keys[0], keys[1]) if pred_len <= keys[0] else (keys[-2], keys[-1])
    for left, right in itertools.pairwise(keys):
        if left <= pred_len <= right:
            low, high = left, right
    slope = (table[high] - table[low]) / (high - low)
    return max(table[keys[0]] * 0.1, table[low] + slope * (pred_len - low))


def seconds_per_window(device: str, pred_len: int, n_vars: int, dims: tuple[int, int], precision: str,
                       gpus: int = 1, seq_len: int = REFERENCE_SEQ_LEN) -> float:
    """Estimated wall seconds per window of one job.

    Args:
        device: `cpu` or `cuda` (`job_device`).
        pred_len: the horizon P.
        n_vars: variables N of the dataset (2N prompts per window).
        dims: (n_layer, n_embd) of the model; the weight matmuls (24 d^2 per token and layer)
            scale with n_layer * n_embd^2, the rest of a window's work (CPU_MODEL_FREE_SHARE of
            it for GPT-2 small on the CPU) does not.
        precision: fp16 and bf16 on the CPU: the model's part cpu_half_slowdown(d) times slower.
        gpus: GPUs a job holds (data parallel over them).
        seq_len: the input window; the prompts' values (seq_len + P in the GT prompt, seq_len in
            the HD one) are most of their tokens.

    Returns:
        Seconds per window (float).
    """
    model = (dims[0] * dims[1] ** 2) / (REFERENCE_DIMS[0] * REFERENCE_DIMS[1] ** 2)
    tokens = (2 * seq_len + pred_len) / (2 * REFERENCE_SEQ_LEN + pred_len)
    scale = n_vars / REFERENCE_VARIABLES * tokens
    if device == "cpu":
        per_window = _interpolate(CPU_S_PER_WINDOW, pred_len) * scale
        return per_window * (CPU_MODEL_FREE_SHARE + (1 - CPU_MODEL_FREE_SHARE) * model
                             * (cpu_half_slowdown(dims[1]) if precision in HALF else 1.0))
    return scale * model / (_interpolate(GPU_WINDOWS_PER_S, pred_len) * max(1, gpus))


HALF = ("fp16", "bf16")


def cpu_half_slowdown(width: int) -> float:
    """How many times slower than fp32 a model of hidden size `width` runs its matmuls in fp16 or bf16
    on a CPU: CPU_HALF_SLOWDOWN_768, linear in the width below GPT-2 small's, at least 1."""
    return max(1.0, CPU_HALF_SLOWDOWN_768 * min(1.0, width / REFERENCE_DIMS[1]))


def shard_size(setting: int | str | None, seconds: float, n_windows: int) -> int | None:
    """Windows per extraction job (config key shard_windows): a number or None (one job per split) as
    configured; "auto": the windows of JOB_SECONDS of work at `seconds` per window (at least 1), but no
    fewer than n_windows / MAX_AUTO_JOBS."""
    if setting != "auto":
        return setting
    return max(1, int(JOB_SECONDS / seconds), math.ceil(n_windows / MAX_AUTO_JOBS))


def cpu_seconds(windows: dict[int, int], jobs: int, n_vars: int, dims: tuple[int, int], precision: str,
                seq_len: int = REFERENCE_SEQ_LEN) -> float:
    """Estimated wall seconds of extraction jobs on the CPU, one after another (each takes every core):
    `jobs` start-ups (CPU_JOB_STARTUP_S) plus `windows` per horizon P at seconds_per_window each."""
    work = sum(count * seconds_per_window("cpu", P, n_vars, dims, precision, seq_len=seq_len)
               for P, count in windows.items())
    return jobs * CPU_JOB_STARTUP_S + work


def cpu_hint(windows: dict[int, int], n_vars: int, model: str, dims: tuple[int, int], precision: str,
             jobs: int = 1, seq_len: int = REFERENCE_SEQ_LEN, device: str = "auto") -> str:
    """The plan-time note for extraction on the CPU: why the CPU, and how long.

    Args:
        windows: windows to embed per horizon P (all configured splits together).
        n_vars: variables N; model: model.name_or_path; dims: its (n_layer, n_embd) (`model_dims`);
        precision: the config key.
        jobs: the extraction jobs (cpu_seconds); seq_len: the config key.
        device: the config key ("auto" without a GPU, or "cpu").

    Returns:
        A few sentences for stderr.
    """
    total = cpu_seconds(windows, jobs, n_vars, dims, precision, seq_len)
    why = ("No GPU is visible and device is auto: the extraction runs on the CPU." if device == "auto"
           else "device is cpu: the extraction runs on the CPU.")
    text = (f"{why} Estimate for all {sum(windows.values()):,} windows ({len(windows)} horizon(s), {n_vars} "
            f"variables, {model} with {dims[0]} layers, d = {dims[1]}, {precision}) in {jobs} job(s): about "
            f"{duration(total)}, start-up included, from rates measured by {CPU_RATE_SOURCE}, scaled to this "
            "model and dataset; more cores are faster.")
    if precision in HALF and cpu_half_slowdown(dims[1]) >= 2:
        text += (f" {precision} on a CPU without half-precision matmul instructions is slow (about "
                 f"{cpu_half_slowdown(dims[1]):.0f}x fp32 for this model's width, included above): set precision: "
                 "fp32 for CPU runs.")
    return text + " `make preflight` measures this machine for a real estimate."


def too_slow(seconds: float) -> str | None:
    """The plan-time stop for a CPU run that would take more than SLOW_CPU_SECONDS.

    Args:
        seconds: cpu_seconds of the extraction jobs still to run.
    Returns:
        One sentence naming the estimate and the ways forward, or None when the run is short enough.
    """
    if seconds <= SLOW_CPU_SECONDS:
        return None
    return (f"the extraction on the CPU would take about {duration(seconds)} (the estimate above); run it on a "
            "machine with a GPU (device: auto or cuda), embed fewer windows (e.g. --config limit_windows=4 for a "
            "smoke run, or fewer pred_lens or splits), or set config key allow_slow_cpu: true to run it anyway.")


def extraction_threads(device: str, gpus_per_job: int, cores: int) -> int:
    """Threads an extraction job keeps busy (the rule's threads): on the CPU every core it gets
    (torch's intra-op threads); on GPUs one thread driving each replica plus one preparing its batches."""
    return max(1, cores) if device == "cpu" else 2 * gpus_per_job
