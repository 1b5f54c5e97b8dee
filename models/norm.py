"""Input standardization that travels with a model.

Per-frame CNN features are post-ReLU activations of very different scales per dimension; the
paper's sigmoid fusion net and the LSTMs train far faster on standardized inputs. Keeping the
statistics as buffers inside the model means a logged model applies them itself at prediction.
"""
from __future__ import annotations

import torch
from torch import nn


class Standardize(nn.Module):
    """(x - mean) / std per feature dimension; the identity until `fit` is called."""

    mean: torch.Tensor  # buffers, registered in __init__
    std: torch.Tensor

    def __init__(self, dim: int, eps: float = 1e-3) -> None:
        super().__init__()
        self.eps = float(eps)
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    @torch.no_grad()
    def fit(self, x: torch.Tensor) -> "Standardize":
        """Set the statistics from training inputs `x` of shape [N, dim]."""
        x = x.reshape(-1, self.mean.numel()).float()
        self.mean.copy_(x.mean(0))
        self.std.copy_(x.std(0, unbiased=False) + self.eps)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std
