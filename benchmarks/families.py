"""`make bench`'s family section: the workflow against the plain reference for each teacher family.

For each family, a random-weight model of a published shape (width, heads, kv heads, MLP width,
vocabulary, rotary settings from the model's public config.json) with that family's real
tokenizer reads the same real weather windows twice, each way in a fresh process:
- the workflow: `embed_horizons` (the shared trie, the last block on the kept rows only, one
  forward per batch of the token budget), for one horizon at a time and for all of them at once;
- the plain reference: tests/plain_teacher.py, the project's independent oracle (each prompt its
  own forward through the family's transformers class with eager attention and the 4D additive
  mask; GPT-2's blocks written out by hand), imported from its file, not copied.
Measured per way: model positions (counted at the token embedding), seconds per window, and the
peak resident memory of the run above the loaded model. The oracle runs in fp32 on the CPU, so
this section does too, whatever the bench's --device: peak memory is the process's peak RSS,
its high-water mark reset after loading (/proc/self/clear_refs), so that neither loading's
transient copies nor another measurement's peak hide the run's own. tracemalloc would not see
torch's allocations at all.

The workflow's grouped-query keys and values stay at their kv heads: the worker records the heads
of every key tensor handed to attention, and what torch allocates for one attention call of the
widest trie level against the same call on keys and values expanded to every query head.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import (
    DATASET,
    FIDELITY,
    SEED,
    SEQ_LEN,
    bench_env,
    count_model_tokens,
    plain_teacher,
    progress,
    train_split,
)

# The public config.json of each checkpoint whose shape is benchmarked (values verified against the
# published files; rope_theta and rope scaling as there). vocab_size: the model's; the llama3
# tokenizer here has one token more than Llama-3.2-1B's table (128,257: a conversion artefact,
# ../shared README), so that table grows by one row, which changes no measured cost.
SHAPES = {
    "gpt2": {
        "label": "GPT-2 small", "source": "https://huggingface.co/openai-community/gpt2/blob/main/config.json",
        "tokenizer": None, "config_class": "GPT2Config", "model_class": "GPT2Model",
        "config": dict(n_layer=12, n_embd=768, n_head=12, n_positions=1024, vocab_size=50257)},
    "qwen2": {
        "label": "Qwen2.5-0.5B", "source": "https://huggingface.co/Qwen/Qwen2.5-0.5B/blob/main/config.json",
        "tokenizer": "qwen2", "config_class": "Qwen2Config", "model_class": "Qwen2ForCausalLM",
        "config": dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                       intermediate_size=4864, vocab_size=151936, tie_word_embeddings=True, rope_theta=1000000.0,
                       max_position_embeddings=32768, rms_norm_eps=1e-6, use_sliding_window=False,
                       hidden_act="silu")},
    "llama": {
        "label": "Llama-3.2-1B", "source": "https://huggingface.co/meta-llama/Llama-3.2-1B/blob/main/config.json",
        "tokenizer": "llama3", "config_class": "LlamaConfig", "model_class": "LlamaForCausalLM",
        "config": dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
                       head_dim=64, intermediate_size=8192, vocab_size=128256, tie_word_embeddings=True,
                       rope_theta=500000.0, max_position_embeddings=131072, rms_norm_eps=1e-5, hidden_act="silu",
                       rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                     "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})},
}
# --family-size tiny (tests): each family's real tokenizer and vocabulary, a width of 64.
TINY = {"gpt2": dict(n_embd=64, n_head=4),
        "qwen2": dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128),
        "llama": dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                      intermediate_size=128)}
DEPTH = {"gpt2": "n_layer"}                     # the config's depth field where it is not num_hidden_layers
NEARBY_MATMUL = 2048                            # the matmul rate right after each run, for the machine's share


def depth_key(family: str) -> str:
    return DEPTH.get(family, "num_hidden_layers")


def family_config(family: str, layers: int | None, size: str, vocab: int) -> dict:
    """The config fields of `family`'s model folder: the public shape (or tiny), its first `layers` blocks."""
    fields = SHAPES[family]["config"] | (TINY[family] if size == "tiny" else {})
    fields = fields | {"vocab_size": max(fields["vocab_size"], vocab)}
    return fields | ({depth_key(family): layers} if layers else {})


def make_family_dir(path: Path, family: str, tokenizer_dir: Path, layers: int | None, size: str = "public") -> dict:
    """A random-weight model folder of `family` as on the hub (GPT2Model's keys as openai-community/gpt2
    has them, *ForCausalLM for the others), with the real tokenizer files.

    Args:
        tokenizer_dir: the family's tokenizer folder (GPT-2: vocab.json and merges.txt; else tokenizer.json).
        layers: the first blocks kept (None: all of the public shape).
    Returns:
        {"config": the config fields written, "full_depth_weight_bytes": fp32 bytes of the base
        model at the public depth (counted on the meta device)}.
    """
    import transformers
    from transformers import AutoTokenizer
    shape = SHAPES[family]
    vocab = len(AutoTokenizer.from_pretrained(tokenizer_dir)) if shape["tokenizer"] else 0   # GPT-2: its own
    fields = family_config(family, layers, size, vocab)
    config_class = getattr(transformers, shape["config_class"])
    model_class = getattr(transformers, shape["model_class"])
    torch.manual_seed(SEED)
    model_class(config_class(**fields)).save_pretrained(path, safe_serialization=True)
    for name in ("vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json"):
        if (tokenizer_dir / name).exists():
            shutil.copy(tokenizer_dir / name, path / name)
    full = family_config(family, None, size, fields["vocab_size"])
    with torch.device("meta"):
        base = model_class(config_class(**full)).base_model
    return {"config": fields, "full_depth_weight_bytes": 4 * sum(p.numel() for p in base.parameters())}


# ----------------------------------------------------------------------------- memory


def _status_bytes(field: str) -> int:
    return int(re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M).group(1)) * 1024


def reset_peak() -> int:
    """Reset this process's peak RSS to its current RSS (Linux clear_refs 5); returns the current RSS."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status_bytes("VmRSS")


def peak_rss() -> int:
    """This process's peak RSS since the last reset_peak (VmHWM; the same as ru_maxrss after a reset)."""
    return _status_bytes("VmHWM")


# ----------------------------------------------------------------------------- the worker


def family_inputs(args, model_dir: Path):
    """The tokenizer, the train split, the windows (spread over those every horizon has) and the
    split's prompts per horizon, built as an extraction job builds them."""
    from timekd_embed.checkpoint import load_config, load_tokenizer
    from timekd_embed.families import context_length
    from timekd_embed.sampling import sample_windows
    from timekd_embed.settings import Settings
    from timekd_embed.shards import planned_windows
    from timekd_embed.split_job import prepare_split
    split = train_split(args.csv)
    pred_lens = args.pred_lens
    available = planned_windows(len(split.rows), SEQ_LEN, max(pred_lens), None)
    windows = sample_windows({"train": available}, args.windows)["train"]
    settings = Settings(name=DATASET, template=None, seq_len=SEQ_LEN, model=str(model_dir), revision=None,
                        layers=None, precision="fp32", fidelity=FIDELITY, limit_windows=None)
    tokenizer = load_tokenizer(str(model_dir))
    job = prepare_split(tokenizer, split, settings, pred_lens, context_length(load_config(str(model_dir))),
                        up_to=int(windows[-1]) + 1)
    return settings, split, windows, job.prompts


def allocated_bytes(call) -> int:
    """Bytes torch allocates while `call` runs, frees not subtracted (so at least the call's peak above
    its inputs), from the profiler's memory records. The RSS cannot show allocations that reuse memory
    the allocator already holds, as it does after a run."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        call()
    return sum(max(0, event.self_cpu_memory_usage) for event in prof.events() if event.name != "[memory]")


def attention_probe(teacher, prompts, windows: np.ndarray, batch_tokens: int) -> dict:
    """The first block's attention of the widest trie level of the first batch, as the workflow runs
    it: the heads of its keys, and what torch allocates for the call, against the same call with the
    keys and values expanded to every query head first (as eager attention's repeat_kv does)."""
    import torch.nn.functional as F

    from timekd_embed.lm import first_block_attention
    from timekd_embed.packing import model_inputs
    model = teacher.model
    batch = model_inputs(prompts, windows[:1], FIDELITY, batch_tokens).batches[0]
    q, k, v, mask = first_block_attention(model, batch, torch.device("cpu"))
    group = q.shape[1] // k.shape[1]
    with torch.inference_mode():
        ours = allocated_bytes(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=group > 1))
        expanded = allocated_bytes(lambda: F.scaled_dot_product_attention(
            q, k.repeat_interleave(group, 1), v.repeat_interleave(group, 1), attn_mask=mask))
    return {"query_heads": int(q.shape[1]), "key_heads": int(k.shape[1]), "rows": int(q.shape[0]),
            "queries": int(q.shape[2]), "keys": int(k.shape[2]), "call_allocated_bytes": ours,
            "expanded_call_allocated_bytes": expanded, "keys_values_bytes": 2 * k.numel() * k.element_size(),
            "keys_values_expanded_bytes": 2 * group * k.numel() * k.element_size(),
            "kv_heads_config": int(getattr(model.config, "num_key_value_heads", None) or q.shape[1])}


class KeyHeads:
    """Records the heads of every key tensor handed to scaled_dot_product_attention (calls through)."""

    def __init__(self):
        self.heads: set[int] = set()
        self.calls = 0

    def __enter__(self):
        import torch.nn.functional as F
        self.original = F.scaled_dot_product_attention

        def spy(q, k, v, *rest, **options):
            self.heads.add(int(k.shape[1]))
            self.calls += 1
            return self.original(q, k, v, *rest, **options)
        F.scaled_dot_product_attention = spy
        return self

    def __exit__(self, *exc):
        import torch.nn.functional as F
        F.scaled_dot_product_attention = self.original


def _warm_up(model, ids: np.ndarray) -> None:
    """One short forward: library init and kernel choice stay out of the timing."""
    with torch.inference_mode():
        model(input_ids=torch.from_numpy(ids[:64])[None], use_cache=False)


def run_workflow(args, model_dir: Path) -> dict:
    """embed_horizons over the windows at args.pred_lens (one trie for all of them)."""
    from timekd_embed.extract import embed_horizons
    from timekd_embed.teacher import load_teacher
    settings, _, windows, prompts = family_inputs(args, model_dir)
    teacher = load_teacher(settings.teacher, args.workdir / f"sca-{args.family}.safetensors", ["cpu"])
    first = next(iter(prompts.values()))
    _warm_up(teacher.model, first.window_ids(int(windows[0])).gt[0])
    progress(f"{args.family}: workflow, P = {', '.join(map(str, args.pred_lens))}, {len(windows)} window(s)")
    loaded = reset_peak()
    with count_model_tokens(teacher.model) as counts, KeyHeads() as spy:
        start = time.perf_counter()
        out, job_counts = embed_horizons(teacher, prompts, windows, FIDELITY, args.batch_tokens)
        wall = time.perf_counter() - start
    peak = peak_rss()
    for P, embeddings in out.items():
        np.save(args.workdir / embeddings_name(args.out_name, P), embeddings)
    probe = attention_probe(teacher, prompts, windows, args.batch_tokens)
    return {"key_heads_seen": sorted(spy.heads), "attention_calls": spy.calls, "attention_probe": probe,
            "loaded_rss_bytes": loaded, "peak_rss_bytes": peak, "computed_positions": int(job_counts["computed"]),
            "prompt_tokens": int(job_counts["tokens"]), **_common(args, windows, wall, counts)}


def run_plain(args, model_dir: Path) -> dict:
    """tests/plain_teacher.py's plain_teacher on the windows, once per horizon in args.pred_lens."""
    import transformers
    from transformers import AutoTokenizer

    from timekd_embed.sca import load_sca
    from timekd_embed.table import stamps
    _, split, windows, _ = family_inputs(args, model_dir)
    oracle = plain_teacher()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model_class = getattr(transformers, SHAPES[args.family]["model_class"])
    model = model_class.from_pretrained(model_dir, attn_implementation="eager", dtype=torch.float32).eval()
    sca_state = load_sca(args.workdir / f"sca-{args.family}.safetensors").state_dict()
    raw, split_stamps = split.raw, stamps(split.dates)
    _warm_up(model, np.array(tokenizer.encode("From 01/01/2020 00:10 to <01/01/2020")))
    progress(f"{args.family}: plain reference, P = {', '.join(map(str, args.pred_lens))}, {len(windows)} window(s)")
    loaded = reset_peak()
    with count_model_tokens(model) as counts:
        start = time.perf_counter()
        out = {P: oracle.plain_teacher(raw, split_stamps, windows, P, DATASET, tokenizer, model, sca_state, FIDELITY)
               for P in args.pred_lens}
        wall = time.perf_counter() - start
    peak = peak_rss()
    for P, embeddings in out.items():
        np.save(args.workdir / embeddings_name(args.out_name, P), embeddings)
    return {"loaded_rss_bytes": loaded, "peak_rss_bytes": peak, **_common(args, windows, wall, counts)}


def _common(args, windows: np.ndarray, wall: float, counts: dict) -> dict:
    from benchmarks.common import matmul_roofline
    return {"family": args.family, "way": args.way, "pred_lens": list(args.pred_lens),
            "windows": windows.tolist(), "s_per_window": wall / len(windows), "wall_s": wall,
            "model_positions_per_window": counts["model_tokens"] / len(windows),
            "torch_threads": torch.get_num_threads(),
            "matmul_flops_per_s_after": matmul_roofline("cpu", "fp32", (NEARBY_MATMUL,))["flops_per_s"]}


def run_family(args) -> dict:
    """One way (args.way: workflow or plain) of one family (args.family) in this fresh process."""
    torch.manual_seed(SEED)
    model_dir = args.workdir / f"family-{args.family}"
    return (run_workflow if args.way == "workflow" else run_plain)(args, model_dir)


def embeddings_name(out_name: str, pred_len: int) -> str:
    """Where a run with figures `out_name` leaves its embeddings at `pred_len`, for the parent's comparison."""
    return f"{Path(out_name).stem}_P{pred_len}.npy"


# ----------------------------------------------------------------------------- the parent


def spawn_family(args, workdir: Path, family: str, way: str, pred_lens: list[int]) -> dict:
    """One way of one family at `pred_lens` in a fresh interpreter (its peak memory its own); its figures."""
    out_name = f"family_{family}_{way}_{'-'.join(map(str, pred_lens))}.json"
    cmd = [sys.executable, "-m", "benchmarks.run", "--worker", "family", "--family", family, "--way", way,
           "--pred-lens", *map(str, pred_lens), "--pred-len", str(pred_lens[0]), "--workdir", str(workdir),
           "--csv", str(args.csv), "--tokenizer", str(args.tokenizer), "--device", "cpu", "--precision", "fp32",
           "--windows", str(args.family_windows), "--batch-tokens", str(args.batch_tokens), "--out-name", out_name]
    subprocess.run(cmd, check=True, env=bench_env())
    return json.loads((workdir / out_name).read_text()) | {"out_name": out_name}


def largest_difference(workdir: Path, workflow: dict, plain: dict, pred_len: int) -> tuple[float, float]:
    """(largest |workflow - plain| of the embeddings at pred_len, largest |plain|)."""
    got = np.load(workdir / embeddings_name(workflow["out_name"], pred_len))
    want = np.load(workdir / embeddings_name(plain["out_name"], pred_len))
    return float(np.abs(got - want).max()), float(np.abs(want).max())


def one_family(args, workdir: Path, family: str) -> dict:
    """Both ways of `family` at each horizon alone (side by side: workflow, then plain), then the
    workflow at every horizon in one trie; the model folder is removed afterwards."""
    from timekd_embed.sca import save_sca
    shape, layers = SHAPES[family], args.family_layers or None
    tokenizer_dir = args.tokenizer if shape["tokenizer"] is None else args.tokenizers / shape["tokenizer"]
    model_dir = workdir / f"family-{family}"
    progress(f"family {family}: writing a random {shape['label']}-shaped model ({args.family_size}, "
             f"{layers or 'all'} layers)")
    made = make_family_dir(model_dir, family, tokenizer_dir, layers, args.family_size)
    width = made["config"].get("hidden_size") or made["config"]["n_embd"]
    n_vars = len(train_split(args.csv).variables)
    save_sca(workdir / f"sca-{family}.safetensors", n_vars=n_vars, d_model=width, seed=SEED)
    horizons = []
    for P in args.family_pred_lens:
        workflow, plain = (spawn_family(args, workdir, family, way, [P]) for way in ("workflow", "plain"))
        diff, largest = largest_difference(workdir, workflow, plain, P)
        horizons.append({"pred_len": P, "workflow": workflow, "plain": plain, "max_abs_diff": diff,
                         "largest_value": largest, **ratios(workflow, [plain])})
    result = {"family": family, "label": shape["label"], "source": shape["source"], "config": made["config"],
              "layers": made["config"][depth_key(family)], "public_layers": SHAPES[family]["config"][depth_key(family)],
              "full_depth_weight_bytes": made["full_depth_weight_bytes"], "horizons": horizons}
    if len(args.family_pred_lens) > 1:                 # the trie across horizons, against the plain runs summed
        together = spawn_family(args, workdir, family, "workflow", args.family_pred_lens)
        diff = max(largest_difference(workdir, together, h["plain"], h["pred_len"])[0] for h in horizons)
        result["all_horizons"] = {"workflow": together, "max_abs_diff": diff,
                                  **ratios(together, [h["plain"] for h in horizons])}
    shutil.rmtree(model_dir)
    return result


def ratios(workflow: dict, plains: list[dict]) -> dict:
    """Plain over workflow: model positions and seconds per window (plain runs summed over horizons)."""
    positions = sum(plain["model_positions_per_window"] for plain in plains)
    seconds = sum(plain["s_per_window"] for plain in plains)
    return {"positions_ratio": positions / workflow["model_positions_per_window"],
            "speedup": seconds / workflow["s_per_window"]}


def family_section(args, workdir: Path) -> dict:
    """The family section: every family of args.families, one after the other."""
    start = time.perf_counter()
    section = {"windows": args.family_windows, "pred_lens": args.family_pred_lens, "size": args.family_size,
               "layers": args.family_layers or None, "batch_tokens": args.batch_tokens, "device": "cpu",
               "precision": "fp32", "fidelity": FIDELITY, "split": "train",
               "families": [one_family(args, workdir, family) for family in args.families]}
    section["wall_s"] = time.perf_counter() - start
    return section
