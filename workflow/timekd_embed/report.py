"""The reports people read: the validation report (one HTML item per (horizon, split), a histogram
per horizon, a summary) and the preflight report (Markdown).

Snakemake's HTML report (`snakemake --report report.html`) shows HTML and PNG results in
place, so every item is a self-contained HTML page (tables, no links to other files) or a
PNG; the summary embeds the histograms as data URIs. The rule `validate` marks them for the
report with labels (horizon, split); the captions in workflow/report/ are templates filled
from the config and the rule's params, so they say what ran.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

from .store import atomic_path, write_text
from .units import duration, gib

NOT_APPLICABLE = "Parity with fp32: not applicable, the production precision is fp32 (nothing to compare)."
STYLE = ("body{font-family:sans-serif;font-size:14px;margin:1em}table{border-collapse:collapse;margin:.5em 0}"
         "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f3f3f3}"
         "td:first-child,th:first-child{text-align:left}")


def _measured(parity: dict[int, dict]) -> dict[int, dict]:
    return {P: record["fp32_parity"] for P, record in parity.items() if isinstance(record.get("fp32_parity"), dict)}


def answer(parity: dict[int, dict], precision: str) -> str:
    """Two sentences: do reduced precision and the layer split change the embeddings?

    Args:
        parity: {P: parity_<P>.json}; empty when the production precision is fp32 (no parity job ran).
        precision: the production precision (config key).

    Returns:
        Plain text.
    """
    measured = _measured(parity)
    if precision == "fp32" or not measured:
        return NOT_APPLICABLE
    windows = sum(stats["windows"] for stats in measured.values())
    agreements = [stats["nn_agreement"] for stats in measured.values() if stats["nn_agreement"] is not None]
    every = list(measured.values())
    first = (f"Against an fp32 recomputation of {windows} sampled windows over {len(measured)} horizon(s), "
             f"{precision} changed the embeddings by at most {max(stats['max_abs_error'] for stats in every):.3g} "
             f"(relative L2 error at most {max(stats['relative_l2_error'] for stats in every):.3g}), with a lowest "
             f"cosine similarity of {min(stats['cosine_min'] for stats in every):.6f}"
             + (f" and nearest-neighbour agreement of at least {min(agreements):.0%}." if agreements else "."))
    splits = [record["layer_split"] for record in parity.values() if isinstance(record.get("layer_split"), dict)]
    if splits:
        second = (f"Splitting the layers over {', '.join(splits[0]['devices'])} changed them by at most "
                  f"{max(check['parity_vs_one_device']['max_abs_difference'] for check in splits):.3g} against "
                  "one device.")
    else:
        second = "The layer split over several GPUs was not measured: these jobs held a single device."
    return f"{first} {second}"


def histogram(pred_len: int, cosines: list[float], precision: str, path: str | Path) -> None:
    """PNG of 1 - cosine similarity per sampled (window, variable) of one horizon, log x axis.

    Args:
        pred_len: the horizon P (title).
        cosines: the parity job's cosine similarities (parity_<P>.json "cosines"), at least one.
        precision: the production precision (axis label).
        path: the PNG, written atomically.
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    gap = np.clip(1.0 - np.asarray(cosines, dtype=np.float64), 1e-12, None)
    low, high = np.floor(np.log10(gap.min())), np.ceil(np.log10(gap.max()))
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=110)
    ax.hist(gap, bins=np.logspace(low, max(high, low + 1), 41))
    ax.set_xscale("log")
    ax.set_xlabel(f"1 - cosine similarity, {precision} vs fp32 (per window and variable)")
    ax.set_ylabel("count")
    ax.set_title(f"P = {pred_len}: {len(gap)} sampled (window, variable) pairs")
    fig.tight_layout()
    try:
        with atomic_path(path) as tmp:  # a full disk: an OSError naming `path`, nothing left (store.atomic_paths)
            fig.savefig(tmp, format="png", metadata={"Software": None})  # no version string: same bytes on rerun
    finally:
        plt.close(fig)


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(column)}</th>" for column in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(cell))}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _page(title: str, body: str) -> str:
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body><h3>{html.escape(title)}</h3>\n{body}\n</body></html>\n")


EMBEDDING_HEADER = ["P", "split", "windows", "shape", "time (s)", "windows/s", "tokens/s", "peak memory", "devices"]
PARITY_HEADER = ["P", "split", "precision", "sampled windows", "cosine min", "cosine 1st pct", "cosine mean",
                 "max abs error", "rel. L2 error", "NN agreement"]


def _embedding_row(pred_len: int, split: str, shape: list[int], stats: dict) -> list[str]:
    peaks = ", ".join(f"{device}: {gib(peak)}" for device, peak in stats["peak_memory_bytes"].items())
    # With share_horizons one job embeds every horizon of a window range: the time is those jobs'
    # (summed over the split's ranges), the rates this horizon's work over it, so the cells say so.
    shared = stats.get("job_pred_lens", [pred_len])
    whose = f" (shared by P = {', '.join(map(str, shared))})" if len(shared) > 1 else ""
    return [str(pred_len), split, str(stats["windows"]), str(tuple(shape)), f"{stats['wall_s']:.1f}{whose}",
            f"{stats['windows_per_s']:.2f}{whose}", f"{stats['tokens_per_s']:.0f}{whose}", peaks,
            ", ".join(stats["devices"])]


def _parity_row(pred_len: int, split: str, precision: str, stats: dict) -> list[str]:
    agreement = "n/a" if stats["nn_agreement"] is None else f"{stats['nn_agreement']:.0%}"
    return [str(pred_len), split, precision, str(stats["windows"]), f"{stats['cosine_min']:.6f}",
            f"{stats['cosine_p01']:.6f}", f"{stats['cosine_mean']:.6f}", f"{stats['max_abs_error']:.3g}",
            f"{stats['relative_l2_error']:.3g}", agreement]


def item_html(pred_len: int, split: str, shapes: dict, stats: dict, parity: dict | None, precision: str) -> str:
    """The report item of one (horizon, split): its file, its job, its parity with fp32.

    Args:
        pred_len, split: the item.
        shapes: shapes.json (validate.check_all).
        stats: embeddings/<P>/<split>.json.
        parity: parity_<P>.json, or None when no parity job ran (fp32).
        precision: the production precision.

    Returns:
        A complete HTML page.
    """
    shape = shapes["files"][f"{pred_len}/{split}"]["shape"]
    body = [_table(EMBEDDING_HEADER, [_embedding_row(pred_len, split, shape, stats)]),
            (f"<p>float32, window_start 0..{shape[0] - 1}, every value finite, metadata consistent with the "
             f"other files ({html.escape(_shared(shapes))}).</p>")]
    by_split = (parity or {}).get("fp32_parity_by_split", {})
    if parity is None or precision == "fp32":
        body.append(f"<p>{NOT_APPLICABLE}</p>")
    elif split in by_split:
        body.append(_table(PARITY_HEADER, [_parity_row(pred_len, split, precision, by_split[split])]))
    else:
        body.append(f"<p>Parity with fp32: no window of split {html.escape(split)} was sampled at this horizon "
                    f"(parity.windows is shared out over the splits).</p>")
    return _page(f"Embeddings, P = {pred_len}, {split}", "\n".join(body))


def _shared(shapes: dict) -> str:
    keys = ("model", "precision", "fidelity")
    return ", ".join(f"{key} {value}" for key, value in shapes["shared_metadata"].items() if key in keys)


def summary_html(name: str, shapes: dict, stats: dict[tuple[int, str], dict], parity: dict[int, dict],
                 precision: str, histograms: dict[int, str | Path]) -> str:
    """The whole validation on one page: the answer, every file, every horizon's parity, the histograms.

    Args:
        name: dataset.name; shapes: shapes.json; stats: {(P, split): stats JSON};
        parity: {P: parity_<P>.json} (empty for fp32); precision: the production precision;
        histograms: {P: PNG path}, embedded as data URIs so that the page stands alone.

    Returns:
        A complete HTML page.
    """
    rows = [_embedding_row(P, split, shapes["files"][f"{P}/{split}"]["shape"], job_stats)
            for (P, split), job_stats in sorted(stats.items())]

    body = [f"<p>{html.escape(answer(parity, precision))}</p>", "<h4>Embeddings</h4>", _table(EMBEDDING_HEADER, rows),
            (f"<p>All files: float32, window_start 0..n-1, every value finite, metadata consistent "
             f"({html.escape(_shared(shapes))}).</p>")]
    measured = _measured(parity)
    if precision != "fp32" and measured:  # else the first line said "not applicable" already
        body.append("<h4>Parity with fp32</h4>")
        body.append(_table(PARITY_HEADER, [_parity_row(P, "all sampled", parity[P]["precision"], stats)
                                           for P, stats in sorted(measured.items())]))
        for P, path in sorted(histograms.items()):
            data = base64.b64encode(Path(path).read_bytes()).decode()
            body.append(f'<img alt="1 - cosine similarity, P = {P}" src="data:image/png;base64,{data}">')
    return _page(f"Validation of results/{name}", "\n".join(body))


def write_report(summary: str | Path, items: dict[tuple[int, str], str | Path], histograms: dict[int, str | Path],
                 name: str, shapes: dict, stats: dict[tuple[int, str], dict], parity: dict[int, dict],
                 precision: str) -> None:
    """Every report file, each written atomically (the paths are the rule validate's outputs).

    Args:
        summary: the summary page; items: {(P, split): its page}; histograms: {P: PNG}, empty for fp32.
        name, shapes, stats, parity, precision: as for `summary_html`.

    Raises:
        ValueError: a histogram is asked for a horizon without parity cosines.
    """
    for P, path in histograms.items():
        if not parity.get(P, {}).get("cosines"):
            raise ValueError(f"no parity cosines for P = {P}: nothing to draw in {path}")
        histogram(P, parity[P]["cosines"], precision, path)
    for (P, split), path in items.items():
        write_text(path, item_html(P, split, shapes, stats[(P, split)], parity.get(P), precision))
    write_text(summary, summary_html(name, shapes, stats, parity, precision, histograms))


# --------------------------------------------------------------------------- the preflight report

def check_line(value) -> str:
    """One GPU check's result (a value of preflight's gpu_checks) as one line of text."""
    if isinstance(value, str):
        return value
    if "within_rounding" in value:
        return (f"max |diff| {value['max_abs_difference']:.3g} (bit-equal: {value['bit_equal']}; "
                f"rounding tolerance {value['tolerance']:.3g}): {'ok' if value['within_rounding'] else 'FAILED'}")
    return ", ".join(f"{key} {check_line(item) if isinstance(item, dict) else item}" for key, item in value.items())


def _held(machine_info: dict) -> str:
    held = machine_info.get("held_gpus") or {"source": "the devices given"}
    return held["source"] + (f", ids {held['ids']}" if held.get("ids") else "")


def _blocks(held: list[int], split: bool) -> str:
    if not split:
        return f"all {len(held)}"
    return f"{held[0]}-{held[-1]}" if held else "none"


def _plan_lines(report: dict) -> list[str]:
    """The placement plan (placement.Plan.as_dict): per device what it holds and needs, beside the
    peak the measured jobs reached there."""
    plan = report["plan"]
    peaks = {}
    for job in report.get("jobs", []):
        for device, peak in job["peak_memory_bytes"].items():
            peaks[device] = max(peaks.get(device, 0), peak)
    lines = ["", "## Placement", "", (f"**{plan['placement']}**: {plan['reason']}. Planned from config.json before "
             f"any weight was read, at batch_tokens {plan['batch_tokens']}; the figures are estimates (README, "
             "\"How placement is chosen\"), the last column what the sample jobs measured."), "",
             "| device | memory | weights | kept prefix states | activations | reserve | planned | blocks | "
             "measured peak |", "|---|---|---|---|---|---|---|---|---|"]
    for device in plan["devices"]:
        measured = peaks.get(device["device"], peaks.get("cpu_rss") if device["device"] == "cpu" else None)
        lines.append(f"| {device['device']} | {gib(device['memory'])} | {gib(device['weights'])} | "
                     f"{gib(device['kept_prefix'])} | {gib(device['activations'])} | {gib(device['reserve'])} | "
                     f"{gib(device['total'])} | {_blocks(device['blocks'], plan['placement'] == 'model_parallel')} | "
                     f"{gib(measured)} |")
    return lines


def preflight_markdown(report: dict) -> str:
    """The preflight report (preflight.run_preflight's) as Markdown: what `timekd-embed preflight`
    prints and writes beside the JSON."""
    system, config = report["machine"], report["config"]
    layers = config["model"]["layers"]
    lines = ["# Preflight", "",
             (f"**{'PASSED' if report['passed'] else 'FAILED'}** in {duration(report['wall_s'])}, "
             f"{report['windows_per_horizon']} sample windows per horizon; model {config['model']['name_or_path']}"
             f"{'' if layers is None else ' (first ' + str(layers) + ' blocks)'}, "
             f"{config['precision']}, placement {report.get('placement', config['placement'])}."), ""]
    notes = report["failures"] + report.get("notes", [])
    lines += [f"- {failure}" for failure in notes] + ([""] if notes else [])
    lines += ["## Machine", "",
              (f"torch {system['torch']}, CUDA {system['cuda'] or '-'}, driver {system['driver'] or '-'}; "
               f"CUDA_VISIBLE_DEVICES={system['cuda_visible_devices'] or '(unset)'}; "
               f"GPUs this job holds: {_held(system)}"), "",
              "| device | name | memory | compute capability | fp16 | bf16 |", "|---|---|---|---|---|---|"]
    lines += [f"| {device['device']} | {device['name']} | {gib(device['memory_bytes'])} | "
              f"{device['compute_capability'] or '-'} | {device['fp16']} | {device['bf16']} |"
              for device in system["devices"]]
    if report.get("plan"):
        lines += _plan_lines(report)
    if report.get("jobs"):
        lines += ["", "## Speed and memory", "", (f"Context: {report['context']} tokens. "
                  f"ETA of the whole job: **{duration(report['eta_s'])}** (windows per split / measured rate"
                  f"{', every horizon of a window in one job' if config['share_horizons'] else ''})."), "",
                  "| P | windows timed | windows/s | peak memory | longest prompt | windows (job) | ETA | "
                  "batch_tokens that fits |", "|---|---|---|---|---|---|---|---|"]
        for figures in report["jobs"]:
            peaks = ", ".join(f"{device} {gib(peak)}" for device, peak in figures["peak_memory_bytes"].items())
            fits = figures["fitting_batch_tokens"] or f"{figures['batch_tokens']} (configured)"
            # windows timed: the sample plus those that fill one batch (diagnostics.fill_windows)
            lines.append(f"| {', '.join(map(str, figures['pred_lens']))} | {figures['windows_timed']} | "
                         f"{figures['windows_per_s']:.2f} | {peaks} | "
                         f"{figures['longest_prompt']} | {sum(figures['planned_windows'].values())} | "
                         f"{duration(figures['eta_s'])} | {fits} |")
    if report.get("parity"):
        lines += ["", "## Parity with fp32", ""]
        for P, stats in report["parity"].items():
            lines.append(f"- {P}: {stats}" if isinstance(stats, str) else
                         f"- P={P}: cosine min {stats['cosine_min']:.6f}, mean {stats['cosine_mean']:.6f}; max abs "
                         f"{stats['max_abs_error']:.3g}; nearest-neighbour agreement {stats['nn_agreement']}")
    if report.get("gpu_checks"):
        lines += ["", "## GPU checks", ""]
        lines += [f"- {name}: {check_line(value)}" for name, value in report["gpu_checks"].items()]
    return "\n".join(lines) + "\n"
