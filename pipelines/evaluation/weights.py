"""The hybrid's weight search (Sec. 4.2.3): linear fusion weights on the simplex, chosen on validation.

Pure NumPy: score matrices and labels in, weights and a table of every candidate out.
"""
from __future__ import annotations

import itertools
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from hyvid.models.registry import METRICS
from hyvid.pipelines.evaluation import metrics as M

SEARCH_METRICS = METRICS
# Ties within this tolerance count as equal when picking the best candidate.
TIE_TOL = 1e-9


def simplex_grid(k: int, step: float) -> np.ndarray:
    """Every weight vector of k non-negative multiples of `step` summing to 1, as [M, k].

    M = C(n + k - 1, k - 1) for n = 1/step: 231 for 3 models at 0.05, 1,771 for 4, 10,626 for 5.
    """
    if k < 1:
        raise ValueError(f"need at least one score set, got {k}")
    n = grid_steps(step)
    rows = []
    # Stars and bars: k-1 bar positions among n + k - 1 slots.
    for bars in itertools.combinations(range(n + k - 1), k - 1):
        edges = (-1, *bars, n + k - 1)
        rows.append([edges[i + 1] - edges[i] - 1 for i in range(k)])
    return np.asarray(rows, dtype=np.float64) / n


def grid_steps(step: float) -> int:
    if not 0 < step <= 1:
        raise ValueError(f"step must be in (0, 1], got {step}")
    n = round(1 / step)
    if abs(n * step - 1) > 1e-6:
        raise ValueError(f"step {step} does not divide 1 evenly; use e.g. 0.05, 0.1, 0.125 or 0.25")
    return n


def combine(scores_list: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """The hybrid scores: sum_k weights[k] * scores_list[k] (all [N, C], same row order)."""
    if len(scores_list) != len(weights):
        raise ValueError(f"{len(scores_list)} score sets but {len(weights)} weights")
    shapes = {np.shape(s) for s in scores_list}
    if len(shapes) != 1:
        raise ValueError(f"score sets must have one shape [videos, classes], got {sorted(shapes)}")
    out = np.zeros(np.shape(scores_list[0]), dtype=np.float64)
    for s, w in zip(scores_list, weights, strict=True):
        out += float(w) * np.asarray(s, dtype=np.float64)
    return out


def _metric_fn(metric: str, labels: np.ndarray | None, labels_multi) -> Callable[[np.ndarray], float]:
    if metric not in SEARCH_METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose from {list(SEARCH_METRICS)}")
    if metric == "map":
        if labels_multi is None:
            if labels is None:
                raise ValueError("metric 'map' needs labels or labels_multi")
            labels_multi = [[int(v)] for v in labels]
        y_cache: dict[int, np.ndarray] = {}

        def _map(s: np.ndarray) -> float:
            y = y_cache.setdefault(s.shape[1], M.label_matrix(labels_multi, s.shape[1]))
            return M.mean_average_precision(s, y)

        return _map
    if labels is None:
        raise ValueError(f"metric {metric!r} needs integer labels")
    if metric == "accuracy":
        return lambda s: M.accuracy(s, labels)
    if metric == "mean_class_accuracy":
        return lambda s: M.mean_class_accuracy(s, labels)
    return lambda s: M.top_k_accuracy(s, labels, min(5, s.shape[1]))


def _evaluate_candidates(stacked: np.ndarray, cands: np.ndarray, fn, labels, metric: str) -> np.ndarray:
    """Metric of every candidate; accuracy is vectorised (one tensordot per chunk)."""
    if metric == "accuracy":
        out = np.empty(len(cands))
        chunk = max(1, int(2e7 // max(stacked[0].size, 1)))  # bound the [m, N, C] temporary
        for a in range(0, len(cands), chunk):
            comb = np.tensordot(cands[a:a + chunk], stacked, axes=(1, 0))  # [m, N, C]
            out[a:a + chunk] = (comb.argmax(axis=2) == labels[None, :]).mean(axis=1)
        return out
    return np.array([fn(np.tensordot(w, stacked, axes=(0, 0))) for w in cands])


def _pick(cands: np.ndarray, values: np.ndarray) -> int:
    """Index of the best candidate; ties go to the one closest to the uniform average.

    On a small validation set accuracy is a step function with wide plateaus. Among equally
    good weights the plain average is the least fitted choice, so the tie-break shrinks
    toward it; any remaining tie goes to the first candidate in grid order (deterministic).
    """
    finite = np.where(np.isnan(values), -np.inf, values)
    best = finite.max()
    tied = np.flatnonzero(finite >= best - TIE_TOL)
    k = cands.shape[1]
    dist = np.linalg.norm(cands[tied] - 1.0 / k, axis=1)
    return int(tied[np.argmin(np.round(dist, 12))])


def _refine_candidates(center: np.ndarray, step: float, factor: int = 4) -> np.ndarray:
    """The finer lattice (step/factor) on the simplex within ±step of `center` in each weight."""
    n_f = grid_steps(step) * factor
    base = np.round(center * n_f).astype(int)
    k = len(center)
    span = factor if k <= 4 else factor // 2  # keep 5+ model refinements to ~10^4 points
    rows = []
    for off in itertools.product(range(-span, span + 1), repeat=k - 1):
        head = base[:-1] + np.asarray(off)
        last = n_f - head.sum()
        if (head >= 0).all() and last >= 0 and abs(last - base[-1]) <= span:
            rows.append([*head, last])
    return np.asarray(rows, dtype=np.float64) / n_f


def search_weights(
    val_scores: Sequence[np.ndarray],
    labels: np.ndarray | None,
    step: float = 0.05,
    metric: str = "accuracy",
    labels_multi: Sequence[Sequence[int]] | None = None,
    refine: bool = False,
    names: Sequence[str] | None = None,
) -> tuple[np.ndarray, pd.DataFrame]:
    """Linear fusion weights that maximise `metric` on validation scores.

    Every point of the simplex grid (weights >= 0, sum 1, multiples of `step`) is scored; the
    best wins, ties going to the candidate closest to the plain average. With `refine`, a lattice
    4x finer is then searched within ±step of the winner. Returns the weights [K] and a table of
    every candidate: one column per score set (`names`, default w0..wK-1), the metric as
    `val_<metric>`, and `stage` ("grid" or "refine").
    """
    if not val_scores:
        raise ValueError("search_weights needs at least one score set")
    names = list(names) if names is not None else [f"w{i}" for i in range(len(val_scores))]
    if len(names) != len(val_scores):
        raise ValueError(f"{len(val_scores)} score sets but {len(names)} names")
    stacked = np.stack([np.asarray(s, dtype=np.float64) for s in val_scores])  # [K, N, C]
    if labels is not None:
        labels = np.asarray(labels, dtype=np.int64)
        M._check(stacked[0], labels)
    fn = _metric_fn(metric, labels, labels_multi)
    cands = simplex_grid(len(val_scores), step)
    values = _evaluate_candidates(stacked, cands, fn, labels, metric)
    stages = ["grid"] * len(cands)
    if refine and len(val_scores) > 1:
        fine = _refine_candidates(cands[_pick(cands, values)], step)
        # Drop fine points already on the coarse grid so each weight vector is listed once.
        seen = {tuple(np.round(c, 9)) for c in cands}
        fine = np.array([f for f in fine if tuple(np.round(f, 9)) not in seen]).reshape(-1, cands.shape[1])
        if len(fine):
            cands = np.vstack([cands, fine])
            values = np.concatenate([values, _evaluate_candidates(stacked, fine, fn, labels, metric)])
            stages += ["refine"] * len(fine)
    best = _pick(cands, values)
    table = pd.DataFrame(cands, columns=names)
    table[f"val_{metric}"] = values
    table["stage"] = stages
    table["chosen"] = np.arange(len(cands)) == best
    return cands[best].copy(), table


