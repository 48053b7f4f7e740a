"""The run's picture, output_dir/report.png: training loss and learning rate per step, each
held-out metric before vs after training and, for classification, the confusion matrices.

Drawn with matplotlib's object API on an Agg canvas: no display is needed, and pyplot's global
state (a notebook's backend, its list of open figures) is never touched.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from kit.metrics import LOWER_IS_BETTER

BEFORE, AFTER = "#b8b8b8", "#1f77b4"
BOTH_CONFUSIONS_UP_TO = 15  # labels; beyond, only the after-training matrix gets the room
COUNTS_UP_TO = 25  # labels; beyond, per-cell counts would overlap


def _scalars(d: dict | None) -> dict[str, float]:
    return {k: float(v) for k, v in (d or {}).items()
            if isinstance(v, int | float) and not isinstance(v, bool)}


def _curve(ax, values: list | None, title: str, ylabel: str, color: str) -> None:
    # Non-finite points (a NaN loss) become gaps in the line rather than breaking the y-scale.
    ys = [float(v) if isinstance(v, int | float) and math.isfinite(v) else math.nan for v in values or []]
    bad = sum(math.isnan(y) for y in ys)
    ax.set(title=title + (f" ({bad} non-finite, not drawn)" if bad else ""), xlabel="step", ylabel=ylabel)
    ax.set_label(ylabel)
    if not ys:
        ax.text(0.5, 0.5, "no steps logged", ha="center", va="center", transform=ax.transAxes)
        return
    # train.py logs every optimizer step (logging_steps=1), so entry i is step i + 1.
    ax.plot(range(1, len(ys) + 1), ys, color=color, marker="o" if len(ys) <= 30 else None, ms=3)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers
    ax.grid(alpha=0.3)


def _bars(ax, name: str, before: float | None, after: float | None, better: bool | None) -> None:
    values = [math.nan if v is None or not math.isfinite(v) else v for v in (before, after)]
    bars = ax.bar([0, 1], values, color=[BEFORE, AFTER], width=0.6)
    ax.bar_label(bars, labels=[f"{v:.4g}" for v in values], padding=2)
    for x, v in enumerate(values):
        if math.isnan(v):  # no bar to label: say so at the baseline
            ax.text(x, 0, "n/a", ha="center", va="bottom", color="grey")
    ax.set_xticks([0, 1], ["before", "after"])
    ax.set_xlim(-0.6, 1.6)
    ax.margins(y=0.2)  # headroom for the value labels
    # `improved` only has metrics with a known direction, so its keys mark "higher" safely.
    lower = any(word in name for word in LOWER_IS_BETTER)
    direction = "\n(lower is better)" if lower else "\n(higher is better)" if better is not None else ""
    verdict = {True: "green", False: "firebrick"}.get(better, "black")
    ax.set_title(name + direction, color=verdict)
    ax.set_label(f"metric:{name}")


def _confusion(ax, matrix: list[list], labels: list[str], title: str, vmax: float):
    n = len(matrix)
    image = ax.imshow(matrix, cmap="Blues", vmin=0, vmax=vmax or 1)
    rotate = n > 6 or any(len(lab) > 8 for lab in labels)
    ax.set_xticks(range(n), labels, rotation=45 if rotate else 0, ha="right" if rotate else "center",
                  rotation_mode="anchor", fontsize=8 if n > 12 else 10)
    ax.set_yticks(range(n), labels, fontsize=8 if n > 12 else 10)
    ax.set(title=title, xlabel="predicted", ylabel="true")
    ax.set_label(f"confusion:{title.split()[0]}")
    if n <= COUNTS_UP_TO:
        for i, row in enumerate(matrix):
            for j, v in enumerate(row):
                ax.text(j, i, str(v), ha="center", va="center", fontsize=9 if n <= 12 else 7,
                        color="white" if v > (vmax or 1) / 2 else "black")
    return image


def _matrix(result: dict | None) -> list[list] | None:
    m = (result or {}).get("confusion")
    return m if m and all(isinstance(r, list) and len(r) == len(m) for r in m) else None


def build_figure(metrics: dict) -> Figure:
    """The report's figure (also what tests inspect); each panel's Axes has a label to find it by."""
    train, before, after = metrics.get("train") or {}, metrics.get("before") or {}, metrics.get("after") or {}
    b, a = _scalars(before), _scalars(after)
    names = list(b) + [k for k in a if k not in b]
    confusions = [(m, when) for m, when in ((_matrix(before), "before"), (_matrix(after), "after")) if m]
    n = len(confusions[-1][0]) if confusions else 0
    if n > BOTH_CONFUSIONS_UP_TO:
        confusions = confusions[-1:]
    labels = list(after.get("labels") or before.get("labels") or metrics.get("labels") or [])
    labels = [str(x) for x in labels] if len(labels) == n else [str(i) for i in range(n)]
    heights = [3.6] + ([3.2] if names else []) + ([max(4.5, 2.5 + 0.3 * n)] if confusions else [])
    fig = Figure(figsize=(13, sum(heights) + 0.6), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)  # attach the Agg canvas explicitly: no backend lookup, no pyplot
    fig.suptitle(" · ".join(str(metrics.get(k, "?")) for k in ("recipe", "model", "device")),
                 fontsize=14, fontweight="bold")
    rows = fig.subfigures(len(heights), 1, height_ratios=heights)
    rows = list(rows) if len(heights) > 1 else [rows]
    curves = rows[0].subplots(1, 2)
    _curve(curves[0], train.get("losses"), "Training loss", "loss", AFTER)
    _curve(curves[1], train.get("learning_rates"), "Learning rate", "learning rate", "darkorange")
    curves[1].ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    if names:
        rows[1].suptitle("Held-out metrics: before (grey) vs after (blue) training; title green if better")
        improved = metrics.get("improved") or {}
        axes = rows[1].subplots(1, max(len(names), 4), squeeze=False)[0]
        for ax in axes[len(names):]:  # at least 4 slots, so one metric is not a full-width bar
            ax.remove()
        for ax, name in zip(axes, names):
            _bars(ax, name, b.get(name), a.get(name), improved.get(name))
    if confusions:
        vmax = max(max(max(r) for r in m) for m, _ in confusions)  # one colour scale, comparable
        axes = rows[-1].subplots(1, len(confusions), squeeze=False)[0]
        for ax, (m, when) in zip(axes, confusions):
            image = _confusion(ax, m, labels, f"{when} training", vmax)
        bar = rows[-1].colorbar(image, ax=list(axes), shrink=0.8, label="count")
        bar.ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    return fig


def write_report(path: Path, metrics: dict) -> Path:
    """Draw the report and write it as a PNG atomically (temp file in the same folder + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = build_figure(metrics)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        fig.savefig(tmp, format="png")
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)  # only left if savefig failed
    return path
