"""Bootstrap intervals over test videos, and paired-bootstrap verdicts on "model A beats model B".

The resampling unit is the group where the videos have groups (UCF-101's gXX within a class:
clips cut from one long video, near-duplicates of each other; `resampling_units`), else the
video: a resample draws as many groups (or videos) as there are, with replacement, and takes
every video of each group drawn; every metric of pipelines.evaluation.metrics is recomputed on
it; the interval is the resamples' bias-corrected percentile interval (Efron's BC, see
_interval). A resample is held as a row of counts (how often each video was drawn), so each
metric is a weighted sum over videos and 1,000 resamples cost a few matrix products instead of
1,000 calls to scikit-learn:

- accuracy and top-5 are weighted means of a per-video hit vector;
- mean class accuracy is the mean over classes of weighted hits / weighted totals;
- AP of a class is Σ over its positive videos of count × precision at that video's score
  (ties grouped as scikit-learn groups them), divided by the weighted number of positives. A
  class with no positive in a resample is skipped, as metrics.py skips it on the full set.

With all counts 1 each function gives exactly metrics.evaluate (tests check this).
`paired_difference` uses the same resamples for both models, so the
videos both get right or both get wrong cancel out of the difference.
"""
from __future__ import annotations

from dataclasses import dataclass
from statistics import NormalDist
from typing import Sequence

import numpy as np

from hyvid.models import registry as R
from hyvid.pipelines.evaluation import metrics as M

DEFAULT_N_BOOT = 1000
DEFAULT_LEVEL = 0.95
REPRODUCED, INCONCLUSIVE, CONTRADICTED = "reproduced", "inconclusive", "contradicted"
VERDICTS = (REPRODUCED, INCONCLUSIVE, CONTRADICTED)
_NORMAL = NormalDist()
# AP of a class with at most this many distinct positive scores is one matrix product over the
# videos; above it (multi-label data), a cumulative sum along the class's ranking, in blocks of
# _BLOCK resamples (a [block, videos] float32 gather: 40 MB at 10k videos). Measured in the report
# of issue 13: 3,700 videos x 101 classes single-label (~37 positives a class).
_MATMUL_GROUPS = 256
_BLOCK = 1000


@dataclass(frozen=True)
class PairedResult:
    """A's metric minus B's on the same test videos, its bootstrap interval and the verdict on "A beats B"."""

    diff: float
    lo: float
    hi: float
    n: int
    verdict: str


def resampling_units(groups: Sequence[object] | None, labels_multi: Sequence[Sequence[int]]) -> list[str] | None:
    """The bootstrap's unit of each video: its group within its class(es), or None (resample videos).

    UCF-101's groups are numbered per class (g01 of one action and g01 of another are different
    people), and the clips of one (class, group) are near-duplicates: that pair is the unit.
    """
    if groups is None:
        return None
    return [f"{','.join(map(str, sorted(ls)))}|{g}" for g, ls in zip(groups, labels_multi, strict=True)]


def _check_args(n_boot: int, level: float) -> None:
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), e.g. 0.95; got {level}")


def resample_counts(n: int, n_boot: int = DEFAULT_N_BOOT, seed: int = 0,
                    groups: Sequence[object] | None = None) -> np.ndarray:
    """[n_boot, n] counts: how often each of n videos is drawn in each resample.

    Without `groups` a resample draws n videos with replacement (rows sum to n). With `groups`
    (one label per video) it draws as many groups as there are and every video of a drawn group
    comes with it, so near-duplicate clips of one group are resampled together: the interval then
    reflects how many independent groups the figure rests on, not how many clips.
    """
    _check_args(n_boot, DEFAULT_LEVEL)
    if n < 1:
        raise ValueError(f"need at least one video to resample, got {n}")
    rng = np.random.default_rng(seed)
    if groups is not None:
        if len(groups) != n:
            raise ValueError(f"groups must give one group per video: {len(groups)} for {n} videos")
        _, group_of = np.unique(np.asarray([str(g) for g in groups]), return_inverse=True)
        n_groups = int(group_of.max()) + 1
        group_counts = resample_counts(n_groups, n_boot, seed)
        return np.ascontiguousarray(group_counts[:, group_of])
    flat = rng.integers(0, n, size=(n_boot, n)) + (np.arange(n_boot) * n)[:, None]
    # float32 holds every count and every sum of counts (< 2**24) exactly, at half the memory traffic.
    return np.bincount(flat.ravel(), minlength=n_boot * n).reshape(n_boot, n).astype(np.float32)


class _Prepared:
    """What the weighted metrics need of one score set: hit vectors and the binary label matrix."""

    def __init__(self, scores: np.ndarray, labels: np.ndarray | None, labels_multi: Sequence[Sequence[int]] | None,
                 multilabel: bool) -> None:
        scores = np.asarray(scores, dtype=np.float64)
        if scores.ndim != 2:
            raise ValueError(f"scores must be a 2-D [videos, classes] array, got shape {scores.shape}")
        self.scores, self.multilabel = scores, multilabel
        n, c = scores.shape
        k = min(5, c)
        top = np.argsort(scores, axis=1, kind="mergesort")[:, ::-1][:, :k]  # as metrics.top_k_accuracy
        if multilabel:
            if labels_multi is None:
                raise ValueError("multilabel evaluation needs labels_multi (one list of class indices per video)")
            self.y = M.label_matrix(labels_multi, c)
            if self.y.shape[0] != n:
                raise ValueError(f"{n} score rows but {self.y.shape[0]} label lists")
            hits = np.take_along_axis(self.y, top, axis=1).astype(bool)
            self.hits = {R.ACCURACY: hits[:, 0], R.TOP5: hits.any(axis=1)}
            # As metrics.multilabel_hit_at_k: a video with no true class can neither hit nor miss.
            self.counted = self.y.any(axis=1)
        else:
            if labels is None:
                raise ValueError("single-label evaluation needs labels (one class index per video)")
            lab = np.asarray(labels).astype(np.int64).reshape(-1)
            if lab.shape[0] != n:
                raise ValueError(f"{n} score rows but {lab.shape[0]} labels")
            if n and (lab.min() < 0 or lab.max() >= c):
                raise ValueError(f"labels must lie in [0, {c}) for {c} classes, got [{lab.min()}, {lab.max()}]")
            self.y = M.label_matrix([[int(v)] for v in lab], c)
            self.hits = {R.ACCURACY: M.predictions(scores) == lab, R.TOP5: (top == lab[:, None]).any(axis=1)}
            self.counted = np.ones(n, dtype=bool)

    def metrics(self) -> tuple[str, ...]:
        """The metrics metrics.evaluate reports for this kind of data (no mean class accuracy on multi-label)."""
        if self.multilabel:
            return (R.ACCURACY, R.TOP5, R.MAP)
        return (R.ACCURACY, R.MEAN_CLASS_ACCURACY, R.TOP5, R.MAP)

    def weighted(self, metric: str, w: np.ndarray) -> np.ndarray:
        """The metric under each row of counts w [B, n]: [B] (NaN where it is undefined)."""
        if metric not in self.metrics():
            raise ValueError(f"metric {metric!r} is not defined here; choose from {list(self.metrics())}")
        if metric in self.hits:
            hit = (w @ self.hits[metric].astype(w.dtype)).astype(np.float64)
            counted = (w @ self.counted.astype(w.dtype)).astype(np.float64)
            with np.errstate(invalid="ignore", divide="ignore"):
                return np.where(counted > 0, hit / counted, np.nan)
        if metric == R.MEAN_CLASS_ACCURACY:
            yf = self.y.astype(w.dtype)
            totals = (w @ yf).astype(np.float64)
            hits = (w @ (yf * self.hits[R.ACCURACY][:, None])).astype(np.float64)
            with np.errstate(invalid="ignore", divide="ignore"):
                per = np.where(totals > 0, hits / totals, np.nan)
            return _nanmean_rows(per)
        return _nanmean_rows(np.stack([self._ap(c, w) for c in range(self.y.shape[1])], axis=1))

    def _ap(self, c: int, w: np.ndarray) -> np.ndarray:
        """AP of class c under each row of counts: [B], NaN where the resample has no positive."""
        pos = self.y[:, c].astype(bool)
        if not pos.any():
            return np.full(w.shape[0], np.nan)
        s = self.scores[:, c]
        order = np.argsort(-s, kind="stable")
        ss = s[order]
        p = np.flatnonzero(pos[order])  # sorted positions of the positives
        # A positive's threshold retrieves every video scoring >= it: its whole tie group included.
        ends = np.searchsorted(-ss, -ss[p], side="right") - 1
        uniq = np.r_[True, ends[1:] != ends[:-1]]  # positives in one tie group share one threshold
        group_of = np.cumsum(uniq) - 1
        tp_at = np.searchsorted(p, ends, side="right") - 1  # the last positive at or above each threshold
        wp = w[:, order[p]]
        if uniq.sum() <= _MATMUL_GROUPS:
            # Few thresholds (single-label data: ~n/C positives a class): one [n, groups] product.
            rank = np.empty(len(s), dtype=np.int64)
            rank[order] = np.arange(len(s))
            above = (rank[:, None] <= ends[uniq][None, :]).astype(w.dtype)
            retrieved = (w @ above)[:, group_of]
        else:
            # Many thresholds (multi-label data): a cumulative sum along the ranking, in blocks.
            starts = np.r_[0, ends[:-1] + 1][uniq]
            cuts = np.r_[starts, ends[-1] + 1] if ends[-1] + 1 < len(s) else starts
            retrieved = np.empty_like(wp)
            for b0 in range(0, w.shape[0], _BLOCK):
                seg = np.add.reduceat(w[b0:b0 + _BLOCK][:, order], cuts, axis=1)[:, :len(starts)]
                retrieved[b0:b0 + _BLOCK] = np.cumsum(seg, axis=1)[:, group_of]
        tp = np.cumsum(wp, axis=1, dtype=np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            prec = np.where(wp > 0, tp[:, tp_at] / retrieved, 0.0)
            return np.where(tp[:, -1] > 0, (wp * prec).sum(axis=1) / tp[:, -1], np.nan)


def _nanmean_rows(a: np.ndarray) -> np.ndarray:
    n = (~np.isnan(a)).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, np.nansum(a, axis=1) / np.maximum(n, 1), np.nan)


def _interval(values: np.ndarray, estimate: float, level: float) -> tuple[float, float]:
    """The bias-corrected percentile interval (Efron's BC) of bootstrap values around `estimate`.

    Plain percentiles assume the resampled metric is centred on the estimate. AP is not: a
    positive drawn twice ties with itself and lifts its class's AP, so with ~4 positives a
    class (404 videos x 101 classes) the plain interval's lower end sits at the estimate. BC
    shifts both percentiles by how far the estimate lies from the resamples' median, and equals
    the plain interval when the resamples are centred (accuracy and its cousins, in practice).
    """
    v = values[~np.isnan(values)]
    if v.size == 0 or np.isnan(estimate):
        return float("nan"), float("nan")
    below = (np.count_nonzero(v < estimate) + 0.5 * np.count_nonzero(v == estimate)) / v.size
    below = min(max(below, 0.5 / v.size), 1 - 0.5 / v.size)  # a finite z0 when no resample is below/above
    z0, z = _NORMAL.inv_cdf(below), _NORMAL.inv_cdf(0.5 + level / 2)
    lo, hi = np.percentile(v, [100 * _NORMAL.cdf(2 * z0 - z), 100 * _NORMAL.cdf(2 * z0 + z)])
    return float(lo), float(hi)


def _point(prep: _Prepared, metric: str) -> float:
    return float(prep.weighted(metric, np.ones((1, prep.scores.shape[0]), dtype=np.float32))[0])


def metric_intervals(scores: np.ndarray, labels: np.ndarray | None, labels_multi: Sequence[Sequence[int]] | None,
                     multilabel: bool, n_boot: int = DEFAULT_N_BOOT, seed: int = 0,
                     level: float = DEFAULT_LEVEL, groups: Sequence[object] | None = None
                     ) -> dict[str, tuple[float, float]]:
    """A bootstrap interval (bias-corrected percentile) for every metric metrics.evaluate reports,
    resampling groups when `groups` is given (one per video), else videos.

    Keys as models.registry.METRICS (multi-label data has no mean class accuracy, as in evaluate).
    """
    _check_args(n_boot, level)
    prep = _Prepared(scores, labels, labels_multi, multilabel)
    w = resample_counts(prep.scores.shape[0], n_boot, seed, groups)
    return {m: _interval(prep.weighted(m, w), _point(prep, m), level) for m in R.METRICS if m in prep.metrics()}


def metric_ci(scores: np.ndarray, labels: np.ndarray | None, labels_multi: Sequence[Sequence[int]] | None,
              multilabel: bool, metric: str, n_boot: int = DEFAULT_N_BOOT, seed: int = 0,
              level: float = DEFAULT_LEVEL, groups: Sequence[object] | None = None) -> tuple[float, float]:
    """The bootstrap interval (lo, hi) of one metric, resampling groups (or videos) with replacement."""
    _check_args(n_boot, level)
    prep = _Prepared(scores, labels, labels_multi, multilabel)
    w = resample_counts(prep.scores.shape[0], n_boot, seed, groups)
    return _interval(prep.weighted(metric, w), _point(prep, metric), level)


def verdict(lo: float, hi: float) -> str:
    """"reproduced" when the interval of A − B lies above 0, "contradicted" below 0, else "inconclusive"."""
    if lo > 0:
        return REPRODUCED
    if hi < 0:
        return CONTRADICTED
    return INCONCLUSIVE


def paired_difference(scores_a: np.ndarray, scores_b: np.ndarray, labels: np.ndarray | None,
                      labels_multi: Sequence[Sequence[int]] | None, multilabel: bool, metric: str,
                      n_boot: int = DEFAULT_N_BOOT, seed: int = 0, level: float = DEFAULT_LEVEL,
                      groups: Sequence[object] | None = None) -> PairedResult:
    """metric(A) − metric(B) on the same videos (rows aligned), with a paired bootstrap interval.

    Both models are scored on the same resampled videos in every resample, so the interval
    reflects how consistently A beats B video by video, not the spread of either metric alone.
    """
    _check_args(n_boot, level)
    if np.shape(scores_a) != np.shape(scores_b):
        raise ValueError(f"paired scores must have one shape, got {np.shape(scores_a)} and {np.shape(scores_b)}; "
                         "align both models on the same videos first")
    a = _Prepared(scores_a, labels, labels_multi, multilabel)
    b = _Prepared(scores_b, labels, labels_multi, multilabel)
    n = a.scores.shape[0]
    diff = _point(a, metric) - _point(b, metric)
    w = resample_counts(n, n_boot, seed, groups)
    lo, hi = _interval(a.weighted(metric, w) - b.weighted(metric, w), diff, level)
    return PairedResult(diff, lo, hi, n, verdict(lo, hi))
