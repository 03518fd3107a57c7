"""The published way, side by side with `embed_windows` (`make bench`'s baseline worker): one window
at P = BASELINE_P computed as the published store_emb.py / clm.py do (Liu et al., ICDE 2025;
GitHub ChenxiLiu-HNU/TimeKD): one prompt per forward, eager attention returning every layer's
attention probabilities, the calibrated mask written element by element in a Python double loop
(tests/plain_teacher.py's `plain_mask`, the project's independent oracle), inside no_grad; then
`embed_windows` on the same window in the same process, for a ratio and a cross-check.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from benchmarks.common import (
    BASELINE_P,
    FIDELITY,
    ROOFLINE_SIZE_NEARBY,
    first_window_prompts,
    load_bench_teacher,
    matmul_roofline,
    peak_rss_bytes,
    plain_teacher,
    progress,
    synchronize,
    warm_up,
)


def published_window(model, tokenizer, sca, prompts, window: int, device: str) -> tuple[np.ndarray, dict]:
    """One window the published way, inside no_grad: (N, d) embeddings and seconds per stage."""
    plain_mask = plain_teacher().plain_mask       # the published double loop, -100 one element at a time
    n_vars, n_head = prompts.n_vars, model.config.n_head
    seconds = dict.fromkeys(("tokenize", "mask", "forward", "sca"), 0.0)
    start = time.perf_counter()
    texts = prompts.window_texts(window)
    ids = [[tokenizer.encode(gt), tokenizer.encode(hd)] for gt, hd in texts]
    # The published flag walk over token strings, as the package computes it (prompts.py).
    types = [[["time_series" if flag else "language" for flag in prompts.types(np.array(prompt_ids))]
              for prompt_ids in pair]
             for pair in ids]
    seconds["tokenize"] = time.perf_counter() - start
    last = torch.zeros(2, model.config.n_embd, n_vars, device=device)      # (GT/HD, d, N)
    for variable in range(n_vars):
        for kind in range(2):                 # 0: the GT prompt, 1: the HD prompt
            start = time.perf_counter()
            L = len(ids[variable][kind])
            # The published defect: every prompt takes the last variable's token types.
            mask = plain_mask(types[n_vars - 1][kind], L).to(device)
            future = torch.ones(L, L, dtype=torch.bool, device=device).triu(1)
            mask = mask.masked_fill(future, torch.finfo(mask.dtype).min)  # the causal part, as GPT-2 adds it
            mask = mask[None, None].repeat(1, n_head, 1, 1)              # repeated per head, as published
            synchronize(device)
            seconds["mask"] += time.perf_counter() - start
            start = time.perf_counter()
            out = model(input_ids=torch.tensor([ids[variable][kind]], device=device), attention_mask=mask,
                        output_attentions=True, output_hidden_states=True, use_cache=False)
            last[kind, :, variable] = out.last_hidden_state[0, -1]
            synchronize(device)
            seconds["forward"] += time.perf_counter() - start
    start = time.perf_counter()
    emb = sca(last[0][None], last[1][None])[0].T.cpu().numpy()          # (N, d)
    seconds["sca"] = time.perf_counter() - start
    tokens = sum(len(prompt_ids) for pair in ids for prompt_ids in pair)
    return emb, seconds | {"tokens": tokens}


def run_baseline(args) -> dict:
    """The published way on one window at P = BASELINE_P, then embed_windows on the same window in
    the same process: a side-by-side ratio and a cross-check of the two results."""
    from timekd_embed.checkpoint import load_tokenizer
    tokenizer = load_tokenizer(str(args.workdir / "model"))
    window, prompts = first_window_prompts(args, tokenizer, BASELINE_P)
    result, published = time_published(args, tokenizer, prompts, window)
    ours = time_embed_one(args, prompts, window)
    result.update({key: value for key, value in ours.items() if key != "embeddings"})
    result["speedup"] = result["s_per_window"] / result["embed_windows_s"]
    result["speedup_cpu_time"] = result["cpu_s_per_window"] / result["embed_windows_cpu_s"]
    result["max_abs_diff_vs_embed_windows"] = float(np.abs(ours["embeddings"][0] - published).max())
    return result


def time_published(args, tokenizer, prompts, window: int) -> tuple[dict, np.ndarray]:
    """The published way, in fp32 as published, in a process that has done nothing else yet
    (so that its peak RSS is its own)."""
    from transformers import GPT2Model

    from timekd_embed.sca import load_sca
    model = GPT2Model.from_pretrained(args.workdir / "model", attn_implementation="eager").to(args.device).eval()
    sca = load_sca(args.workdir / "sca.safetensors").to(args.device)
    with torch.no_grad():
        model(input_ids=torch.tensor([[464, 3290]], device=args.device))   # warm-up
        progress(f"baseline: window {window} at P={BASELINE_P}, one prompt per forward, eager attention")
        start, cpu = time.perf_counter(), time.process_time()
        published, seconds = published_window(model, tokenizer, sca, prompts, window, args.device)
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    result = {"pred_len": BASELINE_P, "window": window, "precision": "fp32", "s_per_window": wall,
              "cpu_s_per_window": cpu, "tokens": seconds.pop("tokens"), "seconds": seconds,
              "cpu_peak_rss_bytes": peak_rss_bytes()}
    result["tokens_per_s"] = result["tokens"] / wall
    if args.device == "cuda":
        result["gpu_peak_allocated_bytes"] = torch.cuda.max_memory_allocated(0)
    # How much of the machine each side got: other work may come or go between the two.
    result["matmul_flops_per_s_after_published"] = matmul_roofline(
        args.device, args.precision, (ROOFLINE_SIZE_NEARBY,))["flops_per_s"]
    return result, published


def time_embed_one(args, prompts, window: int) -> dict:
    """embed_windows on the baseline's window, with the bench's precision and budget."""
    from timekd_embed.extract import embed_windows
    teacher = load_bench_teacher(args, args.workdir / "model")
    warm_up(teacher, prompts, np.array([window]), args.device, args.batch_tokens)
    progress(f"baseline: the same window through embed_windows ({args.precision})")
    synchronize(args.device)
    start, cpu = time.perf_counter(), time.process_time()
    embeddings, _ = embed_windows(teacher, prompts, np.array([window]), FIDELITY, args.batch_tokens)
    synchronize(args.device)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    after = matmul_roofline(args.device, args.precision, (ROOFLINE_SIZE_NEARBY,))["flops_per_s"]
    return {"embeddings": embeddings, "embed_windows_s": wall, "embed_windows_cpu_s": cpu,
            "embed_windows_precision": args.precision, "matmul_flops_per_s_after_embed_windows": after}

