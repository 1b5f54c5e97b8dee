"""SVM-MKL (lp-norm MKL, p = 2): the β update solves its problem; the learned weights find the informative stream."""
from __future__ import annotations

import numpy as np
import pytest

from hyvid.models.mkl import LpNormMKL, mkl_weight_update

NUM_CLASSES, DIM = 4, 12


def one_informative(n: int, seed: int):
    """Stream 0 holds the class (non-negative features around a class centre); stream 1 is pure noise."""
    rng = np.random.default_rng(seed)
    centers = np.random.default_rng(99).uniform(0, 3, size=(NUM_CLASSES, DIM))
    y = rng.integers(0, NUM_CLASSES, size=n)
    informative = np.maximum(centers[y] + 0.7 * rng.normal(size=(n, DIM)), 0.0)
    noise = np.maximum(1.0 + 0.7 * rng.normal(size=(n, DIM)), 0.0)
    return [informative, noise], y


@pytest.fixture(scope="module")
def data():
    return one_informative(200, seed=1), one_informative(200, seed=2)


def accuracy(scores: np.ndarray, y: np.ndarray) -> float:
    return float((scores.argmax(1) == y).mean())


@pytest.mark.parametrize("p", [2.0, 1.5, 3.0])
def test_weight_update_minimizes_the_mkl_objective_over_the_p_ball(p):
    rng = np.random.default_rng(0)
    for _ in range(20):
        norms_sq = rng.uniform(0.01, 5.0, size=3)
        beta = mkl_weight_update(norms_sq, p)
        assert np.sum(beta ** p) == pytest.approx(1.0)  # on the boundary of the p-ball
        best = float(np.sum(norms_sq / beta))
        # Any other feasible β (scaled onto the ball, where the objective is lowest along its ray) does worse.
        for other in rng.uniform(0.01, 1.0, size=(200, 3)):
            other /= np.sum(other ** p) ** (1 / p)
            assert np.sum(norms_sq / other) >= best - 1e-9
    np.testing.assert_allclose(mkl_weight_update(np.zeros(2), 2.0), [2 ** -0.5] * 2)  # nothing learned: uniform
    with pytest.raises(ValueError, match="p > 1"):
        mkl_weight_update(np.ones(2), 1.0)


@pytest.mark.parametrize("kernel", ["exact", "approx"])
def test_weights_have_unit_two_norm_and_favour_the_informative_stream(data, kernel):
    (xs, y), (xt, yt) = data
    model = LpNormMKL(C=1.0, kernel=kernel).fit(xs, y, num_classes=NUM_CLASSES)
    w = model.kernel_weights_
    assert w.shape == (2,) and np.sum(w ** 2) == pytest.approx(1.0)
    assert w[0] > 2 * w[1], w  # uniform would be 0.707 each
    scores = model.predict_scores(xt)
    assert scores.shape == (len(yt), NUM_CLASSES)
    assert accuracy(scores, yt) >= 0.9
    assert model.converged_ and 1 <= model.n_iter_ <= model.max_iter


def test_exact_and_approx_paths_roughly_agree(data):
    (xs, y), (xt, yt) = data
    exact = LpNormMKL(C=1.0, kernel="exact").fit(xs, y)
    approx = LpNormMKL(C=1.0, kernel="approx").fit(xs, y)
    np.testing.assert_allclose(exact.kernel_weights_, approx.kernel_weights_, atol=0.1)
    agree = (exact.predict_scores(xt).argmax(1) == approx.predict_scores(xt).argmax(1)).mean()
    assert agree >= 0.9


def test_deterministic_and_multilabel(data):
    (xs, y), (xt, _) = data
    a = LpNormMKL(kernel="approx").fit(xs, y).predict_scores(xt)
    np.testing.assert_array_equal(a, LpNormMKL(kernel="approx").fit(xs, y).predict_scores(xt))
    labels = [[int(c), 4] if c % 2 == 0 else [int(c)] for c in y]  # label 4 on even classes
    model = LpNormMKL(C=1.0).fit(xs, labels, num_classes=5)
    scores = model.predict_scores(xt)
    assert scores.shape == (len(xt[0]), 5)
    assert np.sum(model.kernel_weights_ ** 2) == pytest.approx(1.0)


def test_bad_settings_are_refused(data):
    (xs, y), _ = data
    with pytest.raises(ValueError, match="p > 1"):
        LpNormMKL(p=1.0)
    with pytest.raises(ValueError, match="max_iter"):
        LpNormMKL(max_iter=0)
    with pytest.raises(ValueError, match="non-negative"):
        LpNormMKL().fit([xs[0] - 5.0, xs[1]], y)
