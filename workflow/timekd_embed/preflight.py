"""`timekd-embed preflight`: will the configured job fit, how long will it take, and do the
precision or a layer split change the embeddings? Measured in minutes on a few real windows
per horizon, with the configured model, precision, placement and devices, before the
day-long run (`make preflight`, or the Snakemake target results/<name>/preflight.{json,md}).

Every number comes from the extraction's own code (load_teacher, embed_windows) and the
parity stage's statistics (parity.compare); the GPU checks are one small function each and
take the devices as an argument, so the tests run them on CPU entries.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import platform
import shutil
import subprocess
import tempfile
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from functools import partial
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open

from .devices import peak_memory, resolve_devices, token_budget
from .errors import InputError
from .extract import (
    Teacher,
    _model_inputs,
    check_context,
    embed_horizons,
    embed_windows,
    load_teacher,
    prefix_tokens,
    save_sca,
)
from .lm import NonFiniteState, check_model, first_block_attention, last_token_states, weights_file
from .packing import PREFIX_SHARE, TrieBatch
from .parity import compare, sample_windows
from .prompts import SplitPrompts
from .settings import Settings
from .shards import planned_windows
from .store import write_json, write_text
from .windows import split_borders

log = logging.getLogger(__name__)

NO_CUDA = "not run: no CUDA device"
HEADROOM = 0.8  # a budget "fits" when its peak stays under this share of the device's memory
EPS = {"fp32": torch.finfo(torch.float32).eps, "fp16": torch.finfo(torch.float16).eps,
       "bf16": torch.finfo(torch.bfloat16).eps}
ROUNDING_ULPS = 16  # "float rounding": within 16 units of the precision's rounding, relative to the largest value


# --------------------------------------------------------------------------- the machine

def machine(devices: list[str]) -> dict:
    """Devices (name, memory, compute capability), fp16/bf16 support, versions, the GPUs this job holds.

    Args:
        devices: the job's devices, e.g. ["cuda:0"] or ["cpu"].
    Returns:
        A JSON-ready dict; memory in bytes.
    """
    info = {"host": platform.node(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "driver": _driver_version(), "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "devices": []}
    for device in dict.fromkeys(devices):
        if device.startswith("cuda"):
            try:
                props = torch.cuda.get_device_properties(torch.device(device))
                with torch.cuda.device(torch.device(device)):
                    bf16 = torch.cuda.is_bf16_supported(including_emulation=False)
            except (RuntimeError, AssertionError) as error:     # device_usable says why, as a failed check
                info["devices"].append({"device": device, "name": f"unreadable: {error}", "memory_bytes": None,
                                        "compute_capability": None, "fp16": None, "bf16": None})
                continue
            info["devices"].append({"device": device, "name": props.name, "memory_bytes": props.total_memory,
                                    "compute_capability": f"{props.major}.{props.minor}",
                                    "fp16": (props.major, props.minor) >= (5, 3), "bf16": bf16})
        else:
            info["devices"].append({"device": device, "name": platform.processor() or platform.machine(),
                                    "memory_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
                                    "compute_capability": None, "fp16": "emulated (slow)", "bf16": "emulated"})
    return info


def _driver_version() -> str | None:
    if shutil.which("nvidia-smi") is None:
        return None
    out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                         capture_output=True, text=True, check=False).stdout.split()
    return out[0] if out else None


def device_usable(device: str) -> str | None:
    """None when `device` runs a small matmul, else one sentence saying why it cannot be used.

    A GPU can be visible and still unusable: busy in exclusive mode, faulted, or of an
    architecture this PyTorch build has no kernels for.

    Args:
        device: a torch device string ("cpu", "cuda:1").
    Returns:
        None, or the sentence.
    """
    try:
        if device.startswith("cuda"):
            major, minor = torch.cuda.get_device_capability(torch.device(device))
            built = torch.cuda.get_arch_list()
            if built and f"sm_{major}{minor}" not in built and not any(arch.startswith("compute_") for arch in built):
                return (f"device {device} (compute capability {major}.{minor}) is visible but this PyTorch build "
                        f"has kernels only for {', '.join(built)}; install a PyTorch build for this GPU.")
        probe = torch.ones(64, 64, device=device)
        float((probe @ probe).sum().item())
    except Exception as error:  # noqa: BLE001 - any failure here is the answer
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return f"device {device} is visible but unusable ({first}); free it, fix its driver, or leave it out."
    return None


def checkpoint_matches(model: torch.nn.Module, weights: Path, name: str) -> str | None:
    """None when every parameter of the loaded model is the tensor of that name in `weights`
    (cast to the model's dtype) and finite; else one sentence naming the parameter.

    Catches a checkpoint that loaded with missing or renamed keys (random weights in their
    place) and weights that hold NaN or inf.

    Args:
        model: the loaded GPT2 model (parameter names without the "transformer." prefix).
        weights: its .safetensors file.
        name: model.name_or_path, for the message.
    Returns:
        None, or the sentence.
    """
    with safe_open(str(weights), framework="pt") as checkpoint:
        stored = {name_in_file.removeprefix("transformer."): name_in_file for name_in_file in checkpoint.keys()}  # noqa: SIM118 (safe_open is no mapping)
        for key, param in model.named_parameters():
            if key not in stored:
                return (f"the loaded model is not the named weights: parameter {key} is not in {weights}, so it was "
                        f"initialised at random; use a complete GPT-2 checkpoint for {name}.")
            tensor = checkpoint.get_tensor(stored[key]).to(param.dtype)
            loaded = param.detach().cpu()
            if not torch.allclose(loaded, tensor, rtol=0, atol=0, equal_nan=True):
                return (f"the loaded model is not the named weights: parameter {key} differs from {weights}; "
                        "check model.name_or_path and model.revision.")
            if not torch.isfinite(loaded).all():
                return (f"{weights} holds non-finite values (NaN or inf) in parameter {key}; the checkpoint is "
                        "damaged: download it again.")
    return None


# --------------------------------------------------------------------------- the data

@dataclasses.dataclass
class Horizon:
    """One configured horizon: its prompts on the first split, the sample windows, the job's window counts."""
    pred_len: int
    prompts: SplitPrompts
    sample: np.ndarray          # window indices of the first configured split
    planned: dict[str, int]     # windows per split the whole job embeds
    longest_prompt: int


def load_horizons(config: dict, tokenizer, n_positions: int, n_windows: int) -> list[Horizon]:
    """Prompts from the configured CSV for every horizon; the job's own context check on every split.

    Args:
        config: the validated config.
        tokenizer: the model's GPT-2 tokenizer.
        n_positions: the model's context length.
        n_windows: sample windows per horizon, from the first configured split (sample_windows).
    Returns:
        One Horizon per configured pred_len, in config order.
    Raises:
        InputError: the CSV cannot be read, or a prompt does not fit the context (the extraction's sentence).
    """
    from .cadence import check_cadence
    from .table import load_csv, stamps

    data = config["dataset"]
    layout = data["layout"]  # concrete: validate_config resolves "auto"
    table = load_csv(data["csv"], target=data["target"], layout=layout, date_format=data["date_format"])
    check_cadence(table, data["name"], layout)  # the windows stage's own check of the file
    borders = split_borders(len(table.values), config["seq_len"], layout, data["csv"])
    horizons, first = [], config["splits"][0]
    common = min(planned_windows(borders[first][1] - borders[first][0], config["seq_len"], pred_len,
                                 config["limit_windows"]) for pred_len in config["pred_lens"])
    sample = sample_windows({first: common}, n_windows)[first] if common > 0 else np.zeros(0, np.int64)
    for pred_len in config["pred_lens"]:
        prompts, longest, planned = None, 0, {}
        for split in config["splits"]:
            start, stop = borders[split]
            planned[split] = planned_windows(stop - start, config["seq_len"], pred_len, config["limit_windows"])
            if planned[split] == 0:
                raise InputError(f"pred_len {pred_len}: split {split} has no window of {config['seq_len']} + "
                                 f"{pred_len} rows; use a smaller pred_len or seq_len.")
            rows = slice(start, start + planned[split] - 1 + config["seq_len"] + pred_len)  # the rows they read
            prompts_of_split = SplitPrompts(tokenizer, table.values[rows], stamps(table.dates[rows]), data["name"],
                                            pred_len, config["seq_len"], data["template"])
            longest = max(longest, check_context(prompts_of_split, n_positions, split, np.arange(planned[split]),
                                                 table.variables))
            prompts = prompts or prompts_of_split
        horizons.append(Horizon(pred_len, prompts, sample, planned, longest))
    return horizons


# --------------------------------------------------------------------------- speed and memory

def _reset_peaks(devices: list[str]) -> None:
    for device in dict.fromkeys(devices):
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats(torch.device(device))


def timed_embed(teacher: Teacher, prompts_by_pred_len: dict[int, SplitPrompts], windows: np.ndarray, fidelity: str,
                batch_tokens: int) -> tuple[dict[int, np.ndarray], float]:
    """Embeddings of `windows` at the given horizons in one job after a one-window warm-up, and the
    windows per second of the timed run.

    Args:
        teacher, prompts_by_pred_len, fidelity, batch_tokens: as extract.embed_horizons.
        windows: (W,) int window indices, W >= 1, each existing at every given horizon.
    Returns:
        ({P: (W, N, d) float32 embeddings}, windows per second, every horizon of a window
        counted once). Peak memory counters restart after the warm-up.
    """
    embed_horizons(teacher, prompts_by_pred_len, windows[:1], fidelity, batch_tokens)   # kernels, allocator, caches
    _reset_peaks(teacher.devices)
    began = time.perf_counter()
    out, _ = embed_horizons(teacher, prompts_by_pred_len, windows, fidelity, batch_tokens)
    return out, len(windows) / (time.perf_counter() - began)


def fill_windows(horizon: Horizon, batch_tokens: int, fidelity: str) -> np.ndarray:
    """The sample windows, plus enough others (spread over the job's windows of the first split)
    for one full batch of `batch_tokens`: the peak memory is that of a full batch.

    Args:
        horizon: the horizon (its prompts, sample and planned windows).
        batch_tokens: the token budget to fill (its PREFIX_SHARE holds a batch's heads and stems).
        fidelity: "reference" or "corrected".
    Returns:
        (W,) int64 sorted window indices, the sample among them.
    """
    per_window = prefix_tokens({horizon.pred_len: horizon.prompts}, int(horizon.sample[0]), fidelity)
    need = math.ceil(batch_tokens * PREFIX_SHARE / per_window)
    available = next(iter(horizon.planned.values()))
    if need <= len(horizon.sample):
        return horizon.sample
    spread = np.linspace(0, available - 1, min(need, available)).round().astype(np.int64)
    return np.union1d(horizon.sample, spread)


def _named(horizons: list[Horizon]) -> str:
    """'pred_len 24' or 'pred_lens 24, 48': the horizons of a job, for its sentences."""
    return f"pred_len{'s' if len(horizons) > 1 else ''} {', '.join(str(horizon.pred_len) for horizon in horizons)}"


def measure_job(teacher: Teacher, horizons: list[Horizon], fidelity: str, batch_tokens: int) -> tuple[dict, dict]:
    """What one extraction job of these horizons does on these devices: windows/s, peak memory per
    device at `batch_tokens` (halved while a GPU runs out of memory), the largest budget that fits
    with headroom, and the ETA of all its windows at this rate.

    Args:
        teacher: the loaded teacher.
        horizons: one horizon (share_horizons: false), or every configured one (a shared job);
            the windows run are spread over those of the horizon with the fewest (every
            horizon has them), the sample among them.
        fidelity: "reference" or "corrected".
        batch_tokens: the configured (or device-default) token budget.
    Returns:
        (the figures: JSON-ready, memory in bytes, eta_s in seconds, planned_windows per split
        the most of any horizon; {P: (S, N, d) float32 embeddings of the sample windows}).
    Raises:
        InputError: out of memory even at batch_tokens 1024; a non-finite state (embed_horizons).
    """
    shortest = min(horizons, key=lambda horizon: next(iter(horizon.planned.values())))
    windows = fill_windows(shortest, batch_tokens, fidelity)
    prompts = {horizon.pred_len: horizon.prompts for horizon in horizons}
    budget, tried = batch_tokens, []
    while True:
        try:
            out, rate = timed_embed(teacher, prompts, windows, fidelity, budget)
            break
        except torch.OutOfMemoryError:
            tried.append(budget)
            torch.cuda.empty_cache()
            if budget // 2 < 1024:
                raise InputError(f"{_named(horizons)}: {', '.join(teacher.devices)} ran out of memory even at "
                                 "batch_tokens = 1024; raise gpus_per_job or use a GPU with more memory.") from None
            budget //= 2
    peaks = peak_memory(teacher.devices)
    planned = {split: max(horizon.planned[split] for horizon in horizons) for split in shortest.planned}
    figures = {"pred_lens": list(prompts), "windows_timed": len(windows), "windows_per_s": rate,
               "batch_tokens": batch_tokens, "out_of_memory_at": tried, "measured_at_batch_tokens": budget,
               "peak_memory_bytes": peaks, "longest_prompt": max(horizon.longest_prompt for horizon in horizons),
               "planned_windows": planned, "eta_s": sum(planned.values()) / rate}
    figures["fitting_batch_tokens"] = fitting_budget(teacher, budget, peaks, bool(tried))
    sample_rows = np.searchsorted(windows, shortest.sample)
    return figures, {P: embeddings[sample_rows] for P, embeddings in out.items()}


def fitting_budget(teacher: Teacher, measured_at: int, peaks: dict, ran_out: bool) -> int | None:
    """The largest batch_tokens whose peak stays under HEADROOM of the smallest GPU, extrapolated
    linearly from the measured peak above the weights; None on the CPU or when the configured one fits.

    Args:
        teacher: the loaded teacher (its devices, placement and weights).
        measured_at: the batch_tokens the peaks were measured at.
        peaks: device -> peak memory in bytes.
        ran_out: whether a larger budget ran out of memory first.
    Returns:
        A multiple of 1024 (at least 1024), or None.
    """
    gpus = [gpu for gpu in teacher.devices if gpu.startswith("cuda")]
    if not gpus:
        return None
    weights = sum(weight.numel() * weight.element_size() for weight in teacher.model.parameters())
    if teacher.placement == "model_parallel":      # each GPU holds its share of the layers, else a whole copy
        weights /= len(gpus)
    total = min(torch.cuda.get_device_properties(torch.device(gpu)).total_memory for gpu in gpus)
    peak = max(peaks[gpu] for gpu in gpus)
    if not ran_out and peak <= HEADROOM * total:
        return None
    per_token = max(peak - weights, 1) / measured_at
    return max(1024, int((HEADROOM * total - weights) / per_token) // 1024 * 1024)


# --------------------------------------------------------------------------- parity

def within_rounding(got: np.ndarray, expected: np.ndarray, precision: str) -> dict:
    """Largest difference of two runs that should agree, and whether it is float rounding at `precision`.

    Args:
        got, expected: arrays of one shape (expected sets the scale of the tolerance).
        precision: "fp32", "bf16" or "fp16".
    Returns:
        {"max_abs_difference", "bit_equal", "tolerance" (ROUNDING_ULPS machine epsilons of the
        precision times max(1, |expected|)), "within_rounding"}.
    """
    diff = float(np.abs(got.astype(np.float64) - expected.astype(np.float64)).max())
    scale = float(max(1.0, np.abs(expected).max()))
    return {"max_abs_difference": diff, "bit_equal": bool(np.array_equal(got, expected)),
            "tolerance": ROUNDING_ULPS * EPS[precision] * scale,
            "within_rounding": diff <= ROUNDING_ULPS * EPS[precision] * scale}


# --------------------------------------------------------------------------- GPU checks (#17.3)

def one_batch(teacher: Teacher, horizon: Horizon, fidelity: str, batch_tokens: int) -> TrieBatch:
    """The first real batch the extraction builds for the sample windows (packing.batches output).

    Args:
        teacher: not read (the batch depends on the prompts alone); horizon: its prompts and sample.
        fidelity, batch_tokens: as the extraction.
    Returns:
        The packing.TrieBatch, on the CPU, not pinned.
    """
    inputs, _, _, _ = _model_inputs({horizon.prompts.pred_len: horizon.prompts}, horizon.sample, fidelity,
                                    batch_tokens, pin=False)
    return inputs[0]


def attention_backends(model: torch.nn.Module, batch: TrieBatch, device: str, precision: str) -> dict:
    """One real batch through the default SDPA backend and through each explicit one, against the
    math backend: the largest difference must be float rounding (cuDNN attention, the default on
    Hopper, has had wrong results with float masks). Backends that refuse the batch are listed.

    Args:
        model: the language model; batch: one_batch's batch.
        device: the device it runs on; precision: the configured precision (the rounding tolerance).
    Returns:
        backend name -> within_rounding's dict, or a sentence for a backend that refused.
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel

    def states(backend):
        with sdpa_kernel(backend) if backend is not None else nullcontext():
            return last_token_states(model, batch, torch.device(device)).cpu().numpy()

    math_states = states(SDPBackend.MATH)
    result = {"default": within_rounding(states(None), math_states, precision)}
    if device.startswith("cuda"):
        for name in ("EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "FLASH_ATTENTION"):
            try:
                result[name.lower()] = within_rounding(states(getattr(SDPBackend, name)), math_states, precision)
            except RuntimeError as error:
                result[name.lower()] = f"not used for this batch: {str(error).strip().splitlines()[0]}"
    return result


def key_padding(model: torch.nn.Module, batch: TrieBatch, device: str) -> dict:
    """The first block's attention over one real batch, with the key length as it is and padded to
    a multiple of 8 (padded keys masked out): the memory-efficient kernel copies and pads an
    unaligned float mask on every call. Time, peak memory, the kernel's warnings, and whether
    both give the same output; on CUDA it runs under the memory-efficient backend only.

    Args:
        model: the language model; batch: one_batch's batch; device: where it runs.
    Returns:
        {"unaligned": {...}, "padded_to_8": {...}, "max_abs_difference", "padding_helps"}; each run:
        key_length, seconds per call, extra_memory_bytes (None on the CPU), warnings.
    """
    torch_device = torch.device(device)
    block = model.h[0]
    # The widest leaf level's queries, its ancestors' keys then its own, as lm.block_forward builds them.
    q, k, v, mask = first_block_attention(model, batch, torch_device)             # mask (R, 1, T, K)
    pad = -mask.shape[-1] % 8
    padded = (torch.nn.functional.pad(k, (0, 0, 0, pad)), torch.nn.functional.pad(v, (0, 0, 0, pad)),
              torch.nn.functional.pad(mask, (0, pad), value=torch.finfo(q.dtype).min))
    runs = {name: _attention_run(q, *tensors, block.attn.scaling, torch_device)
            for name, tensors in {"unaligned": (k, v, mask), "padded_to_8": padded}.items()}
    same = float((runs["unaligned"].pop("output").float() - runs["padded_to_8"].pop("output").float()).abs().max())
    unaligned, aligned = runs["unaligned"], runs["padded_to_8"]
    helps = (unaligned["extra_memory_bytes"] or 0) > 1.05 * (aligned["extra_memory_bytes"] or 0) or \
        unaligned["seconds"] > 1.05 * aligned["seconds"]
    return runs | {"max_abs_difference": same, "padding_helps": bool(pad and helps)}


def _attention_run(q, keys, values, mask, scale: float, dev: torch.device, repeats: int = 3) -> dict:
    """One SDPA call after a warm-up (memory-efficient backend on CUDA): seconds per call, memory
    allocated beyond its inputs, the warnings it raised, and its output."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    cuda = dev.type == "cuda"
    with warnings.catch_warnings(record=True) as caught, torch.inference_mode():
        warnings.simplefilter("always")
        # a fresh context manager per use: sdpa_kernel's cannot be entered twice
        with sdpa_kernel(SDPBackend.EFFICIENT_ATTENTION) if cuda else nullcontext():
            torch.nn.functional.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=scale)
        if cuda:
            torch.cuda.synchronize(dev)
            torch.cuda.reset_peak_memory_stats(dev)
        before = torch.cuda.memory_allocated(dev) if cuda else 0
        began = time.perf_counter()
        with sdpa_kernel(SDPBackend.EFFICIENT_ATTENTION) if cuda else nullcontext():
            for _ in range(repeats):
                out = torch.nn.functional.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=scale)
        if cuda:
            torch.cuda.synchronize(dev)
        seconds = (time.perf_counter() - began) / repeats
    return {"key_length": int(keys.shape[2]), "seconds": seconds,
            "extra_memory_bytes": torch.cuda.max_memory_allocated(dev) - before if cuda else None,
            "warnings": sorted({str(warning.message).splitlines()[0] for warning in caught}), "output": out}


def replica_scaling(one: Teacher, replicated: Teacher, horizon: Horizon, fidelity: str, batch_tokens: int) -> dict:
    """Data-parallel replicas in Python threads: windows/s on one device and on all of `replicated`'s.

    Args:
        one: a teacher on one device; replicated: a data-parallel teacher.
        horizon, fidelity, batch_tokens: what to run (enough windows for two full batches).
    Returns:
        {"windows", "devices", "windows_per_s_1", "windows_per_s_<n>", "speedup"}.
    """
    windows = fill_windows(horizon, 2 * batch_tokens, fidelity)
    prompts = {horizon.pred_len: horizon.prompts}
    _, single = timed_embed(one, prompts, windows, fidelity, batch_tokens)
    _, many = timed_embed(replicated, prompts, windows, fidelity, batch_tokens)
    return {"windows": len(windows), "devices": replicated.devices, "windows_per_s_1": single,
            f"windows_per_s_{len(replicated.devices)}": many, "speedup": many / single}


def prefetch_pinning(horizon: Horizon, fidelity: str, batch_tokens: int, threads: int = 2,
                     pins: tuple[bool, ...] = (False, True)) -> dict:
    """The extraction's batch preparation in `threads` concurrent threads (one per replica), timed with
    and without page-locked memory: pinned allocation has been reported to serialise on a driver lock.

    Args:
        horizon, fidelity, batch_tokens: what to prepare (the sample windows, split over the threads).
        threads: concurrent threads; pins: the pin settings to time.
    Returns:
        {"pageable_s"/"pinned_s": seconds, "threads", "windows"}.
    """
    parts = np.array_split(horizon.sample, threads)
    timings = {}
    for pin in pins:
        began = time.perf_counter()
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(partial(_model_inputs, {horizon.prompts.pred_len: horizon.prompts}, fidelity=fidelity,
                                  batch_tokens=batch_tokens, pin=pin), parts))
        timings["pinned_s" if pin else "pageable_s"] = time.perf_counter() - began
    return timings | {"threads": threads, "windows": len(horizon.sample)}


def device_map_used(teacher: Teacher) -> dict:
    """The accelerate device map a model-parallel teacher really runs with.

    Args:
        teacher: a loaded teacher.
    Returns:
        module name -> device string; empty when the model has no device map.
    """
    return {module: str(device) for module, device in getattr(teacher.model, "hf_device_map", {}).items()}


# --------------------------------------------------------------------------- the run

def run_preflight(config: dict, n_windows: int = 8, devices: list[str] | None = None,
                  device_map: dict | None = None, workdir: str | Path | None = None) -> dict:
    """All checks on `config` (validated, defaults filled); never raises for a failed check.

    Args:
        config: as config.load_config_file returns it.
        n_windows: sample windows per horizon (of the first configured split).
        devices: the job's devices; None resolves them as the extraction does (device, gpus_per_job).
        device_map: an explicit accelerate map for the model-parallel check (tests: two CPU entries).
        workdir: where the seeded SCA weights go (a temporary folder by default).
    Returns:
        The report: machine, horizons (speed, memory, ETA), parity, gpu_checks, failures, passed.
    """
    began = time.perf_counter()
    devices = devices or resolve_devices(config["device"], config["gpus_per_job"])
    failures: list[str] = []  # one sentence per failed check; any makes preflight exit 1
    report = {"config": {key: config[key] for key in ("precision", "placement", "gpus_per_job", "batch_tokens",
                                                 "pred_lens", "share_horizons", "splits", "fidelity")}
              | {"model": config["model"]},
              "machine": machine(devices), "windows_per_horizon": n_windows, "failures": failures}
    try:
        with tempfile.TemporaryDirectory(dir=workdir) as tmp:
            _run_checks(config, n_windows, devices, device_map, Path(tmp), report, failures)
    except InputError as error:        # a check that stops the rest (the model cannot load, ...)
        failures.append(str(error))
    report["failures"] = list(failures)
    report["passed"] = not failures
    if config["precision"] != "fp32" and not any(device.startswith("cuda") for device in devices):
        report["notes"] = [f"{config['precision']} on the CPU is emulated and slow: use precision fp32 there."]
    report["wall_s"] = time.perf_counter() - began
    return report


def _run_checks(config, n_windows, devices, device_map, tmp: Path, report: dict, failures: list[str]) -> None:
    for device in dict.fromkeys(devices):
        if (problem := device_usable(device)) is not None:
            failures.append(problem)
    if failures:
        return
    name, revision = config["model"]["name_or_path"], config["model"]["revision"]
    # The model's files first (headers only): a damaged download fails in a second, before every
    # split of every horizon is tokenized.
    model_config, tokenizer = check_model(name, revision)
    horizons = load_horizons(config, tokenizer, model_config.n_positions, n_windows)
    report["context"] = model_config.n_positions
    sca_path = tmp / "sca.safetensors"
    settings = Settings.from_config(config, horizons[0].pred_len, config["splits"][0])
    save_sca(sca_path, horizons[0].prompts.n_vars, model_config.n_embd, config["seed"])

    teacher = load_teacher(settings, sca_path, devices=devices, device_map=device_map)
    budget = settings.batch_tokens or token_budget(teacher.devices)
    report["placement"] = teacher.placement
    if (problem := checkpoint_matches(teacher.model, weights_file(name, revision), name)) is not None:
        failures.append(problem)
    measured, embeddings = [], {}
    # The jobs the workflow runs: one for every horizon (share_horizons), or one per horizon.
    for job in [horizons] if config["share_horizons"] else [[horizon] for horizon in horizons]:
        try:
            figures, sample_embeddings = measure_job(teacher, job, settings.fidelity, budget)
        except InputError as error:     # the extraction's own sentence (non-finite state, memory)
            failures.append(str(error))
            continue
        except RuntimeError as error:   # a device error on a path never run on this machine before
            failures.append(f"{_named(job)}: the extraction failed on {', '.join(devices)} "
                            f"({str(error).strip().splitlines()[0]}); report it with this preflight output.")
            continue
        measured.append(figures)
        embeddings |= sample_embeddings
        for P, values in sample_embeddings.items():
            if not np.isfinite(values).all():
                failures.append(f"pred_len {P}: non-finite values (NaN or inf) in the {settings.precision} embeddings "
                                "of the sample windows; use precision bf16 or fp32, or check the weights.")
    report["jobs"] = measured
    report["eta_s"] = sum(figures["eta_s"] for figures in measured)
    report["parity"] = precision_parity(config, settings, sca_path, devices, device_map, horizons, embeddings,
                                        failures)
    report["gpu_checks"] = gpu_checks(settings, sca_path, teacher, devices, device_map, horizons[0], budget, failures)


def precision_parity(config, settings, sca_path, devices, device_map, horizons, embeddings, failures) -> dict:
    """The configured precision against fp32 on the same sample windows and devices (parity.compare).

    Args:
        config: the validated config (parity.min_cosine); settings: the job's settings.
        sca_path, devices, device_map: as load_teacher.
        horizons: the horizons; embeddings: pred_len -> the sample's (S, N, d) in the configured precision.
        failures: the run's failure sentences, appended to.
    Returns:
        pred_len -> parity.compare's statistics plus windows_compared, or {"fp32": sentence}.
    """
    if settings.precision == "fp32":
        return {"fp32": "trivially exact: the configured precision is fp32"}
    fp32 = load_teacher(dataclasses.replace(settings, precision="fp32"), sca_path, devices=devices,
                        device_map=device_map)
    budget = settings.batch_tokens or token_budget(fp32.devices)
    result = {}
    # One fp32 job over every measured horizon: the sample windows are the same at all of them.
    measured = [horizon for horizon in horizons if horizon.pred_len in embeddings]
    prompts = {horizon.pred_len: horizon.prompts for horizon in measured}
    reference = embed_horizons(fp32, prompts, horizons[0].sample, settings.fidelity, budget)[0] if measured else {}
    for horizon in measured:
        stats, _ = compare(embeddings[horizon.pred_len], reference[horizon.pred_len])
        stats["windows_compared"] = horizon.sample.tolist()
        result[horizon.pred_len] = stats
        if not stats["cosine_min"] >= config["parity"]["min_cosine"]:
            failures.append(f"pred_len {horizon.pred_len}: the lowest cosine similarity between {settings.precision} "
                            f"and fp32 embeddings is {stats['cosine_min']:.6f}, under parity.min_cosine = "
                            f"{config['parity']['min_cosine']}; use precision bf16 or fp32.")
    del fp32                      # its memory goes back before the GPU checks load other copies
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return result


def gpu_checks(settings, sca_path, teacher, devices, device_map, horizon, budget, failures) -> dict:
    """#17.3's checks, each guarded: one that raises (a CUDA error, a kernel that refuses) is a failed
    check with its first line, not a traceback. Those that need CUDA or a second device say so.

    Args:
        settings, sca_path: as load_teacher; teacher: the loaded teacher.
        devices, device_map: the job's devices and an explicit layer split (tests) or None.
        horizon: the first horizon; budget: batch_tokens.
        failures: the run's failure sentences, appended to.
    Returns:
        check name -> its result, or a sentence saying why it did not run or how it failed.
    """
    cuda = any(device.startswith("cuda") for device in devices)
    one = teacher if teacher.placement == "single" else load_teacher(settings, sca_path, devices=devices[:1])
    batch = one_batch(one, horizon, settings.fidelity, budget)
    runs = {
        "attention_backends": partial(attention_backends, one.model, batch, devices[0], settings.precision),
        "key_padding": partial(key_padding, one.model, batch, devices[0]) if cuda else None,
        "prefetch_pinning": partial(prefetch_pinning, horizon, settings.fidelity, budget) if cuda else None,
    }
    several = None if len(devices) >= 2 else (
        NO_CUDA if not cuda else f"not run: the job holds one device ({devices[0]})")
    if several is None:
        runs["replica_scaling"] = partial(replicas_check, settings, sca_path, teacher, one, devices, horizon, budget)
        runs["model_parallel"] = partial(layer_split_check, settings, sca_path, teacher, one, devices, device_map,
                                         horizon, budget)
    checks = {}
    for name, run in runs.items():
        if run is None:
            checks[name] = NO_CUDA
            continue
        try:
            checks[name] = run()
        except (NonFiniteState, InputError) as error:  # the extraction's own finding, already a failure above
            checks[name] = f"not run: {error}"
        except (RuntimeError, ValueError) as error:    # torch's errors for kernels and devices
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            checks[name] = f"failed: {first}"
            failures.append(f"GPU check {name} could not run on {', '.join(devices)} ({first}); report it with "
                            "this preflight output.")
    if several is not None:
        checks["replica_scaling"] = checks["model_parallel"] = several
    for name, value in checks.items():
        rounding = [(where, result) for where, result in _rounding_results(value) if not result["within_rounding"]]
        if rounding:
            where, worst = rounding[0]
            failures.append(f"{name.replace('_', ' ')} ({where}) differs by {worst['max_abs_difference']:.3g}, more "
                            f"than float rounding ({worst['tolerance']:.3g}); report it with this preflight output.")
    return checks


def _rounding_results(value, where: str = "") -> list[tuple[str, dict]]:
    """Every within_rounding result nested in a check's result, with where it sits."""
    if not isinstance(value, dict):
        return []
    if "within_rounding" in value:
        return [(where, value)]
    return [result for key, nested in value.items()
            for result in _rounding_results(nested, f"{where}.{key}".strip("."))]


def replicas_check(settings, sca_path, teacher, one, devices, horizon, budget) -> dict:
    """Data parallel over the first two devices: speed against one device (`one`), and parity with it.

    Args:
        settings, sca_path: as load_teacher; teacher: the loaded teacher; one: a teacher on one device.
        devices: the job's devices (at least 2); horizon: the first horizon; budget: batch_tokens.
    Returns:
        replica_scaling's dict plus "parity_vs_one_device" (within_rounding).
    """
    single, _ = embed_windows(one, horizon.prompts, horizon.sample, settings.fidelity, budget)
    replicated = teacher if teacher.placement == "data_parallel" and len(teacher.devices) == 2 else load_teacher(
        dataclasses.replace(settings, placement="data_parallel"), sca_path, devices=devices[:2])
    result = replica_scaling(one, replicated, horizon, settings.fidelity, budget)
    parallel, _ = embed_windows(replicated, horizon.prompts, horizon.sample, settings.fidelity, budget)
    return result | {"parity_vs_one_device": within_rounding(parallel, single, settings.precision)}


def layer_split_check(settings, sca_path, teacher, one, devices, device_map, horizon, budget) -> dict:
    """The layers split over all devices (accelerate): the device map used, and parity with one device (`one`).

    Args:
        settings, sca_path: as load_teacher; teacher: the loaded teacher; one: a teacher on one device.
        devices, device_map: the job's devices (at least 2) and an explicit map or None.
        horizon: the first horizon; budget: batch_tokens.
    Returns:
        {"device_map": device_map_used's, "parity_vs_one_device": within_rounding's}.
    """
    single, _ = embed_windows(one, horizon.prompts, horizon.sample, settings.fidelity, budget)
    model_parallel = teacher if teacher.placement == "model_parallel" else load_teacher(
        dataclasses.replace(settings, placement="model_parallel"), sca_path, devices=devices, device_map=device_map)
    out, _ = embed_windows(model_parallel, horizon.prompts, horizon.sample, settings.fidelity, budget)
    used = device_map_used(model_parallel)
    log.info("model_parallel device map: %s", used)
    return {"device_map": used, "parity_vs_one_device": within_rounding(out, single, settings.precision)}


# --------------------------------------------------------------------------- the report

def _gib(size: float | None) -> str:
    return "-" if size is None else f"{size / 2**30:.2f} GiB"


def _duration(seconds: float) -> str:
    hours, rest = divmod(round(seconds), 3600)
    return f"{hours} h {rest // 60:02d} min" if hours else f"{rest // 60} min {rest % 60:02d} s"


def _check_line(value) -> str:
    if isinstance(value, str):
        return value
    if "within_rounding" in value:
        return (f"max |diff| {value['max_abs_difference']:.3g} (bit-equal: {value['bit_equal']}; "
                f"rounding tolerance {value['tolerance']:.3g}): {'ok' if value['within_rounding'] else 'FAILED'}")
    return ", ".join(f"{key} {_check_line(item) if isinstance(item, dict) else item}" for key, item in value.items())


def _held(machine_info: dict) -> str:
    held = machine_info.get("held_gpus") or {"source": "the devices given"}
    return held["source"] + (f", ids {held['ids']}" if held.get("ids") else "")


def render_markdown(report: dict) -> str:
    """The report as Markdown: what `timekd-embed preflight` prints and writes beside the JSON.

    Args:
        report: run_preflight's report.
    Returns:
        The Markdown text, ending in a newline.
    """
    system, config = report["machine"], report["config"]
    layers = config["model"]["layers"]
    lines = ["# Preflight", "",
             (f"**{'PASSED' if report['passed'] else 'FAILED'}** in {report['wall_s']:.0f} s, "
             f"{report['windows_per_horizon']} windows per horizon; model {config['model']['name_or_path']}"
             f"{'' if layers is None else ' (first ' + str(layers) + ' blocks)'}, "
             f"{config['precision']}, placement {report.get('placement', config['placement'])}."), ""]
    notes = report["failures"] + report.get("notes", [])
    lines += [f"- {failure}" for failure in notes] + ([""] if notes else [])
    lines += ["## Machine", "",
              (f"torch {system['torch']}, CUDA {system['cuda'] or '-'}, driver {system['driver'] or '-'}; "
               f"CUDA_VISIBLE_DEVICES={system['cuda_visible_devices'] or '(unset)'}; "
               f"GPUs this job holds: {_held(system)}"), "",
              "| device | name | memory | compute capability | fp16 | bf16 |", "|---|---|---|---|---|---|"]
    lines += [f"| {device['device']} | {device['name']} | {_gib(device['memory_bytes'])} | "
              f"{device['compute_capability'] or '-'} | {device['fp16']} | {device['bf16']} |"
              for device in system["devices"]]
    if report.get("jobs"):
        lines += ["", "## Speed and memory", "", (f"Context: {report['context']} tokens. "
                  f"ETA of the whole job: **{_duration(report['eta_s'])}** (windows per split / measured rate"
                  f"{', every horizon of a window in one job' if config['share_horizons'] else ''})."), "",
                  "| P | windows/s | peak memory | longest prompt | windows (job) | ETA | batch_tokens that fits |",
                  "|---|---|---|---|---|---|---|"]
        for figures in report["jobs"]:
            peaks = ", ".join(f"{device} {_gib(peak)}" for device, peak in figures["peak_memory_bytes"].items())
            fits = figures["fitting_batch_tokens"] or f"{figures['batch_tokens']} (configured)"
            lines.append(f"| {', '.join(map(str, figures['pred_lens']))} | {figures['windows_per_s']:.2f} | {peaks} | "
                         f"{figures['longest_prompt']} | {sum(figures['planned_windows'].values())} | "
                         f"{_duration(figures['eta_s'])} | {fits} |")
    if report.get("parity"):
        lines += ["", "## Parity with fp32", ""]
        for P, stats in report["parity"].items():
            lines.append(f"- {P}: {stats}" if isinstance(stats, str) else
                         f"- P={P}: cosine min {stats['cosine_min']:.6f}, mean {stats['cosine_mean']:.6f}; max abs "
                         f"{stats['max_abs_error']:.3g}; nearest-neighbour agreement {stats['nn_agreement']}")
    if report.get("gpu_checks"):
        lines += ["", "## GPU checks", ""]
        lines += [f"- {name}: {_check_line(value)}" for name, value in report["gpu_checks"].items()]
    return "\n".join(lines) + "\n"


def write_report(report: dict, folder: str | Path) -> tuple[Path, Path]:
    """Write preflight.json and preflight.md into `folder` (atomic writes, store.py).

    Args:
        report: run_preflight's report; folder: results/<name> as a rule.
    Returns:
        (the JSON path, the Markdown path).
    """
    folder = Path(folder)
    json_path, md_path = folder / "preflight.json", folder / "preflight.md"
    write_json(json_path, report)
    write_text(md_path, render_markdown(report))
    return json_path, md_path


def require_passed(report: dict, md_path: str | Path) -> None:
    """Fail with the first failed check's sentence when any check failed.

    Args:
        report: run_preflight's report; md_path: the Markdown report, named in the message.
    Raises:
        InputError: report["failures"] is not empty.
    """
    failures = report["failures"]
    if failures:
        more = f" ({len(failures) - 1} more in {md_path})" if len(failures) > 1 else f" (report: {md_path})"
        raise InputError(f"preflight failed: {failures[0].rstrip('.')}{more}.")


@contextmanager
def held_gpus(config: dict):
    """Hold the job's GPUs as an extraction job does (leases.py), from before CUDA starts to the
    end of the `with` block; say where they came from.

    Args:
        config: the validated config (device, gpus_per_job).
    Yields:
        A dict for the report: source and CUDA_VISIBLE_DEVICES ids.
    """
    from .leases import lease_gpus
    if config["device"] == "cpu":
        yield {"source": "none: device cpu"}
        return
    scheduled = os.environ.get("CUDA_VISIBLE_DEVICES")
    with lease_gpus(config["gpus_per_job"]) or nullcontext() as lease:
        if lease is not None:
            among = "" if scheduled is None else f" among the scheduler's CUDA_VISIBLE_DEVICES={scheduled}"
            yield {"source": f"lease (file locks){among}", "ids": os.environ["CUDA_VISIBLE_DEVICES"]}
        elif scheduled is not None:
            yield {"source": "scheduler (CUDA_VISIBLE_DEVICES)", "ids": scheduled}
        else:
            yield {"source": "none: no GPU on this node"}


def main(config: dict, n_windows: int = 8, out: str | Path | None = None) -> dict:
    """`timekd-embed preflight`: run, print the Markdown report, write results/<name>/preflight.{json,md}.

    Args:
        config: the validated config (config.load_run_config), defaults filled in.
        n_windows: sample windows per horizon.
        out: the report's folder; None for results/<dataset.name>.
    Returns:
        The report (run_preflight).
    Raises:
        InputError: any check failed (the first failure's sentence; the report is written first).
    """
    if n_windows < 1:
        raise InputError(f"--windows {n_windows}: give at least 1 window per horizon.")
    with held_gpus(config) as held:
        report = run_preflight(config, n_windows)
    report["machine"]["held_gpus"] = held
    _, md_path = write_report(report, out or Path("results") / config["dataset"]["name"])
    print(render_markdown(report), end="")
    require_passed(report, md_path)
    return report
