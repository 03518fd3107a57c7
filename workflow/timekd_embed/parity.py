"""Parity: does fp16 (or bf16) change the embeddings, and does splitting the model over GPUs?

A deterministic sample of windows is recomputed in fp32 on the same devices and compared
with what the extraction job stored (rule parity). The project's own check: the published
code (Liu et al., ICDE 2025) runs in fp32 only; docs/teacher.md states what is recomputed.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np

from .devices import resolve_devices, token_budget
from .errors import InputError
from .extract import embed_windows, load_teacher, out_of_memory_hint, split_prompts
from .sampling import sample_windows
from .settings import Settings
from .store import read_tensors
from .windows import read_windows


def cosine_rows(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Cosine similarity per (window, variable).

    Args:
        first, second: (S, N, d) embeddings, any float dtype.
    Returns:
        (S, N) float64 cosines.
    """
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


def stored_rows(path: str, windows: np.ndarray, settings: Settings) -> np.ndarray:
    """The stored embeddings (len(windows), N, d) float32 of the given windows.

    Args:
        path: an embeddings .safetensors file (the gathered one).
        windows: (S,) int window indices, each among the file's window_start.
        settings: the settings the file must have been made with (its split is ignored).
    Returns:
        (S, N, d) float32.
    Raises:
        InputError: the file was made with other output-affecting settings than `settings`
            (a stale file: its extraction must rerun first).
    """
    tensors, meta = read_tensors(path)
    recorded = json.loads(meta["settings"])
    expected = dataclasses.replace(settings, split=recorded.get("split")).output_fields()
    if recorded != expected:
        odd = sorted(key for key in expected if recorded.get(key) != expected[key])
        raise InputError(f"{path}: made with other settings than the config ({', '.join(odd)}); rerun its "
                         "extraction first.")
    row = {int(window): position for position, window in enumerate(tensors["window_start"].tolist())}
    return tensors["embeddings"].numpy()[[row[int(window)] for window in windows]]


def parity_report(settings: Settings, embedding_paths: dict[str, str], windows_paths: dict[str, str],
                  sca_path: str, sample_size: int, min_cosine: float) -> tuple[dict, np.ndarray]:
    """Parity of one horizon over its splits: a sample recomputed in fp32 against the stored files.

    Args:
        settings: the horizon's settings (Settings.from_config); its split is ignored.
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
    stored = {split: stored_rows(embedding_paths[split], idx, settings) for split, idx in sample.items()}
    report = {"pred_len": settings.pred_len, "precision": settings.precision, "fidelity": settings.fidelity,
              "sample": {split: idx.tolist() for split, idx in sample.items()}, "min_cosine_required": min_cosine}
    if settings.precision == "fp32":
        report["fp32_parity"] = "trivially exact: production precision is fp32, nothing to compare"
        report["passed"] = True
        return report, np.empty(0)

    fp32 = load_teacher(dataclasses.replace(settings, precision="fp32"), sca_path)
    settings = dataclasses.replace(settings, batch_tokens=settings.batch_tokens or token_budget(fp32.devices))
    report["devices"] = fp32.devices
    with out_of_memory_hint(settings, fp32.devices):
        reference = [_embed(fp32, settings, windows_by_split[split], idx) for split, idx in sample.items()]
    production = [stored[split] for split in sample]
    del fp32
    stats, cos = compare(np.concatenate(production), np.concatenate(reference))
    report["fp32_parity"] = stats
    # The same statistics per split, for the report's per-(horizon, split) items.
    report["fp32_parity_by_split"] = {split: compare(prod, ref)[0]
                                      for split, prod, ref in zip(sample, production, reference) if len(prod)}
    report["passed"] = stats["cosine_min"] >= min_cosine
    report["layer_split"] = layer_split_check(settings, sca_path, windows_by_split, sample)
    return report, cos.ravel()


def require_parity(report: dict) -> None:
    """Fail when the lowest cosine similarity falls under the configured minimum.

    Args:
        report: parity_report's report.
    Raises:
        InputError: report["passed"] is false (pred_len, precision and the cosine named).
    """
    if not report["passed"]:
        raise InputError(
            f"pred_len {report['pred_len']}: the lowest cosine similarity between {report['precision']} and fp32 "
            f"embeddings is {report['fp32_parity']['cosine_min']:.6f}, under parity.min_cosine = "
            f"{report['min_cosine_required']}; use precision fp32 or bf16, or check the model weights.")


def layer_split_check(settings: Settings, sca_path: str, windows_by_split: dict, sample: dict) -> dict | str:
    """One device versus the layers split over all the job's devices, in production precision.

    Args:
        settings: the horizon's settings (device, gpus_per_job, precision).
        sca_path: the SCA weights.
        windows_by_split: split -> its SplitWindows.
        sample: split -> (S,) int window indices.
    Returns:
        {"devices", "max_abs_difference"}, or a sentence when the job held one device.
    Raises:
        InputError: a device ran out of memory.
    """
    devices = resolve_devices(settings.device, settings.gpus_per_job)
    if len(devices) < 2:
        return f"not applicable: the job held one device ({devices[0]})"
    one = load_teacher(settings, sca_path, devices=devices[:1])
    whole = load_teacher(dataclasses.replace(settings, placement="model_parallel"), sca_path, devices=devices)
    with out_of_memory_hint(settings, devices):
        diffs = [np.abs(_embed(one, settings, windows_by_split[split], idx)
                        - _embed(whole, settings, windows_by_split[split], idx)).max()
                 for split, idx in sample.items()]
    return {"devices": devices, "max_abs_difference": float(max(diffs))}


def _embed(teacher, settings: Settings, split_windows, windows: np.ndarray) -> np.ndarray:
    """embed_windows of the given windows of one split at settings.pred_len: (S, N, d) float32."""
    prompts = split_prompts(teacher.tokenizer, split_windows, settings, settings.pred_len,
                            int(windows.max(initial=-1)) + 1)
    return embed_windows(teacher, prompts, windows, settings.fidelity, settings.batch_tokens)[0]
