"""RDNN of Table 2 (Wu, Jiang, Wang, Ye & Xue, "Exploring inter-feature and inter-class relationships with deep
neural networks", ACM MM 2014): the fusion network with a feature-relationship regularizer on its fusion layer.

Where it follows the source: the fusion layer's weight W_E (P x D, D = the concatenated abstractions) is
regularized by ``tr(W_E Ω⁻¹ W_Eᵀ)``, where Ω (D x D, positive definite, trace 1) models how the fusion layer's
inputs relate; training alternates a gradient step on W (Ω fixed) with Ω's closed-form minimizer given W
(:func:`update_omega`):

    Ω = (W_Eᵀ W_E)^{1/2} / tr((W_Eᵀ W_E)^{1/2})

which needs an eigendecomposition of a D x D matrix: O(D³) per update, the cubic cost that the 2015 paper's
Eq. 4 prox (O(P·D)) avoids. Where it simplifies: the network is hyvid's :class:`RegularizedFusionNet` (same
layers, sigmoid, squared loss and λ1 Frobenius term of Eq. 3) rather than the 2014 paper's own net, and its
inter-class regularizer on the output layer is left out; only the inter-feature term, the one the 2015 paper
contrasts with Eq. 4, is here. A small ``eps * I`` is added to WᵀW so that Ω is invertible (W_E has rank at
most P < D when the fusion layer is narrower than its input; without it Ω⁻¹ does not exist).

Pure PyTorch: tensors in, tensors out.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from hyvid.models.fusion import SQUARED, RegularizedFusionNet, fusion_objective

# Added to WᵀW before the square root. It also bounds Ω⁻¹'s largest eigenvalue by tr(.)/sqrt(eps), i.e. how
# hard the penalty pushes W off directions it does not use yet, which is what keeps SGD stable on it: at the
# demo's init (P = D/2 = 200 sigmoid units, entries ~U(±1/√400)) the used eigenvalues of WᵀW are ~0.17, so 1e-3
# keeps the unused ones ~13x smaller in Ω while lr·2λ·max eig(Ω⁻¹) < 2 holds up to λ ~ 1e-3.
DEFAULT_EPS = 1e-3


def rdnn_penalty(W: torch.Tensor, omega_inv: torch.Tensor) -> torch.Tensor:
    """The feature-relationship regularizer ``tr(W Ω⁻¹ Wᵀ)`` of W (P x D) given Ω⁻¹ (D x D), a scalar."""
    if W.dim() != 2 or omega_inv.shape != (W.shape[1], W.shape[1]):
        raise ValueError(f"rdnn_penalty needs W [P, D] and Ω⁻¹ [D, D], got {tuple(W.shape)} and "
                         f"{tuple(omega_inv.shape)}")
    # tr(W Ω⁻¹ Wᵀ) = Σ_ij (W Ω⁻¹)_ij W_ij: no P x P product.
    return ((W @ omega_inv) * W).sum()


def update_omega(W: torch.Tensor, eps: float = DEFAULT_EPS) -> tuple[torch.Tensor, torch.Tensor]:
    """Ω's closed-form update from W (P x D), and its inverse: ``(Ω, Ω⁻¹)``, both D x D.

    Ω = (WᵀW + eps·I)^{1/2} / tr((WᵀW + eps·I)^{1/2}) minimizes ``tr(W Ω⁻¹ Wᵀ)`` over positive definite Ω with
    tr Ω = 1 (at eps = 0; the minimum is then the squared nuclear norm of W). One symmetric eigendecomposition
    (``torch.linalg.eigh``) gives both matrices: O(D³).
    """
    if W.dim() != 2:
        raise ValueError(f"update_omega expects a 2-D weight matrix W [P, D], got shape {tuple(W.shape)}")
    if eps <= 0:
        raise ValueError(f"update_omega needs eps > 0 so that Ω is invertible, got eps={eps}")
    dtype = W.dtype
    W = W.detach().double()  # eigenvalues near eps lose their digits in float32
    evals, evecs = torch.linalg.eigh(W.T @ W)
    roots = torch.sqrt(evals.clamp(min=0.0) + eps)
    trace = roots.sum()
    omega = (evecs * (roots / trace)) @ evecs.T
    omega_inv = (evecs * (trace / roots)) @ evecs.T
    return omega.to(dtype), omega_inv.to(dtype)


class RDNNFusionNet(RegularizedFusionNet):
    """:class:`RegularizedFusionNet` that carries Ω⁻¹ (a buffer, so checkpoints and logged models keep it).

    Ω starts isotropic (I / D, trace 1) until the first :meth:`refresh_omega`.
    """

    omega_inv: torch.Tensor  # buffer, registered in __init__

    def __init__(self, input_dims: Sequence[int], num_classes: int, abstraction: int = 200, fusion: int = 200,
                 input_dropout: float = 0.0, multilabel: bool = False) -> None:
        super().__init__(input_dims, num_classes, abstraction=abstraction, fusion=fusion,
                         input_dropout=input_dropout, multilabel=multilabel)
        d = self.fusion_weight.shape[1]
        self.register_buffer("omega_inv", torch.eye(d) * d)

    @torch.no_grad()
    def refresh_omega(self, eps: float = DEFAULT_EPS) -> None:
        """Ω ← its closed-form minimizer given the current W_E (the O(D³) step)."""
        _, inv = update_omega(self.fusion_weight, eps)
        self.omega_inv.copy_(inv.to(self.omega_inv))

    def penalty(self) -> torch.Tensor:
        """``tr(W_E Ω⁻¹ W_Eᵀ)`` with the current Ω (constant in W's gradient)."""
        return rdnn_penalty(self.fusion_weight, self.omega_inv)


def rdnn_objective(model: RDNNFusionNet, xs: Sequence[torch.Tensor], y_onehot: torch.Tensor, lam1: float,
                   lam_r: float, loss: str = SQUARED) -> torch.Tensor:
    """Eq. 3's smooth part (data loss + λ1 Frobenius) plus ``lam_r * tr(W_E Ω⁻¹ W_Eᵀ)``: RDNN's objective."""
    return fusion_objective(model, xs, y_onehot, lam1, loss) + lam_r * model.penalty()
