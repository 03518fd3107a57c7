"""Which devices a job holds, and putting the language model on them (accelerate); where it goes is
placement.py's plan."""

from __future__ import annotations

import logging
import os
import re

import torch
from accelerate import dispatch_model

from .errors import InputError
from .lm import layout_of

log = logging.getLogger(__name__)

MEMORY_ENV = "TIMEKD_GPU_MEMORY"
_UNITS = {"gib": 2**30, "gb": 10**9, "mib": 2**20, "mb": 10**6, "tib": 2**40, "tb": 10**12}
_ENTRY = re.compile(r"(?:(\d+)\s*x\s*)?(\d+(?:\.\d+)?)\s*(gib|gb|mib|mb|tib|tb)", re.IGNORECASE)


def resolve_devices(device: str, gpus_per_job: int) -> list[str]:
    """`auto`: the job's GPUs when CUDA is present, else the CPU. Says what it chose.

    Args:
        device: config key device: "auto", "cuda" or "cpu".
        gpus_per_job: config key gpus_per_job (fewer when fewer are visible, with a warning).
    Returns:
        ["cpu"] or ["cuda:0", ..., "cuda:<n-1>"].
    Raises:
        InputError: device "cuda" but no CUDA device is visible.
    """
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if device == "cpu" or (device == "auto" and visible == 0):
        if device == "auto":
            # No guess of the time here: the plan printed an estimate for this model and dataset.
            log.warning("no CUDA device visible: running on the CPU (the plan's estimate says how long)")
        return ["cpu"]
    if visible == 0:
        raise InputError("config key device = 'cuda' but no CUDA device is visible; set device: auto or cpu, "
                         "or run on a GPU node.")
    if visible < gpus_per_job:
        log.warning("gpus_per_job = %d but only %d CUDA device(s) visible: using %d", gpus_per_job, visible, visible)
    return [f"cuda:{i}" for i in range(min(visible, gpus_per_job))]


def _sizes(text: str) -> list[int]:
    sizes = []
    for entry in text.split(","):
        match = _ENTRY.fullmatch(entry.strip())
        if match is None:
            raise InputError(f"{MEMORY_ENV} = {text!r} is no memory size; give one size for every GPU (24GiB), "
                             "one per GPU of the node (24GiB,80GiB) or a count and a size (2x24GiB).")
        count, number, unit = match.groups()
        sizes += [int(float(number) * _UNITS[unit.lower()])] * int(count or 1)
    return sizes


def _node_gpu(device: str) -> int:
    """The node's id of a job's GPU (CUDA_VISIBLE_DEVICES, as a lease or a scheduler sets it)."""
    index = torch.device(device).index or 0
    visible = [gpu.strip() for gpu in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if gpu.strip()]
    if not visible:
        return index
    if not visible[index].isdigit():
        raise InputError(f"CUDA_VISIBLE_DEVICES names GPUs by UUID ({visible[index]}), so {MEMORY_ENV}'s list "
                         "cannot be matched to them; give it one size for every GPU (24GiB).")
    return int(visible[index])


def device_memory(devices: list[str]) -> list[int | None]:
    """Bytes the plan may use on each device: for a GPU, $TIMEKD_GPU_MEMORY when set, else its free
    memory (torch.cuda.mem_get_info: other jobs may share the node); None for the CPU.

    $TIMEKD_GPU_MEMORY is one size for every GPU ("24GiB"), one per GPU of the node in id order
    ("24GiB,80GiB"), or a count and a size ("2x24GiB"); with $TIMEKD_NODE_GPUS (the node's GPU
    count, leases.py) a list must have that many entries, so the two describe one node.

    Raises:
        InputError: a value that is no size, or a list that does not cover the job's GPUs.
    """
    text = os.environ.get(MEMORY_ENV, "").strip()
    sizes = _sizes(text) if text else None
    per_gpu = sizes is not None and (len(sizes) > 1 or "x" in text.lower())
    node = os.environ.get("TIMEKD_NODE_GPUS")
    if per_gpu and node is not None and node.isdigit() and len(sizes) != int(node):
        raise InputError(f"{MEMORY_ENV} = {text!r} gives {len(sizes)} GPU(s) but TIMEKD_NODE_GPUS = {node}; "
                         "give one size per GPU of the node, or one size for every GPU.")
    memory = []
    for device in devices:
        if not device.startswith("cuda"):
            memory.append(None)
        elif sizes is None:
            memory.append(int(torch.cuda.mem_get_info(torch.device(device))[0]))
        elif per_gpu:
            gpu = _node_gpu(device)
            if gpu >= len(sizes):
                raise InputError(f"{MEMORY_ENV} = {text!r} gives {len(sizes)} GPU(s), but this job uses GPU {gpu} "
                                 "of the node; give one size per GPU of the node, or one size for every GPU.")
            memory.append(sizes[gpu])
        else:
            memory.append(sizes[0])
    return memory


def place_model(model: torch.nn.Module, devices: list[str], device_map: dict | None = None) -> torch.nn.Module:
    """One device: move the model there. A device map: dispatch over its devices with accelerate hooks
    (forced, so that a map of two CPU entries runs the dispatched path in tests without GPUs).

    Args:
        model: the loaded language model.
        devices: the devices to place it on.
        device_map: module name -> device (placement.Plan.device_map); None: one device.
    Returns:
        The placed model (the same object, moved or dispatched).
    """
    if device_map is None:
        return model.to(devices[0])
    log.info("device map: %s", device_map)
    return dispatch_model(model, device_map=device_map, force_hooks=True)


def token_budget(devices: list[str]) -> int:
    """Tokens per forward pass when batch_tokens is null: 65,536 where every device is a GPU, else 8,192.

    On the CPU peak memory grows with the budget much faster than on a GPU (at P = 192: 5.9 GB at 65,536
    tokens, 1.8 GB at 8,192; docs/benchmarks.md), while the time per token stays flat from 2,048 tokens up.
    """
    return 65536 if all(device.startswith("cuda") for device in devices) else 8192


def input_device(model: torch.nn.Module) -> torch.device:
    """Where the token ids must go: the device of the placed model's token embeddings."""
    return getattr(model, layout_of(model).token_embedding).weight.device


def peak_memory(devices: list[str]) -> dict[str, int]:
    """Peak bytes per device: max allocated per GPU, peak RSS of the process for the CPU.

    Args:
        devices: the job's devices.
    Returns:
        {"cpu_rss": bytes, "cuda:<i>": bytes for each GPU}.
    """
    import resource
    peaks = {"cpu_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    for device in devices:
        if device.startswith("cuda"):
            peaks[device] = torch.cuda.max_memory_allocated(torch.device(device))

    return peaks
