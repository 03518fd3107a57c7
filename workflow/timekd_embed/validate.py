"""Every embedding file has the shape, windows, values and provenance it should."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .errors import InputError
from .store import read_metadata, read_tensors, sha256_file
from .windows import read_windows

# Metadata that must be the same in every file of one results folder.
SHARED_KEYS = ("input_sha256", "model", "revision", "weights_sha256", "sca_sha256", "seq_len", "fidelity", "precision")


def check_file(path: str, expected_windows: int, n_vars: int, d_model: int) -> dict:
    """Shape (expected_windows, N, d), float32, window_start 0..n-1, all finite; else InputError."""
    tensors, meta = read_tensors(path)
    if set(tensors) != {"embeddings", "window_start"}:
        raise InputError(f"{path}: holds tensors {sorted(tensors)}, expected embeddings and window_start; "
                         "rerun its extraction.")
    emb, starts = tensors["embeddings"], tensors["window_start"]
    if emb.dtype != torch.float32:
        raise InputError(f"{path}: embeddings are {emb.dtype}, expected float32; rerun its extraction.")
    if tuple(emb.shape) != (expected_windows, n_vars, d_model):
        raise InputError(f"{path}: embeddings have shape {tuple(emb.shape)}, expected "
                         f"({expected_windows}, {n_vars}, {d_model}); rerun its extraction.")
    if not torch.equal(starts, torch.arange(expected_windows, dtype=starts.dtype)):
        raise InputError(f"{path}: window_start is not 0..{expected_windows - 1}; rerun its extraction.")
    bad = (~torch.isfinite(emb)).sum().item()
    if bad:
        first = np.argwhere(~np.isfinite(emb.numpy()))[0].tolist()
        raise InputError(f"{path}: {bad} embedding values are NaN or infinite (first at window, variable, dim "
                         f"{tuple(first)}); rerun its extraction.")
    return {"shape": list(emb.shape), "dtype": "float32", "finite": True, "metadata": meta}


def check_all(files: dict[tuple[int, str], str], windows: dict[str, str], sca_path: str,
              limit_windows: int | None) -> dict:
    """shapes.json content for every (P, split) file, or the first violation as InputError."""
    sca_meta = read_metadata(sca_path)
    d_model, sca_sha = int(sca_meta["d_model"]), sha256_file(Path(sca_path))
    split_windows = {s: read_windows(p) for s, p in windows.items()}
    report, reference = {}, None
    for (P, split), path in sorted(files.items()):
        sw = split_windows[split]
        expected = sw.n_windows(P) if limit_windows is None else min(sw.n_windows(P), limit_windows)
        result = check_file(path, expected, len(sw.variables), d_model)
        meta = result.pop("metadata")
        if meta.get("sca_sha256") != sca_sha:
            raise InputError(f"{path}: made with other SCA weights than {sca_path}; rerun its extraction.")
        if meta.get("input_sha256") != sw.meta["input_sha256"]:
            raise InputError(f"{path}: made from another input than {windows[split]}; rerun its extraction.")
        if meta.get("pred_len") != str(P) or meta.get("split") != split:
            raise InputError(f"{path}: its metadata says pred_len {meta.get('pred_len')}, split {meta.get('split')}; "
                             "the file was moved or renamed, rerun its extraction.")
        shared = {k: meta.get(k) for k in SHARED_KEYS}
        if reference is None:
            reference = (path, shared)
        for key in SHARED_KEYS:
            if shared[key] != reference[1][key]:
                raise InputError(f"{path}: metadata {key} = {shared[key]!r} differs from {reference[0]} "
                                 f"({reference[1][key]!r}); rerun the extraction of the odd one out.")
        report[f"{P}/{split}"] = result | {"path": path, "windows_expected": expected}
    return {"files": report, "shared_metadata": reference[1] if reference else {}, "passed": True}
