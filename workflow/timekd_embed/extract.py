"""The extraction job: a split's windows -> teacher embeddings, one file per horizon.

For each window and horizon: 2N prompts (GT and HD per variable) through the frozen language
model with the calibrated mask, the last real token's state kept, then the SCA over the
variables: (N, d) per window (TimeKD, Liu et al. ICDE 2025; the published store_emb.py). A
window's prompts of every horizon form one trie (packing.py), so the work they share runs
once; the nodes of many windows share one forward pass, bounded by a token budget. Batches do
not depend on which other horizons run, so one job per horizon and one for all give the same
bits for the same windows. A worker thread prepares the next batches meanwhile.

The job's settings flow one way: the rule's params (settings.Settings) and the runtime keys
(settings.Runtime) -> the split's prompts (split_job) -> the teacher (teacher.load_teacher) ->
the writer (store), each given what it needs.
"""

from __future__ import annotations

import logging
import math
import platform
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from . import __version__
from .checkpoint import load_config, load_tokenizer, weights
from .devices import input_device, peak_memory, resolve_devices
from .errors import InputError
from .families import context_length
from .fingerprint import weights_sha256
from .jobs import progress_bar
from .lm import DTYPES, NonFiniteState, decoder_blocks, last_token_states
from .model_files import model_name
from .packing import PREFIX_SHARE, TrieBatch, model_inputs, prefix_tokens
from .prompts import PromptTokenizer, SplitPrompts
from .records import read_metadata, sha256_file
from .settings import Runtime, Settings
from .split_job import prepare_split
from .store import write_json, write_tensors
from .teacher import Replica, Teacher, load_teacher
from .windows import read_windows

log = logging.getLogger(__name__)


def embed_windows(teacher: Teacher, prompts: SplitPrompts, windows: np.ndarray, fidelity: str,
                  batch_tokens: int, progress: tqdm | None = None) -> tuple[np.ndarray, dict]:
    """embed_horizons at one horizon: the (W, N, d) float32 embeddings of `windows` and the counts
    {"tokens": every token of every prompt (what store_emb.py computes), "computed": the positions that ran
    through the model}; InputError as embed_horizons (a hidden state became inf or NaN)."""
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
        progress: a tqdm bar advanced by one per window (all its horizons), in fractions of the
            chunk's windows as its batches finish.
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


def _embed_on(replica: Replica, prompts_by_pred_len: dict[int, SplitPrompts], windows: np.ndarray, fidelity: str,
              batch_tokens: int, progress: tqdm | None, variables: list[str] | None) -> tuple[dict, dict]:
    first = next(iter(prompts_by_pred_len.values()))
    N, d = first.n_vars, replica.model.config.hidden_size
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
        upcoming = pool.submit(model_inputs, prompts_by_pred_len, parts[0], fidelity, batch_tokens,
                               device.type == "cuda") if parts else None
        for chunk_index, part in enumerate(parts):
            inputs = upcoming.result()
            if chunk_index + 1 < len(parts):
                upcoming = pool.submit(model_inputs, prompts_by_pred_len, parts[chunk_index + 1], fidelity,
                                       batch_tokens, device.type == "cuda")
            chunk_start = chunk_index * chunk
            counts["computed"] += inputs.computed
            # The bar moves after every batch by the chunk's windows times the batch's share of the
            # chunk's positions: a chunk (or a whole job on a CPU) can take many minutes, and a window
            # is done only when every batch of its chunk is.
            sizes = [batch.padded_positions() for batch in inputs.batches]
            states, moved = [], 0.0
            for batch, size in zip(inputs.batches, sizes):
                states.append(_states(replica.model, batch, device, part, inputs.items, variables))
                if progress is not None and batch is not inputs.batches[-1]:
                    step = len(part) * size / max(1, sum(sizes))
                    progress.update(step)
                    moved += step
            states = torch.cat(states)  # (kept, d)
            with torch.inference_mode():
                for number, (P, n_exist) in enumerate(exists.items()):   # slots 2 number (GT), 2 number + 1 (HD)
                    here = max(0, min(len(part), n_exist - chunk_start))   # this chunk's windows that exist at P
                    if here == 0:
                        continue
                    rows_of = inputs.rows_of
                    gt = states[torch.from_numpy(rows_of[:here, :, 2 * number]).to(states.device)]   # (here, N, d)
                    hd = states[torch.from_numpy(rows_of[:here, :, 2 * number + 1]).to(states.device)]
                    sca_in = [side.transpose(1, 2).to(replica.device) for side in (gt, hd)]     # (here, d, N)
                    # the SCA over the variables: (here, N, d)
                    out[P][chunk_start:chunk_start + here] = replica.sca(*sca_in).transpose(1, 2).cpu().numpy()
            if progress is not None:  # shared by the replicas' threads; a display, so no lock
                done = len(part) - moved  # windows, each at every horizon it exists at; the rest of the chunk
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
        blocks = len(decoder_blocks(model))
        where = "the final norm" if bad.block >= blocks else f"block {bad.block} of {blocks} (from 0)"
        raise InputError(f"precision {precision}: a hidden state became inf or NaN in {where}, window "
                         f"{int(windows[window])}, variable {name}: {precision} cannot hold this model's activations "
                         f"(beyond 65,504 in fp16); set config key precision to bf16 (fp32's range at half the "
                         f"memory) or fp32 and rerun.") from None


@contextmanager
def out_of_memory_hint(batch_tokens: int, devices: list[str], pred_lens: list[int], split: str):
    """A device out of memory: the budget to lower, in one sentence instead of a CUDA stack dump.

    Raises:
        InputError: torch.OutOfMemoryError was raised inside the block.
    """
    try:
        yield
    except torch.OutOfMemoryError:
        from .config import load_schema
        floor = load_schema()["properties"]["batch_tokens"]["minimum"]
        lower = max(floor, batch_tokens // 2)
        fix = (f"lower config key batch_tokens (e.g. to {lower})" if lower < batch_tokens
               else "raise gpus_per_job or use a GPU with more memory")
        raise InputError(f"pred_len {', '.join(map(str, pred_lens))}, split {split}: {', '.join(devices)} ran out "
                         f"of memory with batch_tokens = {batch_tokens}; {fix} and rerun.") from None


def extract_horizons(settings: Settings, runtime: Runtime, split: str, pred_lens: list[int],
                     windows_path: str | Path, sca_path: str | Path,
                     outputs: dict[int, tuple[str | Path, str | Path]], log_file=None,
                     shard: tuple[int, int] | None = None) -> dict[int, dict]:
    """The extraction job: every horizon of one split, or of the window range `shard` of it.

    Window i exists at horizon P when i < n_P = rows - seq_len - P + 1 (at most limit_windows).
    The range [start, stop) covers, at horizon P, windows start..min(stop, n_P) - 1; a range
    must hold at least one window of every horizon (common.smk plans them so).

    Args:
        settings: what decides the embeddings (the rule's params); runtime: the speed-only keys.
        split: the split's name; pred_lens: the horizons, each a key of `outputs`.
        windows_path, sca_path: the split's windows file and the SCA weights.
        outputs: per P, (embeddings file, stats file) to write.
        log_file: where the progress bar goes (jobs.progress_bar: the log and the console; windows).
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
    context = context_length(load_config(settings.model, settings.revision))
    # Every window of the split is checked (it is cheap), so that no shard starts when another must fail.
    job = prepare_split(tokenizer, split_windows, settings, pred_lens, context)
    stops = {P: job.windows(P) for P in pred_lens}
    start, stop = 0, max(stops.values())
    if shard is not None:
        if not 0 <= shard[0] < shard[1] <= stop or shard[0] >= min(stops.values()):
            raise InputError(f"window range {shard[0]}-{shard[1]} is outside split {split}'s "
                             f"0-{min(stops.values())} (pred_len {', '.join(map(str, pred_lens))}); the CSV changed "
                             "since the plan was made: rerun snakemake.")
        start, stop = shard
    windows = np.arange(start, stop)
    ranges = {P: (start, min(stop, stops[P])) for P in pred_lens}

    devices = resolve_devices(runtime.device, runtime.gpus_per_job)
    teacher = load_teacher(settings.teacher, sca_path, devices, runtime.placement, batch_tokens=runtime.batch_tokens,
                           prompt_tokens=max(job.longest.values()))
    batch_tokens = teacher.batch_tokens
    pairs = sum(range_stop - range_start for range_start, range_stop in ranges.values())
    log.info("split %s, pred_len %s: windows %d-%d x %d variables, %d (window, horizon) pairs, longest prompt %d, "
             "on %s in %s; the progress bar's ETA is the time estimate", split, ", ".join(map(str, pred_lens)),
             start, stop, len(job.variables), pairs, max(job.longest.values()), ", ".join(teacher.devices),
             settings.precision)
    began = time.perf_counter()
    with progress_bar(log_file, len(windows), "window", f"P={','.join(map(str, pred_lens))} {split}") as bar, \
            out_of_memory_hint(batch_tokens, teacher.devices, pred_lens, split):
        embeddings, counts = embed_horizons(teacher, job.prompts, windows, settings.fidelity, batch_tokens, bar,
                                            job.variables)
    wall = time.perf_counter() - began

    every, metadata_by_pred_len = {}, provenance(settings, runtime, split, pred_lens, split_windows.meta, sca_path,
                                                  teacher, batch_tokens)
    for P in pred_lens:
        range_start, range_stop = ranges[P]
        metadata = metadata_by_pred_len[P] | {"window_range": [range_start, range_stop]}
        window_start = torch.arange(range_start, range_stop, dtype=torch.int64)
        write_tensors(outputs[P][0], {"embeddings": torch.from_numpy(embeddings[P]), "window_start": window_start},
                      metadata)
        tokens = counts["tokens_per_pred_len"][P]
        n_windows = range_stop - range_start
        every[P] = {"pred_len": P, "split": split, "windows": n_windows, "tokens": tokens,
                    "tokens_computed": counts["computed"], "wall_s": round(wall, 3), "windows_per_s": n_windows / wall,
                    "tokens_per_s": tokens / wall, "peak_memory_bytes": peak_memory(teacher.devices),
                    "devices": teacher.devices, "placement": teacher.placement, "precision": settings.precision,
                    "batch_tokens": batch_tokens, "longest_prompt": job.longest[P], "host": platform.node(),
                    "job_pred_lens": list(pred_lens)}
        write_json(outputs[P][1], every[P])
    return every


def provenance(settings: Settings, runtime: Runtime, split: str, pred_lens: list[int], windows_meta: dict,
               sca_path: str | Path, teacher: Teacher, batch_tokens: int) -> dict[int, dict]:
    """The metadata of a job's embeddings files, one per horizon: their inputs' hashes, settings and
    versions. The weights and the SCA are hashed once, however many horizons the job embeds.

    Args:
        settings, runtime: the job's settings and speed-only keys.
        split, pred_lens: the split and the horizons whose files the job writes.
        windows_meta: the windows file's metadata (input_sha256, seq_len, variables).
        sca_path: the SCA weights (hashed; their seed recorded).
        teacher: the loaded teacher (layers, devices, placement, the model's commit).
        batch_tokens: the token budget the job ran with.
    Returns:
        P -> {key: JSON-able value}; "settings" holds the output-affecting settings (compared on
        reruns), "runtime" the speed-only ones (for information).
    """
    import transformers
    revision = getattr(teacher.model.config, "_commit_hash", None) or settings.revision
    tokens, special = teacher.tokenizer, PromptTokenizer.of(teacher.tokenizer)
    shared = {
        "input_sha256": windows_meta["input_sha256"], "seq_len": windows_meta["seq_len"],
        "split": split, "dataset": settings.name,
        # What the model is (a hub id, or a local folder), not where: the folder is under "runtime".
        "model": model_name(settings.model), "revision": revision or "",
        "weights_sha256": weights_sha256(weights(settings.model, settings.revision)),
        # The teacher's identity: its family, and what tokenizer.encode puts around every prompt.
        "architecture": teacher.model.config.model_type,
        "special_tokens": {"prefix": tokens.convert_ids_to_tokens(list(special.prefix)),
                           "suffix": tokens.convert_ids_to_tokens(list(special.suffix))},
        "layers": len(decoder_blocks(teacher.model)),
        "precision": settings.precision, "fidelity": settings.fidelity,
        "sca_sha256": sha256_file(Path(sca_path)), "seed": read_metadata(sca_path)["seed"],
        "limit_windows": settings.limit_windows,
        "variables": windows_meta["variables"],
        "package": f"timekd-embed {__version__}", "torch": torch.__version__,
        "transformers": transformers.__version__,
        # speed only: for information, never compared (settings.py)
        "runtime": {"device": runtime.device, "gpus_per_job": runtime.gpus_per_job, "batch_tokens": batch_tokens,
                    "placement": teacher.placement, "devices": teacher.devices, "model_folder": settings.model},
    }
    return {P: shared | {"pred_len": P, "settings": settings.recorded(P, split)} for P in pred_lens}
