"""Does fp16 (or bf16) change the embeddings, and does splitting the model over GPUs?

A deterministic sample of windows is recomputed in fp32 on the same devices and compared
with what the extraction job stored.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np

from .devices import resolve_devices, token_budget
from .errors import InputError
from .extract import embed_windows, load_teacher, out_of_memory_hint
from .prompts import SplitPrompts
from .sampling import sample_windows
from .settings import Settings
from .store import read_tensors
from .windows import read_windows


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity per (window, variable): a, b (S, N, d) -> (S, N), in float64."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def nearest_neighbours(x: np.ndarray) -> np.ndarray:
    """Index of each window's nearest other window (cosine, whole (N, d) embedding): x (S, N, d) -> (S,)."""
    flat = x.reshape(len(x), -1).astype(np.float64)
    flat /= np.linalg.norm(flat, axis=1, keepdims=True)
    sim = flat @ flat.T
    np.fill_diagonal(sim, -np.inf)
    return sim.argmax(axis=1)


def compare(production: np.ndarray, reference: np.ndarray) -> dict:
    """Parity statistics of production-precision embeddings against fp32 ones, both (S, N, d)."""
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

    Raises:
        InputError: the file was made with other output-affecting settings than `settings`
            (a stale file: its extraction must rerun first).
    """
    tensors, meta = read_tensors(path)
    recorded = json.loads(meta["settings"])
    expected = dataclasses.replace(settings, split=recorded.get("split")).output_fields()
    if recorded != expected:
        odd = sorted(k for k in expected if recorded.get(k) != expected[k])
        raise InputError(f"{path}: made with other settings than the config ({', '.join(odd)}); rerun its "
                         "extraction first.")
    row = {int(w): k for k, w in enumerate(tensors["window_start"].tolist())}
    return tensors["embeddings"].numpy()[[row[int(w)] for w in windows]]


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
    splits = {s: read_windows(windows_paths[s]) for s in embedding_paths}
    counts = {s: len(read_tensors(p)[0]["window_start"]) for s, p in embedding_paths.items()}
    sample = sample_windows(counts, sample_size)
    stored = {s: stored_rows(embedding_paths[s], idx, settings) for s, idx in sample.items()}
    report = {"pred_len": settings.pred_len, "precision": settings.precision, "fidelity": settings.fidelity,
              "sample": {s: idx.tolist() for s, idx in sample.items()}, "min_cosine_required": min_cosine}
    if settings.precision == "fp32":
        report["fp32_parity"] = "trivially exact: production precision is fp32, nothing to compare"
        report["passed"] = True
        return report, np.empty(0)

    fp32 = load_teacher(dataclasses.replace(settings, precision="fp32"), sca_path)
    settings = dataclasses.replace(settings, batch_tokens=settings.batch_tokens or token_budget(fp32.devices))
    report["devices"] = fp32.devices
    with out_of_memory_hint(settings, fp32.devices):
        reference = [_embed(fp32, settings, splits[s], idx) for s, idx in sample.items()]
    production = [stored[s] for s in sample]
    del fp32
    stats, cos = compare(np.concatenate(production), np.concatenate(reference))
    report["fp32_parity"] = stats
    # The same statistics per split, for the report's per-(horizon, split) items.
    report["fp32_parity_by_split"] = {s: compare(prod, ref)[0] for s, prod, ref in zip(sample, production, reference)
                                      if len(prod)}
    report["passed"] = stats["cosine_min"] >= min_cosine
    report["layer_split"] = layer_split_check(settings, sca_path, splits, sample)
    return report, cos.ravel()


def require_parity(report: dict) -> None:
    """InputError when the lowest cosine similarity falls under the configured minimum."""
    if not report["passed"]:
        raise InputError(
            f"pred_len {report['pred_len']}: the lowest cosine similarity between {report['precision']} and fp32 "
            f"embeddings is {report['fp32_parity']['cosine_min']:.6f}, under parity.min_cosine = "
            f"{report['min_cosine_required']}; use precision fp32 or bf16, or check the model weights.")


def layer_split_check(settings: Settings, sca_path: str, splits: dict, sample: dict) -> dict | str:
    """One device versus the layers split over all the job's devices, in production precision."""
    devices = resolve_devices(settings.device, settings.gpus_per_job)
    if len(devices) < 2:
        return f"not applicable: the job held one device ({devices[0]})"
    one = load_teacher(settings, sca_path, devices=devices[:1])
    whole = load_teacher(dataclasses.replace(settings, placement="model_parallel"), sca_path, devices=devices)
    with out_of_memory_hint(settings, devices):
        diffs = [np.abs(_embed(one, settings, splits[s], idx) - _embed(whole, settings, splits[s], idx)).max()
                 for s, idx in sample.items()]
    return {"devices": devices, "max_abs_difference": float(max(diffs))}


def _embed(teacher, settings: Settings, split, windows: np.ndarray) -> np.ndarray:
    prompts = SplitPrompts(teacher.tokenizer, split.raw, split.stamps(), settings.name, settings.pred_len,
                           split.meta["seq_len"], settings.template)
    return embed_windows(teacher, prompts, windows, settings.fidelity, settings.batch_tokens)[0]
