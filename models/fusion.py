"""The regularized feature fusion network of Sec. 3.3 (Eq. 3, Algorithm 1) and its proximal operator (Eq. 4).

Pure PyTorch. The pieces a training loop needs:

* :class:`RegularizedFusionNet` -- one sigmoid abstraction layer per stream, a sigmoid fusion layer E over
  their concatenation, a logistic-regression output. ``forward`` returns class probabilities: softmax for
  single-label data, per-class sigmoids for multi-label data (so the hybrid mixes like with like).
* :func:`fusion_objective` -- the smooth part of Eq. 3: the data loss (the paper's squared loss on the sigmoid
  outputs, or cross-entropy) + ``lam1`` * sum of squared Frobenius norms.
* :func:`prox_l21_l11` -- Eq. 4, the closed-form prox of the non-smooth part, as a pure tensor function.
* :func:`proximal_step` -- applies that prox to W_E with learning-rate-scaled thresholds.
* :func:`fusion_train_step` -- one full step of Algorithm 1 (gradient step on everything, then the prox on W_E).

Regularization convention (read this before choosing lam2/lam3)
--------------------------------------------------------------
Eq. 3's non-smooth part is ``h(W_E) = lam2/2 * ||W_E||_{2,1} + lam3 * ||W_E||_{1,1}``. A proximal gradient step
with learning rate ``eta`` is ``W_E <- prox_{eta*h}(W_E - eta*G)``. For this sparse-group-lasso penalty the prox is
exactly "soft-threshold each entry, then shrink each row" (Eq. 4), with thresholds

    elementwise threshold  = eta * lam3
    row threshold          = eta * lam2 / 2

:func:`prox_l21_l11` takes the *thresholds* (``lam2`` = row threshold, ``lam3`` = elementwise threshold) and
applies Eq. 4 literally. :func:`proximal_step` and :func:`fusion_train_step` take the *objective's* lambdas
(λ2, λ3 of Eq. 3, the values cross-validated and logged) and call
``prox_l21_l11(W_E, lr * lam2 / 2, lr * lam3)``. The paper's Eq. 4 writes the thresholds as λ2 and λ3, i.e. it
folds the step size and the 1/2 into them; we keep the objective's λ's explicit so that the logged values mean
what Eq. 3 says they mean.

Why cross-entropy beside the paper's squared loss (``FUSION_LOSSES``): a squared loss over C sigmoid outputs
pushes every output toward 0 first (C - 1 of the C targets are 0), and at C = 101 the outputs saturate there
before the true class's output rises: on a 101-class feature store the net stayed at chance with the paper's
loss and SGD (benchmarks/results/video_nets.json), whatever the learning rate. Softmax cross-entropy (BCE on
multi-label data) has no such plateau. ``--paper`` keeps the squared loss.

Loss convention: Eq. 1 sums ``||g(x) - y||^2`` over samples; :func:`fusion_objective` takes the *mean over the
mini-batch* of that per-sample sum over classes, so the paper's lr 0.7 and λ1 = 3e-5 are per-sample quantities
and do not depend on the batch size.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
from torch import nn

from hyvid.models.norm import Standardize

PAPER_LR = 0.7
PAPER_LAM1 = 3e-5
SQUARED = "squared"
CROSS_ENTROPY = "cross_entropy"
FUSION_LOSSES = (SQUARED, CROSS_ENTROPY)  # the paper's (Eq. 1), and softmax/BCE cross-entropy


def prox_l21_l11(W: torch.Tensor, lam2: float, lam3: float) -> torch.Tensor:
    """Eq. 4: the proximal operator of ``lam2*||W||_{2,1} + lam3*||W||_{1,1}`` (rows are the groups).

    Exactly as written in the paper, with (.)_+:

        U = sign(W) * max(|W| - lam3, 0)                  elementwise soft threshold
        W_r <- max(1 - lam2 / ||U_r||_2, 0) * U_r         per row r

    Rows with ``||U_r||_2 <= lam2`` (including all-zero rows) come out exactly 0, without NaN. ``lam2`` and
    ``lam3`` are the thresholds themselves: a proximal gradient step passes them already multiplied by the
    learning rate (see the module docstring for how the objective's λ2/2 and λ3 map onto them).

    Pure: returns a new tensor of W's shape/dtype/device and leaves ``W`` untouched.
    """
    if W.dim() != 2:
        raise ValueError(
            f"prox_l21_l11 expects a 2-D weight matrix (rows = fusion neurons), got shape {tuple(W.shape)}")
    if lam2 < 0 or lam3 < 0:
        raise ValueError(f"prox_l21_l11 thresholds must be >= 0, got lam2={lam2}, lam3={lam3}")
    U = torch.sign(W) * torch.clamp(W.abs() - lam3, min=0.0)
    norms = torch.linalg.vector_norm(U, dim=1, keepdim=True)
    # Divide only where the norm is positive: a zero row stays zero instead of becoming 0 * inf = NaN.
    safe = torch.where(norms > 0, norms, torch.ones_like(norms))
    scale = torch.where(norms > lam2, 1.0 - lam2 / safe, torch.zeros_like(norms))
    return scale * U


class RegularizedFusionNet(nn.Module):
    """Sec. 3.3's fusion network for any number (>= 2) of feature streams.

    ``input_dims[i]`` is the width of stream i's video-level feature (the average of its per-frame features).
    Each stream goes through its own abstraction layer (``abstraction`` units, sigmoid); the abstractions are
    concatenated (width D = len(input_dims) * abstraction) and go through the fusion layer E (``fusion`` = P
    units, sigmoid); a logistic-regression layer (sigmoid) gives one score per class.

    ``forward(xs)`` takes a list of ``[B, input_dims[i]]`` tensors in stream order and returns ``[B, num_classes]``
    probabilities: the softmax of the output layer's logits, or with ``multilabel`` their per-class sigmoids (the
    paper's logistic outputs). The non-regularized baseline (``fusion_noreg``) is this same net trained with
    lam2 = lam3 = 0.

    ``input_dropout`` drops standardized input features during training (0: the paper's net). It regularizes
    the first layers, which hold most of the weights (D_stream x 200 each) and overfit a few thousand videos.
    """

    def __init__(self, input_dims: Sequence[int], num_classes: int, abstraction: int = 200, fusion: int = 200,
                 input_dropout: float = 0.0, multilabel: bool = False) -> None:
        super().__init__()
        input_dims = [int(d) for d in input_dims]
        if len(input_dims) < 2:
            raise ValueError(f"RegularizedFusionNet needs >= 2 streams to fuse, got input_dims={input_dims}")
        if any(d <= 0 for d in input_dims) or num_classes <= 0 or abstraction <= 0 or fusion <= 0:
            raise ValueError(
                f"all widths must be positive: input_dims={input_dims}, num_classes={num_classes}, "
                f"abstraction={abstraction}, fusion={fusion}"
            )
        if not 0.0 <= input_dropout < 1.0:
            raise ValueError(f"input_dropout must be in [0, 1), got {input_dropout}")
        self.input_dims = tuple(input_dims)
        self.num_classes = int(num_classes)
        self.multilabel = bool(multilabel)
        self.input_dropout = nn.Dropout(float(input_dropout))
        self.input_norms = nn.ModuleList(Standardize(d) for d in input_dims)
        self.abstractions = nn.ModuleList(nn.Linear(d, abstraction) for d in input_dims)
        self.fusion = nn.Linear(abstraction * len(input_dims), fusion)
        self.output = nn.Linear(fusion, num_classes)

    @property
    def fusion_weight(self) -> torch.Tensor:
        """W_E, the fusion layer's weight, shape P x D (rows = fusion neurons, columns = concatenated abstractions).

        Column block i (``abstraction`` columns) is W_E's part for stream i, so W_E = [W_E^s, W_E^m, ...].
        """
        return self.fusion.weight

    def fit_input_stats(self, xs: Sequence[torch.Tensor]) -> None:
        """Standardize each stream's input with its training statistics (kept as buffers)."""
        for norm, x in zip(self.input_norms, xs, strict=True):
            cast(Standardize, norm).fit(x)

    def logits(self, xs: Sequence[torch.Tensor]) -> torch.Tensor:
        """Pre-sigmoid output ``[B, num_classes]``."""
        if len(xs) != len(self.abstractions):
            raise ValueError(f"expected {len(self.abstractions)} streams, got {len(xs)}")
        for i, (x, d) in enumerate(zip(xs, self.input_dims, strict=True)):
            if x.dim() != 2 or x.shape[1] != d:
                raise ValueError(f"stream {i}: expected shape [B, {d}], got {tuple(x.shape)}")
        h = torch.cat(
            [torch.sigmoid(layer(self.input_dropout(norm(x))))
             for layer, norm, x in zip(self.abstractions, self.input_norms, xs, strict=True)],
            dim=1,
        )
        e = torch.sigmoid(self.fusion(h))
        logits: torch.Tensor = self.output(e)
        return logits

    def forward(self, xs: Sequence[torch.Tensor]) -> torch.Tensor:
        """Class probabilities ``[B, num_classes]``: softmax, or per-class sigmoids if ``multilabel``."""
        logits = self.logits(xs)
        return torch.sigmoid(logits) if self.multilabel else torch.softmax(logits, dim=1)


def fusion_objective(
    model: RegularizedFusionNet, xs: Sequence[torch.Tensor], y_onehot: torch.Tensor, lam1: float,
    loss: str = SQUARED,
) -> torch.Tensor:
    """The smooth part of Eq. 3: the data loss + ``lam1`` * Σ ||W||_F² over every layer's weight.

    ``y_onehot`` is ``[B, num_classes]`` one-hot (or multi-hot for multi-label data). ``loss="squared"`` is Eq. 1:
    the per-sample ``||σ(z) - y||²`` of the per-class sigmoid outputs σ(z) (summed over classes), averaged over
    the batch. ``loss="cross_entropy"`` is softmax cross-entropy (per-class BCE for a multi-label net). Biases are
    not penalized (the paper's Φ(W) is over weight matrices). The ℓ2,1/ℓ1,1 terms are not here: they are
    non-smooth and are handled by :func:`proximal_step` after the gradient step.
    """
    if loss not in FUSION_LOSSES:
        raise ValueError(f"loss must be one of {FUSION_LOSSES}, got {loss!r}")
    logits = model.logits(xs)
    y = y_onehot.to(logits.dtype)
    if y.shape != logits.shape:
        raise ValueError(f"y_onehot has shape {tuple(y.shape)}, expected {tuple(logits.shape)} (one column per class)")
    if loss == SQUARED:
        data = ((torch.sigmoid(logits) - y) ** 2).sum(dim=1).mean()
    elif model.multilabel:
        data = nn.functional.binary_cross_entropy_with_logits(logits, y)
    else:
        data = -(y * torch.log_softmax(logits, dim=1)).sum(dim=1).mean()
    frob = sum((m.weight ** 2).sum() for m in model.modules() if isinstance(m, nn.Linear))
    return data + lam1 * frob


@torch.no_grad()
def proximal_step(model: RegularizedFusionNet, lr: float, lam2: float, lam3: float) -> None:
    """Apply Eq. 4 to W_E in place, after the optimizer's gradient step ``W <- W - lr*G``.

    ``lam2`` and ``lam3`` are the objective's λ2 and λ3 (Eq. 3's ``λ2/2·||W_E||_{2,1} + λ3·||W_E||_{1,1}``);
    the thresholds passed to :func:`prox_l21_l11` are ``lr*lam2/2`` and ``lr*lam3``. With lam2 = lam3 = 0 this
    is a no-op.
    """
    if lam2 == 0 and lam3 == 0:
        return
    W = model.fusion_weight
    W.copy_(prox_l21_l11(W, lr * lam2 / 2.0, lr * lam3))


def fusion_train_step(
    model: RegularizedFusionNet,
    optimizer: torch.optim.Optimizer,
    xs: Sequence[torch.Tensor],
    y_onehot: torch.Tensor,
    lam1: float = PAPER_LAM1,
    lam2: float = 0.0,
    lam3: float = 0.0,
    loss: str = SQUARED,
) -> float:
    """One iteration of Algorithm 1 on a mini-batch; returns the smooth objective's value before the step.

    Gradient step on every layer with ``optimizer`` (the paper uses plain SGD, ``torch.optim.SGD(params, lr=0.7)``,
    no momentum), then the prox on W_E with the optimizer's current learning rate (so LR schedules carry over).
    """
    optimizer.zero_grad(set_to_none=True)
    value = fusion_objective(model, xs, y_onehot, lam1, loss)
    value.backward()
    optimizer.step()
    lr = _lr_of(optimizer, model.fusion_weight)
    proximal_step(model, lr, lam2, lam3)
    return float(value.detach())


def _lr_of(optimizer: torch.optim.Optimizer, param: torch.Tensor) -> float:
    for group in optimizer.param_groups:
        if any(p is param for p in group["params"]):
            return float(group["lr"])
    raise ValueError("the optimizer does not hold the fusion layer's weight; build it from model.parameters()")


def zero_row_fraction(model: RegularizedFusionNet) -> float:
    """Fraction of W_E's rows (fusion neurons) that are exactly zero: the ℓ2,1 term at work."""
    W = model.fusion_weight.detach()
    return float((W == 0).all(dim=1).float().mean())


def zero_weight_fraction(model: RegularizedFusionNet) -> float:
    """Fraction of W_E's entries that are exactly zero: the ℓ1,1 (and ℓ2,1) terms at work."""
    W = model.fusion_weight.detach()
    return float((W == 0).float().mean())
