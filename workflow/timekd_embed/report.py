"""results/<name>/validation/report.md and its figure, from the validation and job JSON files."""

from __future__ import annotations

from pathlib import Path

from .store import atomic_path


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def answer(parity: dict[int, dict]) -> str:
    """Two sentences answering: do reduced precision and the layer split change the embeddings?"""
    measured = {P: r["fp32_parity"] for P, r in parity.items() if isinstance(r.get("fp32_parity"), dict)}
    if not measured:
        first = "Production ran in fp32, so reduced precision cannot have changed these embeddings."
    else:
        precision = next(iter(parity.values()))["precision"]
        windows = sum(m["windows"] for m in measured.values())
        nn = [m["nn_agreement"] for m in measured.values() if m["nn_agreement"] is not None]
        first = (f"Against an fp32 recomputation of {windows} sampled windows over {len(measured)} horizon(s), "
                 f"{precision} changed the embeddings by at most {max(m['max_abs_error'] for m in measured.values()):.3g} "
                 f"(relative L2 error at most {max(m['relative_l2_error'] for m in measured.values()):.3g}), with a lowest "
                 f"cosine similarity of {min(m['cosine_min'] for m in measured.values()):.6f}"
                 + (f" and nearest-neighbour agreement of at least {min(nn):.0%}." if nn else "."))
    splits = [r["layer_split"] for r in parity.values() if isinstance(r.get("layer_split"), dict)]
    if splits:
        second = (f"Splitting the layers over {', '.join(splits[0]['devices'])} changed them by at most "
                  f"{max(s['max_abs_difference'] for s in splits):.3g} against one device.")
    else:
        second = "The layer split over several GPUs was not measured: these jobs held a single device."
    return f"{first} {second}"


def histogram(parity: dict[int, dict], path: str | Path) -> None:
    """1 - cosine similarity per (window, variable), one colour per horizon, log scale."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    gaps = {P: np.clip(1.0 - np.asarray(r.get("cosines", []), dtype=np.float64), 1e-12, None)
            for P, r in sorted(parity.items())}
    gaps = {P: g for P, g in gaps.items() if g.size}
    drawn = bool(gaps)
    if drawn:
        low = np.floor(np.log10(min(g.min() for g in gaps.values())))
        high = np.ceil(np.log10(max(g.max() for g in gaps.values())))
        bins = np.logspace(low, max(high, low + 1), 41)
        for P, gap in gaps.items():
            ax.hist(gap, bins=bins, histtype="step", label=f"P = {P}")
    ax.set_xscale("log")
    ax.set_xlabel("1 - cosine similarity to fp32 (per window and variable)")
    ax.set_ylabel("count")
    if drawn:
        ax.legend()
    else:
        ax.text(0.5, 0.5, "fp32 production: nothing to compare", ha="center", va="center", transform=ax.transAxes)
    ax.set_title("Reduced precision vs fp32")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def markdown(name: str, shapes: dict, stats: dict[tuple[int, str], dict], parity: dict[int, dict]) -> str:
    lines = [f"# Validation of results/{name}", "", answer(parity), "",
             "## Embeddings", "",
             "| P | split | windows | shape | time (s) | windows/s | tokens/s | peak memory |",
             "|---|---|---|---|---|---|---|---|"]
    for (P, split), st in sorted(stats.items()):
        shape = shapes["files"][f"{P}/{split}"]["shape"]
        peaks = ", ".join(f"{k}: {_gib(v)}" for k, v in st["peak_memory_bytes"].items())
        lines.append(f"| {P} | {split} | {st['windows']} | {tuple(shape)} | {st['wall_s']:.1f} | "
                     f"{st['windows_per_s']:.2f} | {st['tokens_per_s']:.0f} | {peaks} |")
    lines += ["", "All files: float32, window_start 0..n-1, every value finite, metadata consistent "
              f"({', '.join(f'{k} {v}' for k, v in shapes['shared_metadata'].items() if k in ('model', 'precision', 'fidelity'))}).",
              "", "## Parity with fp32", "",
              "| P | precision | sampled windows | cosine min | cosine 1st pct | cosine mean | max abs error | rel. L2 error | NN agreement | layer split |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for P, r in sorted(parity.items()):
        split_txt = (f"max diff {r['layer_split']['max_abs_difference']:.3g}" if isinstance(r.get("layer_split"), dict)
                     else "n/a")
        m = r["fp32_parity"]
        if isinstance(m, dict):
            nn = "n/a" if m["nn_agreement"] is None else f"{m['nn_agreement']:.0%}"
            lines.append(f"| {P} | {r['precision']} | {m['windows']} | {m['cosine_min']:.6f} | {m['cosine_p01']:.6f} | "
                         f"{m['cosine_mean']:.6f} | {m['max_abs_error']:.3g} | {m['relative_l2_error']:.3g} | {nn} | {split_txt} |")
        else:
            lines.append(f"| {P} | {r['precision']} | - | - | - | - | - | - | - | {split_txt} |")
    lines += ["", "![1 - cosine similarity histogram](cosine_histogram.png)", ""]
    return "\n".join(lines)


def write_report(path: str | Path, name: str, shapes: dict, stats: dict, parity: dict) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(markdown(name, shapes, stats, parity))
