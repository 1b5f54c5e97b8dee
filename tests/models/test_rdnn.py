"""RDNN's regularizer tr(W Ω⁻¹ Wᵀ) and its closed-form Ω, checked against what they compute and solve."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from hyvid.models.rdnn import RDNNFusionNet, rdnn_objective, rdnn_penalty, update_omega

pytestmark = pytest.mark.usefixtures("one_thread")


def random_trace_one_pd(d: int, rng: np.random.Generator) -> np.ndarray:
    A = rng.normal(size=(d, d))
    omega = A @ A.T + 1e-3 * np.eye(d)
    return omega / np.trace(omega)


def test_penalty_matches_numpy():
    rng = np.random.default_rng(0)
    W = rng.normal(size=(5, 8))
    omega_inv = np.linalg.inv(random_trace_one_pd(8, rng))
    got = rdnn_penalty(torch.from_numpy(W), torch.from_numpy(omega_inv))
    assert float(got) == pytest.approx(np.trace(W @ omega_inv @ W.T), rel=1e-10)
    with pytest.raises(ValueError, match="Ω⁻¹"):
        rdnn_penalty(torch.zeros(5, 8), torch.eye(5))


@pytest.mark.parametrize("shape", [(6, 4), (3, 8)])  # W of full column rank, and P < D (the fusion layer's case)
def test_closed_form_omega_is_the_minimizer_over_trace_one_pd_matrices(shape):
    rng = np.random.default_rng(1)
    W = torch.from_numpy(rng.normal(size=shape))
    omega, omega_inv = update_omega(W, eps=1e-9)
    d = shape[1]
    assert torch.allclose(omega, omega.T) and float(torch.trace(omega)) == pytest.approx(1.0)
    assert float(torch.linalg.eigvalsh(omega).min()) > 0
    torch.testing.assert_close(omega @ omega_inv, torch.eye(d, dtype=W.dtype), atol=1e-6, rtol=0)
    best = float(rdnn_penalty(W, omega_inv))
    # The minimum is the squared nuclear norm of W.
    assert best == pytest.approx(float(torch.linalg.matrix_norm(W, "nuc")) ** 2, rel=1e-4)
    for _ in range(300):
        other = torch.from_numpy(np.linalg.inv(random_trace_one_pd(d, rng)))
        assert float(rdnn_penalty(W, other)) >= best * (1 - 1e-6)


def test_eps_keeps_omega_invertible_for_a_wide_layer():
    W = torch.randn(3, 10, generator=torch.Generator().manual_seed(0))  # rank 3 < 10
    omega, omega_inv = update_omega(W)
    assert torch.isfinite(omega_inv).all() and float(torch.linalg.eigvalsh(omega).min()) > 0
    with pytest.raises(ValueError, match="eps > 0"):
        update_omega(W, eps=0.0)


def test_rdnn_net_keeps_omega_and_learns_a_separable_problem():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    n, c = 200, 3
    y = torch.randint(0, c, (n,), generator=gen)
    centers = torch.randn(c, 6, generator=gen) * 2
    xs = [centers[y] + 0.5 * torch.randn(n, 6, generator=gen), torch.randn(n, 5, generator=gen)]
    net = RDNNFusionNet([6, 5], c, abstraction=8, fusion=8)
    assert torch.equal(net.omega_inv, 16 * torch.eye(16))  # isotropic Ω = I / D before the first update
    net.fit_input_stats(xs)
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    target = torch.nn.functional.one_hot(y, c).float()
    for _ in range(30):  # Ω once an epoch, W by mini-batch SGD in between (as families.train_epoch)
        net.refresh_omega()
        for i in torch.randperm(n, generator=gen).split(10):
            opt.zero_grad()
            rdnn_objective(net, [x[i] for x in xs], target[i], lam1=3e-5, lam_r=1e-4).backward()
            opt.step()
    assert "omega_inv" in net.state_dict()
    _, expected = update_omega(net.fusion_weight)
    net.refresh_omega()
    torch.testing.assert_close(net.omega_inv, expected)
    with torch.no_grad():
        assert float((net(xs).argmax(1) == y).float().mean()) >= 0.95
