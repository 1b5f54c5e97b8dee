"""Eq. 4's proximal operator against a NumPy reference written from the paper, with exact zeros."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from hyvid.models.fusion import prox_l21_l11


def prox_reference(W: np.ndarray, lam2: float, lam3: float) -> np.ndarray:
    """Eq. 4 row by row, straight from the paper's text."""
    out = np.zeros_like(W)
    for r in range(W.shape[0]):
        u = np.sign(W[r]) * np.maximum(np.abs(W[r]) - lam3, 0.0)
        n = np.sqrt((u ** 2).sum())
        out[r] = 0.0 if n <= lam2 else (1.0 - lam2 / n) * u
    return out


@pytest.mark.parametrize("lam2,lam3", [(0.0, 0.3), (0.5, 0.0), (0.8, 0.2), (1.5, 0.1), (0.05, 0.9)])
def test_prox_matches_numpy_reference(lam2, lam3):
    rng = np.random.default_rng(0)
    W = rng.normal(size=(40, 13))
    W[:8] *= 0.1  # small rows: the row shrinkage drives these exactly to zero for the larger lam2
    got = prox_l21_l11(torch.from_numpy(W), lam2, lam3).numpy()
    ref = prox_reference(W, lam2, lam3)
    zero_rows = (ref == 0).all(axis=1)
    if lam2 >= 0.5:
        assert zero_rows.sum() >= 8, "test data should drive some rows to zero"
    assert (got[zero_rows] == 0).all(), "rows below the threshold must be exactly 0"
    np.testing.assert_allclose(got[~zero_rows], ref[~zero_rows], rtol=0, atol=1e-6)
    assert ((got == 0) == (ref == 0)).all(), "the zero pattern must match exactly"


def test_prox_is_noop_without_penalty():
    W = torch.randn(20, 30, dtype=torch.float64)
    assert torch.equal(prox_l21_l11(W, 0.0, 0.0), W)


def test_prox_is_pure_and_keeps_dtype():
    W = torch.randn(5, 6)
    before = W.clone()
    out = prox_l21_l11(W, 0.3, 0.2)
    assert torch.equal(W, before)
    assert out.dtype == W.dtype and out.shape == W.shape


def test_lam3_alone_zeroes_individual_weights_not_rows():
    torch.manual_seed(0)
    W = torch.randn(30, 50)
    out = prox_l21_l11(W, 0.0, 0.5)
    assert (out == 0).float().mean() > 0.3  # ~38% of N(0,1) entries have |w| < 0.5
    assert not (out == 0).all(dim=1).any()
    kept = out != 0
    torch.testing.assert_close(out[kept].abs(), W[kept].abs() - 0.5)


def test_zero_rows_give_no_nan():
    W = torch.zeros(4, 3)
    W[1] = torch.tensor([1.0, 2.0, 2.0])
    out = prox_l21_l11(W, 0.5, 0.0)
    assert not torch.isnan(out).any()
    assert (out[[0, 2, 3]] == 0).all()
    torch.testing.assert_close(out[1], W[1] * (1 - 0.5 / 3.0))


def test_prox_rejects_bad_input():
    with pytest.raises(ValueError, match="2-D"):
        prox_l21_l11(torch.zeros(3), 0.1, 0.1)
    with pytest.raises(ValueError, match=">= 0"):
        prox_l21_l11(torch.zeros(3, 3), -0.1, 0.1)


def _objective(X: np.ndarray, W: np.ndarray, lam2: float, lam3: float) -> float:
    """What Eq. 4 minimizes: 1/2 ||X - W||_F^2 + lam2 * sum_r ||X_r||_2 + lam3 * sum |X_ij|."""
    return 0.5 * ((X - W) ** 2).sum() + lam2 * np.sqrt((X ** 2).sum(axis=1)).sum() + lam3 * np.abs(X).sum()


@pytest.mark.parametrize("lam2,lam3", [(0.0, 0.3), (0.5, 0.0), (0.8, 0.2), (0.05, 0.9)])
def test_prox_solves_the_minimization_it_stands_for(lam2, lam3):
    """The output satisfies the optimality conditions of the problem, not just a restatement of the formula:
    0 is in the subdifferential of the objective at V, and no perturbation lowers the objective."""
    rng = np.random.default_rng(1)
    W = rng.normal(size=(30, 7))
    W[:6] *= 0.2  # rows the row penalty should zero
    V = prox_l21_l11(torch.from_numpy(W), lam2, lam3).numpy()
    for r in range(W.shape[0]):
        norm = np.linalg.norm(V[r])
        if norm == 0:
            # 0 in -W_r + lam2 * (unit ball) + lam3 * [-1, 1]^n  <=>  ||soft(W_r, lam3)|| <= lam2
            soft = np.sign(W[r]) * np.maximum(np.abs(W[r]) - lam3, 0.0)
            assert np.linalg.norm(soft) <= lam2 + 1e-9, r
            continue
        nz = V[r] != 0
        grad = V[r][nz] - W[r][nz] + lam2 * V[r][nz] / norm + lam3 * np.sign(V[r][nz])
        np.testing.assert_allclose(grad, 0.0, atol=1e-9)
        assert (np.abs(W[r][~nz]) <= lam3 + 1e-9).all(), r  # zero entries: |W_rj| within lam3's subgradient
    best = _objective(V, W, lam2, lam3)
    for _ in range(200):
        assert _objective(V + rng.normal(scale=1e-3, size=V.shape), W, lam2, lam3) >= best - 1e-12
