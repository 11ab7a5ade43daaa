"""The report's plots as PNG bytes, drawn with matplotlib's object API (`Figure`, no pyplot global state)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure


def png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
    return buf.getvalue()


def metric_by_k(summary: dict[str, Any], families: Sequence[str], ks: Sequence[int]) -> bytes | None:
    """Lines of `family@k` against k for each family the summary holds; None when none has a value."""
    fig = Figure(figsize=(6.4, 3.6), layout="constrained")
    ax = fig.add_subplot()
    drawn = False
    for family in families:
        points = [(k, summary[f"{family}@{k}"]) for k in ks if summary.get(f"{family}@{k}") is not None]
        if points:
            ax.plot([k for k, _ in points], [v for _, v in points], marker="o", label=f"{family}@k")
            drawn = True
    if not drawn:
        return None
    ax.set(xlabel="k", ylabel="mean over questions", ylim=(0, 1.02), xticks=list(ks))
    ax.grid(alpha=0.3)
    ax.legend()
    return png(fig)


def segment_bars(segments: dict[str, dict[str, Any]], metrics: Sequence[str], max_segments: int) -> bytes | None:
    """Horizontal bars of `metrics` for the first `max_segments` segments that hold any of them."""
    names = [n for n, seg in segments.items() if any(seg.get(m) is not None for m in metrics)][:max_segments]
    if not names or not metrics:
        return None
    fig = Figure(figsize=(6.4, 1.0 + 0.22 * len(names) * len(metrics)), layout="constrained")
    ax = fig.add_subplot()
    height = 0.8 / len(metrics)
    y = np.arange(len(names))
    for i, metric in enumerate(metrics):
        values = [segments[n].get(metric) for n in names]
        bars = ax.barh(y + i * height, [v or 0.0 for v in values], height=height, label=metric)
        ax.bar_label(bars, labels=["-" if v is None else f"{v:.2f}" for v in values], fontsize=7, padding=2)
    ax.set_yticks(y + height * (len(metrics) - 1) / 2, names, fontsize=8)
    ax.invert_yaxis()
    ax.set(xlim=(0, 1.1), xlabel="mean over questions")
    ax.legend(loc="lower left", bbox_to_anchor=(0, 1), ncols=len(metrics), fontsize=8, frameon=False)
    return png(fig)


def latency_histograms(stages: dict[str, list[float]]) -> bytes:
    """One histogram of per-question milliseconds per stage (retrieve, answer, judge)."""
    fig = Figure(figsize=(3.4 * len(stages), 3.0), layout="constrained")
    for ax, (stage, values) in zip(fig.subplots(1, len(stages), squeeze=False)[0], stages.items(), strict=True):
        ax.hist(values, bins=30)
        ax.set(title=f"{stage} (p50 {np.percentile(values, 50):.0f} ms)", xlabel="ms", ylabel="questions")
    return png(fig)
