"""The sweep's figure: latency (x) against top-1 accuracy, or multiply-adds where accuracy is
unknown (y), one line per precision, points labelled with phi, the Pareto front marked and the
budget as a vertical line: the paper's Figure 1 in the deployment's units. Matplotlib is the
optional ``plot`` extra: a well-kept plotting library rather than hand-drawn PNGs."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from .points import Point, quality_measure

PLOT_HINT = "pip install 'effdeploy[plot]' (matplotlib) for sweep.png"


def have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def write_plot(points: Sequence[Point], path: Path, title: str, budget_ms: float | None = None) -> bool:
    """sweep.png; False (nothing written) without matplotlib or without a timed point."""
    if not have_matplotlib():
        return False
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    measure = quality_measure(points)
    accuracy = measure == "top-1 accuracy"
    timed = [p for p in points if p.latency_p50_ms is not None and p.error is None]
    if not timed:
        return False
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for precision in dict.fromkeys(p.precision for p in timed):
        mine = sorted((p for p in timed if p.precision == precision), key=lambda p: p.phi)
        ys = [100 * p.top1_accuracy if accuracy else p.macs / 1e9 for p in mine]
        ax.plot([p.latency_p50_ms for p in mine], ys, marker="o", label=precision)
        for p, y in zip(mine, ys):
            ax.annotate(f"φ{p.phi:g}", (p.latency_p50_ms, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
            if p.pareto:
                ax.scatter([p.latency_p50_ms], [y], s=120, facecolors="none", edgecolors="black", linewidths=1)
    if budget_ms is not None:
        ax.axvline(budget_ms, color="grey", linestyle="--", label=f"budget {budget_ms:g} ms")
    ax.set_xlabel("latency p50 (ms)")
    ax.set_ylabel("top-1 accuracy (%)" if accuracy else "multiply-adds (G, the quality proxy)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(title="circled: Pareto front", fontsize=8, title_fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True
