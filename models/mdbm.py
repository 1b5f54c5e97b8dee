"""M-DBM of Table 2: the multimodal deep Boltzmann machine of Srivastava & Salakhutdinov (NIPS 2012 / JMLR 2014)
on the two streams' video-level features, as the paper uses it for fusion.

Where it follows the source:

* per stream, a Gaussian-Bernoulli RBM on standardized real-valued inputs (unit variance), then a Bernoulli RBM
  on its hidden layer (the source's image pathway; here both streams are real-valued, so both are built alike);
* a joint Bernoulli layer over the two streams' top hidden layers;
* layer-wise pretraining with contrastive divergence (CD-1, momentum, weight decay, mini-batches);
* joint features by mean-field inference in the whole model: each layer's mean ``μ`` is updated from both of its
  neighbours (bottom-up and top-down) for a few iterations, starting from a bottom-up pass; the joint layer's
  ``μ`` is the video's feature;
* a softmax output layer (logistic per class for multi-label data) trained on those features, as the source
  trains logistic regression on its joint representation.

Where it simplifies:

* layer-wise pretraining only: no joint fine-tuning of the DBM with persistent CD / stochastic approximation,
  and no discriminative fine-tuning through the mean-field net (the output layer alone is trained on labels);
* the RBMs are stacked as in a DBN (no weight doubling of Salakhutdinov & Hinton's DBM pretraining), and each
  hidden layer keeps the bias of the RBM in which it was the hidden layer;
* the Gaussian units have unit variance (inputs standardized with training statistics), as is usual.

Sizes: the paper does not give the M-DBM's widths for its CNN features (the source used 1024/1024 units per
pathway and a 2048-unit joint layer for Flickr, with ~1M unlabeled images). Hidden widths default to 128 then 64
per stream and 128 joint units: the demo trains on ~140 videos, and a wider model only memorizes them while
costing more; at UCF-101 scale a wider net can be passed. Its main hyperparameter is the pretraining learning
rate (config ``mdbm_lr``); the Gaussian RBM learns ten times slower, as Hinton's practical guide advises for
real-valued visible units.

An ``nn.Module`` (its state is buffers, so ``mlflow.pytorch`` logs it) with an estimator API:
``MultimodalDBM().fit([X_spatial, X_motion], y, num_classes=C).predict_scores([...]) -> [N, C]`` probabilities.
Deterministic under ``seed`` (one ``torch.Generator`` draws every random number).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hyvid.models.baselines import encode_labels
from hyvid.models.norm import Standardize

# Chosen on validation accuracy on a demo-like synthetic feature store (200 videos, 10 classes, 1024-d streams;
# 109 train / 31 val videos): lr 0.001 / 0.003 / 0.01 / 0.03 / 0.1 gave 0.10 / 0.39 / 0.87 / 0.94 / 0.90.
DEFAULT_LR = 0.03
DEFAULT_EPOCHS = 30
DEFAULT_HIDDEN = (128, 64)
DEFAULT_JOINT = 128
DEFAULT_MEAN_FIELD_STEPS = 5
GAUSSIAN_LR_SCALE = 0.1  # the Gaussian-Bernoulli RBM's lr relative to the Bernoulli ones (Hinton 2010, Sec. 13.2)
WEIGHT_DECAY = 2e-4  # Hinton's guide's usual L2 on RBM weights
MOMENTUM = (0.5, 0.9)  # for the first 5 epochs, then after (Hinton's guide)


@dataclass
class RBM:
    """One pretrained RBM: weights ``W`` [visible, hidden], visible bias ``b``, hidden bias ``c``."""

    W: torch.Tensor
    b: torch.Tensor
    c: torch.Tensor

    def hidden(self, v: torch.Tensor) -> torch.Tensor:
        """``p(h = 1 | v)``."""
        return torch.sigmoid(v @ self.W + self.c)


def train_rbm(data: torch.Tensor, n_hidden: int, *, gaussian: bool, lr: float, epochs: int, batch_size: int,
              gen: torch.Generator) -> RBM:
    """CD-1 training of one RBM on ``data`` [N, D] (real-valued unit-variance visibles if ``gaussian``, else
    Bernoulli visibles given as probabilities). Sampled hidden states drive the reconstruction; probabilities
    drive the statistics (Hinton's guide, Sec. 3)."""
    n, d = data.shape
    W = 0.01 * torch.randn(d, n_hidden, generator=gen)
    if gaussian:
        b = torch.zeros(d)
    else:  # log(p / (1 - p)) of each visible unit's mean: the guide's visible-bias start
        p = data.mean(0).clamp(1e-3, 1 - 1e-3)
        b = torch.log(p / (1 - p))
    c = torch.zeros(n_hidden)
    vel = [torch.zeros_like(t) for t in (W, b, c)]
    for epoch in range(epochs):
        momentum = MOMENTUM[0] if epoch < 5 else MOMENTUM[1]
        for idx in torch.randperm(n, generator=gen).split(batch_size):
            v0 = data[idx]
            ph0 = torch.sigmoid(v0 @ W + c)
            h0 = torch.bernoulli(ph0, generator=gen)
            v1 = h0 @ W.T + b if gaussian else torch.sigmoid(h0 @ W.T + b)
            ph1 = torch.sigmoid(v1 @ W + c)
            grads = ((v0.T @ ph0 - v1.T @ ph1) / len(idx) - WEIGHT_DECAY * W, (v0 - v1).mean(0), (ph0 - ph1).mean(0))
            for t, v, g in zip((W, b, c), vel, grads, strict=True):
                v.mul_(momentum).add_(g, alpha=lr)
                t.add_(v)
    return RBM(W, b, c)


def _is_multilabel(y: Any) -> bool:
    """Whether labels come as multi-label (a list of label lists or a [N, C] indicator), as encode_labels reads them."""
    if isinstance(y, list | tuple) and y and isinstance(y[0], list | tuple | set | np.ndarray):
        return True
    return bool(np.asarray(y).ndim == 2)


class MultimodalDBM(nn.Module):
    """The multimodal DBM with a softmax / logistic output layer (see the module doc).

    Args:
        hidden: the two hidden widths of each stream's pathway (Gaussian RBM, then Bernoulli RBM).
        joint: the joint layer's width.
        lr: CD-1 learning rate of the Bernoulli RBMs (the Gaussian one takes ``GAUSSIAN_LR_SCALE`` of it).
        epochs: CD-1 epochs per RBM.
        batch_size: CD-1 mini-batch.
        mean_field_steps: mean-field iterations after the bottom-up pass.
        output_steps: full-batch L-BFGS iterations of the output layer.
        output_l2: the output layer's L2 weight (per sample).
        seed: seeds every random draw.
    """

    multilabel: bool
    num_classes: int

    def __init__(self, hidden: Sequence[int] = DEFAULT_HIDDEN, joint: int = DEFAULT_JOINT, lr: float = DEFAULT_LR,
                 epochs: int = DEFAULT_EPOCHS, batch_size: int = 20, mean_field_steps: int = DEFAULT_MEAN_FIELD_STEPS,
                 output_steps: int = 100, output_l2: float = 1e-3, seed: int = 0) -> None:
        super().__init__()
        hidden = tuple(int(h) for h in hidden)
        if len(hidden) != 2 or min(hidden) < 1 or joint < 1:
            raise ValueError(f"hidden must be two positive widths and joint >= 1, got hidden={hidden}, joint={joint}")
        if lr <= 0 or epochs < 1 or batch_size < 1 or mean_field_steps < 0 or output_steps < 1 or output_l2 < 0:
            raise ValueError(
                f"need lr > 0, epochs >= 1, batch_size >= 1, mean_field_steps >= 0, output_steps >= 1, "
                f"output_l2 >= 0; got lr={lr}, epochs={epochs}, batch_size={batch_size}, "
                f"mean_field_steps={mean_field_steps}, output_steps={output_steps}, output_l2={output_l2}")
        self.hidden, self.joint = hidden, int(joint)
        self.lr, self.epochs, self.batch_size = float(lr), int(epochs), int(batch_size)
        self.mean_field_steps, self.output_steps, self.output_l2 = int(mean_field_steps), int(output_steps), output_l2
        self.seed = int(seed)
        self.input_dims: tuple[int, ...] = ()

    # ------------------------------------------------------------------------------------------ the model
    def _layer(self, name: str) -> torch.Tensor:
        t: torch.Tensor = self.get_buffer(name)
        return t

    def _build(self, input_dims: Sequence[int], num_classes: int, multilabel: bool) -> None:
        self.input_dims = tuple(int(d) for d in input_dims)
        self.num_classes, self.multilabel = int(num_classes), bool(multilabel)
        self.input_norms = nn.ModuleList(Standardize(d) for d in self.input_dims)
        self.output = nn.Linear(self.joint, self.num_classes)

    def _set(self, name: str, value: torch.Tensor) -> None:
        self.register_buffer(name, value.detach().clone().float())

    def mean_field(self, xs: Sequence[torch.Tensor]) -> torch.Tensor:
        """The joint layer's mean-field posterior means ``[N, joint]`` (in [0, 1]): the fused feature."""
        if not self.input_dims:
            raise RuntimeError("MultimodalDBM is not fitted; call fit first")
        if len(xs) != len(self.input_dims):
            raise ValueError(f"expected {len(self.input_dims)} streams, got {len(xs)}")
        v = []
        for i, (x, d, norm) in enumerate(zip(xs, self.input_dims, self.input_norms, strict=True)):
            if x.dim() != 2 or x.shape[1] != d:
                raise ValueError(f"stream {i}: expected shape [N, {d}], got {tuple(x.shape)}")
            v.append(norm(x.float()))
        S = range(len(v))
        W1, c1 = [self._layer(f"W1_{s}") for s in S], [self._layer(f"c1_{s}") for s in S]
        W2, c2 = [self._layer(f"W2_{s}") for s in S], [self._layer(f"c2_{s}") for s in S]
        W3, c3 = self._layer("W3"), self._layer("c3")
        W3s = W3.split(self.hidden[1], dim=0)  # the joint weights' rows from stream s's top layer
        mu1 = [torch.sigmoid(v[s] @ W1[s] + c1[s]) for s in S]  # bottom-up pass to start from
        mu2 = [torch.sigmoid(mu1[s] @ W2[s] + c2[s]) for s in S]
        mu3 = torch.sigmoid(torch.cat(mu2, dim=1) @ W3 + c3)
        for _ in range(self.mean_field_steps):
            mu1 = [torch.sigmoid(v[s] @ W1[s] + mu2[s] @ W2[s].T + c1[s]) for s in S]
            mu2 = [torch.sigmoid(mu1[s] @ W2[s] + mu3 @ W3s[s].T + c2[s]) for s in S]
            mu3 = torch.sigmoid(torch.cat(mu2, dim=1) @ W3 + c3)
        return mu3

    def forward(self, xs: Sequence[torch.Tensor]) -> torch.Tensor:
        """Class probabilities ``[N, C]``: softmax, or per-class sigmoid for a multi-label fit."""
        feats = self.mean_field(xs)  # first: it says so if the model is not fitted
        logits = self.output(feats)
        return torch.sigmoid(logits) if self.multilabel else torch.softmax(logits, dim=1)

    # ------------------------------------------------------------------------------------------ estimator API
    @torch.no_grad()
    def _pretrain(self, xs: list[torch.Tensor], gen: torch.Generator) -> None:
        tops = []
        for s, x in enumerate(xs):
            v = self.input_norms[s](x)
            rbm1 = train_rbm(v, self.hidden[0], gaussian=True, lr=self.lr * GAUSSIAN_LR_SCALE, epochs=self.epochs,
                             batch_size=self.batch_size, gen=gen)
            h1 = rbm1.hidden(v)
            rbm2 = train_rbm(h1, self.hidden[1], gaussian=False, lr=self.lr, epochs=self.epochs,
                             batch_size=self.batch_size, gen=gen)
            for name, t in (("W1", rbm1.W), ("c1", rbm1.c), ("W2", rbm2.W), ("c2", rbm2.c)):
                self._set(f"{name}_{s}", t)
            tops.append(rbm2.hidden(h1))
        rbm3 = train_rbm(torch.cat(tops, dim=1), self.joint, gaussian=False, lr=self.lr, epochs=self.epochs,
                         batch_size=self.batch_size, gen=gen)
        self._set("W3", rbm3.W)
        self._set("c3", rbm3.c)

    def _fit_output(self, feats: torch.Tensor, Y: torch.Tensor) -> None:
        # A convex problem: zero start and full-batch L-BFGS, so no randomness and no learning rate to tune.
        nn.init.zeros_(self.output.weight)
        nn.init.zeros_(self.output.bias)
        opt = torch.optim.LBFGS(self.output.parameters(), lr=1.0, max_iter=self.output_steps,
                                line_search_fn="strong_wolfe")
        target = Y if self.multilabel else Y.argmax(1)

        def closure() -> torch.Tensor:
            opt.zero_grad()
            logits = self.output(feats)
            loss = (F.binary_cross_entropy_with_logits(logits, target) if self.multilabel
                    else F.cross_entropy(logits, target))
            loss = loss + self.output_l2 * (self.output.weight ** 2).sum()
            loss.backward()
            return loss

        opt.step(closure)  # type: ignore[no-untyped-call]

    def fit(self, xs: Sequence[Any], y: Any, num_classes: int | None = None) -> "MultimodalDBM":
        """Pretrain the DBM on ``xs`` (per-stream ``[N, D_i]`` arrays or tensors), then the output layer on ``y``.

        ``y``: ``[N]`` class indices (softmax output), or ``[N, C]`` 0/1 / a list of label lists (multi-label:
        logistic output per class); see :func:`hyvid.models.baselines.encode_labels`.
        """
        ts = [torch.as_tensor(np.asarray(x), dtype=torch.float32) for x in xs]
        if len(ts) < 2 or len({len(t) for t in ts}) != 1 or any(t.dim() != 2 for t in ts):
            raise ValueError(f"M-DBM needs >= 2 streams of [N, D] features with the same N, got shapes "
                             f"{[tuple(t.shape) for t in ts]}")
        multilabel = _is_multilabel(y)
        Y = torch.as_tensor(encode_labels(y, num_classes), dtype=torch.float32)
        if len(Y) != len(ts[0]):
            raise ValueError(f"{len(Y)} labels for {len(ts[0])} samples")
        self._build([t.shape[1] for t in ts], Y.shape[1], multilabel)
        for norm, t in zip(self.input_norms, ts, strict=True):
            cast(Standardize, norm).fit(t)
        gen = torch.Generator().manual_seed(self.seed)
        self._pretrain(ts, gen)
        with torch.no_grad():
            feats = self.mean_field(ts)
        self._fit_output(feats, Y)
        return self.eval()

    @torch.no_grad()
    def predict_scores(self, xs: Sequence[Any]) -> np.ndarray:
        """``[N, num_classes]`` class probabilities."""
        scores: np.ndarray = self([torch.as_tensor(np.asarray(x), dtype=torch.float32) for x in xs]).numpy()
        return scores
