"""Batches of windows -> teacher embeddings (uses prompts, packing, lm, sca, devices, shards, store).

For each window and horizon: 2N prompts (GT and HD per variable) through the frozen GPT-2
with the calibrated mask, the last real token's state kept, then the SCA over the variables:
(N, d) per window (TimeKD, Liu et al. ICDE 2025; the published store_emb.py). A window's
prompts of every horizon form one trie (packing.py): the window's head once, each variable's
prefix shared by all its prompts once (variables with equal inputs share it), then one leaf
per distinct prompt. The nodes of many windows share one forward pass, stems sorted by length
and each horizon's leaves in length buckets so that padding stays small, bounded by a token
budget (padded positions). Batches do not depend on which other horizons run, so one job per
horizon and one for all give the same bits for the same windows. A worker thread prepares the
next batches meanwhile.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import platform
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from . import __version__
from .devices import choose_placement, input_device, peak_memory, place_model, resolve_devices, token_budget
from .errors import InputError
from .lm import (
    DTYPES,
    NonFiniteState,
    check_model,
    keep_layers,
    last_token_states,
    load_config,
    load_lm,
    load_tokenizer,
    weights_file,
)
from .packing import PREFIX_SHARE, Prompt, Trie, TrieBatch, batches, build_trie, type_codes
from .prompts import SplitPrompts
from .sca import SubtractiveCrossAttention, seeded_sca
from .settings import Settings
from .shards import planned_windows
from .store import read_metadata, read_tensors, sha256_file, write_json, write_tensors
from .table import stamps
from .windows import SplitWindows, read_windows

log = logging.getLogger(__name__)


@dataclass
class Replica:
    """One copy of the language model (on one device, or split over several) and the SCA."""
    model: torch.nn.Module
    sca: SubtractiveCrossAttention
    device: str  # where the SCA runs


@dataclass
class Teacher:
    """The loaded teacher: the GPT-2 tokenizer, one replica per data-parallel device (or one split
    over several devices), and how it was placed."""
    tokenizer: object
    replicas: list[Replica]
    devices: list[str]
    placement: str  # single | data_parallel | model_parallel

    @property
    def model(self) -> torch.nn.Module:
        """The first replica's language model (all replicas hold the same weights)."""
        return self.replicas[0].model


def load_teacher(settings: Settings, sca_path: str | Path, devices: list[str] | None = None,
                 device_map: dict | None = None) -> Teacher:
    """The language model (its first `settings.layers` blocks) and the SCA, placed on the devices.

    Args:
        settings: the job's settings (model, revision, precision, layers, device, gpus_per_job, placement).
        sca_path: the SCA weights (save_sca's file).
        devices: the devices to use, e.g. ["cuda:0", "cuda:1"]; None: resolved from the settings.
        device_map: a fixed layer split over the devices (model parallel); None: chosen by placement.
    Returns:
        The Teacher, in inference mode.
    Raises:
        InputError: a broken or unusable model folder (lm.check_model), or an SCA file made for a
            model of another width.
    """
    devices = devices or resolve_devices(settings.device, settings.gpus_per_job)
    config, tokenizer = check_model(settings.model, settings.revision)
    model = keep_layers(load_lm(settings.model, settings.revision, DTYPES[settings.precision]), settings.layers)
    sca = load_sca(sca_path)
    if sca.layers[0].ff[0].out_features != 4 * config.n_embd:
        raise InputError(f"{sca_path}: made for a language model of width {sca.layers[0].ff[0].out_features // 4}, "
                         f"but {settings.model} has width {config.n_embd}; delete it and rerun.")
    placement = "model_parallel" if device_map else choose_placement(settings.placement, model, devices)
    if placement == "data_parallel":
        replicas = [Replica(place_model(copy.deepcopy(model), [device]), copy.deepcopy(sca).to(device), device)
                    for device in devices]
    else:
        replicas = [Replica(place_model(model, devices, device_map), sca.to(devices[0]), devices[0])]
    log.info("placement %s over %s", placement, ", ".join(devices))
    return Teacher(tokenizer, replicas, devices, placement)


def save_sca(path: str | Path, n_vars: int, d_model: int, seed: int) -> None:
    """Write the SCA weights every horizon and split shares, under the published parameter names
    (layers/Sub_CA.py), seeded (sca.seeded_sca), through the atomic writer.

    Args:
        path: the .safetensors file to write.
        n_vars: N, the number of variables.
        d_model: d, the language model's width.
        seed: the torch seed of the initialization; stored in the metadata.
    """
    sca = seeded_sca(n_vars, d_model, seed)
    write_tensors(path, sca.state_dict(), {"seed": str(seed), "n_vars": str(n_vars), "d_model": str(d_model),
                                           "package": f"timekd-embed {__version__}"})


def load_sca(path: str | Path) -> SubtractiveCrossAttention:
    """The SCA of save_sca's file, its shape read from the weights, in eval mode without gradients.

    Args:
        path: the .safetensors file.
    Returns:
        The SubtractiveCrossAttention (float32, on the CPU).
    """
    tensors, _ = read_tensors(path)
    n_vars = tensors["layers.0.norm_attn.weight"].shape[0]
    d_model = tensors["layers.0.ff.0.weight"].shape[0] // 4
    sca = SubtractiveCrossAttention(n_vars, d_model)
    sca.load_state_dict(tensors)
    return sca.eval().requires_grad_(False)


def check_context(prompts: SplitPrompts, n_positions: int, split: str, windows: np.ndarray,
                  variables: list[str]) -> int:
    """Fail before any model work when a prompt cannot fit; return the longest prompt.

    Args:
        prompts: the split's prompts at one horizon.
        n_positions: the model's context length.
        split: the split's name, for the message.
        windows: (W,) int window indices to check.
        variables: the variables' names, for the message.
    Returns:
        The longest prompt's token count (0 for no window).
    Raises:
        InputError: a prompt has more tokens than n_positions (window and variable named).
    """
    gt, _ = prompts.lengths(windows)           # GT prompts are the longer ones
    if gt.size == 0:
        return 0
    window_pos, variable = np.unravel_index(int(gt.argmax()), gt.shape)
    longest = int(gt[window_pos, variable])
    if longest > n_positions:
        raise InputError(
            f"pred_len {prompts.pred_len}, split {split}: the longest prompt has {longest} tokens "
            f"(window {windows[window_pos]}, variable {variables[variable]!r}) but the model reads at most "
            f"{n_positions}; "
            f"remove {prompts.pred_len} from pred_lens or use a model with a longer context.")
    return longest


def embed_windows(teacher: Teacher, prompts: SplitPrompts, windows: np.ndarray, fidelity: str,
                  batch_tokens: int, progress: tqdm | None = None) -> tuple[np.ndarray, dict]:
    """Embeddings of the given windows at one horizon (`embed_horizons` with one pred_len).

    Args:
        teacher: load_teacher's result.
        prompts: the split's prompts at one horizon.
        windows: (W,) window indices, each < prompts.n_windows.
        fidelity: "reference" or "corrected".
        batch_tokens: token budget (packing.batches: heads and stems together, each leaf tensor).
        progress: a tqdm bar advanced by one per window.
    Returns:
        (W, N, d) float32 embeddings; counts {"tokens": every token of every prompt (what the
        published store_emb.py computes), "computed": the positions that ran through the model}.
    Raises:
        InputError: a hidden state became inf or NaN (precision overflow).
    """
    out, counts = embed_horizons(teacher, {prompts.pred_len: prompts}, windows, fidelity, batch_tokens, progress)
    return out[prompts.pred_len], {"tokens": counts["tokens"], "computed": counts["computed"]}


def embed_horizons(teacher: Teacher, prompts_by_pred_len: dict[int, SplitPrompts], windows: np.ndarray,
                   fidelity: str, batch_tokens: int, progress: tqdm | None = None,
                   variables: list[str] | None = None) -> tuple[dict[int, np.ndarray], dict]:
    """Embeddings of the given windows at every horizon, each window's prompts as one trie.

    A window's prompts of all horizons share the head and, per variable, everything up to the
    end of the input values; those run once (packing.py). Window i exists at horizon P when
    i < prompts_by_pred_len[P].n_windows, so longer horizons may get fewer windows. With
    several replicas (data parallel) each takes a contiguous share of the windows, in a
    thread: the GPUs work at once while Python waits on them.

    Args:
        teacher: load_teacher's result.
        prompts_by_pred_len: the split's prompts per horizon P (all of the same split).
        windows: (W,) ascending window indices.
        fidelity: "reference" or "corrected".
        batch_tokens: token budget (packing.batches: heads and stems together, each leaf tensor).
        progress: a tqdm bar advanced by one per (window, horizon).
        variables: the variables' names, for error messages.
    Returns:
        {P: (W_P, N, d) float32} for the W_P given windows that exist at P; counts {"tokens":
        every prompt token of every horizon, "tokens_per_pred_len": {P: tokens}, "computed":
        the positions that ran through the model, padding excluded}.
    Raises:
        InputError: a hidden state became inf or NaN (precision overflow): precision, block,
            window and variable named.
    """
    windows = np.asarray(windows, dtype=np.int64)
    parts = np.array_split(windows, len(teacher.replicas))
    if len(parts) == 1:
        return _embed_on(teacher.replicas[0], prompts_by_pred_len, windows, fidelity, batch_tokens, progress,
                         variables)
    with ThreadPoolExecutor(len(parts)) as pool:
        results = list(pool.map(_embed_on, teacher.replicas, [prompts_by_pred_len] * len(parts), parts,
                                [fidelity] * len(parts), [batch_tokens] * len(parts), [progress] * len(parts),
                                [variables] * len(parts)))
    counts = {"tokens": sum(replica_counts["tokens"] for _, replica_counts in results),
              "computed": sum(replica_counts["computed"] for _, replica_counts in results),
              "tokens_per_pred_len": {P: sum(replica_counts["tokens_per_pred_len"][P] for _, replica_counts in results)
                                      for P in prompts_by_pred_len}}
    return {P: np.concatenate([out[P] for out, _ in results]) for P in prompts_by_pred_len}, counts


def _prompt_tokens(prompts_by_pred_len: dict[int, SplitPrompts], windows: np.ndarray) -> dict[int, np.ndarray]:
    """Per horizon, (W,) tokens of each window's GT and HD prompts together; 0 where it does not exist."""
    tokens = {}
    for P, prompts in prompts_by_pred_len.items():
        exists = windows[windows < prompts.n_windows]
        gt, hd = prompts.lengths(exists)
        tokens[P] = np.zeros(len(windows), np.int64)
        tokens[P][:len(exists)] = gt.sum(1) + hd.sum(1)
    return tokens


def prefix_tokens(prompts_by_pred_len: dict[int, SplitPrompts], window: int, fidelity: str) -> int:
    """The tokens of a window's head and stems (its trie's inner nodes), the part of its prompts a
    batch's token budget counts before the tails; the same at every horizon.

    Args:
        prompts_by_pred_len, fidelity: as window_prompts.
        window: the window's index.
    Returns:
        The token count, at least 1.
    """
    trie, _ = packed_window(prompts_by_pred_len, window, fidelity)
    return max(1, len(trie.head) + sum(len(branch.stem) for branch in trie.branches))


def _embed_on(replica: Replica, prompts_by_pred_len: dict[int, SplitPrompts], windows: np.ndarray, fidelity: str,
              batch_tokens: int, progress: tqdm | None, variables: list[str] | None) -> tuple[dict, dict]:
    first = next(iter(prompts_by_pred_len.values()))
    N, d = first.n_vars, replica.model.config.n_embd
    exists = {P: int((windows < prompts.n_windows).sum()) for P, prompts in prompts_by_pred_len.items()}  # a prefix
    tokens = _prompt_tokens(prompts_by_pred_len, windows)
    per_window = sum(tokens.values())                                       # (W,)
    # Enough windows per chunk for about 8 full batches, so that sorting by length pays off and the
    # progress bar still moves; counted from the heads and stems alone (a batch's PREFIX_SHARE of
    # the budget), so that the chunks, and with them every batch, are the same whichever horizons
    # run together (packing.py).
    prefix = prefix_tokens(prompts_by_pred_len, int(windows[0]), fidelity) if len(windows) else 1
    chunk = max(1, math.ceil(8 * PREFIX_SHARE * batch_tokens / prefix))
    parts = [windows[chunk_start:chunk_start + chunk] for chunk_start in range(0, len(windows), chunk)]
    out = {P: np.empty((n_exist, N, d), dtype=np.float32) for P, n_exist in exists.items()}
    device = input_device(replica.model)
    counts = {"tokens": int(per_window.sum()), "computed": 0,
              "tokens_per_pred_len": {P: int(window_tokens.sum()) for P, window_tokens in tokens.items()}}
    # A worker thread builds the next chunk's batches while the device runs this one's.
    with ThreadPoolExecutor(1) as pool:
        upcoming = pool.submit(_model_inputs, prompts_by_pred_len, parts[0], fidelity, batch_tokens,
                               device.type == "cuda") if parts else None
        for chunk_index, part in enumerate(parts):
            inputs, rows_of, computed, items = upcoming.result()
            if chunk_index + 1 < len(parts):
                upcoming = pool.submit(_model_inputs, prompts_by_pred_len, parts[chunk_index + 1], fidelity,
                                       batch_tokens, device.type == "cuda")
            chunk_start = chunk_index * chunk
            counts["computed"] += computed
            states = torch.cat([_states(replica.model, batch, device, part, items, variables)
                                for batch in inputs])  # (kept, d)
            with torch.inference_mode():
                for number, (P, n_exist) in enumerate(exists.items()):   # slots 2 number (GT), 2 number + 1 (HD)
                    here = max(0, min(len(part), n_exist - chunk_start))   # this chunk's windows that exist at P
                    if here == 0:
                        continue
                    gt = states[torch.from_numpy(rows_of[:here, :, 2 * number]).to(states.device)]   # (here, N, d)
                    hd = states[torch.from_numpy(rows_of[:here, :, 2 * number + 1]).to(states.device)]
                    sca_in = [side.transpose(1, 2).to(replica.device) for side in (gt, hd)]     # (here, d, N)
                    # the SCA over the variables: (here, N, d)
                    out[P][chunk_start:chunk_start + here] = replica.sca(*sca_in).transpose(1, 2).cpu().numpy()
            if progress is not None:  # shared by the replicas' threads; a display, so no lock
                done = sum(max(0, min(len(part), n_exist - chunk_start)) for n_exist in exists.values())
                chunk_tokens = int(per_window[chunk_start:chunk_start + chunk].sum())
                progress.tokens = getattr(progress, "tokens", 0) + chunk_tokens
                progress.set_postfix(tokens_per_s=f"{progress.tokens / max(progress.format_dict['elapsed'], 1e-9):.0f}",
                                     refresh=False)
                progress.update(done)
    return out, counts


def _states(model, batch: TrieBatch, device: torch.device, windows: np.ndarray, items: list[tuple[int, int]],
            variables: list[str] | None) -> torch.Tensor:
    """last_token_states, with a non-finite state turned into one sentence naming where it arose."""
    try:
        return last_token_states(model, batch, device)
    except NonFiniteState as bad:
        item = int(batch.kept[bad.row, 0] if bad.level < 0 else batch.owners[bad.level][bad.row])
        window, variable = items[item]
        name = f"{variables[variable]!r}" if variables else f"number {variable}"
        precision = next((name for name, dtype in DTYPES.items() if dtype == model.dtype), str(model.dtype))
        where = "the final layer norm" if bad.block >= len(model.h) else f"block {bad.block} of {len(model.h)} (from 0)"
        raise InputError(f"precision {precision}: a hidden state became inf or NaN in {where}, window "
                         f"{int(windows[window])}, variable {name}: {precision} cannot hold this model's activations "
                         f"(beyond 65,504 in fp16); set config key precision to bf16 (fp32's range at half the "
                         f"memory) or fp32 and rerun.") from None


def _model_inputs(prompts_by_pred_len: dict[int, SplitPrompts], windows: np.ndarray, fidelity: str,
                  batch_tokens: int, pin: bool) -> tuple[list[TrieBatch], np.ndarray, int, list[tuple[int, int]]]:
    """The windows' tries as batches, where each prompt's state lands, and the positions computed.

    Returns:
        batches; rows_of
        (W, N, 2 x |pred_lens|) int64: the row of the concatenated kept states holding the GT
        (2p) and HD (2p + 1) prompt of horizon number p, -1 where the window does not exist at
        that horizon; the real (unpadded) positions the batches hold; per branch item (what the
        batches' owners index), its window (index into `windows`) and its first variable.
    """
    tries, items, named, first_item, slots = [], [], [], [], []
    for position, window in enumerate(windows):
        trie, window_slots = packed_window(prompts_by_pred_len, int(window), fidelity)
        first_item.append(len(items))                           # the window's branches are items from here
        items += [(position, branch) for branch in range(len(trie.branches))]
        branch_of_variable = trie.leaf_of[:, 0, 0]
        named += [(position, int(np.argmax(branch_of_variable == branch))) for branch in range(len(trie.branches))]
        tries.append(trie)
        slots.append(window_slots)
    out = batches(tries, items, batch_tokens)
    most_leaves = max((len(branch.leaves) for trie in tries for branch in trie.branches), default=0)
    row_of_leaf = np.full((len(items), most_leaves), -1, np.int64)   # by (item, leaf index) first
    offset = 0
    for batch in out:
        row_of_leaf[batch.kept[:, 0], batch.kept[:, 1]] = offset + np.arange(len(batch.kept))
        offset += len(batch.kept)
    n_vars = tries[0].leaf_of.shape[0] if tries else 0
    rows_of = np.full((len(windows), n_vars, 2 * len(prompts_by_pred_len)), -1, np.int64)
    for position, (trie, first, window_slots) in enumerate(zip(tries, first_item, slots)):
        rows_of[position][:, window_slots] = row_of_leaf[first + trie.leaf_of[..., 0], trie.leaf_of[..., 1]]
    computed = sum(batch.real_positions() for batch in out)
    if pin:
        out = [batch.pin_memory() for batch in out]
    return out, rows_of, computed, named


def prompt_pairs(prompts: SplitPrompts, i: int, fidelity: str) -> list[tuple[np.ndarray, ...]]:
    """(GT ids, HD ids, GT types, HD types) per variable of window i at one horizon: the types
    are those the prompts' masks read.

    Args:
        prompts: the split's prompts at one horizon.
        i: the window's index.
        fidelity: "reference" (every prompt's mask reads the last variable's types, as the
            published store_emb.py does) or "corrected" (each prompt its own).
    Returns:
        N tuples of int64 ids (L_gt,), (L_hd,) and int8 type flags (1: time series) of the same lengths.
    """
    ids = prompts.window_ids(i)
    if fidelity == "reference":
        # The published defect (store_emb.py): every GT (HD) prompt's mask uses the token types
        # of the last variable's GT (HD) prompt.
        last_gt, last_hd = (prompts.types(prompt_ids[-1]).astype(np.int8) for prompt_ids in (ids.gt, ids.hd))
        gt_types, hd_types = [last_gt] * len(ids.gt), [last_hd] * len(ids.hd)
    else:
        gt_types = [prompts.types(prompt_ids).astype(np.int8) for prompt_ids in ids.gt]
        hd_types = [prompts.types(prompt_ids).astype(np.int8) for prompt_ids in ids.hd]
    return list(zip(ids.gt, ids.hd, gt_types, hd_types))


def window_prompts(prompts_by_pred_len: dict[int, SplitPrompts], i: int, fidelity: str) -> tuple[list, list[int]]:
    """Per variable, its prompts at every horizon where window i exists: GT then HD per horizon.

    Args:
        prompts_by_pred_len: the split's prompts per horizon P.
        i: the window's index.
        fidelity: "reference" or "corrected" (prompt_pairs).
    Returns:
        (groups, slots): groups[c] the list of packing.Prompt of variable c; slots the
        positions 2p (GT) and 2p + 1 (HD), p the horizon's number in prompts_by_pred_len
        (also each Prompt's horizon), of each prompt in a group.
    Raises:
        ValueError: window i exists at none of the horizons (a caller's bug, not bad input).
    """
    groups: list[list[Prompt]] | None = None
    slots: list[int] = []
    for horizon_number, prompts in enumerate(prompts_by_pred_len.values()):
        if i >= prompts.n_windows:
            continue
        pairs = prompt_pairs(prompts, i, fidelity)
        groups = groups or [[] for _ in pairs]
        for group, (gt, hd, gt_types, hd_types) in zip(groups, pairs):
            group += [Prompt(gt, type_codes(gt_types, len(gt)), horizon_number),
                      Prompt(hd, type_codes(hd_types, len(hd)), horizon_number)]
        slots += [2 * horizon_number, 2 * horizon_number + 1]
    if groups is None:
        raise ValueError(f"window {i} exists at none of the horizons {list(prompts_by_pred_len)}")
    return groups, slots


def packed_window(prompts_by_pred_len: dict[int, SplitPrompts], i: int, fidelity: str) -> tuple[Trie, list[int]]:
    """Window i's prompts at all its horizons as one trie (packing.py), and the prompts' slots.

    Args:
        prompts_by_pred_len, i, fidelity: as window_prompts.
    Returns:
        (trie, slots): the packing.Trie of the window; slots as window_prompts.
    """
    groups, slots = window_prompts(prompts_by_pred_len, i, fidelity)
    return build_trie(groups), slots


@contextmanager
def out_of_memory_hint(settings: Settings, devices: list[str], pred_lens: list[int] | None = None):
    """A device out of memory: the budget to lower, in one sentence instead of a CUDA stack dump.

    Args:
        settings: the job's settings (batch_tokens, pred_len, split).
        devices: the devices in use, named in the message.
        pred_lens: the job's horizons; None: settings.pred_len.
    Raises:
        InputError: torch.OutOfMemoryError was raised inside the block.
    """
    try:
        yield
    except torch.OutOfMemoryError:
        from .config import load_schema
        floor = load_schema()["properties"]["batch_tokens"]["minimum"]
        lower = max(floor, settings.batch_tokens // 2)
        fix = (f"lower config key batch_tokens (e.g. to {lower})" if lower < settings.batch_tokens
               else "raise gpus_per_job or use a GPU with more memory")
        horizons = ", ".join(map(str, pred_lens or [settings.pred_len]))
        raise InputError(f"pred_len {horizons}, split {settings.split}: {', '.join(devices)} ran out of "
                         f"memory with batch_tokens = {settings.batch_tokens}; {fix} and rerun.") from None


def extract_split(settings: Settings, windows_path: str | Path, sca_path: str | Path, out_path: str | Path,
                  stats_path: str | Path, log_file=None, shard: tuple[int, int] | None = None) -> dict:
    """The extraction job of one (horizon, split), or of the window range `shard` of it
    (`extract_horizons` with settings.pred_len alone).

    Args:
        settings: the job's settings; settings.pred_len is the horizon.
        windows_path, sca_path: the split's windows file and the SCA weights.
        out_path, stats_path: the embeddings file and its stats JSON to write.
        log_file: where the progress bar goes.
        shard: the window range [start, stop); None: the whole split.
    Returns:
        The stats written (extract_horizons).
    Raises:
        InputError: as extract_horizons.
    """
    return extract_horizons(settings, [settings.pred_len], windows_path, sca_path,
                            {settings.pred_len: (out_path, stats_path)}, log_file, shard)[settings.pred_len]


def extract_horizons(settings: Settings, pred_lens: list[int], windows_path: str | Path, sca_path: str | Path,
                     outputs: dict[int, tuple[str | Path, str | Path]], log_file=None,
                     shard: tuple[int, int] | None = None) -> dict[int, dict]:
    """The extraction job: every horizon of one split, or of the window range `shard` of it.

    Window i exists at horizon P when i < n_P = rows - seq_len - P + 1 (at most limit_windows).
    The range [start, stop) covers, at horizon P, windows start..min(stop, n_P) - 1; a range
    must hold at least one window of every horizon (common.smk plans them so).

    Args:
        settings: the job's settings (settings.pred_len is replaced by each P in the outputs).
        pred_lens: the horizons to compute, each a key of `outputs`.
        windows_path, sca_path: the split's windows file and the SCA weights.
        outputs: per P, (embeddings file, stats file) to write.
        log_file: where the progress bar goes (windows x horizons).
        shard: the window range [start, stop); None: the whole split.
    Returns:
        Per P, the stats written (wall_s and tokens_computed are the whole job's: the horizons
        share their work).
    Raises:
        InputError: no window at some horizon, a prompt longer than the model's context, a
            range outside the split, out of memory, a non-finite hidden state. Nothing is written then.
    """
    split_windows = read_windows(windows_path)
    tokenizer = load_tokenizer(settings.model, settings.revision)
    n_positions = load_config(settings.model, settings.revision).n_positions
    prompts, stops, longest = {}, {}, {}
    for P in pred_lens:
        stops[P] = planned_windows(len(split_windows.rows), split_windows.meta["seq_len"], P,
                                   settings.limit_windows)
        if stops[P] == 0:
            raise InputError(f"{windows_path}: split {settings.split} has no window of "
                             f"{split_windows.meta['seq_len']} + "
                             f"{P} rows; use a smaller pred_len or seq_len.")
        prompts[P] = split_prompts(tokenizer, split_windows, settings, P, stops[P])
        # Every window of the split is checked (it is cheap), so that no shard starts when another must fail.
        longest[P] = check_context(prompts[P], n_positions, settings.split, np.arange(stops[P]),
                                   split_windows.variables)
    start, stop = 0, max(stops.values())
    if shard is not None:
        if not 0 <= shard[0] < shard[1] <= stop or shard[0] >= min(stops.values()):
            raise InputError(f"window range {shard[0]}-{shard[1]} is outside split {settings.split}'s "
                             f"0-{min(stops.values())} (pred_len {', '.join(map(str, pred_lens))}); the CSV changed "
                             "since the plan was made: rerun snakemake.")
        start, stop = shard
    windows = np.arange(start, stop)
    ranges = {P: (start, min(stop, stops[P])) for P in pred_lens}

    teacher = load_teacher(settings, sca_path)
    settings = dataclasses.replace(settings, batch_tokens=settings.batch_tokens or token_budget(teacher.devices))
    jobs = sum(range_stop - range_start for range_start, range_stop in ranges.values())
    log.info("split %s, pred_len %s: windows %d-%d x %d variables, %d (window, horizon) pairs, longest prompt %d, "
             "on %s in %s; the progress bar's ETA is the time estimate", settings.split,
             ", ".join(map(str, pred_lens)), start, stop, prompts[pred_lens[0]].n_vars, jobs, max(longest.values()),
             ", ".join(teacher.devices), settings.precision)
    began = time.perf_counter()
    with tqdm(total=jobs, unit="win", file=log_file, mininterval=5.0, dynamic_ncols=False,
              desc=f"P={','.join(map(str, pred_lens))} {settings.split}") as bar, \
            out_of_memory_hint(settings, teacher.devices, pred_lens):
        embeddings, counts = embed_horizons(teacher, prompts, windows, settings.fidelity, settings.batch_tokens, bar,
                                            split_windows.variables)
    wall = time.perf_counter() - began

    every, metadata_by_pred_len = {}, provenance(settings, pred_lens, split_windows.meta, sca_path, teacher)
    for P in pred_lens:
        range_start, range_stop = ranges[P]
        metadata = metadata_by_pred_len[P] | {"window_range": [range_start, range_stop]}
        window_start = torch.arange(range_start, range_stop, dtype=torch.int64)
        write_tensors(outputs[P][0], {"embeddings": torch.from_numpy(embeddings[P]), "window_start": window_start},
                      metadata)
        tokens = counts["tokens_per_pred_len"][P]
        n_windows = range_stop - range_start
        every[P] = {"pred_len": P, "split": settings.split, "windows": n_windows, "tokens": tokens,
                    "tokens_computed": counts["computed"], "wall_s": round(wall, 3), "windows_per_s": n_windows / wall,
                    "tokens_per_s": tokens / wall, "peak_memory_bytes": peak_memory(teacher.devices),
                    "devices": teacher.devices, "placement": teacher.placement, "precision": settings.precision,
                    "batch_tokens": settings.batch_tokens, "longest_prompt": longest[P], "host": platform.node(),
                    "job_pred_lens": list(pred_lens)}
        write_json(outputs[P][1], every[P])
    return every


def split_prompts(tokenizer, split_windows: SplitWindows, settings: Settings, pred_len: int,
                  n_windows: int) -> SplitPrompts:
    """The prompts of a split's first `n_windows` windows at one horizon, built from the rows
    those windows read only: a limited run (limit_windows, a parity sample) never tokenizes
    the rest of the split.

    Args:
        tokenizer: the model's tokenizer.
        split_windows: the split (raw values, dates, seq_len).
        settings: the job's settings (dataset name, template).
        pred_len: the horizon P, in rows.
        n_windows: windows 0..n_windows-1, at most split_windows.n_windows(pred_len).
    Returns:
        SplitPrompts with exactly n_windows windows, indexed as in the split.
    """
    rows = slice(0, n_windows - 1 + split_windows.meta["seq_len"] + pred_len)
    return SplitPrompts(tokenizer, split_windows.raw[rows], stamps(split_windows.dates[rows]), settings.name,
                        pred_len, split_windows.meta["seq_len"], settings.template)


def provenance(settings: Settings, pred_lens: list[int], windows_meta: dict, sca_path: str | Path,
               teacher: Teacher) -> dict[int, dict]:
    """The metadata of a job's embeddings files, one per horizon: their inputs' hashes, settings and
    versions. The weights and the SCA are hashed once, however many horizons the job embeds.

    Args:
        settings: the job's settings (settings.pred_len is replaced by each P).
        pred_lens: the horizons whose files the job writes.
        windows_meta: the windows file's metadata (input_sha256, seq_len, variables).
        sca_path: the SCA weights (hashed; their seed recorded).
        teacher: the loaded teacher (layers, devices, placement, the model's commit).
    Returns:
        P -> {key: JSON-able value}; "settings" holds the output-affecting settings (compared on
        reruns), "runtime" the speed-only ones (for information).
    """
    import transformers
    weights = weights_file(settings.model, settings.revision)
    revision = getattr(teacher.model.config, "_commit_hash", None) or settings.revision
    shared = {
        "input_sha256": windows_meta["input_sha256"], "seq_len": windows_meta["seq_len"],
        "split": settings.split, "dataset": settings.name,
        "model": settings.model, "revision": revision or "", "weights_sha256": sha256_file(weights),
        "layers": len(teacher.model.h),
        "precision": settings.precision, "fidelity": settings.fidelity,
        "sca_sha256": sha256_file(Path(sca_path)), "seed": read_metadata(sca_path)["seed"],
        "limit_windows": settings.limit_windows,
        "variables": windows_meta["variables"],
        "package": f"timekd-embed {__version__}", "torch": torch.__version__,
        "transformers": transformers.__version__,
        # speed only: for information, never compared (settings.py)
        "runtime": settings.runtime_fields() | {"devices": teacher.devices, "placement": teacher.placement},
    }
    return {P: shared | {"pred_len": P, "settings": dataclasses.replace(settings, pred_len=P).output_fields()}
            for P in pred_lens}
