"""Which devices a job holds, and how the language model is placed on them (accelerate)."""

from __future__ import annotations

import logging

import torch
from accelerate import dispatch_model, infer_auto_device_map
from accelerate.utils import get_balanced_memory

from .errors import InputError
from .families import family_of
from .lm import layout_of

log = logging.getLogger(__name__)


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


def choose_placement(placement: str, model: torch.nn.Module, devices: list[str]) -> str:
    """`auto`: one replica per device when the model fits one device with room for
    activations (half its memory), else the layers split over the devices.

    Args:
        placement: config key placement: "auto", "data_parallel" or "model_parallel".
        model: the loaded language model (its weights' bytes count).
        devices: the job's devices.
    Returns:
        "single" (one device), "data_parallel" or "model_parallel".
    """
    if len(devices) == 1:
        return "single"
    if placement != "auto":
        return placement
    model_bytes = sum(weight.numel() * weight.element_size() for weight in model.parameters())
    smallest = min((torch.cuda.mem_get_info(torch.device(gpu))[1] for gpu in devices if gpu.startswith("cuda")),
                   default=float("inf"))
    return "data_parallel" if model_bytes <= smallest / 2 else "model_parallel"


def plan_device_map(model: torch.nn.Module, devices: list[str]) -> dict[str, str | int]:
    """Balanced layer-wise map of `model` over CUDA `devices`, blocks kept whole.

    Args:
        model: the loaded language model.
        devices: CUDA devices ("cuda:<i>").
    Returns:
        accelerate's device map: module name -> GPU index.
    """
    gpu_ids = [torch.device(device).index for device in devices]
    block = [family_of(model.config).block_class]  # never split inside a decoder block
    max_memory = get_balanced_memory(model, max_memory={gpu: torch.cuda.mem_get_info(gpu)[0] for gpu in gpu_ids},
                                     no_split_module_classes=block, dtype=model.dtype)
    return infer_auto_device_map(model, max_memory=max_memory, no_split_module_classes=block, dtype=model.dtype)


def place_model(model: torch.nn.Module, devices: list[str], device_map: dict | None = None) -> torch.nn.Module:
    """One device: move the model there. Several: dispatch over them with accelerate hooks.

    `device_map` may be given explicitly (tests split the layers over two CPU entries
    this way, with hooks forced, to exercise the dispatched path without GPUs).

    Args:
        model: the loaded language model.
        devices: the devices to place it on.
        device_map: module name -> device; None: plan_device_map's (several devices).
    Returns:
        The placed model (the same object, moved or dispatched).
    """
    if device_map is None and len(devices) == 1:
        return model.to(devices[0])
    device_map = device_map or plan_device_map(model, devices)
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
