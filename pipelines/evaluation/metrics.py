"""Evaluation metrics of the paper: accuracy and mean class accuracy (UCF-101), AP/mAP (CCV), top-k.

Pure NumPy functions over a score matrix `scores[N, C]` (any monotone class scores: softmax
probabilities, sigmoid outputs or SVM decision values) and integer labels. Each one matches the
scikit-learn function named in its docstring; tests/pipelines/test_metrics.py checks that.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from sklearn.metrics import average_precision_score


def _check(scores: np.ndarray, labels: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2:
        raise ValueError(f"scores must be a 2-D [videos, classes] array, got shape {scores.shape}")
    if labels is None:
        return scores, None
    labels = np.asarray(labels).astype(np.int64).reshape(-1)
    if labels.shape[0] != scores.shape[0]:
        raise ValueError(f"{scores.shape[0]} score rows but {labels.shape[0]} labels")
    if labels.size and (labels.min() < 0 or labels.max() >= scores.shape[1]):
        raise ValueError(
            f"labels must lie in [0, {scores.shape[1]}) for {scores.shape[1]} classes, "
            f"got range [{labels.min()}, {labels.max()}]"
        )
    return scores, labels


def predictions(scores: np.ndarray) -> np.ndarray:
    """The top-1 class per row (ties go to the lowest class index, like np.argmax)."""
    return np.asarray(scores).argmax(axis=1)


def accuracy(scores: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of videos whose top-1 class is the label (sklearn.metrics.accuracy_score)."""
    scores, labels = _check(scores, labels)
    if labels.size == 0:
        return float("nan")
    return float((predictions(scores) == labels).mean())


def per_class_accuracy(scores: np.ndarray, labels: np.ndarray, n_classes: int | None = None) -> np.ndarray:
    """Recall of each class (NaN for a class with no videos): the bars of the paper's Fig. 4."""
    scores, labels = _check(scores, labels)
    n = n_classes or scores.shape[1]
    pred = predictions(scores)
    hits = np.bincount(labels[pred == labels], minlength=n).astype(np.float64)
    totals = np.bincount(labels, minlength=n).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, hits / np.maximum(totals, 1), np.nan)


def mean_class_accuracy(scores: np.ndarray, labels: np.ndarray) -> float:
    """Mean of the per-class recalls over the classes present in `labels`.

    Same as sklearn.metrics.balanced_accuracy_score: classes with no video are left out rather
    than counted as 0, so a test split missing a class is not penalised for it.
    """
    per = per_class_accuracy(scores, labels)
    per = per[~np.isnan(per)]
    return float(per.mean()) if per.size else float("nan")


def top_k_accuracy(scores: np.ndarray, labels: np.ndarray, k: int = 5) -> float:
    """Fraction of videos whose label is among the k best classes (sklearn.metrics.top_k_accuracy_score).

    Ties are ordered like scikit-learn: a stable ascending sort reversed, so among equal scores
    the higher class index ranks first. With k >= the number of classes every video is a hit.
    """
    scores, labels = _check(scores, labels)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if labels.size == 0:
        return float("nan")
    top = np.argsort(scores, axis=1, kind="mergesort")[:, ::-1][:, :k]
    return float((top == labels[:, None]).any(axis=1).mean())


def label_matrix(labels_multi: Sequence[Sequence[int]], n_classes: int) -> np.ndarray:
    """Binary indicator matrix [N, C] from per-video lists of class indices."""
    y = np.zeros((len(labels_multi), n_classes), dtype=np.int8)
    for i, ls in enumerate(labels_multi):
        ls = [] if ls is None else list(ls)
        for c in ls:
            if not 0 <= int(c) < n_classes:
                raise ValueError(f"video {i}: class index {c} outside [0, {n_classes})")
            y[i, int(c)] = 1
    return y


def per_class_ap(scores: np.ndarray, y_true: np.ndarray) -> np.ndarray:
    """Average precision of each class (sklearn.metrics.average_precision_score per column).

    `y_true` is a binary [N, C] matrix (see label_matrix). A class with no positive video has
    no defined AP (precision is 0/0 at every threshold); it is NaN here and left out of mAP,
    the usual CCV/TRECVID convention, instead of the 0 that scikit-learn would warn about.
    """
    scores, _ = _check(scores)
    y_true = np.asarray(y_true)
    if y_true.shape != scores.shape:
        raise ValueError(f"y_true shape {y_true.shape} does not match scores shape {scores.shape}")
    out = np.full(scores.shape[1], np.nan)
    for c in range(scores.shape[1]):
        if y_true[:, c].any():
            out[c] = average_precision_score(y_true[:, c], scores[:, c])
    return out


def mean_average_precision(scores: np.ndarray, y_true: np.ndarray) -> float:
    """mAP: the mean of per_class_ap over the classes that have at least one positive video."""
    ap = per_class_ap(scores, y_true)
    ap = ap[~np.isnan(ap)]
    return float(ap.mean()) if ap.size else float("nan")


def confusion_matrix(scores: np.ndarray, labels: np.ndarray, n_classes: int | None = None) -> np.ndarray:
    """Counts [true class, predicted class] (sklearn.metrics.confusion_matrix with all labels)."""
    scores, labels = _check(scores, labels)
    n = n_classes or scores.shape[1]
    cm = np.zeros((n, n), dtype=np.int64)
    np.add.at(cm, (labels, predictions(scores)), 1)
    return cm


def multilabel_hit_at_k(scores: np.ndarray, y_true: np.ndarray, k: int) -> float:
    """Fraction of videos with at least one true class among the k best (top-k for multi-label).

    Only videos with at least one true class count: a video with no positive label (CCV has
    them) has no class to rank first, so it can neither hit nor miss. NaN when no video has one.
    """
    scores, _ = _check(scores)
    y_true = np.asarray(y_true)
    if y_true.shape != scores.shape:
        raise ValueError(f"y_true shape {y_true.shape} does not match scores shape {scores.shape}")
    labelled = y_true.any(axis=1)
    if not labelled.any():
        return float("nan")
    top = np.argsort(scores[labelled], axis=1, kind="mergesort")[:, ::-1][:, :k]
    return float(np.take_along_axis(y_true[labelled], top, axis=1).any(axis=1).mean())


def evaluate(
    scores: np.ndarray,
    labels: np.ndarray,
    labels_multi: Sequence[Sequence[int]] | None = None,
    multilabel: bool = False,
) -> dict[str, float]:
    """The paper's metrics for one score set, keyed like models.registry.METRICS.

    Single-label (UCF-101): accuracy, mean_class_accuracy, top5, and map (one-vs-rest over the
    one-hot labels, handy for comparing with multi-label runs). Multi-label (CCV): map (the
    paper's metric), plus accuracy and top5 read as "a true class is ranked first / in the top 5"
    over the videos that have a true class (`labels` is not read; videos with no positive label
    only count as negatives in mAP).
    """
    scores, _ = _check(scores)
    n_classes = scores.shape[1]
    k = min(5, n_classes)
    if multilabel:
        if labels_multi is None:
            raise ValueError("multilabel evaluation needs labels_multi (one list of class indices per video)")
        y = label_matrix(labels_multi, n_classes)
        return {
            "accuracy": multilabel_hit_at_k(scores, y, 1),
            "top5": multilabel_hit_at_k(scores, y, k),
            "map": mean_average_precision(scores, y),
        }
    scores, labels = _check(scores, labels)
    y = label_matrix([[int(v)] for v in labels], n_classes)
    return {
        "accuracy": accuracy(scores, labels),
        "mean_class_accuracy": mean_class_accuracy(scores, labels),
        "top5": top_k_accuracy(scores, labels, k),
        "map": mean_average_precision(scores, y),
    }


# The metric each kind of dataset is reported and selected by (the paper's convention).
def primary_metric(multilabel: bool) -> str:
    return "map" if multilabel else "accuracy"
