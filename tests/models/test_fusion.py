"""The regularized fusion network (Sec. 3.3): Algorithm 1's step, row sparsity from λ2, weight sparsity from λ3."""
from __future__ import annotations

import pytest
import torch

from hyvid.models.fusion import (
    RegularizedFusionNet,
    fusion_objective,
    fusion_train_step,
    prox_l21_l11,
    proximal_step,
    zero_row_fraction,
    zero_weight_fraction,
)

NUM_CLASSES = 4

# Tiny matmuls: one torch thread (conftest.one_thread).
pytestmark = pytest.mark.usefixtures("one_thread")


def split_streams(n: int, seed: int, num_streams: int = 2, dim: int = 16):
    """Toy video-level features: stream i only tells apart its own share of the classes, so fusion is needed.

    Class c has its own mean in stream ``c % num_streams`` and a shared mean elsewhere.
    """
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(NUM_CLASSES, dim, generator=torch.Generator().manual_seed(99)) * 2.0
    y = torch.randint(0, NUM_CLASSES, (n,), generator=g)
    xs = []
    for s in range(num_streams):
        own = (y % num_streams) == s
        mean = torch.where(own[:, None], centers[y], torch.zeros(n, dim))
        xs.append(mean + torch.randn(n, dim, generator=g))
    return xs, y


def fit(model, xs, y, lam2=0.0, lam3=0.0, epochs=20, lr=0.7, batch=20, seed=0):
    torch.manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    Y = torch.nn.functional.one_hot(y, NUM_CLASSES).float()
    for _ in range(epochs):
        perm = torch.randperm(len(y))
        for i in range(0, len(y), batch):
            b = perm[i : i + batch]
            fusion_train_step(model, opt, [x[b] for x in xs], Y[b], lam1=3e-5, lam2=lam2, lam3=lam3)
    return model


def accuracy(model, xs, y) -> float:
    with torch.no_grad():
        return float((model(xs).argmax(1) == y).float().mean())


def small_net(num_streams=2, seed=0):
    torch.manual_seed(seed)
    return RegularizedFusionNet([16] * num_streams, NUM_CLASSES, abstraction=32, fusion=32)


def test_shapes_and_fusion_weight_layout():
    net = RegularizedFusionNet([10, 7], 5, abstraction=6, fusion=4)
    out = net([torch.randn(3, 10), torch.randn(3, 7)])
    assert out.shape == (3, 5)
    assert ((out > 0) & (out < 1)).all()
    assert net.fusion_weight.shape == (4, 12)  # P x D, D = 2 streams * 6 abstraction units
    with pytest.raises(ValueError, match=">= 2 streams"):
        RegularizedFusionNet([10], 5)
    with pytest.raises(ValueError, match="stream 1"):
        net([torch.randn(3, 10), torch.randn(3, 8)])


def test_train_step_is_gradient_step_then_prox_with_lr_scaled_thresholds():
    xs, y = split_streams(20, seed=3)
    Y = torch.nn.functional.one_hot(y, NUM_CLASSES).float()
    a, b = small_net(), small_net()
    lr, lam1, lam2, lam3 = 0.5, 1e-3, 0.4, 0.02
    fusion_train_step(a, torch.optim.SGD(a.parameters(), lr=lr), xs, Y, lam1, lam2, lam3)
    # By hand: W <- W - lr*G on every layer, then Eq. 4 on W_E with thresholds lr*λ2/2 and lr*λ3.
    fusion_objective(b, xs, Y, lam1).backward()
    with torch.no_grad():
        for p in b.parameters():
            p -= lr * p.grad
        expected_E = prox_l21_l11(b.fusion_weight, lr * lam2 / 2, lr * lam3)
    torch.testing.assert_close(a.fusion_weight, expected_E)
    torch.testing.assert_close(a.output.weight, b.output.weight)
    assert zero_weight_fraction(a) > 0  # the thresholds were large enough to bite


def test_proximal_step_noop_without_penalty():
    net = small_net()
    before = net.fusion_weight.detach().clone()
    proximal_step(net, lr=0.7, lam2=0.0, lam3=0.0)
    assert torch.equal(net.fusion_weight, before)


def test_unregularized_net_learns_and_needs_both_streams():
    xs, y = split_streams(400, seed=1)
    xt, yt = split_streams(400, seed=2)
    net = fit(small_net(), xs, y)
    assert accuracy(net, xt, yt) >= 0.9
    assert zero_row_fraction(net) == 0.0 and zero_weight_fraction(net) == 0.0
    # One stream alone cannot separate the other stream's classes: fusion is what gets above ~75%.
    single = fit(RegularizedFusionNet([16, 16], NUM_CLASSES, 32, 32), [xs[0], xs[0]], y, epochs=15)
    assert accuracy(single, [xt[0], xt[0]], yt) <= 0.8


def test_large_lam2_zeroes_whole_rows():
    xs, y = split_streams(400, seed=1)
    xt, yt = split_streams(400, seed=2)
    net = fit(small_net(), xs, y, lam2=0.03)
    assert zero_row_fraction(net) > 0.5
    W = net.fusion_weight.detach()
    zero_rows = (W == 0).all(dim=1)
    assert (W[~zero_rows] != 0).float().mean() > 0.9  # ℓ2,1 alone kills rows, not scattered weights
    assert accuracy(net, xt, yt) >= 0.9  # the surviving shared neurons still fuse both streams


def test_lam3_alone_zeroes_weights_but_few_rows():
    xs, y = split_streams(400, seed=1)
    xt, yt = split_streams(400, seed=2)
    net = fit(small_net(), xs, y, lam3=1e-3)
    assert zero_weight_fraction(net) > 0.3
    assert zero_row_fraction(net) < 0.2
    assert accuracy(net, xt, yt) >= 0.9


def test_three_streams():
    xs, y = split_streams(300, seed=1, num_streams=3)
    xt, yt = split_streams(300, seed=2, num_streams=3)
    net = fit(small_net(num_streams=3), xs, y, lam2=0.01, lam3=1e-4)
    assert net.fusion_weight.shape == (32, 96)
    assert accuracy(net, xt, yt) >= 0.9
