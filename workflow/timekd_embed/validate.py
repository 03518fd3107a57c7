"""Rule validate's checks: every embedding file has the shape, windows, values and provenance it
should ((n_windows, N, d) float32, as the published store_emb.py writes per window; docs/teacher.md).
"""

from __future__ import annotations

import numpy as np
import torch

from .errors import InputError
from .records import check_record, read_metadata, read_tensors
from .shards import planned_windows
from .windows import read_windows

# Metadata that must be the same in every file of one results folder.
SHARED_KEYS = ("input_sha256", "model", "revision", "weights_sha256", "sca_sha256", "seq_len", "fidelity", "precision")


def check_file(path: str, expected_windows: int, n_vars: int, d_model: int) -> dict:
    """Shape (expected_windows, N, d), float32, window_start 0..n-1, all finite.

    Args:
        path: an embeddings .safetensors file.
        expected_windows: the windows it must hold.
        n_vars, d_model: N and d.
    Returns:
        {"shape", "dtype", "finite", "metadata"} for shapes.json (metadata: str -> str).
    Raises:
        InputError: other tensors, dtype, shape or window_start, or a NaN / inf value (the first one named).
    """
    tensors, meta = read_tensors(path)
    if set(tensors) != {"embeddings", "window_start"}:
        raise InputError(f"{path}: holds tensors {sorted(tensors)}, expected embeddings and window_start; "
                         "rerun its extraction.")
    embeddings, starts = tensors["embeddings"], tensors["window_start"]
    if embeddings.dtype != torch.float32:
        raise InputError(f"{path}: embeddings are {embeddings.dtype}, expected float32; rerun its extraction.")
    if tuple(embeddings.shape) != (expected_windows, n_vars, d_model):
        raise InputError(f"{path}: embeddings have shape {tuple(embeddings.shape)}, expected "
                         f"({expected_windows}, {n_vars}, {d_model}); rerun its extraction.")
    if not torch.equal(starts, torch.arange(expected_windows, dtype=starts.dtype)):
        raise InputError(f"{path}: window_start is not 0..{expected_windows - 1}; rerun its extraction.")
    bad = (~torch.isfinite(embeddings)).sum().item()
    if bad:
        first = np.argwhere(~np.isfinite(embeddings.numpy()))[0].tolist()
        raise InputError(f"{path}: {bad} embedding values are NaN or infinite (first at window, variable, dim "
                         f"{tuple(first)}); rerun its extraction.")
    return {"shape": list(embeddings.shape), "dtype": "float32", "finite": True, "metadata": meta}


def check_all(files: dict[tuple[int, str], str], windows_paths: dict[str, str], sca_path: str,
              limit_windows: int | None) -> dict:
    """shapes.json content for every (P, split) file.

    Args:
        files: (P, split) -> embeddings file.
        windows_paths: split -> its windows Parquet file.
        sca_path: the SCA weights (their hash and d_model).
        limit_windows: config key limit_windows, or None.
    Returns:
        {"files": {"<P>/<split>": check_file's result + path, windows_expected}, "shared_metadata", "passed"}.
    Raises:
        InputError: the first violation: an input whose bytes differ from its record (records.check_record),
            a file check_file rejects, or made with other SCA weights, another input, another (P, split),
            or metadata of SHARED_KEYS that differs between files.
    """

    sca_sha = check_record(sca_path)  # damaged weights are refused before their hash is compared
    d_model = int(read_metadata(sca_path)["d_model"])
    windows_by_split = {split: read_windows(path) for split, path in windows_paths.items()}
    report, reference = {}, None
    for (P, split), path in sorted(files.items()):
        split_windows = windows_by_split[split]
        expected = planned_windows(len(split_windows.rows), split_windows.meta["seq_len"], P, limit_windows)
        result = check_file(path, expected, len(split_windows.variables), d_model)
        meta = result.pop("metadata")
        if meta.get("sca_sha256") != sca_sha:
            raise InputError(f"{path}: made with other SCA weights than {sca_path}; rerun its extraction.")
        if meta.get("input_sha256") != split_windows.meta["input_sha256"]:
            raise InputError(f"{path}: made from another input than {windows_paths[split]}; rerun its extraction.")
        if meta.get("pred_len") != str(P) or meta.get("split") != split:
            raise InputError(f"{path}: its metadata says pred_len {meta.get('pred_len')}, split {meta.get('split')}; "
                             "the file was moved or renamed, rerun its extraction.")
        shared = {key: meta.get(key) for key in SHARED_KEYS}
        if reference is None:
            reference = (path, shared)
        for key in SHARED_KEYS:
            if shared[key] != reference[1][key]:
                raise InputError(f"{path}: metadata {key} = {shared[key]!r} differs from {reference[0]} "
                                 f"({reference[1][key]!r}); rerun the extraction of the odd one out.")
        report[f"{P}/{split}"] = result | {"path": path, "windows_expected": expected}
    return {"files": report, "shared_metadata": reference[1] if reference else {}, "passed": True}
