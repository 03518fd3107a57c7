"""The teacher a job holds: the checked language model (its first `layers` blocks) and the SCA,
placed on the job's devices: one copy per device (data parallel) or the layers split over them.

Loading is checkpoint.py's, the forward lm.py's, where it goes placement.py's plan (made from
config.json before any weight is read) and putting it there devices.py's; this module puts them
together once per job, so the extraction, the parity check and the preflight hold the same teacher.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from .checkpoint import check_model, keep_layers, load_config, load_lm
from .devices import place_model
from .errors import InputError
from .lm import DTYPES
from .placement import Plan, plan_placement
from .sca import SubtractiveCrossAttention, load_sca
from .settings import TeacherSpec

log = logging.getLogger(__name__)


@dataclass
class Replica:
    """One copy of the language model (on one device, or split over several) and the SCA."""
    model: torch.nn.Module
    sca: SubtractiveCrossAttention
    device: str  # where the SCA runs


@dataclass
class Teacher:
    """The loaded teacher: the tokenizer, one replica per data-parallel device (or one split over
    several devices), how it was placed, and the plan that placed it."""
    tokenizer: object
    replicas: list[Replica]
    devices: list[str]
    placement: str  # single | data_parallel | model_parallel
    plan: Plan

    @property
    def batch_tokens(self) -> int:
        """The token budget to run with: the config's batch_tokens, or the one the plan picked."""
        return self.plan.batch_tokens

    @property
    def model(self) -> torch.nn.Module:
        """The first replica's language model (all replicas hold the same weights)."""
        return self.replicas[0].model


def load_teacher(spec: TeacherSpec, sca_path: str | Path, devices: list[str], placement: str = "auto",
                 device_map: dict | None = None, batch_tokens: int | None = None,
                 prompt_tokens: int | None = None) -> Teacher:
    """The language model and the SCA, checked and placed on `devices`, in inference mode.

    Args:
        spec: the model and precision.
        sca_path: the SCA weights (sca.save_sca's file).
        devices: the job's devices, e.g. ["cuda:0", "cuda:1"] (devices.resolve_devices).
        placement: config key placement ("auto", "data_parallel", "model_parallel").
        device_map: a fixed layer split over the devices (tests split over two CPU entries this
            way); None: the plan's.
        batch_tokens: config key batch_tokens; None: the plan picks one (Teacher.batch_tokens).
        prompt_tokens: the job's longest prompt, for the plan's memory estimate (None: its default).
    Raises:
        InputError: the model does not fit the devices (the plan's one sentence, from config.json
            before any weight is read), a broken or unusable model folder (checkpoint.check_model),
            or an SCA file made for a model of another width.
    """
    plan = plan_placement(load_config(spec.model, spec.revision), spec.precision, spec.layers, devices,
                          "model_parallel" if device_map else placement, batch_tokens, prompt_tokens,
                          name=f"model {spec.model}").require()
    config, tokenizer = check_model(spec.model, spec.revision)
    model = keep_layers(load_lm(spec.model, spec.revision, DTYPES[spec.precision]), spec.layers)
    sca = load_sca(sca_path)
    if sca.layers[0].ff[0].out_features != 4 * config.hidden_size:
        raise InputError(f"{sca_path}: made for a language model of width {sca.layers[0].ff[0].out_features // 4}, "
                         f"but {spec.model} has width {config.hidden_size}; delete it and rerun.")
    log.info("placement plan: %s", plan.reason)
    if plan.placement == "data_parallel":       # the last device takes the loaded copy itself
        replicas = [Replica(place_model(model if last else copy.deepcopy(model), [device]),
                            (sca if last else copy.deepcopy(sca)).to(device), device)
                    for last, device in ((k == len(devices) - 1, device) for k, device in enumerate(devices))]
    else:
        replicas = [Replica(place_model(model, devices, device_map or plan.device_map), sca.to(devices[0]),
                            devices[0])]
    log.info("placement %s over %s", plan.placement, ", ".join(devices))
    return Teacher(tokenizer, replicas, devices, plan.placement, plan)


def device_map_used(teacher: Teacher) -> dict:
    """The accelerate device map a model-parallel teacher really runs with: module name -> device
    string; empty when the model has no device map."""
    return {module: str(device) for module, device in getattr(teacher.model, "hf_device_map", {}).items()}
