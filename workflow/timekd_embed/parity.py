"""Parity: does fp16 (or bf16) change the embeddings, and does splitting the model over GPUs?

A deterministic sample of windows is recomputed in fp32 on the same devices and compared
with what the extraction job stored (rule parity); with several devices, one device is
compared with the layers split over all of them (here for the parity job and the preflight).
The project's own check: the published code (Liu et al., ICDE 2025) runs in fp32 only;
docs/teacher.md states what is recomputed.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from pathlib import Path

import numpy as np

from .devices import resolve_devices
from .errors import InputError
from .extract import embed_windows, out_of_memory_hint
from .prompts import SplitPrompts
from .records import read_tensors
from .sampling import sample_windows
from .settings import Runtime, Settings, TeacherSpec
from .split_job import prepare_split
from .teacher import Teacher, device_map_used, load_teacher
from .windows import read_windows

log = logging.getLogger(__name__)
ROUNDING_ULPS = 16  # "float rounding": within 16 units of the precision's rounding, relative to the largest value


def cosine_rows(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """(S, N) float64 cosine similarity per (window, variable) of two (S, N, d) embeddings."""
    first, second = first.astype(np.float64), second.astype(np.float64)
    return (first * second).sum(-1) / (np.linalg.norm(first, axis=-1) * np.linalg.norm(second, axis=-1))


def nearest_neighbours(embeddings: np.ndarray) -> np.ndarray:
    """Index of each window's nearest other window (cosine of the whole (N, d) embeddings).

    Args:
        embeddings: (S, N, d), S >= 2.
    Returns:
        (S,) int64 indices into the S windows.
    """
    flat = embeddings.reshape(len(embeddings), -1).astype(np.float64)
    flat /= np.linalg.norm(flat, axis=1, keepdims=True)
    sim = flat @ flat.T
    np.fill_diagonal(sim, -np.inf)
    return sim.argmax(axis=1)


def compare(production: np.ndarray, reference: np.ndarray) -> dict:
    """Parity statistics of production-precision embeddings against fp32 ones.

    Args:
        production, reference: (S, N, d) embeddings of the same windows.
    Returns:
        (stats, cosines): {"windows", "cosine_min", "cosine_p01", "cosine_mean", "max_abs_error",
        "relative_l2_error", "nn_agreement" (None for 2 windows or fewer)}, and the (S, N)
        float64 cosines.
    """
    cos = cosine_rows(production, reference)
    diff = production.astype(np.float64) - reference.astype(np.float64)
    stats = {
        "windows": int(len(production)),
        "cosine_min": float(cos.min()),
        "cosine_p01": float(np.percentile(cos, 1)),
        "cosine_mean": float(cos.mean()),
        "max_abs_error": float(np.abs(diff).max()),
        "relative_l2_error": float(np.linalg.norm(diff) / np.linalg.norm(reference.astype(np.float64))),
        "nn_agreement": None,
    }
    if len(production) > 2:
        stats["nn_agreement"] = float((nearest_neighbours(production) == nearest_neighbours(reference)).mean())
    return stats, cos


def rounding_tolerance(precision: str, largest: float) -> float:
    """The largest difference that is float rounding at `precision` for values up to `largest` in
    magnitude: ROUNDING_ULPS machine epsilons of the precision times max(1, largest)."""
    import torch
    eps = {"fp32": torch.finfo(torch.float32).eps, "fp16": torch.finfo(torch.float16).eps,
           "bf16": torch.finfo(torch.bfloat16).eps}[precision]
    return ROUNDING_ULPS * eps * max(1.0, largest)


def within_rounding(got: np.ndarray, expected: np.ndarray, precision: str) -> dict:
    """Largest difference of two runs that should agree, and whether it is float rounding at `precision`:
    within ROUNDING_ULPS machine epsilons of the precision times max(1, |expected|).

    Returns:
        {"max_abs_difference", "bit_equal", "tolerance", "within_rounding"}.
    """
    diff = float(np.abs(got.astype(np.float64) - expected.astype(np.float64)).max())
    tolerance = rounding_tolerance(precision, float(np.abs(expected).max()))
    return {"max_abs_difference": diff, "bit_equal": bool(np.array_equal(got, expected)), "tolerance": tolerance,
            "within_rounding": diff <= tolerance}


def stored_rows(path: str, windows: np.ndarray, settings: Settings, pred_len: int) -> np.ndarray:
    """The stored embeddings (len(windows), N, d) float32 of the given windows.

    Args:
        path: an embeddings .safetensors file (the gathered one).
        windows: (S,) int window indices, each among the file's window_start.
        settings, pred_len: what the file must have been made with (its split is not compared).
    Raises:
        InputError: the file was made with other output-affecting settings (a stale file: its
            extraction must rerun first).
    """
    tensors, meta = read_tensors(path)
    recorded = json.loads(meta["settings"])
    expected = settings.recorded(pred_len, recorded.get("split"))
    if recorded != expected:
        odd = sorted(key for key in expected if recorded.get(key) != expected[key])
        raise InputError(f"{path}: made with other settings than the config ({', '.join(odd)}); rerun its "
                         "extraction first.")
    row = {int(window): position for position, window in enumerate(tensors["window_start"].tolist())}
    return tensors["embeddings"].numpy()[[row[int(window)] for window in windows]]


def parity_report(settings: Settings, runtime: Runtime, pred_len: int, embedding_paths: dict[str, str],
                  windows_paths: dict[str, str], sca_path: str, sample_size: int,
                  min_cosine: float) -> tuple[dict, np.ndarray]:
    """Parity of one horizon over its splits: a sample recomputed in fp32 against the stored files,
    and, when the job holds several devices, one device against the layers split over them.

    Args:
        settings, runtime: the job's settings and speed-only keys.
        pred_len: the horizon.
        embedding_paths, windows_paths: split -> the final embeddings / windows file.
        sca_path: the SCA weights the extraction used.
        sample_size: windows compared, spread over the splits (sample_windows).
        min_cosine: the lowest cosine similarity that passes.
    Returns:
        (report, cosines): the JSON-able report, and the (S * N,) float64 cosine per
        (window, variable), empty when the production precision is fp32.
    """
    windows_by_split = {split: read_windows(windows_paths[split]) for split in embedding_paths}
    counts = {split: len(read_tensors(path)[0]["window_start"]) for split, path in embedding_paths.items()}
    sample = sample_windows(counts, sample_size)
    stored = {split: stored_rows(embedding_paths[split], idx, settings, pred_len) for split, idx in sample.items()}
    report = {"pred_len": pred_len, "precision": settings.precision, "fidelity": settings.fidelity,
              "sample": {split: idx.tolist() for split, idx in sample.items()}, "min_cosine_required": min_cosine}
    if settings.precision == "fp32":
        report["fp32_parity"] = "trivially exact: production precision is fp32, nothing to compare"
        report["passed"] = True
        return report, np.empty(0)

    devices = resolve_devices(runtime.device, runtime.gpus_per_job)
    fp32 = load_teacher(dataclasses.replace(settings.teacher, precision="fp32"), sca_path, devices, runtime.placement,
                        batch_tokens=runtime.batch_tokens)
    batch_tokens = fp32.batch_tokens
    report["devices"] = fp32.devices
    prompts = {split: prepare_split(fp32.tokenizer, windows_by_split[split], settings, [pred_len], math.inf,
                                    up_to=int(idx.max(initial=-1)) + 1).prompts[pred_len]
               for split, idx in sample.items() if len(idx)}
    with out_of_memory_hint(batch_tokens, fp32.devices, [pred_len], ", ".join(sample)):
        reference = [embed_windows(fp32, prompts[split], idx, settings.fidelity, batch_tokens)[0]
                     for split, idx in sample.items() if len(idx)]
    production = [stored[split] for split, idx in sample.items() if len(idx)]
    del fp32
    stats, cos = compare(np.concatenate(production), np.concatenate(reference))
    report["fp32_parity"] = stats
    # The same statistics per split, for the report's per-(horizon, split) items.
    report["fp32_parity_by_split"] = {split: compare(prod, ref)[0]
                                      for split, prod, ref in zip(prompts, production, reference)}
    report["passed"] = stats["cosine_min"] >= min_cosine
    if len(devices) < 2:
        report["layer_split"] = f"not applicable: the job held one device ({devices[0]})"
    else:
        with out_of_memory_hint(batch_tokens, devices, [pred_len], ", ".join(sample)):
            report["layer_split"] = layer_split_check(settings.teacher, sca_path, devices, list(prompts.values()),
                                                      [idx for idx in sample.values() if len(idx)],
                                                      settings.fidelity, batch_tokens)
    return report, cos.ravel()


def require_parity(report: dict) -> None:
    """Fail when the lowest cosine similarity falls under the configured minimum.

    Raises:
        InputError: report["passed"] is false (pred_len, precision and the cosine named).
    """
    if not report["passed"]:
        raise InputError(
            f"pred_len {report['pred_len']}: the lowest cosine similarity between {report['precision']} and fp32 "
            f"embeddings is {report['fp32_parity']['cosine_min']:.6f}, under parity.min_cosine = "
            f"{report['min_cosine_required']}; use precision fp32 or bf16, or check the model weights.")


def layer_split_check(spec: TeacherSpec, sca_path: str | Path, devices: list[str], prompts: list[SplitPrompts],
                      windows: list[np.ndarray], fidelity: str, batch_tokens: int, one: Teacher | None = None,
                      split: Teacher | None = None, device_map: dict | None = None) -> dict:
    """One device against the layers split over all `devices` (accelerate), on the same windows.

    Args:
        spec: the teacher; sca_path: its SCA weights; devices: at least two.
        prompts, windows: per split, its prompts at one horizon and the windows to compare.
        fidelity, batch_tokens: as the extraction.
        one, split: teachers already loaded on devices[0] and split over `devices` (loaded when None).
        device_map: an explicit layer split (tests: two CPU entries); None: planned.
    Returns:
        {"devices", "device_map" (the map the split model runs with), "parity_vs_one_device"
        (within_rounding at the teacher's precision, or "not run: ..." when the model does not fit
        one device)}.
    """
    try:
        one = one or load_teacher(spec, sca_path, devices[:1], batch_tokens=batch_tokens)
    except InputError as error:     # the plan's sentence: the model does not fit one device
        return {"devices": list(devices), "device_map": None, "parity_vs_one_device": f"not run: {error}"}
    split = split or load_teacher(spec, sca_path, devices, "model_parallel", device_map, batch_tokens=batch_tokens)
    single = np.concatenate([embed_windows(one, p, w, fidelity, batch_tokens)[0] for p, w in zip(prompts, windows)])
    whole = np.concatenate([embed_windows(split, p, w, fidelity, batch_tokens)[0] for p, w in zip(prompts, windows)])
    used = device_map_used(split)
    log.info("model_parallel device map: %s", used)
    return {"devices": list(devices), "device_map": used,
            "parity_vs_one_device": within_rounding(whole, single, spec.precision)}
