"""The Markdown of `make bench` (docs/benchmarks.md): one section per worker's figures, the machine
and settings, and the targets, rendered from the report dict that benchmarks/run.py also writes as
JSON beside it. Formatting only: every figure comes from the report.
"""

from __future__ import annotations

from benchmarks.common import BASELINE_P, FIDELITY, GB, GIB, ROOFLINE_SIZE_NEARBY, SPLIT, horizon, job_rss
from benchmarks.workers import PLAIN_WINDOWS, PROMPT_WINDOWS, TIMED_REPEATS


def fmt(value, digits=3) -> str:
    """A figure to `digits` significant digits (whole numbers from 100 on); '-' for none."""
    if value is None:
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.{digits}g}"


def table(header: list[str], rows: list[list]) -> str:
    """A Markdown table: one header row, then one row per list (cells as str)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


# Runs of one way further apart than this: the machine was shared, and a time ratio says little.
NOISY_SPREAD = 1.2


def render_markdown(report: dict, json_name: str) -> str:
    """The whole Markdown report of benchmarks/run.py's `report` (after targets.summarize), linking
    the JSON file `json_name`; sections of workers that did not run are left out; no final newline."""
    sections = [md_intro(report, json_name), md_machine(report), md_horizons(report), md_baseline(report),
                md_savings(report), md_whole(report), md_families(report), md_prompts(report), md_targets(report)]
    return "\n\n".join(section for section in sections if section)


def md_intro(report: dict, json_name: str) -> str:
    """Title, the command that wrote the report, and what was measured how."""
    settings, roof = report["settings"], report["roofline"]
    return "\n".join([
        "# Benchmarks",
        "",
        "Written by `python -m benchmarks.run --out docs/benchmarks.md` (`make bench`) on "
        f"{report['machine']['date']}. "
        "Every figure below was measured by that run; all of them, unrounded, are in "
        f"[`{json_name}`]({json_name}). Rerunning rewrites both files. On a machine with a GPU:",
        "",
        "```bash",
        "python -m benchmarks.run --out docs/benchmarks.md --device cuda --precision fp16",
        "```",
        "",
        "A GPT-2-small-shaped model (12 layers, d = 768, 12 heads, 1,024 positions) with random weights "
        "(speed and memory do not depend on the weight values) reads real windows of the weather.csv "
        f"{SPLIT} split ({settings['windows']} per horizon, spread evenly over the split) in fidelity `{FIDELITY}`. "
        "`embed_windows` is timed after a warm-up, each horizon in a fresh process so that its peak memory "
        "is its own. The roofline is the best square matmul "
        f"({', '.join(map(str, roof['sizes']))}; best of {roof['repeats']}) in the same precision. "
        "The naive FLOPs are those the published code computes, every token of both prompts through every "
        "layer: `n_layer * sum over prompts of L * (24 d^2 + 4 L d)` (weight matmuls 24 d^2 per token; "
        "attention scores and weighted values 4 L d for a prompt of L tokens; norms, GELU, softmax and "
        "the SCA left out). Divided by the measured time and the roofline they give the achieved fraction; "
        "work the package skips (shared prefixes and heads, duplicates, the last block's unused positions) raises it, "
        "padding lowers it. Other work on the "
        "machine slows everything, so compare ratios within one run.",
    ])


def md_machine(report: dict) -> str:
    """The machine, library versions, settings and the load average at start and end."""
    machine, settings = report["machine"], report["settings"]
    load = " / ".join(", ".join(f"{average:.2f}" for average in machine[key])
                      for key in ("load_average_at_start", "load_average_at_end"))
    return "## Machine and settings\n\n" + table(["", ""], [
        ["CPU", machine["cpu"]], ["cores (torch threads)", f"{machine['cores']} ({machine['torch_threads']})"],
        ["RAM", f"{fmt(machine['ram_bytes'] / GB)} GB"], ["GPU", machine["gpu"] or "none"],
        ["torch / transformers / tokenizers",
         f"{machine['torch']} / {machine['transformers']} / {machine['tokenizers']}"],
        ["python, OS", f"{machine['python']}, {machine['os']}"],
        ["device, precision", f"{settings['device']}, {settings['precision']}"],
        ["batch_tokens (timed runs)", fmt(settings["batch_tokens"])], ["windows per horizon", settings["windows"]],
        ["load average (1, 5, 15 min) at start / end", load],
        ["whole benchmark run (wall)", f"{fmt(report['total_wall_s'])} s"],
    ])


def md_horizons(report: dict) -> str:
    """Per horizon: speed, model positions, prompt lengths, peak memory, FLOP rates and the roofline."""
    settings, roof = report["settings"], report["roofline"]
    gpu = settings["device"] == "cuda"
    probed = any("probe" in result for result in report["horizons"])
    head = ["P", "windows", "s / window", "slowest run", "CPU s / window", "windows / s", "prompt tokens / s",
            "model / prompt tokens", "GT prompt tokens", "HD prompt tokens"]
    head += (["peak GPU memory (GiB)", "peak RSS (GB)"] if gpu else
             ["peak RSS (GB)"] + ([f"peak RSS at {fmt(settings['probe_batch_tokens'])} tokens (GB)"] if probed else []))
    head += ["naive GFLOP/s", "of roofline", "issued matmul GFLOP/s", "matmul GFLOP/s right after"]
    rows = []
    for result in report["horizons"]:
        row = [result["pred_len"], result["windows"], fmt(result["s_per_window"]),
               fmt(max(result.get("wall_s_all_repeats", [result["wall_s"]])) / result["windows"]),
               fmt(result["cpu_s_per_window"]),
               fmt(result["windows_per_s"]), fmt(result["tokens_per_s"]),
               fmt(result["token_counts"]["model_tokens"] / result["tokens"]),
               "{}-{}".format(*result["prompt_tokens_gt"]), "{}-{}".format(*result["prompt_tokens_hd"])]
        if gpu:
            row += [fmt(max(result["gpu_peak_allocated_bytes"].values()) / GIB), fmt(result["cpu_peak_rss_bytes"] / GB)]
        else:
            row += [fmt(result["cpu_peak_rss_bytes"] / GB)]
            row += [fmt(job_rss(result) / GB) if "probe" in result else "-"] if probed else []
        row += [fmt(result["naive_flops_per_s"] / 1e9), f"{result['roofline_fraction']:.0%}",
                fmt(result["issued_matmul_flops_per_s"] / 1e9), fmt(result["roofline_nearby_flops_per_s"] / 1e9)]
        rows.append(row)
    notes = [
        f"s / window: the fastest of {TIMED_REPEATS} runs after the warm-up; slowest run: the other end, "
        "for the noise. CPU s / window: the process's CPU time, all threads (below threads x wall time when other work "
        "took the cores; waiting threads may spin, so it is no contention-free measure). "
        "Prompt tokens: every token of both prompts "
        "(what the published code runs through the model). Model / prompt tokens: the positions that "
        "went through the model, padding included, per prompt token. Roofline: the best dense matmul "
        f"rate seen in this run, {fmt(roof['best_observed_flops_per_s'] / 1e9)} GFLOP/s (at the start "
        + ", ".join(f"{size}x{size}: {fmt(rate / 1e9)}" for size, rate in roof["flops_per_s_by_size"].items())
        + f" GFLOP/s; then a {ROOFLINE_SIZE_NEARBY}x{ROOFLINE_SIZE_NEARBY} matmul right after each "
        "horizon, last column, which shows how much of the machine other work left). Issued matmul "
        "GFLOP/s: the weight matmuls the extraction really ran (`24 d^2` per model position in every block "
        "but the last, `6 d^2` there) over the same time."]
    if probed:
        notes.append(
            f"Peak RSS is the timed run's (batch_tokens {fmt(settings['batch_tokens'])}). Memory grows with the token "
            "budget, so the longest horizon up to 192 (the highest peak: the mask and attention grow with the "
            "prompt length) also runs a memory probe at the workflow's budget "
            f"({fmt(settings['probe_batch_tokens'])}): "
            "`embed_windows` with a 1-layer model of the same width on enough windows to fill a batch, the "
            "full model still loaded. In inference mode a forward holds one layer's activations at a time, "
            "so depth adds only weights; the probe model's own weights are subtracted.")
    return "## Extraction per horizon (`embed_windows`)\n\n" + table(head, rows) + "\n\n" + "\n\n".join(notes)


def md_baseline(report: dict) -> str | None:
    """The published way against `embed_windows` on one window; None when the baseline did not run."""
    base, ours = report.get("baseline"), horizon(report, BASELINE_P)
    if not base:
        return None
    sec = base["seconds"]
    return "\n".join([
        "## Against the published way",
        "",
        f"Window {base['window']} at P = {BASELINE_P} computed the published way, in fp32: one prompt per "
        "forward, eager attention returning every layer's attention probabilities, the mask written element "
        "by element in a Python double loop, inside `torch.no_grad()` (the published code itself runs "
        "without it and needs far more memory; [teacher.md](teacher.md) section 6). Then `embed_windows` on the "
        "same window in the same process.",
        "",
        table(["", "published way (fp32)", f"embed_windows ({base['embed_windows_precision']})"], [
            ["s / window", fmt(base["s_per_window"]), fmt(base["embed_windows_s"])],
            ["CPU s / window", fmt(base["cpu_s_per_window"]), fmt(base["embed_windows_cpu_s"])],
            [f"matmul GFLOP/s right after ({ROOFLINE_SIZE_NEARBY}x{ROOFLINE_SIZE_NEARBY})",
             fmt(base["matmul_flops_per_s_after_published"] / 1e9),
             fmt(base["matmul_flops_per_s_after_embed_windows"] / 1e9)],
            ["of which: text + tokenize + types / mask loop / forward / SCA (s)",
             " / ".join(fmt(sec[k]) for k in ("tokenize", "mask", "forward", "sca")), "-"],
            ["peak RSS (GB)", fmt(base["cpu_peak_rss_bytes"] / GB),
             fmt(ours["cpu_peak_rss_bytes"] / GB) + " (horizon run above)" if ours else "-"],
        ]),
        "",
        f"Speed-up of `embed_windows` over the published way: {fmt(base['speedup'])}x in wall time, "
        f"{fmt(base['speedup_cpu_time'])}x in CPU time. Largest absolute "
        f"difference between the two embeddings of window {base['window']}: "
        f"{base['max_abs_diff_vs_embed_windows']:.2e}.",
    ])


def md_savings(report: dict) -> str | None:
    """The exact savings one at a time; None when that worker did not run."""
    savings = report.get("savings")
    if not savings:
        return None
    rows = [[step["step"], fmt(step["seconds"]), fmt(max(step["seconds_all_rounds"])),
             f"{fmt(step['speedup_vs_previous'])}x", f"{fmt(step['speedup_vs_plain'])}x", fmt(step["model_tokens"]),
             f"{step['max_abs_diff_vs_plain']:.1e}"]
            for step in savings["steps"]]
    return "\n".join([
        "## Exact savings, one at a time",
        "",
        f"Window {savings['window']} at P = {savings['pred_len']} ({fmt(savings['prompt_tokens'])} prompt tokens), "
        f"{savings['precision']}, batch_tokens {fmt(savings['batch_tokens'])}, nodes sorted by length, "
        "in one process; "
        f"each step timed {savings['rounds']} times, interleaved with the others, the fastest kept. Each step adds one "
        "saving to the one above; the last is what `embed_windows` runs. The model positions are exact; the "
        "times carry this machine's noise (compare the slowest round with the fastest), so a ratio within that "
        "spread says nothing either way. The difference is the largest absolute "
        "difference of the GT and HD last-token states from the plain path's (largest state: "
        f"{fmt(savings['largest_state'])}): float rounding, since every saving computes the same function.",
        "",
        table(["step", "s / window (fastest)", "slowest round", "vs previous", "vs plain", "model positions",
               "max diff vs plain"], rows),
    ])


def md_whole(report: dict) -> str | None:
    """One job per horizon against the shared trie; None when that worker did not run."""
    whole = report.get("whole_job")
    if not whole:
        return None
    spread = max(max(way["seconds_all_rounds"]) / min(way["seconds_all_rounds"])
                 for way in (whole["trie"], whole["per_horizon"]))
    rows = [[label, fmt(way["s_per_window"]), ", ".join(fmt(value) for value in way["seconds_all_rounds"]),
             fmt(way["model_positions_per_window"]), fmt(way["real_positions_per_window"]),
             ", ".join(fmt(value / GB) for value in way["peak_rss_bytes_after"])]
            for label, way in (("(a) one job per horizon, summed", whole["per_horizon"]),
                               ("(b) one shared trie per window", whole["trie"]))]
    return "\n".join([
        "## Whole job: every horizon of a window at once",
        "",
        f"Windows {', '.join(map(str, whole['windows']))} of the {SPLIT} split (spread over it), pred_lens "
        f"{', '.join(map(str, whole['pred_lens']))}, {whole['precision']}, "
        f"batch_tokens {fmt(whole['batch_tokens'])} (the "
        "workflow's default on this device), in one process: (a) `embed_windows` once per horizon, the sum over "
        "the horizons (what `share_horizons: false` runs), against (b) `embed_horizons`, one trie per window "
        f"(the default). Each ran {whole['rounds']} times, interleaved, (b) first; the fastest run counts. Model "
        "positions are exact, counted at the token embedding (padding included); real positions leave the "
        "padding out. Peak RSS is the process's after each run; (b) ran first, so its first figure is its own "
        f"peak, {fmt(whole['trie_peak_rss_bytes'] / GB)} GB.",
        "",
        table(["", "s / window, all horizons (fastest)", "every run (s)", "model positions / window",
               "real positions / window", "peak RSS after each run (GB)"], rows),
        "",
        f"(b) runs {fmt(whole['positions_ratio'])}x fewer model positions (exact) and is "
        f"{fmt(whole['speedup'])}x faster in "
        f"wall time (fastest against fastest). The runs of one way differ by up to {fmt(spread)}x here"
        + (": other work shared the machine, so a time ratio within that spread is no measurement of the saving; "
           "the positions are." if spread > NOISY_SPREAD else ", so the time ratio is a measurement."),
        "",
        "Largest absolute differences over every horizon, (b) against (a), and (a) against itself at batch_tokens "
        f"{fmt(whole['floor_batch_tokens'])} (other batches, the same code: float rounding alone):",
        "",
        table(["", "language-model states (what the trie computes)", "embeddings (after the SCA)"], [
            ["(b) against (a)", difference(whole["max_abs_diff_states"]), difference(whole["max_abs_diff"])],
            ["(a) against (a) at other batches", difference(whole["floor_max_abs_diff_states"]),
             difference(whole["floor_max_abs_diff"])],
            ["largest value", fmt(whole["largest_state"]), fmt(whole["largest_value"])]]),
        "",
        ("(b) and (a) give the same bits: batches are formed from the windows' heads and stems alone, and each "
         "horizon's leaves get tensors of their own, so both ways run the same operations on the same tensors. "
         if whole["max_abs_diff"] == 0 and whole["max_abs_diff_states"] == 0 else
         "Where (b) against (a) is no larger than (a) against itself, the trie adds nothing beyond float rounding. ")
        + "Another token budget forms other batches, and so rounds differently (second row). The SCA is the same "
          "code on both ways; it amplifies the last-bit differences of the states it is given (by the ratio of the "
          "two columns).",
        *md_prefix_shares(whole),
    ])


def md_prefix_shares(whole: dict) -> list[str]:
    """The shared trie at several shares of the budget for the heads and stems (none in older reports)."""
    shares = whole.get("prefix_shares")
    if not shares:
        return []
    rows = [[f"1/{round(1 / share['prefix_share'])}" if share["prefix_share"] < 1 else "all",
             fmt(share["s_per_window"]), fmt(share["model_positions_per_window"]), fmt(share["peak_rss_bytes"] / GB)]
            for share in shares]
    return ["", f"The shared trie again, once per share, each in a fresh process (no warm-up, so each time includes "
            f"the same first-call costs), with a batch's heads and stems given that share of batch_tokens "
            f"{fmt(shares[0]['batch_tokens'])}; every horizon's tails are alive with them through the blocks, so a "
            "larger share holds more memory. The workflow uses 1/6 (`packing.PREFIX_SHARE`).", "",
            table(["heads and stems get", "s / window, all horizons", "model positions / window", "peak RSS (GB)"],
                  rows)]


def difference(value: float) -> str:
    """A largest absolute difference: '0 (the same bits)', or 3 significant digits."""
    return "0 (the same bits)" if value == 0 else f"{value:.2e}"


def md_families(report: dict) -> str | None:
    """Per teacher family, the workflow against the plain reference; None when that section did not run."""
    section = report.get("families")
    if not section:
        return None
    layers, windows = section["layers"], section["families"][0]["horizons"][0]["workflow"]["windows"]
    size = "at its public width" if section["size"] == "public" else "tiny (width 64)"
    capped = (f"; **the CPU run keeps the first {layers} layer{'s' if layers > 1 else ''}** of each model (full "
              "width; `--family-layers`), so its time ratio gives the last layer, where the workflow runs queries "
              "and MLP on the kept rows only, a larger share than at full depth") if layers else "; every layer"
    lines = [
        "## Teacher families: the workflow against the plain reference",
        "",
        f"Each family's model is random-weight, {size} (the shape of the checkpoint's published config.json, linked "
        "below), with the family's real tokenizer, and reads window(s) "
        f"{', '.join(map(str, windows))} of the weather.csv {section['split']} split, fidelity "
        f"`{section['fidelity']}`, fp32, on the CPU{capped}. "
        "Two ways, each in a fresh process, side by side in this run: the workflow (`embed_horizons`: the trie of "
        "shared prefixes, the last layer on the kept rows only, one forward per batch of "
        f"{fmt(section['batch_tokens'])} tokens), and the plain reference, `tests/plain_teacher.py` imported as is "
        "(each prompt its own forward through the family's transformers class, eager attention, the 4D additive "
        "mask; GPT-2's blocks written out by hand, one head at a time, slower than GPT2Model's own forward: GPT-2's "
        "time ratio here overstates the saving, section \"Against the published way\" times GPT2Model itself). "
        "Model positions are counted at the token embedding (the "
        "workflow's padding included). Each way runs once after a short warm-up; the plain reference's time "
        "includes tokenizing its prompts (milliseconds), the workflow's excludes building the split's prompts "
        "(once per split). Peak memory: the process's peak RSS during the run, its high-water mark reset after "
        "loading (`/proc/self/clear_refs`, which resets `ru_maxrss` too), so loading's transient copies do not "
        "hide it; above loaded: that peak minus the RSS before the run. tracemalloc would miss torch's "
        "allocations; on a GPU `torch.cuda.max_memory_allocated` would be the measure, but the oracle runs on "
        "the CPU in fp32, so this section does too. The largest difference is between the two ways' embeddings "
        "(after the SCA).",
    ]
    for family in section["families"]:
        lines += ["", *md_family(family)]
    lines += ["", f"The family section took {fmt(section['wall_s'])} s (wall)."]
    return "\n".join(lines)


def md_family(family: dict) -> list[str]:
    """One family's shape, its table and its grouped-query attention check."""
    config, horizons = family["config"], family["horizons"]
    width = config.get("hidden_size") or config["n_embd"]
    heads = config.get("num_attention_heads") or config["n_head"]
    kv_heads = config.get("num_key_value_heads") or heads
    shape = (f"width {fmt(width)}, {family['public_layers']} layers ({family['layers']} run here), {heads} heads, "
             f"{kv_heads} kv heads, vocabulary {fmt(config['vocab_size'])}"
             + (f", MLP {fmt(config['intermediate_size'])}" if "intermediate_size" in config else "")
             + (f", rope_theta {config['rope_theta']:g}" if "rope_theta" in config else "")
             + (f", rope scaling {config['rope_scaling']['rope_type']}" if config.get("rope_scaling") else "")
             + (", tied embeddings" if config.get("tie_word_embeddings") else ""))
    rows = [[str(horizon["pred_len"]), *md_family_row(horizon, [horizon["plain"]])] for horizon in horizons]
    together = family.get("all_horizons")
    if together:
        rows.append([" + ".join(str(horizon["pred_len"]) for horizon in horizons) + " (one trie)",
                     *md_family_row(together, [horizon["plain"] for horizon in horizons])])
    return [f"### {family['label']} shape ({family['family']})", "",
            f"{shape}; [config.json]({family['source']}); fp32 weights at full depth "
            f"{fmt(family['full_depth_weight_bytes'] / GB)} GB.", "",
            table(["P", "model positions / window: workflow / plain", "positions ratio", "s / window: workflow / plain",
                   "time ratio", "peak RSS above loaded (GB): workflow / plain", "peak RSS (GB): workflow / plain",
                   "max diff / largest value"], rows), "", md_gqa(horizons[-1]["workflow"]), "", md_rates(family)]


def md_rates(family: dict) -> str:
    """The matmul rate right after each run: how much of the machine other work left it."""
    runs = [(f"{way} P={horizon['pred_len']}", horizon[way]) for horizon in family["horizons"]
            for way in ("workflow", "plain")]
    if "all_horizons" in family:
        runs.append(("workflow, one trie", family["all_horizons"]["workflow"]))
    rates = ", ".join(f"{name} {fmt(run['matmul_flops_per_s_after'] / 1e9)}" for name, run in runs)
    return (f"A 2048x2048 fp32 matmul right after each run ran at (GFLOP/s) {rates}: other work on the machine "
            "changes these, and the times with them; the model positions are exact.")


def md_family_row(entry: dict, plains: list[dict]) -> list[str]:
    """The cells of one row: entry["workflow"] against the plain runs (summed over horizons); entry
    holds the ratios and the largest difference."""
    ours = entry["workflow"]
    plain_positions = sum(plain["model_positions_per_window"] for plain in plains)
    plain_seconds = sum(plain["s_per_window"] for plain in plains)
    above = ", ".join(fmt((run["peak_rss_bytes"] - run["loaded_rss_bytes"]) / GB) for run in plains)
    peaks = ", ".join(fmt(run["peak_rss_bytes"] / GB) for run in plains)
    largest = f" / {fmt(entry['largest_value'])}" if "largest_value" in entry else ""
    return [f"{fmt(ours['model_positions_per_window'])} / {fmt(plain_positions)}", f"{fmt(entry['positions_ratio'])}x",
            f"{fmt(ours['s_per_window'])} / {fmt(plain_seconds)}", f"{fmt(entry['speedup'])}x",
            f"{fmt((ours['peak_rss_bytes'] - ours['loaded_rss_bytes']) / GB)} / {above}",
            f"{fmt(ours['peak_rss_bytes'] / GB)} / {peaks}", f"{entry['max_abs_diff']:.1e}{largest}"]


def md_gqa(workflow: dict) -> str:
    """The grouped-query attention check of one workflow run."""
    probe = workflow["attention_probe"]
    seen = ", ".join(map(str, workflow["key_heads_seen"]))
    if probe["kv_heads_config"] == probe["query_heads"]:
        return (f"No grouped-query attention ({probe['query_heads']} kv heads = heads): keys reached attention with "
                f"{seen} heads in all {workflow['attention_calls']} calls.")
    measured = (f" One first-block attention call of the widest trie level ({probe['rows']} rows x "
                f"{fmt(probe['queries'])} queries x {fmt(probe['keys'])} keys) made torch allocate "
                f"{fmt(probe['call_allocated_bytes'] / 1e6)} MB (profiler memory records), the same call on keys and "
                f"values expanded first {fmt(probe['expanded_call_allocated_bytes'] / 1e6)} MB."
                if "call_allocated_bytes" in probe else "")
    return (f"Grouped-query attention: in all {workflow['attention_calls']} attention calls of the run the keys had "
            f"{seen} head(s), the config's {probe['kv_heads_config']} kv heads of {probe['query_heads']} query heads: "
            "keys and values are kept, concatenated for the trie's children and handed to attention (SDPA with "
            "`enable_gqa`) at their own heads, never expanded; the plain reference's eager attention expands them "
            f"per prompt (`repeat_kv`). In the widest trie level of the first batch they take "
            f"{fmt(probe['keys_values_bytes'] / 1e6)} MB; expanded to every query head they would take "
            f"{fmt(probe['keys_values_expanded_bytes'] / 1e6)} MB.{measured}")


def md_prompts(report: dict) -> str:
    """Prompt building and tokenization per horizon, against the model's rate."""
    rows = [[result["pred_len"], fmt(result["split_prompts_construct_s"]), fmt(building["window_ids_prompts_per_s"]),
             fmt(building["plain_prompts_per_s"]), f"{fmt(building['window_ids_vs_plain'])}x",
             fmt(result["prompts_per_s_model"]), f"{fmt(building['window_ids_vs_model'])}x"]
            for result in report["horizons"] for building in [result["prompt_building"]]]
    return "\n".join([
        "## Prompt building and tokenization",
        "",
        f"`SplitPrompts.window_ids` on {PROMPT_WINDOWS} windows against the published route (build the "
        f"text, call the GPT-2 tokenizer once per prompt) on {PLAIN_WINDOWS} windows. Construction of "
        f"`SplitPrompts` covers the whole {SPLIT} split. The model's rate is `embed_windows` above.",
        "",
        table(["P", "construction (s)", "window_ids prompts / s", "text + tokenizer prompts / s",
               "window_ids / text + tokenizer", "model prompts / s", "window_ids / model"], rows),
    ])


def md_targets(report: dict) -> str:
    """The targets table: each target, its measured figure, and met / not met / not measured (why)."""
    rows = [[target["target"], "-" if target["measured"] is None else f"{fmt(target['measured'])} {target['unit']}"
             + (f" ({target['note']})" if target.get("note") else ""), target["status"]]
            for target in report["targets"]]
    return "## Targets\n\n" + table(["target", "measured", "status"], rows) + "\n"

