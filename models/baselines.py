"""The feature-fusion baselines of Table 2, on the same video-level features as the fusion network.

* NN-EF (:class:`EarlyFusionMLP`): the streams' features concatenated into one MLP.
* NN-LF (:class:`LateFusionMLP`): one MLP per stream, trained independently, class scores averaged.
* SVM-EF (:class:`SVMEarlyFusion`): a χ² kernel per stream, the kernels averaged, one SVM on the average.
* SVM-LF (:class:`SVMLateFusion`): one χ²-kernel SVM per stream, decision scores averaged.
* Spatial SVM / Motion SVM (:class:`SingleStreamSVM`): the χ²-kernel SVM on one stream, which it picks itself
  from the full list of streams (so it is called like every other baseline).
* SVM-MKL is in :mod:`hyvid.models.mkl`, M-DBM in :mod:`hyvid.models.mdbm`, RDNN in :mod:`hyvid.models.rdnn`.
* The non-regularized fusion network (``fusion_noreg``) is :class:`models.fusion.RegularizedFusionNet` trained
  with lam2 = lam3 = 0; it has no class of its own.

The MLPs are pure PyTorch and standardize each stream's input with its training statistics, as the fusion net
does (``fit_input_stats``, buffers kept in the model): ``head_logits(xs) -> [H, B, C]`` (H = 1 head for EF, one
per stream for LF), ``forward(xs) -> [B, C]`` scores (softmax, or sigmoid when ``multilabel=True``, averaged over
heads), and :func:`mlp_loss` trains every head against the labels; since the LF heads share no parameters, that is
the same as training each stream's MLP on its own.

The SVMs have a scikit-learn-style API on lists of per-stream arrays:
``SVMEarlyFusion(C=1.0).fit([X_spatial, X_motion], y).predict_scores([X_spatial_test, X_motion_test]) -> [N, C]``.
They are one-vs-rest over classes (one binary ``SVC(kernel="precomputed")`` per class), which makes multi-label data
(CCV) cost the same as single-label data. ``decision_values`` gives the SVMs' signed margins; ``predict_scores`` their
softmax (per-class sigmoids for multi-label data), probabilities like every other model's.
Cost: the kernels are O(N² D) to build and O(N²) floats to hold, so they suit the demo and moderate N.
"""
from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise
from typing import Any, cast

import numpy as np
import torch
from sklearn.kernel_approximation import AdditiveChi2Sampler
from sklearn.metrics.pairwise import additive_chi2_kernel
from sklearn.metrics.pairwise import chi2_kernel as _sk_chi2_kernel
from sklearn.preprocessing import MultiLabelBinarizer
from sklearn.svm import SVC, LinearSVC
from torch import nn

from hyvid.models.norm import Standardize

# Below this, a feature value is treated as float noise around 0 and clipped; above it in magnitude, a negative value
# means the features are not post-ReLU activations (e.g. they were standardized) and χ² is meaningless on them.
_NEGATIVE_TOLERANCE = 1e-6


# ---------------------------------------------------------------------------------------------- neural baselines


def _mlp(sizes: Sequence[int], dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in pairwise(sizes[:-1]):
        layers += [nn.Linear(a, b), nn.ReLU(), nn.Dropout(dropout)]
    layers.append(nn.Linear(sizes[-2], sizes[-1]))
    return nn.Sequential(*layers)


class _FusionMLP(nn.Module):
    """NN-EF and NN-LF alike: checked widths, then :meth:`_build_heads` makes the subclass's MLP(s)."""

    def __init__(
        self,
        input_dims: Sequence[int],
        num_classes: int,
        hidden: Sequence[int] = (200,),
        dropout: float = 0.0,
        multilabel: bool = False,
        input_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        input_dims = tuple(int(d) for d in input_dims)
        hidden = tuple(int(h) for h in hidden)
        if not input_dims or any(d <= 0 for d in input_dims):
            raise ValueError(f"input_dims must be a non-empty sequence of positive widths, got {input_dims}")
        if num_classes <= 0 or any(h <= 0 for h in hidden):
            raise ValueError(
                f"num_classes and hidden sizes must be positive, got num_classes={num_classes}, hidden={hidden}")
        if not 0.0 <= dropout < 1.0 or not 0.0 <= input_dropout < 1.0:
            raise ValueError(f"dropout and input_dropout must be in [0, 1), got {dropout}, {input_dropout}")
        self.input_dims = input_dims
        self.num_classes = int(num_classes)
        self.multilabel = bool(multilabel)
        # The identity until fit_input_stats: the same standardization the fusion net gets (equal terms).
        self.input_norms = nn.ModuleList(Standardize(d) for d in input_dims)
        self.input_dropout = nn.Dropout(float(input_dropout))  # on the standardized inputs, as the fusion net's
        self._build_heads(hidden, dropout)

    def fit_input_stats(self, xs: Sequence[torch.Tensor]) -> None:
        """Standardize each stream's input with its training statistics (kept as buffers)."""
        for norm, x in zip(self.input_norms, xs, strict=True):
            cast(Standardize, norm).fit(x)

    def _normed(self, xs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        self._check(xs)
        return [self.input_dropout(norm(x)) for norm, x in zip(self.input_norms, xs, strict=True)]

    def _build_heads(self, hidden: tuple[int, ...], dropout: float) -> None:
        raise NotImplementedError

    def _check(self, xs: Sequence[torch.Tensor]) -> None:
        if len(xs) != len(self.input_dims):
            raise ValueError(f"expected {len(self.input_dims)} streams, got {len(xs)}")
        for i, (x, d) in enumerate(zip(xs, self.input_dims, strict=True)):
            if x.dim() != 2 or x.shape[1] != d:
                raise ValueError(f"stream {i}: expected shape [B, {d}], got {tuple(x.shape)}")

    def head_logits(self, xs: Sequence[torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, xs: Sequence[torch.Tensor]) -> torch.Tensor:
        """Class scores ``[B, C]``: per-head softmax (sigmoid if multi-label), averaged over heads."""
        logits = self.head_logits(xs)
        probs = torch.sigmoid(logits) if self.multilabel else torch.softmax(logits, dim=-1)
        return probs.mean(dim=0)


class EarlyFusionMLP(_FusionMLP):
    """NN-EF: concatenate the streams' video-level features, then one MLP (ReLU hidden layers)."""

    def _build_heads(self, hidden: tuple[int, ...], dropout: float) -> None:
        self.net = _mlp((sum(self.input_dims), *hidden, self.num_classes), dropout)

    def head_logits(self, xs: Sequence[torch.Tensor]) -> torch.Tensor:
        """``[1, B, C]``: the single head's logits."""
        logits: torch.Tensor = self.net(torch.cat(self._normed(xs), dim=1))
        return logits[None]


class LateFusionMLP(_FusionMLP):
    """NN-LF: one MLP per stream; their softmax (or sigmoid) scores are averaged."""

    def _build_heads(self, hidden: tuple[int, ...], dropout: float) -> None:
        self.nets = nn.ModuleList(_mlp((d, *hidden, self.num_classes), dropout) for d in self.input_dims)

    def head_logits(self, xs: Sequence[torch.Tensor]) -> torch.Tensor:
        """``[S, B, C]``: each stream's own logits."""
        return torch.stack([net(x) for net, x in zip(self.nets, self._normed(xs), strict=True)])


def mlp_loss(model: EarlyFusionMLP | LateFusionMLP, xs: Sequence[torch.Tensor], y: torch.Tensor) -> torch.Tensor:
    """Training loss of NN-EF / NN-LF: cross-entropy per head (BCE-with-logits if ``model.multilabel``), summed over
    heads and averaged over the batch.

    ``y`` is ``[B]`` class indices, or ``[B, C]`` multi-hot for a multi-label model. Summing over the LF heads trains
    each stream's MLP exactly as if alone (their parameters are disjoint).
    """
    logits = model.head_logits(xs)
    y = y.to(logits.device)
    if model.multilabel:
        if y.shape != logits.shape[1:]:
            raise ValueError(f"multi-label y must be [B, {model.num_classes}] multi-hot, got {tuple(y.shape)}")
        return cast(torch.Tensor, sum(nn.functional.binary_cross_entropy_with_logits(h, y.to(h.dtype)) for h in logits))
    if y.dim() != 1:
        raise ValueError(f"single-label y must be [B] class indices, got {tuple(y.shape)}; "
                         "build the model with multilabel=True for multi-hot")
    return cast(torch.Tensor, sum(nn.functional.cross_entropy(h, y.long()) for h in logits))  # >= 1 head


# ---------------------------------------------------------------------------------------------- χ² kernel SVMs


def _non_negative(X: np.ndarray, what: str) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(f"{what}: expected a 2-D [N, D] feature array, got shape {X.shape}")
    if X.size and X.min() < -_NEGATIVE_TOLERANCE:
        raise ValueError(
            f"{what}: the χ² kernel needs non-negative features (post-ReLU fc1 outputs), "
            f"but the minimum is {X.min():.4g}; "
            "pass the raw averaged CNN features, not standardized ones"
        )
    clipped: np.ndarray = np.clip(X, 0.0, None)
    return clipped  # float noise just below 0 would make the χ² terms wrong-signed


def chi2_kernel(X: np.ndarray, Y: np.ndarray | None = None, gamma: float = 1.0) -> np.ndarray:
    """χ² kernel ``exp(-gamma * Σ_k (x_k - y_k)² / (x_k + y_k))`` between the rows of X and Y (sklearn's).

    Features must be non-negative (CNN fc1 outputs are post-ReLU; their averages too). Values within 1e-6 below 0
    are clipped to 0; clearly negative input is an error, as the kernel is not defined for it.
    """
    X = _non_negative(X, "chi2_kernel X")
    Y = X if Y is None else _non_negative(Y, "chi2_kernel Y")
    K: np.ndarray = _sk_chi2_kernel(X, Y, gamma=gamma)
    return K


def chi2_gamma(X: np.ndarray, max_rows: int = 1000, seed: int = 0) -> float:
    """The usual χ² bandwidth, 1 / mean χ² distance between training samples (estimated on <= max_rows rows)."""
    X = _non_negative(X, "chi2_gamma X")
    if len(X) > max_rows:
        X = X[np.random.default_rng(seed).choice(len(X), max_rows, replace=False)]
    mean_dist = float(-additive_chi2_kernel(X).mean())
    return 1.0 / mean_dist if mean_dist > 0 else 1.0


def encode_labels(y: Any, num_classes: int | None = None) -> np.ndarray:
    """Labels -> ``[N, C]`` 0/1 indicator matrix.

    Accepts ``[N]`` class indices (single-label), a ``[N, C]`` 0/1 array, or a list of label lists (multi-label).
    ``num_classes`` fixes C (default: the largest label + 1, or the array's width).
    """
    if isinstance(y, (list, tuple)) and y and isinstance(y[0], (list, tuple, set, np.ndarray)):
        labels = [list(map(int, r)) for r in y]
        top = max((max(r) for r in labels if r), default=-1) + 1
        C = top if num_classes is None else num_classes
        if top > C:
            raise ValueError(f"label {top - 1} is out of range for num_classes={C}")
        indicators: np.ndarray = MultiLabelBinarizer(classes=list(range(C))).fit_transform(labels).astype(np.int8)
        return indicators
    arr = np.asarray(y)
    if arr.ndim == 2:
        if num_classes is not None and arr.shape[1] != num_classes:
            raise ValueError(f"indicator labels have {arr.shape[1]} columns, expected num_classes={num_classes}")
        if not np.isin(arr, (0, 1)).all():
            raise ValueError("a 2-D label array must be a 0/1 indicator matrix [N, C]")
        return arr.astype(np.int8)
    if arr.ndim != 1:
        raise ValueError(
            f"labels must be [N] class indices, [N, C] indicators or a list of label lists, got shape {arr.shape}")
    arr = arr.astype(np.int64)
    C = int(arr.max()) + 1 if num_classes is None else num_classes
    if arr.size and (arr.min() < 0 or arr.max() >= C):
        raise ValueError(f"class indices must lie in [0, {C}), got min {arr.min()}, max {arr.max()}")
    out = np.zeros((len(arr), C), dtype=np.int8)
    out[np.arange(len(arr)), arr] = 1
    return out


class _OneVsRestSVM:
    """One binary SVM per class column: ``SVC(kernel="precomputed")`` on kernel matrices, or ``LinearSVC``
    on explicit feature maps; classes with a single label value get a constant."""

    def __init__(self, C: float, linear: bool = False) -> None:
        self.C = C
        self.linear = linear

    def _estimator(self) -> SVC | LinearSVC:
        # A fixed random_state: liblinear's coordinate descent shuffles, and a refit should give the same model.
        if self.linear:
            return LinearSVC(C=self.C, dual="auto", max_iter=2000, random_state=0)
        return SVC(kernel="precomputed", C=self.C)

    def fit(self, K: np.ndarray, Y: np.ndarray) -> "_OneVsRestSVM":
        """``K``: the training kernel ``[N, N]`` (or feature map ``[N, F]`` when linear); ``Y``: ``[N, C]`` 0/1."""
        self.models_: list[SVC | LinearSVC | float] = []
        for c in range(Y.shape[1]):
            col = Y[:, c]
            if col.min() == col.max():
                # No positive (or no negative) training example: a constant margin on the far side, not a crash.
                self.models_.append(1.0 if col[0] else -1.0)
            else:
                self.models_.append(self._estimator().fit(K, col))
        return self

    def decision(self, K: np.ndarray) -> np.ndarray:
        cols = [np.full(len(K), m) if isinstance(m, float) else m.decision_function(K) for m in self.models_]
        return np.stack(cols, axis=1)


def margins_to_probabilities(decision: np.ndarray, multilabel: bool) -> np.ndarray:
    """Softmax over classes of one-vs-rest decision values (per-class sigmoids when multi-label)."""
    z = np.asarray(decision, dtype=np.float64)
    if multilabel:
        return 1.0 / (1.0 + np.exp(-z))
    e = np.exp(z - z.max(axis=1, keepdims=True))
    out: np.ndarray = e / e.sum(axis=1, keepdims=True)
    return out


KERNELS = ("exact", "approx")
# The explicit map of the additive χ² kernel: 2 * sample_steps - 1 values per feature (3x wider).
CHI2_MAP_STEPS = 2


def additive_chi2_map(X: np.ndarray) -> np.ndarray:
    """Scikit-learn's explicit feature map of the additive χ² kernel (Vedaldi & Zisserman), [N, 3D]:
    a linear SVM on it approximates an additive-χ² kernel SVM at linear cost in N."""
    out: np.ndarray = AdditiveChi2Sampler(sample_steps=CHI2_MAP_STEPS).fit_transform(_non_negative(X, "chi2 map"))
    return out.astype(np.float32)


class _SVMFusionBase:
    # Set by fit().
    train_: list[np.ndarray]
    gammas_: list[float]
    widths_: list[int]
    num_classes_: int

    def __init__(self, C: float = 1.0, gamma: float | Sequence[float] | None = None, kernel: str = "exact") -> None:
        """kernel="exact": the exponential χ² kernel, precomputed (N x N per stream: for small sets);
        "approx": the additive χ² kernel's explicit map with linear SVMs (linear in N: for large sets)."""
        if C <= 0:
            raise ValueError(f"SVM C must be > 0, got {C}")
        if kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
        self.C = float(C)
        self.gamma = gamma
        self.kernel = kernel

    def _gammas(self, xs: Sequence[np.ndarray]) -> list[float]:
        if self.gamma is None:
            return [chi2_gamma(x) for x in xs]
        if np.isscalar(self.gamma):
            return [float(cast(float, self.gamma))] * len(xs)
        gammas = cast(Sequence[float], self.gamma)
        if len(gammas) != len(xs):
            raise ValueError(f"gamma has {len(gammas)} values for {len(xs)} streams")
        return [float(g) for g in gammas]

    def _check_streams(self, xs: Sequence[np.ndarray], fitted: bool) -> list[np.ndarray]:
        xs = [_non_negative(x, f"stream {i}") for i, x in enumerate(xs)]
        if not xs:
            raise ValueError("expected at least one feature stream")
        if len({len(x) for x in xs}) != 1:
            raise ValueError(f"all streams must have the same number of rows, got {[len(x) for x in xs]}")
        if fitted:
            if len(xs) != len(self.widths_):
                raise ValueError(f"fitted on {len(self.widths_)} streams, got {len(xs)}")
            for i, (x, w) in enumerate(zip(xs, self.widths_, strict=True)):
                if x.shape[1] != w:
                    raise ValueError(f"stream {i}: fitted on width {w}, got {x.shape[1]}")
        return xs

    def _fit_streams(
        self, xs: Sequence[np.ndarray], y: Any, num_classes: int | None
    ) -> tuple[list[np.ndarray], np.ndarray]:
        """Check the training streams and labels, and keep what the kernels need (``train_``, ``gammas_``).

        Returns the checked streams and the ``[N, C]`` indicator labels.
        """
        train = self._check_streams(xs, fitted=False)
        Y = encode_labels(y, num_classes)
        if len(Y) != len(train[0]):
            raise ValueError(f"{len(Y)} labels for {len(train[0])} samples")
        self.widths_ = [x.shape[1] for x in train]
        if self.kernel == "exact":  # the kernels against the training set need it; the map does not
            self.train_ = train
            self.gammas_ = self._gammas(train)
        self.num_classes_ = Y.shape[1]
        self.multilabel_ = bool((Y.sum(axis=1) != 1).any())
        return train, Y

    def decision_values(self, xs: Sequence[np.ndarray]) -> np.ndarray:
        raise NotImplementedError

    def predict_scores(self, xs: Sequence[np.ndarray]) -> np.ndarray:
        """``[N, num_classes]`` class probabilities: the softmax of the decision values (per-class sigmoids of a
        multi-label fit), so that the SVMs' scores mix with every other model's in the hybrid. A monotone map of
        the margins, not a calibration (no Platt fit): accuracy is that of the decision values."""
        return margins_to_probabilities(self.decision_values(xs), getattr(self, "multilabel_", False))

    def _kernels(self, xs: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Per stream: the exact kernel against the training set, or the explicit map of the features."""
        if self.kernel == "approx":
            return [additive_chi2_map(x) for x in xs]
        return [chi2_kernel(x, t, g) for x, t, g in zip(xs, self.train_, self.gammas_, strict=True)]

    def _svm(self) -> _OneVsRestSVM:
        return _OneVsRestSVM(self.C, linear=self.kernel == "approx")

    def _early(self, per_stream: list[np.ndarray]) -> np.ndarray:
        """The streams fused early: the average of the kernels, or (approx) the maps side by side,
        scaled so their linear kernel is that average."""
        if self.kernel == "exact":
            avg: np.ndarray = np.mean(per_stream, axis=0)
            return avg
        side_by_side: np.ndarray = np.concatenate(per_stream, axis=1) / np.sqrt(len(per_stream))
        return side_by_side


class SVMEarlyFusion(_SVMFusionBase):
    """SVM-EF: one χ² kernel per stream, averaged, then one-vs-rest SVMs on the precomputed average
    (with kernel="approx": the streams' additive-χ² maps side by side, then linear SVMs).

    Args:
        C: the SVM's soft-margin constant.
        gamma: χ² bandwidth, one for all streams or one per stream; None estimates each stream's as
            1 / (mean χ² distance on the training set).
    """

    def fit(self, xs: Sequence[np.ndarray], y: Any, num_classes: int | None = None) -> "SVMEarlyFusion":
        """``xs``: per-stream ``[N, D_i]`` non-negative features; ``y``: see :func:`encode_labels`."""
        train, Y = self._fit_streams(xs, y, num_classes)
        self.svm_ = self._svm().fit(self._early(self._kernels(train)), Y)
        return self

    def decision_values(self, xs: Sequence[np.ndarray]) -> np.ndarray:
        """``[N, num_classes]`` decision values (higher = more likely), one column per class index."""
        xs = self._check_streams(xs, fitted=True)
        return self.svm_.decision(self._early(self._kernels(xs)))


class SVMLateFusion(_SVMFusionBase):
    """SVM-LF: one χ²-kernel one-vs-rest SVM per stream; their decision values are averaged.

    With a single stream this is a single-feature SVM (Table 2's "Spatial SVM" / "Motion SVM").
    Args as :class:`SVMEarlyFusion`.
    """

    def fit(self, xs: Sequence[np.ndarray], y: Any, num_classes: int | None = None) -> "SVMLateFusion":
        """``xs``: per-stream ``[N, D_i]`` non-negative features; ``y``: see :func:`encode_labels`."""
        train, Y = self._fit_streams(xs, y, num_classes)
        self.svms_ = [self._svm().fit(K, Y) for K in self._kernels(train)]
        return self

    def decision_values(self, xs: Sequence[np.ndarray]) -> np.ndarray:
        """``[N, num_classes]`` decision values averaged over the streams' SVMs."""
        xs = self._check_streams(xs, fitted=True)
        scores: np.ndarray = np.mean(
            [svm.decision(K) for svm, K in zip(self.svms_, self._kernels(xs), strict=True)], axis=0)
        return scores


class SingleStreamSVM(SVMLateFusion):
    """Table 2's "Spatial SVM" / "Motion SVM": the χ²-kernel SVM of one stream.

    It takes the full list of streams, like every other baseline, and reads only ``xs[stream]``, so a logged
    model is called the same way as SVM-EF. Other args as :class:`SVMEarlyFusion`.
    """

    def __init__(self, stream: int, C: float = 1.0, gamma: float | Sequence[float] | None = None,
                 kernel: str = "exact") -> None:
        super().__init__(C=C, gamma=gamma, kernel=kernel)
        if stream < 0:
            raise ValueError(f"stream must be a stream index >= 0, got {stream}")
        self.stream = int(stream)

    def _pick(self, xs: Sequence[np.ndarray]) -> list[np.ndarray]:
        if self.stream >= len(xs):
            raise ValueError(f"SingleStreamSVM reads stream {self.stream}, but only {len(xs)} streams were given")
        return [xs[self.stream]]

    def fit(self, xs: Sequence[np.ndarray], y: Any, num_classes: int | None = None) -> "SingleStreamSVM":
        """``xs``: every stream's ``[N, D_i]`` features; only ``xs[stream]`` is used."""
        super().fit(self._pick(xs), y, num_classes)
        return self

    def decision_values(self, xs: Sequence[np.ndarray]) -> np.ndarray:
        """``[N, num_classes]`` decision values of the one stream's SVMs."""
        return super().decision_values(self._pick(xs))
