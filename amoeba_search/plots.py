"""Pareto plots, split as Optuna does: a pure ``*_info`` function (tested) and a matplotlib renderer."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence


def pareto_plot_info(points: Sequence, front: Sequence, budget_ms: float | None, *,
                     verified: Sequence[dict] = (), title: str = "", metric_name: str = "perplexity",
                     latency_name: str = "decode latency (ms/token)") -> dict:
    """Everything a Pareto plot shows, as plain data: all points, the front (by latency), the budget line."""
    front = sorted(front, key=lambda p: p.latency_ms)
    return {
        "title": title,
        "x_label": latency_name,
        "y_label": metric_name,
        "all": {"x": [p.latency_ms for p in points], "y": [p.metric for p in points]},
        "front": {"x": [p.latency_ms for p in front], "y": [p.metric for p in front],
                  "labels": [str(p.shape) for p in front]},
        "verified": {"x": [v["latency_ms"] for v in verified], "y": [v["metric"] for v in verified]},
        "budget_ms": budget_ms,
    }


def render_pareto(info: dict, path: str | Path | None = None, *, ax=None):
    """Draw ``info`` (from ``pareto_plot_info``); save a PNG to ``path`` when given. Returns the axes."""
    import matplotlib

    if ax is None:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = None
    if ax is None:
        fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    ax.scatter(info["all"]["x"], info["all"]["y"], s=10, color="0.7", label="evaluated (predicted)")
    ax.plot(info["front"]["x"], info["front"]["y"], "o-", color="tab:blue", ms=4, label="Pareto front (predicted)")
    if info["verified"]["x"]:
        ax.scatter(info["verified"]["x"], info["verified"]["y"], marker="x", color="tab:red", s=30,
                   label="front, verified")
    if info["budget_ms"] is not None:
        ax.axvline(info["budget_ms"], color="tab:green", ls="--", lw=1, label=f"budget {info['budget_ms']:g} ms")
    ax.set_yscale("log")
    ax.set_xlabel(info["x_label"])
    ax.set_ylabel(info["y_label"])
    if info["title"]:
        ax.set_title(info["title"], fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if fig is not None and path is not None:
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)
    return ax
