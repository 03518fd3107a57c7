"""Embeddings for student training: zero-copy reads of the safetensors files, and a torch
Dataset pairing each z-scored window (x, y) with its teacher embedding.

safetensors' own `safe_open(...).get_tensor` returns a copy, which for a 40k-window split is
gigabytes of RAM per process; numpy.memmap at the tensor's byte range lets the page cache
hold it once for every DataLoader worker. load_embeddings and TeacherDataset check the file
against the sha256 its writer recorded (records.check_record) once, in the process that opens
it: a read of the whole file (about 2-3 s for a 2.4 GB split), never per DataLoader worker.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from .errors import InputError
from .records import check_record, read_header, read_metadata
from .windows import read_windows

# safetensors dtype names -> numpy (little-endian by the format's definition).
_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1",
           "U8": "u1", "BOOL": "?"}


def embeddings_path(results_dir: str | os.PathLike, name: str, pred_len: int, split: str) -> Path:
    """`<results_dir>/<name>/embeddings/<P>/<split>.safetensors`: where the workflow puts the
    embeddings of one horizon and split (results_dir: "results" under the working directory as a rule)."""
    return Path(results_dir) / name / "embeddings" / str(int(pred_len)) / f"{split}.safetensors"


def windows_path(results_dir: str | os.PathLike, name: str, split: str) -> Path:
    """`<results_dir>/<name>/windows/<split>.parquet`: where the workflow puts a split's windows."""
    return Path(results_dir) / name / "windows" / f"{split}.parquet"


def map_tensor(path: str | os.PathLike, tensor: str = "embeddings") -> np.memmap:
    """A read-only numpy.memmap of one tensor of a safetensors file: no byte is copied.

    Args:
        path: a .safetensors file.
        tensor: the tensor's name.
    Returns:
        The memmap (dtype and shape as stored; an empty array for a zero-size tensor).
    Raises:
        InputError: the file is missing or damaged, holds no such tensor, or a dtype numpy cannot map.
    """
    header, data_start = read_header(path)
    entry = header.get(tensor)
    if not isinstance(entry, dict):
        names = sorted(key for key in header if key != "__metadata__")
        raise InputError(f"{path}: holds no tensor {tensor!r} (it has {', '.join(names) or 'none'}); "
                         "rerun the extraction that wrote it.")
    dtype = _DTYPES.get(entry.get("dtype"))
    if dtype is None:
        raise InputError(f"{path}: tensor {tensor!r} has dtype {entry.get('dtype')!r}, which numpy cannot map; "
                         "rerun the extraction (it writes float32).")
    try:
        shape = tuple(int(size) for size in entry["shape"])
        begin, end = (int(offset) for offset in entry["data_offsets"])
    except (KeyError, TypeError, ValueError):
        shape, begin, end = (), 0, -1  # reported as damaged below
    # read_header checked that the file ends where the tensors do; this one's bytes must be its shape's
    if end - begin != int(np.prod(shape)) * np.dtype(dtype).itemsize or begin < 0:
        raise InputError(f"{path}: tensor {tensor!r} does not fit the file (truncated or damaged); "
                         "delete it and rerun the workflow.")
    if 0 in shape:  # mmap cannot map zero bytes
        return np.empty(shape, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=data_start + begin, shape=shape)


def load_embeddings(results_dir: str | os.PathLike, name: str, pred_len: int, split: str) -> np.memmap:
    """Teacher embeddings (n_windows, N, d) float32 of one horizon and split, memory-mapped.

    Row k belongs to window k of the split (results/<name>/windows/<split>.parquet).
    Read-only; `np.array(result[k])` copies one window when a writable array is needed.

    Args:
        results_dir, name, pred_len, split: as embeddings_path.
    Returns:
        The (n_windows, N, d) float32 memmap.
    Raises:
        InputError: as map_tensor, and the file's bytes differ from its record (records.check_record).
    """
    path = embeddings_path(results_dir, name, pred_len, split)
    embeddings = map_tensor(path, "embeddings")
    check_record(path)
    return embeddings


class TeacherDataset(Dataset):
    """(x, y, embedding) per window for student training, all float32 tensors.

    x: (seq_len, N) z-scored inputs, y: (pred_len, N) z-scored future, embedding: (N, d),
    with the train-split scaler and variable order of the windows stage, as the published
    training loaders use them. Only embedded windows are items (limit_windows runs have fewer).
    """

    def __init__(self, results_dir: str | os.PathLike, name: str, pred_len: int, split: str):
        self.path = embeddings_path(results_dir, name, pred_len, split)
        source = windows_path(results_dir, name, split)
        split_windows = read_windows(source)
        self.pred_len, self.seq_len = int(pred_len), int(split_windows.meta["seq_len"])
        self.variables = split_windows.variables
        self.zscore = np.ascontiguousarray(split_windows.zscore, dtype=np.float32)  # (R_s, N)
        self.window_start = np.array(map_tensor(self.path, "window_start"), dtype=np.int64)  # small: copy
        self._embeddings: np.memmap | None = None
        self._check(source, split_windows.meta, read_metadata(self.path))
        check_record(self.path)  # here, once: the workers map the file the checks here passed

    def _check(self, source: Path, windows_meta: dict, meta: dict) -> None:
        embeddings = self.embeddings
        n_vars = len(self.variables)
        if meta.get("input_sha256") != windows_meta["input_sha256"]:
            raise InputError(f"{self.path}: made from another input file than {source}; rerun the workflow so "
                             "both match.")
        if meta.get("pred_len") != str(self.pred_len) or meta.get("seq_len") != str(self.seq_len):
            raise InputError(f"{self.path}: its metadata says pred_len {meta.get('pred_len')}, seq_len "
                             f"{meta.get('seq_len')}, but pred_len {self.pred_len}, seq_len {self.seq_len} were asked; "
                             "the file was moved or renamed, rerun its extraction.")
        if embeddings.ndim != 3 or embeddings.shape[0] != len(self.window_start) or embeddings.shape[1] != n_vars:
            raise InputError(f"{self.path}: embeddings of shape {embeddings.shape} do not fit {len(self.window_start)} "
                             f"windows of {n_vars} variables ({source}); rerun its extraction.")
        last = int(self.window_start.max(initial=-1)) + self.seq_len + self.pred_len
        if last > len(self.zscore):
            raise InputError(f"{self.path}: window_start reaches past the {len(self.zscore)} rows of {source}; "
                             "rerun its extraction.")

    @property
    def embeddings(self) -> np.memmap:
        """The (n_windows, N, d) float32 embeddings, memory-mapped."""
        # Mapped on first use in each process: a memmap pickled to a spawned worker would be copied.

        if self._embeddings is None:
            self._embeddings = map_tensor(self.path, "embeddings")
        return self._embeddings

    def __getstate__(self) -> dict:
        return self.__dict__ | {"_embeddings": None}

    def __len__(self) -> int:
        return len(self.window_start)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"window {index} is outside this dataset of {len(self)} windows")
        index = index % len(self)
        start, L, P = int(self.window_start[index]), self.seq_len, self.pred_len
        x = torch.from_numpy(self.zscore[start:start + L].copy())
        y = torch.from_numpy(self.zscore[start + L:start + L + P].copy())
        return x, y, torch.from_numpy(np.array(self.embeddings[index]))
