"""Batches of windows -> teacher embeddings (uses prompts, lm, sca, devices, store).

For each window: 2N prompts (GT and HD per variable) through the frozen GPT-2 with the
calibrated mask, the last real token's state kept, then the SCA over the variables:
(N, d) per window. Each variable's GT and HD prompt run as one packed sequence behind the
window's common head, identical sequences once (packing.py); the sequences of many windows
share one forward pass, sorted by length so that padding stays small, bounded by a token
budget (sequences x padded length). A worker thread prepares the next batches meanwhile.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import platform
import time
from contextlib import contextmanager
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from . import __version__
from .devices import choose_placement, input_device, peak_memory, place_model, resolve_devices, token_budget
from .errors import InputError
from .lm import DTYPES, check_model, keep_layers, last_token_states, load_config, load_lm, load_tokenizer, weights_file
from .packing import batches, distinct, pack, pad, share_head
from .prompts import SplitPrompts
from .sca import SubtractiveCrossAttention, seeded_sca
from .settings import Settings
from .store import read_metadata, read_tensors, sha256_file, write_json, write_tensors
from .windows import read_windows

log = logging.getLogger(__name__)


@dataclass
class Replica:
    """One copy of the language model (on one device, or split over several) and the SCA."""
    model: torch.nn.Module
    sca: SubtractiveCrossAttention
    device: str  # where the SCA runs


@dataclass
class Teacher:
    tokenizer: object
    replicas: list[Replica]
    devices: list[str]
    placement: str  # single | data_parallel | model_parallel

    @property
    def model(self) -> torch.nn.Module:
        return self.replicas[0].model


def load_teacher(settings: Settings, sca_path: str | Path, devices: list[str] | None = None,
                 device_map: dict | None = None) -> Teacher:
    devices = devices or resolve_devices(settings.device, settings.gpus_per_job)
    config, tokenizer = check_model(settings.model, settings.revision)
    model = keep_layers(load_lm(settings.model, settings.revision, DTYPES[settings.precision]), settings.layers)
    sca = load_sca(sca_path)
    if sca.layers[0].ff[0].out_features != 4 * config.n_embd:
        raise InputError(f"{sca_path}: made for a language model of width {sca.layers[0].ff[0].out_features // 4}, "
                         f"but {settings.model} has width {config.n_embd}; delete it and rerun.")
    placement = "model_parallel" if device_map else choose_placement(settings.placement, model, devices)
    if placement == "data_parallel":
        replicas = [Replica(place_model(copy.deepcopy(model), [d]), copy.deepcopy(sca).to(d), d) for d in devices]
    else:
        replicas = [Replica(place_model(model, devices, device_map), sca.to(devices[0]), devices[0])]
    log.info("placement %s over %s", placement, ", ".join(devices))
    return Teacher(tokenizer, replicas, devices, placement)


def save_sca(path: str | Path, n_vars: int, d_model: int, seed: int) -> None:
    """The SCA weights every horizon and split shares, under the published parameter names."""
    sca = seeded_sca(n_vars, d_model, seed)
    write_tensors(path, sca.state_dict(), {"seed": str(seed), "n_vars": str(n_vars), "d_model": str(d_model),
                                           "package": f"timekd-embed {__version__}"})


def load_sca(path: str | Path) -> SubtractiveCrossAttention:
    tensors, _ = read_tensors(path)
    n_vars = tensors["layers.0.norm_attn.weight"].shape[0]
    d_model = tensors["layers.0.ff.0.weight"].shape[0] // 4
    sca = SubtractiveCrossAttention(n_vars, d_model)
    sca.load_state_dict(tensors)
    return sca.eval().requires_grad_(False)


def check_context(prompts: SplitPrompts, n_positions: int, split: str, windows: np.ndarray,
                  variables: list[str]) -> int:
    """Fail before any model work when a prompt cannot fit; return the longest prompt."""
    gt, _ = prompts.lengths(windows)           # GT prompts are the longer ones
    if gt.size == 0:
        return 0
    w, c = np.unravel_index(int(gt.argmax()), gt.shape)
    longest = int(gt[w, c])
    if longest > n_positions:
        raise InputError(
            f"pred_len {prompts.pred_len}, split {split}: the longest prompt has {longest} tokens "
            f"(window {windows[w]}, variable {variables[c]!r}) but the model reads at most {n_positions}; "
            f"remove {prompts.pred_len} from pred_lens or use a model with a longer context.")
    return longest


def embed_windows(teacher: Teacher, prompts: SplitPrompts, windows: np.ndarray, fidelity: str,
                  batch_tokens: int, progress: tqdm | None = None) -> tuple[np.ndarray, dict]:
    """Embeddings (len(windows), N, d) float32 of the given window indices, and token counts.

    The counts: `tokens`, every token of every prompt (what the published code computes);
    `computed`, the positions that ran through the model (packing.py), padding excluded. With several
    replicas (data parallel) each takes a contiguous share of the windows, in a thread:
    the GPUs work at once while Python waits on them.
    """
    windows = np.asarray(windows, dtype=np.int64)
    parts = np.array_split(windows, len(teacher.replicas))
    if len(parts) == 1:
        return _embed_on(teacher.replicas[0], prompts, windows, fidelity, batch_tokens, progress)
    with ThreadPoolExecutor(len(parts)) as pool:
        results = list(pool.map(lambda rp: _embed_on(rp[0], prompts, rp[1], fidelity, batch_tokens, progress),
                                zip(teacher.replicas, parts)))
    counts = {k: sum(c[k] for _, c in results) for k in ("tokens", "computed")}
    return np.concatenate([out for out, _ in results]), counts


def _embed_on(replica: Replica, prompts: SplitPrompts, windows: np.ndarray, fidelity: str,
              batch_tokens: int, progress: tqdm | None) -> tuple[np.ndarray, dict]:
    N, d = prompts.n_vars, replica.model.config.n_embd
    gt_len, hd_len = prompts.lengths(windows)
    mean_len = float((gt_len.sum() + hd_len.sum()) / max(1, gt_len.size))
    # Enough windows per chunk for several full batches, so that sorting by length pays off.
    chunk = max(1, math.ceil(8 * batch_tokens / (N * max(mean_len, 1.0))))
    parts = [windows[a:a + chunk] for a in range(0, len(windows), chunk)]
    out = np.empty((len(windows), N, d), dtype=np.float32)
    dev = input_device(replica.model)
    counts = {"tokens": int(gt_len.sum() + hd_len.sum()), "computed": 0}
    prepare = lambda part: _model_inputs(prompts, part, fidelity, batch_tokens, pin=dev.type == "cuda")
    # A worker thread builds the next chunk's batches while the device runs this one's.
    with ThreadPoolExecutor(1) as pool:
        upcoming = pool.submit(prepare, parts[0]) if parts else None
        for k, part in enumerate(parts):
            inputs, inverse, computed = upcoming.result()
            if k + 1 < len(parts):
                upcoming = pool.submit(prepare, parts[k + 1])
            a = k * chunk
            counts["computed"] += computed
            states = torch.cat([last_token_states(replica.model, batch, dev) for batch in inputs])  # (sequences, 2, d)
            with torch.inference_mode():
                states = states[torch.from_numpy(inverse).to(states.device)].view(len(part), N, 2, d)
                gt = states[:, :, 0].transpose(1, 2).to(replica.device)      # (windows, d, N)
                hd = states[:, :, 1].transpose(1, 2).to(replica.device)
                out[a:a + len(part)] = replica.sca(gt, hd).transpose(1, 2).cpu().numpy()  # (windows, N, d)
            if progress is not None:  # shared by the replicas' threads; a display, so no lock
                progress.tokens = getattr(progress, "tokens", 0) + int(gt_len[a:a + chunk].sum() + hd_len[a:a + chunk].sum())
                progress.set_postfix(tokens_per_s=f"{progress.tokens / max(progress.format_dict['elapsed'], 1e-9):.0f}",
                                     refresh=False)
                progress.update(len(part))
    return out, counts


def _model_inputs(prompts: SplitPrompts, windows: np.ndarray, fidelity: str, batch_tokens: int,
                  pin: bool) -> tuple[list[dict], np.ndarray, int]:
    """The windows' distinct packed sequences as padded batches (in batch order), the index
    of each (window, variable) among them, and the token positions they hold."""
    seqs, inverse = distinct([p for i in windows for p in packed_window(prompts, int(i), fidelity)])
    lengths = np.array([len(s.ids) for s in seqs])
    order = batches(lengths, batch_tokens)
    inputs = [pad([seqs[k] for k in idx]) for idx in order]
    if pin:  # page-locked host memory: the copies to the GPU run asynchronously
        inputs = [{k: v.pin_memory() for k, v in batch.items()} for batch in inputs]
    position = np.empty(len(seqs), np.int64)                # where each sequence lands in batch order
    position[np.concatenate(order)] = np.arange(len(seqs))
    heads = {id(s.head_ids): len(s.head_ids) for s in seqs}     # one head per window, run once
    return inputs, position[inverse], int(lengths.sum()) + sum(heads.values())


def prompt_pairs(prompts: SplitPrompts, i: int, fidelity: str) -> list[tuple[np.ndarray, ...]]:
    """(GT ids, HD ids, GT type list, HD type list) per variable of window i: the type
    lists are those the prompts' masks read."""
    w = prompts.window_ids(i)
    types = lambda ids: prompts.types(ids).astype(np.int8)
    if fidelity == "reference":
        # The published defect: every GT (HD) prompt's mask uses the token types of the
        # last variable's GT (HD) prompt.
        gt_types, hd_types = [types(w.gt[-1])] * len(w.gt), [types(w.hd[-1])] * len(w.hd)
    else:
        gt_types, hd_types = [types(s) for s in w.gt], [types(s) for s in w.hd]
    return list(zip(w.gt, w.hd, gt_types, hd_types))


def packed_window(prompts: SplitPrompts, i: int, fidelity: str) -> list:
    """The N packed (GT, HD) sequences of window i behind their common head (packing.py)."""
    return share_head([pack(*pair) for pair in prompt_pairs(prompts, i, fidelity)])


def window_range(n_windows: int, limit_windows: int | None) -> tuple[int, int]:
    return 0, n_windows if limit_windows is None else min(n_windows, limit_windows)


@contextmanager
def out_of_memory_hint(settings: Settings, devices: list[str]):
    """A device out of memory: the budget to lower, in one sentence instead of a CUDA stack dump."""
    try:
        yield
    except torch.OutOfMemoryError:
        from .config import load_schema
        floor = load_schema()["properties"]["batch_tokens"]["minimum"]
        lower = max(floor, settings.batch_tokens // 2)
        fix = (f"lower config key batch_tokens (e.g. to {lower})" if lower < settings.batch_tokens
               else "raise gpus_per_job or use a GPU with more memory")
        raise InputError(f"pred_len {settings.pred_len}, split {settings.split}: {', '.join(devices)} ran out of "
                         f"memory with batch_tokens = {settings.batch_tokens}; {fix} and rerun.") from None


def extract_split(settings: Settings, windows_path: str | Path, sca_path: str | Path, out_path: str | Path,
                  stats_path: str | Path, log_file=None, shard: tuple[int, int] | None = None) -> dict:
    """The extraction job: one (horizon, split), or the window range `shard` of it, to an embeddings file."""
    split = read_windows(windows_path)
    tokenizer = load_tokenizer(settings.model, settings.revision)
    prompts = SplitPrompts(tokenizer, split.raw, split.stamps(), settings.name, settings.pred_len,
                           split.meta["seq_len"], settings.template)
    start, stop = window_range(prompts.n_windows, settings.limit_windows)
    if stop == 0:
        raise InputError(f"{windows_path}: split {settings.split} has no window of {split.meta['seq_len']} + "
                         f"{settings.pred_len} rows; use a smaller pred_len or seq_len.")
    n_positions = load_config(settings.model, settings.revision).n_positions
    # The whole split is checked (it is cheap), so that no shard starts when another must fail.
    longest = check_context(prompts, n_positions, settings.split, np.arange(start, stop), split.variables)
    if shard is not None:
        if not 0 <= shard[0] < shard[1] <= stop:
            raise InputError(f"window range {shard[0]}-{shard[1]} is outside split {settings.split}'s 0-{stop}; "
                             "the CSV changed since the plan was made: rerun snakemake.")
        start, stop = shard
    windows = np.arange(start, stop)

    teacher = load_teacher(settings, sca_path)
    settings = dataclasses.replace(settings, batch_tokens=settings.batch_tokens or token_budget(teacher.devices))
    gt, hd = prompts.lengths(windows)
    log.info("pred_len %d, split %s: %d windows x %d variables, %d prompts, %d tokens (longest prompt %d) on %s in %s;"
             " the progress bar's ETA is the time estimate", settings.pred_len, settings.split, stop - start,
             prompts.n_vars, 2 * gt.size, gt.sum() + hd.sum(), longest, ", ".join(teacher.devices), settings.precision)
    began = time.perf_counter()
    with tqdm(total=stop - start, unit="win", file=log_file, mininterval=5.0, dynamic_ncols=False,
              desc=f"P={settings.pred_len} {settings.split}") as bar, out_of_memory_hint(settings, teacher.devices):
        embeddings, counts = embed_windows(teacher, prompts, windows, settings.fidelity,
                                           settings.batch_tokens, bar)
    wall = time.perf_counter() - began

    metadata = provenance(settings, split.meta, sca_path, teacher) | {"window_range": [start, stop]}
    write_tensors(out_path, {"embeddings": torch.from_numpy(embeddings),
                             "window_start": torch.arange(start, stop, dtype=torch.int64)}, metadata)
    stats = {"pred_len": settings.pred_len, "split": settings.split, "windows": stop - start,
             "tokens": counts["tokens"], "tokens_computed": counts["computed"], "wall_s": round(wall, 3),
             "windows_per_s": (stop - start) / wall, "tokens_per_s": counts["tokens"] / wall,
             "peak_memory_bytes": peak_memory(teacher.devices), "devices": teacher.devices,
             "placement": teacher.placement, "precision": settings.precision, "batch_tokens": settings.batch_tokens,
             "longest_prompt": longest, "host": platform.node()}
    write_json(stats_path, stats)
    return stats


def provenance(settings: Settings, windows_meta: dict, sca_path: str | Path, teacher: Teacher) -> dict:
    import transformers
    weights = weights_file(settings.model, settings.revision)
    revision = getattr(teacher.model.config, "_commit_hash", None) or settings.revision
    return {
        "input_sha256": windows_meta["input_sha256"], "seq_len": windows_meta["seq_len"],
        "pred_len": settings.pred_len, "split": settings.split, "dataset": settings.name,
        "model": settings.model, "revision": revision or "", "weights_sha256": sha256_file(weights),
        "layers": len(teacher.model.h),
        "precision": settings.precision, "fidelity": settings.fidelity,
        "sca_sha256": sha256_file(Path(sca_path)), "seed": read_metadata(sca_path)["seed"],
        "limit_windows": settings.limit_windows,
        "variables": windows_meta["variables"],
        "package": f"timekd-embed {__version__}", "torch": torch.__version__,
        "transformers": transformers.__version__, "settings": settings.output_fields(),
        # speed only: for information, never compared (settings.py)
        "runtime": settings.runtime_fields() | {"devices": teacher.devices, "placement": teacher.placement},
    }
