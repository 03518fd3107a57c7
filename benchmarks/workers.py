"""The measured workers of `make bench`, each run by benchmarks/run.py in a fresh interpreter so
that its peak memory is its own: one horizon through `embed_windows` (`run_horizon`, with the CPU
memory probe and the prompt-building timing), the exact savings one at a time (`run_savings`),
and the whole job, one job per horizon against the shared trie (`run_whole`). The published-way
baseline lives in benchmarks/baseline.py. Each writes its figures as JSON into the work folder
(`worker_main`), through the package's atomic writer.
"""

from __future__ import annotations

import json
import time

import numpy as np
import torch

from benchmarks.baseline import run_baseline
from benchmarks.common import (
    BASELINE_P,
    FIDELITY,
    GPT2_SMALL,
    ROOFLINE_SIZE_NEARBY,
    count_model_tokens,
    first_window_prompts,
    issued_matmul_flops,
    load_bench_teacher,
    matmul_roofline,
    naive_flops,
    peak_rss_bytes,
    prepare,
    progress,
    quiet_libraries,
    spread_windows,
    synchronize,
    train_split,
    warm_up,
    workflow_batch_tokens,
)
from benchmarks.families import run_family
from timekd_embed.store import write_text

# Other work on a shared machine only ever slows a run down: each horizon is timed this many
# times and the fastest run counts (the slowest is shown too).
TIMED_REPEATS = 2
PROMPT_WINDOWS = 200         # windows timed through window_ids (fast)
PLAIN_WINDOWS = 20           # windows timed through text + tokenizer (slower)
SAVINGS_ROUNDS = 3  # each step timed this many times, interleaved; the fastest counts
WHOLE_ROUNDS = 2  # (a) and (b) each run this many times, interleaved, (b) first; the fastest counts


# ----------------------------------------------------------------------------- one horizon


def time_prompt_building(prompts, tokenizer, windows: np.ndarray) -> dict:
    """Prompts/s of SplitPrompts.window_ids against text + tokenizer, one prompt per call."""
    n_vars = prompts.n_vars
    ids_windows = spread_windows(prompts.n_windows, PROMPT_WINDOWS)
    start = time.perf_counter()
    for window in ids_windows:
        prompts.window_ids(int(window))
    ids_s = time.perf_counter() - start

    plain_windows = spread_windows(prompts.n_windows, PLAIN_WINDOWS)
    start = time.perf_counter()
    for window in plain_windows:
        for gt, hd in prompts.window_texts(int(window)):      # the published code encodes each prompt alone
            tokenizer(gt, add_special_tokens=False)["input_ids"]
            tokenizer(hd, add_special_tokens=False)["input_ids"]
    plain_s = time.perf_counter() - start
    return {"window_ids_prompts": int(2 * n_vars * len(ids_windows)), "window_ids_s": ids_s,
            "window_ids_prompts_per_s": 2 * n_vars * len(ids_windows) / ids_s,
            "plain_prompts": int(2 * n_vars * len(plain_windows)), "plain_s": plain_s,
            "plain_prompts_per_s": 2 * n_vars * len(plain_windows) / plain_s}


def memory_probe(args, prompts, longest: int, timed_peak: int) -> dict:
    """Peak RSS of a CPU job at the workflow's token budget, without hours of model time.

    With a few windows the timed run's batches stay far below that budget, and memory grows with
    it. In inference mode a forward holds one layer's activations at a time, so a 1-layer model of
    the same width at the full budget shows the activation peak for a twelfth of the work. The
    full teacher stays loaded meanwhile, so the process holds every weight a job holds; the probe
    model's own weights are subtracted.
    """
    from timekd_embed.extract import embed_windows
    budget, n_vars = args.probe_batch_tokens, prompts.n_vars
    # More than enough windows for the first batch to be full (its stems fill PREFIX_SHARE of the budget).
    windows = spread_windows(prompts.n_windows, -(-budget // (longest * n_vars)) + 1)
    probe = load_bench_teacher(args, args.workdir / "model-1layer", ["cpu"])
    own = sum(weight.numel() * weight.element_size() for weight in probe.model.parameters())   # (its SCA copy: < 6 MB)
    progress(f"P={args.pred_len}: memory probe at batch_tokens {budget} ({len(windows)} windows, 1 layer)")
    with count_model_tokens(probe.model) as counts:
        embed_windows(probe, prompts, windows, FIDELITY, budget)
    return {"batch_tokens": budget, "windows": len(windows), "largest_batch_tokens": counts["largest_batch_tokens"],
            "probe_weights_bytes": own, "cpu_peak_rss_bytes": max(timed_peak, peak_rss_bytes() - own)}


def run_horizon(args) -> dict:
    """One horizon in this (fresh) process: build prompts, load the teacher, time embed_windows."""
    from timekd_embed.checkpoint import load_tokenizer
    from timekd_embed.extract import embed_windows

    P, model_dir = args.pred_len, args.workdir / "model"
    tokenizer = load_tokenizer(str(model_dir))
    train_split(args.csv)                      # the CSV read outside the timed preparation
    start = time.perf_counter()
    job = prepare(args, tokenizer, [P])
    construct_s = time.perf_counter() - start
    prompts = job.prompts[P]
    windows = spread_windows(prompts.n_windows, args.windows)
    longest = int(prompts.lengths(windows)[0].max())
    gt_len, hd_len = prompts.lengths(windows)

    teacher = load_bench_teacher(args, model_dir)
    warm_up(teacher, prompts, windows, args.device, args.batch_tokens)
    progress(f"P={P}: embedding {len(windows)} windows ({int(gt_len.sum() + hd_len.sum())} tokens) "
             f"on {args.device} in {args.precision}")
    runs = []                                  # (wall, CPU) seconds per repeat; the fastest counts
    for _ in range(TIMED_REPEATS):
        with count_model_tokens(teacher.model) as model_counts:          # the same every repeat
            synchronize(args.device)
            start, cpu = time.perf_counter(), time.process_time()
            embeddings, counts = embed_windows(teacher, prompts, windows, FIDELITY, args.batch_tokens)
            synchronize(args.device)
            runs.append((time.perf_counter() - start, time.process_time() - cpu))
    wall, cpu = min(runs)
    counts = {key: int(value) for key, value in counts.items()} | model_counts
    tokens = counts["tokens"]
    # Peaks before the prompt-building timing below, so they belong to the extraction alone.
    memory = {"cpu_peak_rss_bytes": peak_rss_bytes()}
    if args.device == "cuda":
        memory["gpu_peak_allocated_bytes"] = {gpu: torch.cuda.max_memory_allocated(gpu) for gpu in teacher.devices}
    if args.memory_probe:
        memory["probe"] = memory_probe(args, prompts, longest, memory["cpu_peak_rss_bytes"])
    nearby = matmul_roofline(args.device, args.precision, (ROOFLINE_SIZE_NEARBY,))["flops_per_s"] \
        if args.roofline else None

    flops = naive_flops(np.concatenate([gt_len, hd_len]), GPT2_SMALL["n_layer"], GPT2_SMALL["n_embd"])
    issued = issued_matmul_flops(counts["model_tokens"], GPT2_SMALL["n_layer"], GPT2_SMALL["n_embd"])
    progress(f"P={P}: {wall / len(windows):.2f} s/window; timing prompt building")
    building = time_prompt_building(prompts, tokenizer, windows)
    return {
        "pred_len": P, "windows": len(windows), "window_indices": windows.tolist(), "wall_s": wall,
        "wall_s_all_repeats": [run_wall for run_wall, _ in runs],
        "s_per_window": wall / len(windows), "windows_per_s": len(windows) / wall,
        "cpu_s_per_window": cpu / len(windows), "torch_threads": torch.get_num_threads(),
        "tokens": tokens, "tokens_per_s": tokens / wall, "token_counts": counts,
        "prompt_tokens_gt": [int(gt_len.min()), int(gt_len.max())],
        "prompt_tokens_hd": [int(hd_len.min()), int(hd_len.max())], "longest_prompt": longest,
        "naive_flops": flops, "naive_flops_per_s": flops / wall, "roofline_nearby_flops_per_s": nearby,
        "issued_matmul_flops": issued, "issued_matmul_flops_per_s": issued / wall, **memory,
        "prompts_per_s_model": 2 * prompts.n_vars * len(windows) / wall,
        "split_prompts_construct_s": construct_s, "split_windows": prompts.n_windows,
        "prompt_building": building,
    }


# ----------------------------------------------------------------------------- the savings one by one


def plain_states(model, prompts: list, batch_tokens: int, device: str) -> tuple[float, torch.Tensor]:
    """GPT2Model's own forward on each whole prompt (length-sorted, right-padded batches) with
    its calibrated 4D mask: seconds and the last tokens' states (prompts, d), the plain path."""
    from timekd_embed.lm import calibrated_mask
    lengths = np.array([len(prompt.ids) for prompt in prompts])
    order = np.argsort(-lengths, kind="stable")
    out: list = [None] * len(prompts)
    synchronize(device)
    start = time.perf_counter()
    done = 0
    while done < len(order):
        idx = order[done:done + max(1, batch_tokens // int(lengths[order[done]]))]
        done += len(idx)
        T = int(lengths[idx[0]])
        ids, codes = torch.zeros(len(idx), T, dtype=torch.int64), torch.full((len(idx), T), -1, dtype=torch.int8)
        valid = torch.zeros(len(idx), T, dtype=torch.bool)
        for row, prompt_index in enumerate(idx):
            length = len(prompts[prompt_index].ids)
            prompt = prompts[prompt_index]
            ids[row, :length], codes[row, :length], valid[row, :length] = (torch.from_numpy(prompt.ids),
                                                                           torch.from_numpy(prompt.codes), True)
        ids, codes, valid = ids.to(device), codes.to(device), valid.to(device)
        mask = calibrated_mask(codes, valid, codes, valid, model.dtype)                    # (B, 1, T, T)
        with torch.inference_mode():
            hidden = model(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state   # (B, T, d)
        for row, prompt_index in enumerate(idx):
            out[prompt_index] = hidden[row, len(prompts[prompt_index].ids) - 1].float().cpu()
    synchronize(device)
    return time.perf_counter() - start, torch.stack(out)


def trie_states(model, tries: list, items: list, batch_tokens: int, device: str) -> tuple[float, torch.Tensor]:
    """last_token_states over the tries' branch items: seconds and the states (items, leaves, d)."""
    from timekd_embed.lm import last_token_states
    from timekd_embed.packing import batches
    n_leaves = max(len(tries[trie].branches[branch].leaves) for trie, branch in items)
    synchronize(device)
    start = time.perf_counter()
    out = torch.zeros(len(items), n_leaves, model.config.n_embd)
    for batch in batches(tries, items, batch_tokens):
        states = last_token_states(model, batch, torch.device(device)).cpu()
        out[torch.from_numpy(batch.kept[:, 0]), torch.from_numpy(batch.kept[:, 1])] = states
    synchronize(device)
    return time.perf_counter() - start, out


def run_savings(args) -> dict:
    """Window BASELINE_P's first window through the plain batched path, then with the exact
    savings added one at a time; each step's time, model positions, and its states' largest
    difference from the plain path's (same precision)."""
    from transformers import GPT2Model

    from timekd_embed.checkpoint import load_lm, load_tokenizer
    from timekd_embed.lm import DTYPES
    from timekd_embed.packing import build_trie, window_prompts
    model_dir = args.workdir / "model"
    window, prompts = first_window_prompts(args, load_tokenizer(str(model_dir)), BASELINE_P)
    groups, _ = window_prompts({BASELINE_P: prompts}, window, FIDELITY)       # per variable [GT, HD]
    every = [prompt for group in groups for prompt in group]                   # GT, HD alternating
    published_gelu = GPT2Model.from_pretrained(model_dir, dtype=DTYPES[args.precision]).to(args.device).eval()
    fused_gelu = load_lm(str(model_dir), None, DTYPES[args.precision]).to(args.device)
    alone = [build_trie([[prompt] for prompt in every], share_head=False, merge_equal=False)]  # each prompt alone
    pairs = [build_trie(groups, share_head=False, merge_equal=False)]          # GT and HD share their prefix
    headed = [build_trie(groups, merge_equal=False)]                           # + the window's head once
    merged = [build_trie(groups)]                                              # + equal stems and leaves once
    all_alone, all_pairs = [(0, branch) for branch in range(len(every))], [(0, branch) for branch in range(len(groups))]
    steps = [  # (what, model, tries, items, rows of the states back to per-variable order)
        ("plain: each prompt its own sequence, GPT2Model's forward", published_gelu, None, None, None),
        ("+ own forward: the last block on the kept positions only", published_gelu, alone, all_alone, None),
        ("+ fused tanh GELU", fused_gelu, alone, all_alone, None),
        ("+ GT and HD of a variable share their prefix", fused_gelu, pairs, all_pairs, None),
        ("+ the window's head once for all variables", fused_gelu, headed, all_pairs, None),
        ("+ variables with equal inputs share a stem", fused_gelu, merged,
         [(0, branch) for branch in range(len(merged[0].branches))], merged[0].leaf_of),
    ]
    trie_states(fused_gelu, headed, all_pairs[:2], args.batch_tokens, args.device)   # warm-up
    seconds: list[list[float]] = [[] for _ in steps]
    results: list[dict] = []
    for round_ in range(SAVINGS_ROUNDS):
        for step, (what, model, tries, items, rows) in enumerate(steps):
            progress(f"savings, round {round_ + 1}: {what}")
            with count_model_tokens(model) as counts:
                if tries is None:
                    wall, got = plain_states(model, every, args.batch_tokens, args.device)
                else:
                    wall, got = trie_states(model, tries, items, args.batch_tokens, args.device)
            seconds[step].append(wall)
            got = got[torch.from_numpy(rows[..., 0]), torch.from_numpy(rows[..., 1])] if rows is not None else got
            got = got.reshape(-1, got.shape[-1])                    # (prompts, d): GT, HD per variable
            if round_ == 0:
                results.append({"step": what, "model_tokens": counts["model_tokens"], "states": got})
    plain_got, fastest = results[0]["states"], [min(step_seconds) for step_seconds in seconds]
    for step, result in enumerate(results):
        result["seconds"], result["seconds_all_rounds"] = fastest[step], seconds[step]
        result["max_abs_diff_vs_plain"] = float((result.pop("states") - plain_got).abs().max())
        result["speedup_vs_plain"] = fastest[0] / fastest[step]
        result["speedup_vs_previous"] = fastest[step - 1] / fastest[step] if step else 1.0
    return {"pred_len": BASELINE_P, "window": window, "precision": args.precision, "rounds": SAVINGS_ROUNDS,
            "batch_tokens": args.batch_tokens, "prompt_tokens": int(sum(len(prompt.ids) for prompt in every)),
            "largest_state": float(plain_got.abs().max()), "steps": results}


# ----------------------------------------------------------------------------- the whole job


class StateRecorder(torch.nn.Module):
    """The teacher's own SCA, keeping a CPU copy of the language model's states it is given: what
    the trie computes, before the SCA (the same code on both ways) amplifies their last-bit
    differences."""

    def __init__(self, sca: torch.nn.Module):
        super().__init__()
        self.sca = sca
        self.calls: list[torch.Tensor] = []

    def forward(self, gt: torch.Tensor, hd: torch.Tensor) -> torch.Tensor:   # (W, d, N) each
        self.calls.append(torch.stack([gt, hd]).float().cpu())                 # (2, W, d, N)
        return self.sca(gt, hd)


def concatenated(calls: list[torch.Tensor]) -> np.ndarray:
    """(2, W, d, N) float32: StateRecorder calls' states, concatenated over windows."""
    return torch.cat(calls, dim=1).numpy()


def whole_job_inputs(args) -> tuple[dict, np.ndarray, object, int]:
    """The whole-job section's prompts per horizon (train split), its windows (spread over those
    that exist at every horizon), the teacher, and the workflow's default token budget."""
    from timekd_embed.checkpoint import load_tokenizer
    model_dir = args.workdir / "model"
    prompts = prepare(args, load_tokenizer(str(model_dir)), args.pred_lens).prompts
    n_windows = min(horizon_prompts.n_windows for horizon_prompts in prompts.values())  # every window at every horizon
    teacher = load_bench_teacher(args, model_dir)
    budget = args.probe_batch_tokens or workflow_batch_tokens(args.device)
    return prompts, spread_windows(n_windows, args.windows), teacher, budget


def run_share(args) -> dict:
    """The shared trie (embed_horizons) once on the whole-job windows with a batch's heads and stems
    given args.prefix_share of the token budget (packing.PREFIX_SHARE, set in this fresh process;
    the window chunks keep the default's, and these windows fit one chunk either way): seconds and
    model positions per window, and the process's peak RSS, so that the shares compare."""
    from timekd_embed import packing
    from timekd_embed.extract import embed_horizons
    prompts, windows, teacher, budget = whole_job_inputs(args)
    chosen, packing.PREFIX_SHARE = packing.PREFIX_SHARE, args.prefix_share
    try:
        with count_model_tokens(teacher.model) as counts:
            synchronize(args.device)
            start = time.perf_counter()
            embed_horizons(teacher, prompts, windows, FIDELITY, budget)
            synchronize(args.device)
            wall = time.perf_counter() - start
    finally:
        packing.PREFIX_SHARE = chosen
    return {"prefix_share": args.prefix_share, "batch_tokens": budget, "s_per_window": wall / len(windows),
            "model_positions_per_window": counts["model_tokens"] / len(windows), "peak_rss_bytes": peak_rss_bytes()}


def run_whole(args) -> dict:
    """The same windows through (a) one job per horizon (embed_windows per P, summed) and (b) the
    shared trie (embed_horizons), in this process, interleaved: exact model positions (padding
    included, counted at the token embedding), seconds per window for all horizons together, peak
    RSS after each, and the largest differences between the two (per horizon, same precision) of
    the language model's last-token states and of the embeddings after the SCA."""
    from timekd_embed.extract import embed_horizons, embed_windows
    prompts, windows, teacher, budget = whole_job_inputs(args)
    embed_windows(teacher, prompts[args.pred_lens[0]], windows[:1], FIDELITY, budget)       # warm-up
    recorder = StateRecorder(teacher.replicas[0].sca)       # the bench runs one replica
    teacher.replicas[0].sca = recorder
    runs = {"per_horizon": [], "trie": []}
    out, states = {}, {}
    for round_ in range(args.whole_rounds):
        for way in ("trie", "per_horizon"):          # the trie first: the RSS after it is its own peak
            progress(f"whole job, round {round_ + 1}: {way}")
            with count_model_tokens(teacher.model) as counts:
                synchronize(args.device)
                start = time.perf_counter()
                recorder.calls.clear()
                if way == "trie":
                    got, job_counts = embed_horizons(teacher, prompts, windows, FIDELITY, budget)
                    computed = job_counts["computed"]
                    # one SCA call per (chunk, P), P fastest: every window exists at every horizon
                    calls = {P: recorder.calls[p::len(args.pred_lens)] for p, P in enumerate(args.pred_lens)}
                else:
                    got, computed, calls = {}, 0, {}
                    for P in args.pred_lens:
                        first_call = len(recorder.calls)
                        got[P], job_counts = embed_windows(teacher, prompts[P], windows, FIDELITY, budget)
                        computed += job_counts["computed"]
                        calls[P] = recorder.calls[first_call:]
                synchronize(args.device)
                wall = time.perf_counter() - start
            runs[way].append({"seconds": wall, "model_positions": counts["model_tokens"],
                              "real_positions": computed, "peak_rss_bytes_after": peak_rss_bytes()})
            out[way] = got
            states[way] = {P: concatenated(calls[P]) for P in args.pred_lens}
    # The rounding floor: (a) itself with other batches (a quarter of the budget), once, untimed.
    progress("whole job: one job per horizon again at a quarter of the token budget (the rounding floor)")
    floor, floor_states = {}, {}
    for P in args.pred_lens:
        recorder.calls.clear()
        floor[P], _ = embed_windows(teacher, prompts[P], windows, FIDELITY, budget // 4)
        floor_states[P] = concatenated(recorder.calls)
    diff = max(float(np.abs(out["trie"][P] - out["per_horizon"][P]).max()) for P in args.pred_lens)
    states_diff = max(float(np.abs(states["trie"][P] - states["per_horizon"][P]).max()) for P in args.pred_lens)
    result = {"windows": [int(window) for window in windows], "pred_lens": args.pred_lens,
              "precision": args.precision,
              "batch_tokens": budget, "rounds": args.whole_rounds, "max_abs_diff": diff,
              "largest_value": max(float(np.abs(out["trie"][P]).max()) for P in args.pred_lens),
              "max_abs_diff_states": states_diff,
              "largest_state": max(float(np.abs(states["trie"][P]).max()) for P in args.pred_lens),
              "floor_batch_tokens": budget // 4,
              "floor_max_abs_diff": max(float(np.abs(floor[P] - out["per_horizon"][P]).max()) for P in args.pred_lens),
              "floor_max_abs_diff_states": max(float(np.abs(floor_states[P] - states["per_horizon"][P]).max())
                                               for P in args.pred_lens)}
    for way, way_runs in runs.items():
        fastest = min(run["seconds"] for run in way_runs)
        result[way] = {"s_per_window": fastest / len(windows),
                       "seconds_all_rounds": [run["seconds"] for run in way_runs],
                       "model_positions_per_window": way_runs[0]["model_positions"] / len(windows),
                       "real_positions_per_window": way_runs[0]["real_positions"] / len(windows),
                       "peak_rss_bytes_after": [run["peak_rss_bytes_after"] for run in way_runs]}
    result["trie_peak_rss_bytes"] = runs["trie"][0]["peak_rss_bytes_after"]
    result["positions_ratio"] = (result["per_horizon"]["model_positions_per_window"]
                                 / result["trie"]["model_positions_per_window"])
    result["speedup"] = result["per_horizon"]["s_per_window"] / result["trie"]["s_per_window"]
    return result


WORKERS = {"horizon": run_horizon, "baseline": run_baseline, "savings": run_savings, "whole": run_whole,
           "share": run_share, "family": run_family}


def worker_main(args) -> None:
    """Run the worker args.worker and write its figures to <workdir>/<worker>_P<pred_len>.json
    (the family worker: <workdir>/<args.out_name>)."""
    quiet_libraries()
    result = WORKERS[args.worker](args)
    path = args.workdir / (args.out_name or f"{args.worker}_P{args.pred_len}.json")
    write_text(path, json.dumps(result, indent=2) + "\n")

