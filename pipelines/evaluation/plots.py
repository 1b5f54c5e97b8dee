"""PNG plots: the hybrid stage's score over the weights, per-class bars (the paper's Fig. 4) and a
confusion matrix; every training stage's per-epoch train/val curves. Matplotlib's Agg backend, so
nothing needs a display.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # headless: workers and CI have no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

DEFAULT_PLOTS_DIR = "hyvid_plots"  # where stages write their PNG/CSV files: split<N>/ inside
CURVE_PAIRS = (("train_accuracy", "val_accuracy"), ("train_loss", "val_loss"))


def _save(fig: plt.Figure, path: str | Path) -> str:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return str(path)


def weight_surface(
    table: pd.DataFrame, names: Sequence[str], value: str, path: str | Path,
    best: Sequence[float] | None = None, scored_on: str = "validation videos",
) -> str:
    """`value` over the weight candidates in `table` (one column per name), scored on `scored_on`.

    Three models: a ternary plot (each corner is one model alone, the centre the plain
    average). Two: a line over the first model's weight. More: for each model, the best
    value reached at each of its weights (the other weights maximised out).
    """
    names = list(names)
    w = table[names].to_numpy(dtype=float)
    v = table[value].to_numpy(dtype=float)
    if len(names) == 3:
        fig, ax = plt.subplots(figsize=(6.2, 5.4))
        # Barycentric -> 2-D: corner 0 at (0,0), corner 1 at (1,0), corner 2 at (0.5, sqrt(3)/2).
        h = math.sqrt(3) / 2
        x, y = w[:, 1] + w[:, 2] / 2, w[:, 2] * h
        sc = ax.tricontourf(x, y, v, levels=20, cmap="viridis") if len(v) >= 3 and np.ptp(v) > 0 else None
        pts = ax.scatter(x, y, c=v, cmap="viridis", s=14, edgecolors="k", linewidths=0.2)
        fig.colorbar(sc or pts, ax=ax, label=value, shrink=0.8)
        ax.plot([0, 1, 0.5, 0], [0, 0, h, 0], "k-", lw=0.8)
        for (cx, cy), name in zip([(0, 0), (1, 0), (0.5, h)], names, strict=True):
            ax.annotate(name, (cx, cy), xytext=(0, -14 if cy == 0 else 8), textcoords="offset points",
                        ha="center", va="top" if cy == 0 else "bottom", fontsize=9)
        if best is not None:
            ax.plot(best[1] + best[2] / 2, best[2] * h, marker="*", color="red", ms=16, mec="white",
                    label="chosen weights")
            ax.legend(loc="upper right", fontsize=8)
        ax.set_xlim(-0.12, 1.12)
        ax.set_ylim(-0.24, h + 0.12)
        ax.set_aspect("equal")
        ax.axis("off")
        ax.set_title(f"{value} over the hybrid weights\n(scored on {scored_on})", pad=14)
        ax.text(0.5, -0.2, "each corner: that model alone; centre: the plain average", ha="center",
                fontsize=8, color="0.3")
    elif len(names) == 2:
        fig, ax = plt.subplots(figsize=(6, 3.6))
        order = np.argsort(w[:, 0])
        ax.plot(w[order, 0], v[order], "o-", ms=3)
        if best is not None:
            ax.axvline(best[0], color="red", ls="--", label="chosen")
            ax.legend()
        ax.set_xlabel(f"weight of {names[0]} (1 - weight of {names[1]})")
        ax.set_ylabel(value)
        ax.set_title(f"{value} over the hybrid weights (scored on {scored_on})")
    else:
        fig, ax = plt.subplots(figsize=(6.5, 4))
        for j, name in enumerate(names):
            levels = np.unique(np.round(w[:, j], 6))
            ax.plot(levels, [v[np.isclose(w[:, j], lv)].max() for lv in levels], "o-", ms=3, label=name)
        ax.set_xlabel("weight of the model (others maximised out)")
        ax.set_ylabel(f"best {value}")
        ax.legend(fontsize=8)
        ax.set_title(f"{value} over the hybrid weights (scored on {scored_on})")
    return _save(fig, path)


def per_class_bars(
    values: Mapping[str, np.ndarray], class_names: Sequence[str], ylabel: str, path: str | Path,
    title: str | None = None,
) -> str:
    """Grouped bars, one group per class and one bar per model (like the paper's Fig. 4)."""
    models = list(values)
    n_cls = len(class_names)
    width = 0.8 / max(len(models), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * n_cls * max(1, len(models)) / 2 + 2), 4))
    x = np.arange(n_cls)
    for i, m in enumerate(models):
        vals = np.nan_to_num(np.asarray(values[m], dtype=float), nan=0.0)
        ax.bar(x + (i - (len(models) - 1) / 2) * width, vals, width, label=m)
    ax.set_xticks(x)
    ax.set_xticklabels(class_names, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=8, ncol=min(4, len(models)))
    ax.set_title(title or f"per-class {ylabel}")
    return _save(fig, path)


def confusion_matrix_plot(cm: np.ndarray, class_names: Sequence[str], path: str | Path,
                          title: str = "confusion matrix") -> str:
    """Row-normalised confusion matrix (rows: true class) with the counts written in small cells."""
    cm = np.asarray(cm)
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=float), where=rows > 0)
    n = len(class_names)
    size = max(4.0, 0.4 * n + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, label="fraction of the true class")
    ax.set_xticks(range(n))
    ax.set_yticks(range(n))
    ax.set_xticklabels(class_names, rotation=60, ha="right", fontsize=8)
    ax.set_yticklabels(class_names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 25:  # counts stay readable up to ~25 classes
        for i in range(n):
            for j in range(n):
                if cm[i, j]:
                    ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if norm[i, j] > 0.5 else "black")
    ax.set_title(title)
    return _save(fig, path)


def training_curves(histories: Mapping[str, Mapping[str, Sequence[tuple[int, float]]]], path: str | Path,
                    title: str, selected: Mapping[str, int] | None = None) -> str:
    """One PNG of a stage's fits: per model (a column), train and val accuracy (top) and loss (bottom)
    over epochs, from `histories[model][metric] = [(epoch, value), ...]`; `selected` marks each fit's kept epoch."""
    models = list(histories)
    fig, axes = plt.subplots(2, max(1, len(models)), figsize=(3.2 * max(1, len(models)), 5.4), squeeze=False)
    for col, model in enumerate(models):
        for row, pair in enumerate(CURVE_PAIRS):
            ax = axes[row][col]
            for metric, style in zip(pair, ("-", "--"), strict=True):
                points = sorted(histories[model].get(metric, ()))
                if points:
                    ax.plot([p[0] for p in points], [p[1] for p in points], style, label=metric.split("_")[0])
            if selected and model in selected and selected[model] >= 0:
                ax.axvline(selected[model], color="grey", lw=0.8, ls=":")
            ax.set_xlabel("epoch")
            ax.set_ylabel(pair[0].split("_", 1)[1])
            if row == 0:
                ax.set_title(model, fontsize=10)
            ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)
