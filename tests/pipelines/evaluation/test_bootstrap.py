"""Bootstrap intervals over videos and paired-bootstrap verdicts (pipelines.evaluation.bootstrap)."""
from __future__ import annotations

import numpy as np
import pytest

from hyvid.pipelines.evaluation import bootstrap as B
from hyvid.pipelines.evaluation import metrics as M


def _scores_with_hits(hits: np.ndarray, n_classes: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Scores whose top-1 is the label exactly where `hits` is true (labels all 0)."""
    rng = np.random.default_rng(seed)
    s = rng.uniform(0, 0.5, size=(len(hits), n_classes))
    s[hits, 0] = 1.0
    s[~hits, 1] = 1.0
    return s, np.zeros(len(hits), dtype=np.int64)


@pytest.mark.parametrize("multilabel", [False, True])
@pytest.mark.parametrize("threshold_path", ["matmul", "cumsum"])
def test_resampled_metrics_equal_evaluate_on_the_drawn_videos(multilabel, threshold_path, monkeypatch):
    if threshold_path == "cumsum":  # force the multi-label path (and tiny blocks) on this small set
        monkeypatch.setattr(B, "_MATMUL_GROUPS", 0)
        monkeypatch.setattr(B, "_BLOCK", 2)
    rng = np.random.default_rng(1)
    n, c = 120, 7
    s = rng.normal(size=(n, c)).round(1)  # many ties, which AP must group as scikit-learn does
    lab = rng.integers(0, c, n)
    lm = [sorted(set(rng.integers(0, c, 3).tolist())) for _ in range(n)]
    lm[:10] = [[]] * 10  # CCV has videos with no positive label
    prep = B._Prepared(s, lab, lm, multilabel)
    w = B.resample_counts(n, 3, seed=5)
    assert (w.sum(axis=1) == n).all()
    for r in range(3):
        idx = np.repeat(np.arange(n), w[r].astype(int))
        ref = M.evaluate(s[idx], lab[idx], [lm[i] for i in idx], multilabel)
        assert set(prep.metrics()) == set(ref)
        for m in prep.metrics():
            assert prep.weighted(m, w[r:r + 1])[0] == pytest.approx(ref[m], abs=1e-12), m
    point = M.evaluate(s, lab, lm, multilabel)
    assert {m: B._point(prep, m) for m in prep.metrics()} == pytest.approx(point, abs=1e-12)


def test_intervals_contain_the_estimate_and_narrow_with_more_videos():
    rng = np.random.default_rng(2)
    widths = []
    for n in (100, 1600):
        s = rng.normal(size=(n, 10))
        lab = rng.integers(0, 10, n)
        s[np.arange(n), lab] += 1.5
        point = M.evaluate(s, lab)
        ci = B.metric_intervals(s, lab, None, False, n_boot=500)
        assert set(ci) == set(point)
        for m, (lo, hi) in ci.items():
            assert lo <= point[m] <= hi, (n, m, lo, point[m], hi)
        widths.append(ci["accuracy"][1] - ci["accuracy"][0])
        assert B.metric_ci(s, lab, None, False, "accuracy", n_boot=500) == ci["accuracy"]  # same seed, same draws
    assert widths[1] < widths[0] / 2  # ~1/sqrt(n): 4x narrower in expectation


def test_multilabel_intervals_have_no_mean_class_accuracy():
    rng = np.random.default_rng(3)
    n, c = 200, 10
    lm = [sorted(rng.choice(c, 4, replace=False).tolist()) for _ in range(n)]
    y = M.label_matrix(lm, c)
    s = y + rng.normal(scale=0.8, size=(n, c))
    ci = B.metric_intervals(s, None, lm, True, n_boot=300)
    assert set(ci) == {"accuracy", "top5", "map"}
    lo, hi = ci["map"]
    assert lo <= M.mean_average_precision(s, y) <= hi and hi - lo < 0.2


def test_accuracy_interval_covers_the_true_rate_about_95_percent_of_the_time():
    rng = np.random.default_rng(4)
    p, n, covered = 0.8, 200, 0
    for i in range(200):
        s, lab = _scores_with_hits(rng.random(n) < p, seed=i)
        lo, hi = B.metric_ci(s, lab, None, False, "accuracy", n_boot=1000, seed=i)
        covered += lo <= p <= hi
    assert 0.90 <= covered / 200 <= 0.99


def test_paired_verdicts():
    rng = np.random.default_rng(5)
    n = 300
    base = rng.random(n) < 0.6
    better = base | (rng.random(n) < 0.5)  # also right on about half of base's misses
    s_base, lab = _scores_with_hits(base, seed=1)
    s_better, _ = _scores_with_hits(better, seed=2)
    r = B.paired_difference(s_better, s_base, lab, None, False, "accuracy")
    assert r.verdict == "reproduced" and r.lo > 0 and r.n == n
    assert r.diff == pytest.approx(better.mean() - base.mean())
    same = B.paired_difference(s_base, s_base, lab, None, False, "accuracy")
    assert (same.diff, same.lo, same.hi, same.verdict) == (0.0, 0.0, 0.0, "inconclusive")
    worse = B.paired_difference(s_base, s_better, lab, None, False, "accuracy")
    assert worse.verdict == "contradicted" and worse.hi < 0
    noisy = B.paired_difference(s_base, _scores_with_hits(rng.random(n) < 0.6, seed=3)[0], lab, None, False,
                                "accuracy")
    assert noisy.lo < 0 < noisy.hi and noisy.verdict == "inconclusive"
    with pytest.raises(ValueError, match="align both models"):
        B.paired_difference(s_base, s_base[:-1], lab, None, False, "accuracy")


def test_pairing_finds_a_small_consistent_gain_that_unpaired_intervals_miss():
    rng = np.random.default_rng(6)
    n = 500
    b_hits = rng.random(n) < 0.7
    a_hits = b_hits.copy()
    a_hits[np.flatnonzero(~b_hits)[:15]] = True  # A = B plus 15 videos (3 points), never worse
    s_a, lab = _scores_with_hits(a_hits, seed=1)
    s_b, _ = _scores_with_hits(b_hits, seed=2)
    ci_a = B.metric_ci(s_a, lab, None, False, "accuracy")
    ci_b = B.metric_ci(s_b, lab, None, False, "accuracy")
    assert ci_a[0] < ci_b[1]  # the unpaired intervals overlap
    r = B.paired_difference(s_a, s_b, lab, None, False, "accuracy")
    assert r.verdict == "reproduced" and r.diff == pytest.approx(0.03)


def test_map_difference_is_paired_too():
    rng = np.random.default_rng(7)
    n, c = 300, 6
    lab = rng.integers(0, c, n)
    y = M.label_matrix([[v] for v in lab], c)
    good = y + rng.normal(scale=0.5, size=(n, c))
    poor = y + rng.normal(scale=2.0, size=(n, c))
    r = B.paired_difference(good, poor, lab, None, False, "map", n_boot=300)
    assert r.verdict == "reproduced"
    assert r.diff == pytest.approx(M.mean_average_precision(good, y) - M.mean_average_precision(poor, y))


def test_bad_arguments_are_named():
    s, lab = _scores_with_hits(np.ones(10, dtype=bool))
    with pytest.raises(ValueError, match="n_boot must be >= 1, got 0"):
        B.metric_ci(s, lab, None, False, "accuracy", n_boot=0)
    with pytest.raises(ValueError, match=r"level must be in \(0, 1\).*got 95"):
        B.metric_ci(s, lab, None, False, "accuracy", level=95)
    with pytest.raises(ValueError, match="mean_class_accuracy"):
        B.metric_ci(s, None, [[0]] * 10, True, "mean_class_accuracy")
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 5\)"):
        B.metric_ci(s, lab + 7, None, False, "accuracy")


def test_a_fits_test_metrics_come_with_their_intervals_and_video_count():
    from hyvid.pipelines.training.data import Subset
    from hyvid.pipelines.training.runs import score_subsets

    rng = np.random.default_rng(8)
    data = {}
    for sub, n in (("val", 30), ("test", 90)):
        lab = rng.integers(0, 5, n)
        data[sub] = Subset([f"{sub}{i}" for i in range(n)], None, lab, [[int(v)] for v in lab])
    scored = {sub: np.eye(5)[d.labels] + rng.normal(scale=0.8, size=(len(d), 5)) for sub, d in data.items()}
    _, metrics = score_subsets({"multilabel": False}, data, lambda d: scored["val" if len(d) == 30 else "test"])
    assert metrics["test_n_videos"] == 90 and "val_n_videos" not in metrics
    for m in ("accuracy", "mean_class_accuracy", "top5", "map"):
        assert metrics[f"test_{m}_ci_low"] <= metrics[f"test_{m}"] <= metrics[f"test_{m}_ci_high"]
        assert f"val_{m}_ci_low" not in metrics


def test_group_resampling_draws_whole_groups_and_widens_intervals_of_near_duplicates():
    groups = [g for g in range(10) for _ in range(6)]  # 10 groups of 6 clips each
    w = B.resample_counts(len(groups), 200, seed=3, groups=groups)
    for g in range(10):
        cols = w[:, [i for i, h in enumerate(groups) if h == g]]
        assert (cols == cols[:, :1]).all()  # a group's clips are drawn together
    assert (w.sum(axis=1) % 6 == 0).all() and w.sum(axis=1).mean() == pytest.approx(60, rel=0.1)
    # Clips of a group are right or wrong together (near-duplicates): resampling 60 clips as if
    # independent understates the spread of what rests on 10 groups.
    hit = np.repeat(np.random.default_rng(0).random(10) < 0.6, 6)
    s, lab = _scores_with_hits(hit, seed=1)
    lo_v, hi_v = B.metric_ci(s, lab, None, False, "accuracy", n_boot=2000)
    lo_g, hi_g = B.metric_ci(s, lab, None, False, "accuracy", n_boot=2000, groups=groups)
    assert hi_g - lo_g > 1.5 * (hi_v - lo_v)
    units = B.resampling_units(["g01", "g01", "g02"], [[3], [4], [3]])
    assert units[0] != units[1] and len(set(units)) == 3  # UCF groups are numbered per class
    with pytest.raises(ValueError, match="one group per video"):
        B.resample_counts(5, 10, groups=["a"] * 4)
