"""The project's speed and memory targets (`make bench`'s Targets table, the GPU ones also in
`make gpu-check`'s report: gpu_targets, weather_eta_target) and the figures derived
from the workers' measurements before rendering (`summarize`: roofline fractions, prompt building
against the model). A target this run cannot see says why instead of passing or failing.
"""

from __future__ import annotations

from benchmarks.common import GB, GIB, horizon, job_rss
from benchmarks.render import fmt

# The targets.
CPU_S_PER_WINDOW_P24 = 4.5
CPU_RSS_BYTES = 3 * GB
GPU_WINDOWS_PER_S = {24: 200.0, 192: 60.0}
GPU_PEAK_BYTES_P192 = 8 * GIB
# The whole weather job (every horizon of train and val) on one GPU: the extraction issue's "tens of
# minutes on one modern GPU if the code runs near the chip's limit", read as at most an hour.
GPU_WEATHER_JOB_ETA_S = 3600
WHOLE_POSITIONS_RATIO, WHOLE_SPEEDUP = 1.6, 1.4   # the horizons issue's targets for the shared trie


def summarize(report: dict) -> None:
    """Derived figures: roofline fractions, prompt building against the model, and the targets."""
    roof = report["roofline"]
    # Contention only ever lowers a matmul rate, so the best one seen is the machine's.
    roof["best_observed_flops_per_s"] = max([roof["flops_per_s"]] +
                                            [result["roofline_nearby_flops_per_s"] for result in report["horizons"]])
    for result in report["horizons"]:
        result["roofline_fraction"] = result["naive_flops_per_s"] / roof["best_observed_flops_per_s"]
        building = result["prompt_building"]
        building["window_ids_vs_plain"] = building["window_ids_prompts_per_s"] / building["plain_prompts_per_s"]
        building["window_ids_vs_model"] = building["window_ids_prompts_per_s"] / result["prompts_per_s_model"]
        building["plain_vs_model"] = building["plain_prompts_per_s"] / result["prompts_per_s_model"]
    report["targets"] = targets(report)


def targets(report: dict) -> list[dict]:
    """The issue's targets; a target this run cannot see says why instead of passing or failing."""
    settings = report["settings"]
    on_cpu, rows = settings["device"] == "cpu", []

    def row(*args, **kwargs):
        rows.append(target_row(*args, **kwargs))

    result_24 = horizon(report, 24)
    why = ("ran on GPU" if not on_cpu else "precision " + settings["precision"] if settings["precision"] != "fp32"
           else "P=24 not run" if result_24 is None else None)
    value = result_24["s_per_window"] if why is None else None
    # The weight matmuls still run, at the best matmul rate seen: no faster kernel goes below that.
    best_rate = report["roofline"]["best_observed_flops_per_s"]
    floor = None if why else result_24["issued_matmul_flops"] / result_24["windows"] / best_rate
    note = None if why else (f"process CPU time {fmt(result_24['cpu_s_per_window'])} s on "
                             f"{result_24['torch_threads']} threads; "
                             f"its weight matmuls alone take {fmt(floor)} s at the best matmul rate of this run")
    row(f"CPU fp32, P=24: at most {CPU_S_PER_WINDOW_P24} s per window", value,
        why is None and value <= CPU_S_PER_WINDOW_P24, "s/window", why, note)

    upto = [result for result in report["horizons"] if result["pred_len"] <= 192]
    worst = max(upto, key=job_rss) if upto else None
    budget = settings["probe_batch_tokens"] if worst and "probe" in worst else settings["batch_tokens"]
    row(f"peak RSS at most {CPU_RSS_BYTES / GB:.0f} GB for every P up to 192 "
        f"(batch_tokens {budget}; worst: P={worst['pred_len'] if worst else '-'})",
        job_rss(worst) / GB if worst else None,
        bool(worst) and job_rss(worst) <= CPU_RSS_BYTES, "GB", None if worst else "no P up to 192 run")

    rows += gpu_targets(report["horizons"], "no GPU" if on_cpu else None)
    whole_targets(report, row)
    family_targets(report, row)
    return rows


def target_row(name: str, value, ok: bool, unit: str, why: str | None = None, note: str | None = None) -> dict:
    """One row of a Targets table: met, not met, or not measured (why)."""
    status = "met" if ok else "not met"
    return {"target": name, "measured": value, "unit": unit, "note": note,
            "status": status if why is None else f"not measured ({why})"}


def gpu_targets(horizons: list[dict], why: str | None) -> list[dict]:
    """The GPU targets of `embed_windows` per horizon: windows/s at P=24 and P=192, peak GPU memory at P=192.

    Args:
        horizons: benchmarks.workers.run_horizon's figures, one per horizon run.
        why: why this run cannot measure them (e.g. "no GPU"), or None.
    Returns:
        target_row's rows.
    """
    rows, report = [], {"horizons": horizons}
    for P, want in GPU_WINDOWS_PER_S.items():
        result = horizon(report, P)
        reason = why or (f"P={P} not run" if result is None else None)
        value = result["windows_per_s"] if reason is None else None
        rows.append(target_row(f"GPU, P={P}: at least {want:.0f} windows/s", value,
                               reason is None and value >= want, "windows/s", reason))
    result = horizon(report, 192)
    reason = why or ("P=192 not run" if result is None else None)
    value = max(result["gpu_peak_allocated_bytes"].values()) / GIB if reason is None else None
    rows.append(target_row(f"GPU, P=192: peak GPU memory at most {GPU_PEAK_BYTES_P192 / GIB:.0f} GiB", value,
                           reason is None and value * GIB <= GPU_PEAK_BYTES_P192, "GiB", reason))
    return rows


def weather_eta_target(eta_s: float | None, why: str | None) -> dict:
    """The whole weather job's ETA (preflight's, every horizon of train and val) against GPU_WEATHER_JOB_ETA_S."""
    return target_row(f"GPU: the whole weather job in at most {GPU_WEATHER_JOB_ETA_S / 3600:.0f} h (preflight's ETA)",
                      None if why else eta_s / 3600, why is None and eta_s <= GPU_WEATHER_JOB_ETA_S, "h", why)


def whole_targets(report: dict, row) -> None:
    """The horizons issue's targets for the shared trie (whole-job section)."""
    whole = report.get("whole_job")
    why = None if whole else "whole-job section not run"
    fp32 = whole is not None and whole["precision"] == "fp32"
    row(f"whole job: at least {WHOLE_POSITIONS_RATIO}x fewer model positions than one job per horizon",
        whole and whole["positions_ratio"], bool(whole) and whole["positions_ratio"] >= WHOLE_POSITIONS_RATIO, "x", why)
    row(f"whole job: at least {WHOLE_SPEEDUP}x faster than one job per horizon (same run)",
        whole and whole["speedup"], bool(whole) and whole["speedup"] >= WHOLE_SPEEDUP, "x", why)
    not_fp32 = why or (None if fp32 else "not fp32")
    row("whole job: the trie's language-model states equal one job per horizon within 1e-5 (fp32)",
        whole and whole["max_abs_diff_states"], fp32 and whole["max_abs_diff_states"] <= 1e-5, "", not_fp32)
    row("whole job: the embeddings (after the SCA) equal one job per horizon within 1e-5 (fp32)",
        whole and whole["max_abs_diff"], fp32 and whole["max_abs_diff"] <= 1e-5, "", not_fp32)
    row(f"whole job: peak RSS at most {CPU_RSS_BYTES / GB:.0f} GB (trie, batch_tokens "
        f"{whole['batch_tokens'] if whole else '-'})", whole and whole["trie_peak_rss_bytes"] / GB,
        bool(whole) and whole["trie_peak_rss_bytes"] <= CPU_RSS_BYTES, "GB", why)


def family_targets(report: dict, row) -> None:
    """The families issue's target: each family's exact savings against the plain reference."""
    section = report.get("families")
    for family in (section or {}).get("families", [{"label": "every family", "horizons": []}]):
        horizons = family["horizons"]
        why = None if horizons else "family section not run"
        ratio = min((horizon["positions_ratio"] for horizon in horizons), default=None)
        diff = max((horizon["max_abs_diff"] for horizon in horizons), default=None)
        row(f"{family['label']}: fewer model positions than the plain reference at every horizon, embeddings "
            "equal within 1e-4 (fp32)", ratio, why is None and ratio > 1 and diff <= 1e-4, "x (smallest ratio)", why,
            None if why else f"largest difference {diff:.1e}")
