"""What preflight measures and probes, one small function each: the machine, timed runs of the
extraction's own code, and the GPU checks (attention backends, key padding, pinned prefetch,
data-parallel replicas). Each takes its devices as an argument, so the tests run them on CPU
entries; preflight.py decides which to run and words their failures.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import platform
import shutil
import subprocess
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from functools import partial

import numpy as np
import torch

from .devices import peak_memory
from .errors import InputError
from .extract import embed_horizons, embed_windows
from .lm import decoder_blocks, first_block_attention, last_token_states, layout_of
from .packing import PREFIX_SHARE, TrieBatch, model_inputs, prefix_tokens
from .parity import within_rounding
from .prompts import SplitPrompts
from .teacher import Teacher, load_teacher

log = logging.getLogger(__name__)
HEADROOM = 0.8  # a budget "fits" when its peak stays under this share of the device's memory


@dataclasses.dataclass
class Horizon:
    """One configured horizon as preflight measures it: its prompts on the first split, the sample
    windows (the same at every horizon), the windows per split the whole run embeds, the longest prompt."""
    pred_len: int
    prompts: SplitPrompts
    sample: np.ndarray
    planned: dict[str, int]
    longest_prompt: int


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



# --------------------------------------------------------------------------- timed runs

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



def job_name(horizons: list[Horizon]) -> str:
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
    log.info("preflight: timing the job of %s on %s", job_name(horizons), ", ".join(teacher.devices))
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
                raise InputError(f"{job_name(horizons)}: {', '.join(teacher.devices)} ran out of memory even at "
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
        settings.teacher, sca_path, devices[:2], "data_parallel", batch_tokens=budget)
    result = replica_scaling(one, replicated, horizon, settings.fidelity, budget)
    parallel, _ = embed_windows(replicated, horizon.prompts, horizon.sample, settings.fidelity, budget)
    return result | {"parity_vs_one_device": within_rounding(parallel, single, settings.precision)}


# --------------------------------------------------------------------------- GPU checks

def one_batch(teacher: Teacher, horizon: Horizon, fidelity: str, batch_tokens: int) -> TrieBatch:
    """The first batch (packing.TrieBatch, on the CPU, not pinned) the extraction builds for the sample
    windows; `teacher` is not read: the batch depends on the prompts alone."""
    return model_inputs({horizon.prompts.pred_len: horizon.prompts}, horizon.sample, fidelity, batch_tokens).batches[0]


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
    attn = getattr(decoder_blocks(model)[0], layout_of(model).attention)
    # The widest leaf level's queries, its ancestors' keys then its own, as lm.block_forward builds them.
    q, k, v, mask = first_block_attention(model, batch, torch_device)             # mask (R, 1, T, K)
    pad = -mask.shape[-1] % 8
    padded = (torch.nn.functional.pad(k, (0, 0, 0, pad)), torch.nn.functional.pad(v, (0, 0, 0, pad)),
              torch.nn.functional.pad(mask, (0, pad), value=torch.finfo(q.dtype).min))
    runs = {name: _attention_run(q, *tensors, attn.scaling, torch_device)
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
            list(pool.map(partial(model_inputs, {horizon.prompts.pred_len: horizon.prompts}, fidelity=fidelity,
                                  batch_tokens=batch_tokens, pin=pin), parts))
        timings["pinned_s" if pin else "pageable_s"] = time.perf_counter() - began
    return timings | {"threads": threads, "windows": len(horizon.sample)}


