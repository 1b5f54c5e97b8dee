"""SVM-MKL of Table 2: lp-norm multiple kernel learning (Kloft, Brefeld, Sonnenburg & Zien, JMLR 2011), p = 2,
over the per-stream χ² kernels.

The model is ``f(x) = Σ_m w_mᵀ φ_m(x) + b`` with one feature space per stream, trained on

    min_{β ≥ 0, ‖β‖_p ≤ 1}  min_{w, b}  ½ Σ_m ‖w_m‖² / β_m  +  C Σ_i hinge(y_i f(x_i)),

i.e. an SVM on the combined kernel ``K = Σ_m β_m K_m``. Following Kloft et al. (Sec. 4, the "analytical"
wrapper), training alternates

1. an SVM on ``K = Σ_m β_m K_m`` (β fixed), whose dual coefficients ``a = α ⊙ y`` give
   ``‖w_m‖² = β_m² aᵀ K_m a``;
2. β's closed-form minimizer for those w (:func:`mkl_weight_update`):
   ``β_m = ‖w_m‖^{2/(p+1)} / (Σ_m' ‖w_m'‖^{2p/(p+1)})^{1/p}``,

until β moves less than ``tol`` or after ``max_iter`` rounds. β starts uniform with ‖β‖_p = 1.

Multi-class and multi-label data are one-vs-rest, like the other SVM baselines. **β is shared by all classes**:
the one-vs-rest problems are summed into one objective, so ``‖w_m‖²`` in step 2 is summed over the classes'
SVMs. Why shared: Table 2 compares *features* (which stream matters); a per-class β would give each one-vs-rest
problem two more parameters fitted on its handful of positives (14 per class on the demo, ~70 on UCF-101), and
the shared pair is what the run logs (``kernel_weights_``, one per stream).

``kernel="approx"`` runs the same alternation on the additive-χ² explicit maps (as the other SVMs' "approx"):
the combined feature is ``[sqrt(β_m) φ_m(x)]_m`` and a linear SVM on it has primal blocks ``v_m`` with
``w_m = sqrt(β_m) v_m``, so ``‖w_m‖² = β_m ‖v_m‖²``. (Its kernel is the additive χ², not the exponential χ² of
``"exact"``, and liblinear's hinge is squared: the two paths agree in what they find, not to the digit.)

Where it simplifies the source: no SILP/Newton solver, only the analytical alternation, which Kloft et al. show
converges for p > 1; the SVM is solved to scikit-learn's default tolerance in each round.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.svm import SVC, LinearSVC

from hyvid.models.baselines import _OneVsRestSVM, _SVMFusionBase

P_NORM = 2.0  # the paper's SVM-MKL row: lp-norm MKL with p = 2
DEFAULT_MAX_ITER = 20
DEFAULT_TOL = 1e-3


def mkl_weight_update(norms_sq: np.ndarray, p: float = P_NORM) -> np.ndarray:
    """Kloft et al.'s closed-form kernel weights given ``‖w_m‖²`` per kernel ([M]).

    ``β_m = ‖w_m‖^{2/(p+1)} / (Σ_m' ‖w_m'‖^{2p/(p+1)})^{1/p}`` minimizes ``Σ_m ‖w_m‖² / β_m`` over
    ``β ≥ 0, ‖β‖_p ≤ 1``; the result has ‖β‖_p = 1. All-zero norms (no SVM learned anything) give uniform β.
    """
    norms_sq = np.asarray(norms_sq, dtype=np.float64)
    if norms_sq.ndim != 1 or not len(norms_sq) or (norms_sq < 0).any():
        raise ValueError(f"norms_sq must be a non-empty 1-D array of values >= 0, got {norms_sq}")
    if p <= 1:
        raise ValueError(f"lp-norm MKL needs p > 1 (the closed form is for p > 1), got p={p}")
    w = np.sqrt(norms_sq)
    den = float(np.sum(w ** (2 * p / (p + 1)))) ** (1 / p)
    if den == 0:
        return np.full(len(w), len(w) ** (-1 / p))
    beta: np.ndarray = w ** (2 / (p + 1)) / den
    return beta


class LpNormMKL(_SVMFusionBase):
    """SVM-MKL: one-vs-rest SVMs on ``Σ_m β_m K_m`` with lp-norm-learned kernel weights β (see the module doc).

    Args:
        C: the SVM's soft-margin constant (the config's ``svm_c``).
        gamma: χ² bandwidth(s), as :class:`hyvid.models.baselines.SVMEarlyFusion`.
        kernel: "exact" (precomputed exponential χ²) or "approx" (additive-χ² maps, linear SVMs).
        p: the norm on β (> 1).
        max_iter: at most this many SVM + β rounds.
        tol: stop when no β_m moves more than this.

    After ``fit``: ``kernel_weights_`` ([n_streams], ‖·‖_p = 1), ``n_iter_`` (rounds run), ``converged_``.
    """

    kernel_weights_: np.ndarray
    n_iter_: int
    converged_: bool

    def __init__(self, C: float = 1.0, gamma: float | Sequence[float] | None = None, kernel: str = "exact",
                 p: float = P_NORM, max_iter: int = DEFAULT_MAX_ITER, tol: float = DEFAULT_TOL) -> None:
        super().__init__(C=C, gamma=gamma, kernel=kernel)
        if p <= 1:
            raise ValueError(f"lp-norm MKL needs p > 1, got p={p}")
        if max_iter < 1 or tol <= 0:
            raise ValueError(f"max_iter must be >= 1 and tol > 0, got max_iter={max_iter}, tol={tol}")
        self.p = float(p)
        self.max_iter = int(max_iter)
        self.tol = float(tol)

    def _combine(self, per_stream: list[np.ndarray], beta: np.ndarray) -> np.ndarray:
        if self.kernel == "exact":
            combined: np.ndarray = sum(b * K for b, K in zip(beta, per_stream, strict=True))
            return combined
        return np.concatenate([np.sqrt(b) * f for b, f in zip(beta, per_stream, strict=True)], axis=1)

    def _norms_sq(self, svm: _OneVsRestSVM, per_stream: list[np.ndarray], beta: np.ndarray) -> np.ndarray:
        """``‖w_m‖²`` per stream, summed over the classes' SVMs (β is shared by the classes)."""
        out = np.zeros(len(per_stream))
        edges = np.cumsum([0, *(f.shape[1] for f in per_stream)])
        for m in svm.models_:
            if isinstance(m, SVC):
                sv, a = m.support_, m.dual_coef_[0]
                out += [b * b * float(a @ K[np.ix_(sv, sv)] @ a) for b, K in zip(beta, per_stream, strict=True)]
            elif isinstance(m, LinearSVC):
                v = m.coef_[0]
                out += [b * float(v[lo:hi] @ v[lo:hi]) for b, lo, hi in zip(beta, edges[:-1], edges[1:], strict=True)]
            # else: a class with one label value in training is a constant; it has no w
        return out

    def fit(self, xs: Sequence[np.ndarray], y: Any, num_classes: int | None = None) -> "LpNormMKL":
        """``xs``: per-stream ``[N, D_i]`` non-negative features; ``y``: see
        :func:`hyvid.models.baselines.encode_labels`."""
        train, Y = self._fit_streams(xs, y, num_classes)
        per_stream = self._kernels(train)
        beta = np.full(len(per_stream), len(per_stream) ** (-1 / self.p))
        self.converged_ = False
        for it in range(self.max_iter):
            svm = self._svm().fit(self._combine(per_stream, beta), Y)
            new = mkl_weight_update(self._norms_sq(svm, per_stream, beta), self.p)
            self.n_iter_ = it + 1
            if np.abs(new - beta).max() < self.tol:
                # Keep the β this SVM was trained with, so the model and its logged weights agree.
                self.converged_ = True
                break
            if it + 1 < self.max_iter:
                beta = new
        self.svm_, self.kernel_weights_ = svm, beta
        return self

    def decision_values(self, xs: Sequence[np.ndarray]) -> np.ndarray:
        """``[N, num_classes]`` decision values of the SVMs on the learned kernel combination."""
        xs = self._check_streams(xs, fitted=True)
        return self.svm_.decision(self._combine(self._kernels(xs), self.kernel_weights_))
