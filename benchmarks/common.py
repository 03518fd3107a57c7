"""What `make bench`'s parent process and its workers share: the fixed inputs (model shape, dataset,
split, fidelity), the clocks and counters (progress lines, peak RSS, model positions, the matmul
roofline, FLOP counts), the random-weight model folder, and the report lookups both the targets and
the Markdown use. The package's own helpers do the real work (`timekd_embed.sampling`, `.table`,
`.devices`, `.settings`); nothing here writes a file but `make_model_dir` (through transformers).
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import resource
import shutil
import sys
import time
from pathlib import Path
from types import ModuleType

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]  # the repository root
DATASET = "weather"          # the name the published run uses (so: the ETTh1 template)
SPLIT = "train"
FIDELITY = "reference"       # the published computation, quirks included
SEQ_LEN = 96
SEED = 0
GPT2_SMALL = dict(n_layer=12, n_embd=768, n_head=12, n_positions=1024, vocab_size=50257)
BASELINE_P = 24
ROOFLINE_SIZES = (2048, 3072, 4096)
# Each horizon measures the matmul rate again right after its extraction, with one size: other
# work on the machine comes and goes, and the best rate seen in the whole run is the roofline.
ROOFLINE_SIZE_NEARBY = 3072
GB, GIB = 1e9, 2 ** 30

# Wall-clock start, shared with the worker processes so that all progress lines use one clock.
_T0 = float(os.environ.get("TIMEKD_BENCH_T0", time.time()))


def progress(msg: str) -> None:
    """One progress line on stderr, stamped with the seconds since the parent started."""
    print(f"[bench {time.time() - _T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


def elapsed() -> float:
    """Seconds since the parent process started (the progress lines' clock)."""
    return time.time() - _T0


def bench_env() -> dict[str, str]:
    """The environment of a worker process: the parent's clock, and this repository and the package
    the parent imported first on the path (so `python -m benchmarks.run` works from any folder)."""
    import timekd_embed
    paths = [str(ROOT), str(Path(timekd_embed.__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]
    return os.environ | {"TIMEKD_BENCH_T0": str(_T0), "PYTHONPATH": os.pathsep.join(path for path in paths if path)}


def quiet_libraries() -> None:
    """Known CSV irregularities and weight-loading progress bars would bury the progress lines."""
    logging.getLogger("timekd_embed").setLevel(logging.ERROR)
    from transformers.utils import logging as hf_logging
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def devices_for(device: str) -> list[str]:
    """The devices of a one-GPU workflow job on `device` ("cpu", "cuda" or "auto"): ["cpu"] or ["cuda:0"].

    Raises:
        InputError: "cuda" while no CUDA device is visible (devices.resolve_devices).
    """
    from timekd_embed.devices import resolve_devices
    return resolve_devices(device, 1)


def workflow_batch_tokens(device: str) -> int:
    """The batch_tokens a workflow job on this device uses when the config leaves it at its default."""
    from timekd_embed.config import load_schema
    default = load_schema()["properties"]["batch_tokens"].get("default")
    if default is None:                    # null: the package picks a budget per device
        from timekd_embed.devices import token_budget
        return int(token_budget(devices_for(device)))
    return int(default)


# ----------------------------------------------------------------------------- inputs


def make_model_dir(path: Path, tokenizer_dir: Path, seed: int = SEED, **shape) -> Path:
    """A GPT-2-small folder (or another shape) with random weights and the real tokenizer files."""
    from transformers import GPT2Config, GPT2Model
    torch.manual_seed(seed)
    GPT2Model(GPT2Config(**(GPT2_SMALL | shape))).save_pretrained(path, safe_serialization=True)
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(tokenizer_dir / name, path / name)
    return path


def plain_teacher() -> ModuleType:
    """tests/plain_teacher.py, the project's independent oracle, loaded from its file (tests/ is no
    package, and the oracle imports nothing of the package: both stay so)."""
    spec = importlib.util.spec_from_file_location("plain_teacher", ROOT / "tests" / "plain_teacher.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def train_split(csv: Path):
    """The train split (timekd_embed.windows.SplitWindows), in memory."""
    from timekd_embed.table import load_csv
    from timekd_embed.windows import split_windows
    return split_windows(load_csv(csv, target="OT", layout="custom"), "custom", SEQ_LEN)[SPLIT]


def prepare(args, tokenizer, pred_lens: list[int], up_to: int | None = None):
    """The train split prepared as an extraction job prepares it (timekd_embed.split_job.prepare_split):
    prompts per horizon (windows 0..up_to-1 only, with up_to), every prompt checked against GPT-2's context."""
    from timekd_embed.split_job import prepare_split
    return prepare_split(tokenizer, train_split(args.csv), settings_for(args, Path()), pred_lens,
                         GPT2_SMALL["n_positions"], up_to)


def spread_windows(n_windows: int, count: int) -> np.ndarray:
    """`count` window indices spread evenly over a split of `n_windows` (prompt lengths follow the
    values' magnitudes): the parity sample's rule (sampling.sample_windows), for one split."""
    from timekd_embed.sampling import sample_windows
    return sample_windows({SPLIT: n_windows}, count)[SPLIT]


def first_window_prompts(args, tokenizer, pred_len: int):
    """The baseline's and the savings' window (the horizon run's first) and SplitPrompts built from
    only the rows the windows up to it read (prepare with up_to): tokenizing the whole train split
    for one window took 3.8 s here, outside every timed part.

    Returns:
        (window index in the train split, timekd_embed.prompts.SplitPrompts).
    """
    from timekd_embed.shards import planned_windows
    window = int(spread_windows(planned_windows(len(train_split(args.csv).rows), SEQ_LEN, pred_len, None),
                                args.windows)[0])
    return window, prepare(args, tokenizer, [pred_len], up_to=window + 1).prompts[pred_len]


def settings_for(args, model_dir: Path):
    """The job settings (timekd_embed.settings.Settings) with the bench's options."""
    from timekd_embed.settings import Settings
    return Settings(name=DATASET, template=None, seq_len=SEQ_LEN, model=str(model_dir), revision=None, layers=None,
                    precision=args.precision, fidelity=FIDELITY, limit_windows=None)


def load_bench_teacher(args, model_dir: Path, devices: list[str] | None = None):
    """The teacher of `model_dir` with the bench's precision, on the bench's devices."""
    from timekd_embed.teacher import load_teacher
    return load_teacher(settings_for(args, model_dir).teacher, args.workdir / "sca.safetensors",
                        devices or devices_for(args.device))


def synchronize(device: str) -> None:
    """Wait for the GPU's queued work, so that a clock read after it covers that work."""
    if device == "cuda":
        torch.cuda.synchronize()


def peak_rss_bytes() -> int:
    """Peak resident memory of this process so far, in bytes."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


# ----------------------------------------------------------------------------- FLOPs


def naive_flops(lengths: np.ndarray, n_layer: int, d: int) -> float:
    """FLOPs of every prompt token through every layer, as the published code runs them: per token and
    layer 24*d^2 for the weight matmuls (QKV 6d^2, output 2d^2, MLP 16d^2; a multiply-add is 2) and 4*L*d
    for eager attention over a prompt of L tokens (QK^T and times V, 2Ld each). Layer norms, GELU,
    softmax, embeddings and the SCA (< 0.01 % here) are left out."""
    L = lengths.astype(np.float64).ravel()
    return float(n_layer * np.sum(L * (24.0 * d * d + 4.0 * L * d)))


def issued_matmul_flops(positions: int, n_layer: int, d: int) -> float:
    """The weight matmuls `last_token_states` runs: 24 d^2 per position in every block but the
    last, where only keys and values (with the queries, 6 d^2) are computed for every position;
    the two kept positions' remaining work there is left out (< 1%)."""
    return float(positions) * d * d * (24.0 * (n_layer - 1) + 6.0)


def matmul_roofline(device: str, precision: str, sizes: tuple[int, ...] = ROOFLINE_SIZES) -> dict:
    """Best dense matmul rate of this machine in the given precision (FLOP/s)."""
    from timekd_embed.lm import DTYPES
    dtype, per_size = DTYPES[precision], {}
    for size in sizes:
        left = torch.randn(size, size, device=device).to(dtype)
        right = torch.randn(size, size, device=device).to(dtype)
        left @ right                                           # warm-up: library init, kernel choice
        best = float("inf")
        for _ in range(3):
            synchronize(device)
            start = time.perf_counter()
            left @ right
            synchronize(device)
            best = min(best, time.perf_counter() - start)
        per_size[size] = 2.0 * size ** 3 / best
        progress(f"roofline {size}x{size} {precision}: {per_size[size] / 1e9:.1f} GFLOP/s")
    return {"sizes": list(sizes), "flops_per_s_by_size": {str(size): rate for size, rate in per_size.items()},
            "flops_per_s": max(per_size.values()), "repeats": 3, "precision": precision, "device": device}


# ----------------------------------------------------------------------------- counters


@contextlib.contextmanager
def count_model_tokens(model: torch.nn.Module):
    """Count the token positions (padding included) that go through the model, call by call.

    A forward pre-hook on the token embedding sees every tensor of ids the model embeds
    (heads and sequences alike) whatever embed_windows does before (sorting, packing,
    padding), so real / computed / padded can be told apart.
    """
    counts = {"model_tokens": 0, "batches": 0, "largest_batch_tokens": 0}

    def hook(module, args):
        counts["model_tokens"] += int(args[0].numel())
        counts["batches"] += 1
        counts["largest_batch_tokens"] = max(counts["largest_batch_tokens"], int(args[0].numel()))

    handle = model.get_input_embeddings().register_forward_pre_hook(hook)
    try:
        yield counts
    finally:
        handle.remove()


def warm_up(teacher, prompts, windows: np.ndarray, device: str, batch_tokens: int) -> None:
    """First calls pay for library init and kernel selection; keep that out of the timing."""
    from timekd_embed.extract import embed_windows
    model, length = teacher.model, 64
    # A short real prompt with an additive float mask: the same attention path, cheap on a CPU.
    ids = torch.from_numpy(prompts.window_ids(int(windows[0])).gt[0][:length])[None].to(model.wte.weight.device)
    mask = torch.zeros(length, length, dtype=model.dtype, device=ids.device)
    future = torch.ones(length, length, dtype=torch.bool, device=ids.device).triu(1)
    mask = mask.masked_fill(future, torch.finfo(model.dtype).min)
    with torch.inference_mode():
        model(input_ids=ids, attention_mask=mask[None, None], use_cache=False)
    if device == "cuda":                   # cheap there, and covers the shapes of full batches
        embed_windows(teacher, prompts, windows[:32], FIDELITY, batch_tokens)
    synchronize(device)


# ----------------------------------------------------------------------------- report lookups


def horizon(report: dict, pred_len: int) -> dict | None:
    """The report's figures of horizon `pred_len`, or None when it was not run."""
    return next((result for result in report["horizons"] if result["pred_len"] == pred_len), None)


def job_rss(result: dict) -> int:
    """Peak RSS at the workflow's budget: the memory probe's figure where there is one."""
    return result["probe"]["cpu_peak_rss_bytes"] if "probe" in result else result["cpu_peak_rss_bytes"]

