"""Pareto plots, split as Optuna does: a pure ``*_info`` function (tested) and a matplotlib renderer."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from amoeba_search.paths import atomic_file


def pareto_plot_info(points: Sequence, front: Sequence, budget_ms: float | None, *,
                     verified: Sequence[dict] = (), title: str = "", metric_name: str = "perplexity",
                     latency_name: str = "decode latency (ms/token)", chosen: str | None = None,
                     reference: dict | None = None, max_metric: float | None = None,
                     latency_source: str | None = None) -> dict:
    """Everything a Pareto plot shows, as plain data.

    ``points`` and ``front`` are predicted ``Point``s; ``verified`` holds dicts with ``shape``, ``metric`` and
    (when measured) ``latency_ms``; ``chosen`` is the chosen shape, ``reference`` the full model (``shape``,
    ``metric``, ``latency_ms``), ``max_metric`` the quality floor, ``latency_source`` where the x values come
    from (one starting with ``estimate`` marks the axis label and the legend as estimated). The y-range covers
    the front, the verified
    points and the full model (and the floor); evaluated points above it are counted, not drawn.
    """
    front = sorted(front, key=lambda p: p.latency_ms)
    predicted = {str(p.shape): (p.latency_ms, p.metric) for p in front}
    checked = [{"shape": v["shape"], "x": v.get("latency_ms", predicted.get(v["shape"], (None,))[0]),
                "y": v["metric"]} for v in verified if v.get("shape") in predicted]
    links = [[predicted[v["shape"]], (v["x"], v["y"])] for v in checked]
    by_shape = {v["shape"]: (v["x"], v["y"]) for v in checked}
    usable = [max_metric is None or by_shape.get(str(p.shape), (0, p.metric))[1] <= max_metric for p in front]
    shown = [p.metric for p in front] + [v["y"] for v in checked] + ([reference["metric"]] if reference else [])
    low, high = (min(shown) / 1.15, max(shown) * 1.15) if shown else (None, None)
    if max_metric is not None and high is not None:
        high = min(high, max_metric * 1.5) if any(usable) else high
        high = max(high, max_metric * 1.1)
    hidden = sum(1 for p in points if high is not None and p.metric > high)
    estimate = bool(latency_source) and str(latency_source).lower().startswith("estimate")
    x_label = f"{latency_name}, estimated (not measured)" if estimate else latency_name
    tag = "predicted metric, estimated latency" if estimate else "predicted"
    info = {
        "title": title,
        "x_label": x_label,
        "latency_source": latency_source,
        "latency_estimated": estimate,
        "legend": {"all": f"evaluated ({tag})", "front": f"Pareto front ({tag})"},
        "y_label": metric_name,
        "all": {"x": [p.latency_ms for p in points], "y": [p.metric for p in points]},
        "front": {"x": [p.latency_ms for p in front], "y": [p.metric for p in front],
                  "labels": [str(p.shape) for p in front], "usable": usable},
        "verified": {"x": [v["x"] for v in checked], "y": [v["y"] for v in checked],
                     "labels": [v["shape"] for v in checked]},
        "links": links,
        "budget_ms": budget_ms,
        "max_metric": max_metric,
        "chosen": None,
        "reference": None if reference is None else {"x": reference["latency_ms"], "y": reference["metric"],
                                                      "label": f"full model {reference['shape']}"},
        "y_range": None if low is None else [low, high],
        "y_log": low is not None and high / low > 20,
        "hidden_above": hidden,
    }
    if chosen is not None and chosen in predicted:
        x, y = by_shape.get(chosen, predicted[chosen])
        info["chosen"] = {"x": x, "y": y, "label": chosen, "verified": chosen in by_shape}
    return info


def render_pareto(info: dict, path: str | Path | None = None, *, ax=None):
    """Draw ``info`` (from ``pareto_plot_info``); save a PNG to ``path`` when given. Returns the axes.

    Without ``ax`` the figure is drawn off-screen (a matplotlib ``Figure``, no pyplot state or backend change).
    """
    fig = None
    if ax is None:
        from matplotlib.figure import Figure

        fig = Figure(figsize=(8, 5), dpi=120)
        ax = fig.add_subplot()
    legend = info.get("legend", {})
    ax.scatter(info["all"]["x"], info["all"]["y"], s=10, color="0.75",
               label=legend.get("all", "evaluated (predicted)"), zorder=1)
    front = info["front"]
    ax.plot(front["x"], front["y"], "o-", color="tab:blue", ms=4, lw=1.2,
            label=legend.get("front", "Pareto front (predicted)"), zorder=2)
    bad = [i for i, ok in enumerate(front.get("usable", [])) if not ok]
    if bad:
        ax.scatter([front["x"][i] for i in bad], [front["y"][i] for i in bad], s=60, facecolors="none",
                   edgecolors="tab:red", lw=1.2, label="unusable (above the quality floor)", zorder=3)
    for x, y, label in zip(front["x"], front["y"], front["labels"]):
        ax.annotate(label, (x, y), xytext=(3, 4), textcoords="offset points", fontsize=6, color="tab:blue")
    for (px, py), (vx, vy) in info.get("links", []):
        ax.plot([px, vx], [py, vy], color="tab:red", lw=0.8, alpha=0.6, zorder=2)
    if info["verified"]["x"]:
        ax.scatter(info["verified"]["x"], info["verified"]["y"], marker="x", color="tab:red", s=30,
                   label="verified (linked to its prediction)", zorder=4)
    reference = info.get("reference")
    if reference:
        ax.scatter([reference["x"]], [reference["y"]], marker="D", color="black", s=40, zorder=5,
                   label=reference["label"])
    chosen = info.get("chosen")
    if chosen:
        ax.scatter([chosen["x"]], [chosen["y"]], marker="*", color="gold", edgecolors="black", s=220, zorder=6,
                   label=f"chosen: {chosen['label']}")
        ax.annotate(chosen["label"], (chosen["x"], chosen["y"]), xytext=(-10, 12), textcoords="offset points",
                    fontsize=8, fontweight="bold", ha="right")
    if info["budget_ms"] is not None:
        ax.axvline(info["budget_ms"], color="tab:green", ls="--", lw=1, label=f"budget {info['budget_ms']:g} ms")
    if info.get("max_metric") is not None:
        ax.axhline(info["max_metric"], color="tab:red", ls=":", lw=1, label=f"quality floor {info['max_metric']:.4g}")
    if info.get("y_log", True):
        ax.set_yscale("log")
    if info.get("y_range"):
        ax.set_ylim(*info["y_range"])
    if info.get("hidden_above"):
        ax.text(0.99, 0.99, f"{info['hidden_above']} evaluated shapes above {info['y_range'][1]:.4g} not shown",
                transform=ax.transAxes, ha="right", va="top", fontsize=7, color="0.4")
    ax.set_xlabel(info["x_label"])
    ax.set_ylabel(info["y_label"])
    if info["title"]:
        ax.set_title(info["title"], fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper right", bbox_to_anchor=(1.0, 0.94) if info.get("hidden_above") else None)
    if fig is not None and path is not None:
        fig.tight_layout()
        with atomic_file(path) as tmp:
            # format given: without one matplotlib appends ".png" to a suffix-less name, missing ``tmp``
            fig.savefig(tmp, format=Path(path).suffix.lstrip(".") or "png")
    return ax
