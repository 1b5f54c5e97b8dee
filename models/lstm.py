"""The per-stream LSTM of Sec. 3.2: stacked LSTM layers over per-frame CNN features, a softmax at every step.

Pure PyTorch. What a training loop needs:

* :class:`StreamLSTM` -- ``forward(x, lengths) -> [B, T, C]`` per-step logits and
  ``video_logits(x, lengths) -> [B, C]``, the video prediction (the last valid step's output, the paper's choice,
  or the mean over valid steps).
* :func:`sequence_loss` -- cross-entropy (or BCE-with-logits for multi-label data) on the video prediction, or on
  every step's output (the paper's softmax at every step).
* :func:`make_optimizer` -- the paper's recipe by default: SGD, lr 1e-4, momentum 0.9 (mini-batches of
  :data:`PAPER_BATCH_SIZE` = 10 videos); ``name="adam"`` for quicker small-scale runs.

Two cell implementations: the stock path stacks ``nn.LSTM`` layers (fast, cuDNN/oneDNN kernels, no peepholes),
``peephole=True`` uses :class:`PeepholeLSTMCell`, which implements the paper's equations literally, including the
diagonal peephole terms W_ci·c_{t-1}, W_cf·c_{t-1} and W_co·c_t.

Variable lengths: ``x`` is padded to T steps and ``lengths[b]`` is the number of valid steps of video b (1 <= lengths
<= T). The stock path packs the batch (``pack_padded_sequence``); the peephole path runs the padded batch, which is
exact because an LSTM is causal: steps after a video's end never influence its earlier steps. Either way the per-step
logits at padded positions are set to 0 and never reach the video prediction.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from itertools import pairwise

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from hyvid.models.norm import Standardize

PAPER_HIDDEN = (1024, 512)
PAPER_LR = 1e-4
PAPER_MOMENTUM = 0.9
PAPER_BATCH_SIZE = 10
POOLINGS = ("last", "mean")
FEATURE_INPUTS = "features"  # StreamLSTM's temporal_input: the standardized features (the paper's)
DEVIATION_INPUTS = "deviation"  # their deviation from the video's mean
BOTH_INPUTS = "both"  # the two side by side
TEMPORAL_INPUTS = (FEATURE_INPUTS, DEVIATION_INPUTS, BOTH_INPUTS)


class PeepholeLSTMCell(nn.Module):
    """One step of the paper's LSTM (Graves-style, with diagonal peepholes).

        i_t = σ(W_xi x_t + W_hi h_{t-1} + w_ci ⊙ c_{t-1} + b_i)
        f_t = σ(W_xf x_t + W_hf h_{t-1} + w_cf ⊙ c_{t-1} + b_f)
        c_t = f_t ⊙ c_{t-1} + i_t ⊙ tanh(W_xc x_t + W_hc h_{t-1} + b_c)
        o_t = σ(W_xo x_t + W_ho h_{t-1} + w_co ⊙ c_t + b_o)
        h_t = o_t ⊙ tanh(c_t)

    The peephole matrices are diagonal, stored as vectors ``w_ci, w_cf, w_co``. The other weights use
    ``nn.LSTMCell``'s layout and gate order (i, f, g, o) in ``weight_ih [4H, D]``, ``weight_hh [4H, H]``,
    ``bias [4H]``, so with zero peepholes the cell equals ``nn.LSTMCell`` with the same weights.
    """

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        if input_size <= 0 or hidden_size <= 0:
            raise ValueError(
                f"PeepholeLSTMCell sizes must be positive, got input_size={input_size}, hidden_size={hidden_size}")
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.weight_ih = nn.Parameter(torch.empty(4 * hidden_size, input_size))
        self.weight_hh = nn.Parameter(torch.empty(4 * hidden_size, hidden_size))
        self.bias = nn.Parameter(torch.empty(4 * hidden_size))
        self.w_ci = nn.Parameter(torch.empty(hidden_size))
        self.w_cf = nn.Parameter(torch.empty(hidden_size))
        self.w_co = nn.Parameter(torch.empty(hidden_size))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Same init as nn.LSTMCell, so the stock and peephole variants start on an equal footing.
        bound = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def step(self, gx: torch.Tensor, h: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Advance one step given ``gx = W_x x_t + b`` (precomputed for all steps at once by the layer)."""
        gates = gx + h @ self.weight_hh.T
        gi, gf, gg, go = gates.chunk(4, dim=1)
        i = torch.sigmoid(gi + self.w_ci * c)
        f = torch.sigmoid(gf + self.w_cf * c)
        c_new = f * c + i * torch.tanh(gg)
        o = torch.sigmoid(go + self.w_co * c_new)
        return o * torch.tanh(c_new), c_new

    def forward(
        self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``x [B, D]``, ``state = (h, c)`` each ``[B, H]`` (zeros if None) -> ``(h_t, c_t)``."""
        if state is None:
            zeros = x.new_zeros(x.shape[0], self.hidden_size)
            state = (zeros, zeros)
        return self.step(x @ self.weight_ih.T + self.bias, *state)


class PeepholeLSTM(nn.Module):
    """A single-layer peephole LSTM over a batch-first sequence: ``[B, T, D] -> [B, T, H]``."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.cell = PeepholeLSTMCell(input_size, hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        gx = x @ self.cell.weight_ih.T + self.cell.bias  # one matmul for all steps instead of T small ones
        h = c = x.new_zeros(B, self.cell.hidden_size)
        outs = []
        for t in range(T):
            h, c = self.cell.step(gx[:, t], h, c)
            outs.append(h)
        return torch.stack(outs, dim=1)


class StreamLSTM(nn.Module):
    """Stacked LSTM with a classifier at every step, for one feature stream (spatial or motion).

    Args:
        input_dim: width D of the per-frame features.
        num_classes: C.
        hidden: hidden units per layer, bottom first; ``len(hidden)`` layers. The paper uses (1024, 512).
        pooling: how :meth:`video_logits` turns per-step logits into the video's: ``"last"`` (the paper's choice,
            the last valid step) or ``"mean"`` (average over valid steps).
        peephole: use :class:`PeepholeLSTMCell` (the paper's equations) instead of ``nn.LSTM``.
        dropout: dropout on each layer's output (between layers and before the classifier).
        input_dropout: dropout on the standardized input features. Against memorizing videos: with a few
            thousand training videos each video's own offset, the same at every step, is easier to learn than
            its class.
        temporal_input: what each step feeds the LSTM. ``"features"`` (the paper's): the standardized
            features. ``"deviation"``: their deviation from the video's mean over its valid steps, which
            has the video's own offset and its average appearance removed, so the LSTM models what changes
            over time (the order of sub-actions) and leaves what does not to the video-level models.
            ``"both"``: the two side by side (input width 2D).
    """

    def __init__(
        self,
        input_dim: int,
        num_classes: int,
        hidden: Sequence[int] = PAPER_HIDDEN,
        pooling: str = "last",
        peephole: bool = False,
        dropout: float = 0.0,
        input_dropout: float = 0.0,
        temporal_input: str = "features",
    ) -> None:
        super().__init__()
        hidden = tuple(int(h) for h in hidden)
        if input_dim <= 0 or num_classes <= 0:
            raise ValueError(f"input_dim and num_classes must be positive, got {input_dim}, {num_classes}")
        if not hidden or any(h <= 0 for h in hidden):
            raise ValueError(f"hidden must be a non-empty sequence of positive sizes, got {hidden}")
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        if not 0.0 <= dropout < 1.0 or not 0.0 <= input_dropout < 1.0:
            raise ValueError(f"dropout and input_dropout must be in [0, 1), got {dropout}, {input_dropout}")
        self.input_dim = int(input_dim)
        self.num_classes = int(num_classes)
        self.hidden = hidden
        self.pooling = pooling
        self.peephole = bool(peephole)
        # nn.LSTM's num_layers needs one hidden size for all layers; the paper's 1024 -> 512 needs one module per layer.
        if temporal_input not in TEMPORAL_INPUTS:
            raise ValueError(f"temporal_input must be one of {TEMPORAL_INPUTS}, got {temporal_input!r}")
        self.temporal_input = temporal_input
        sizes = (self.input_dim * (2 if temporal_input == BOTH_INPUTS else 1), *hidden)
        self.input_norm = Standardize(self.input_dim)
        if self.peephole:
            self.layers = nn.ModuleList(PeepholeLSTM(a, b) for a, b in pairwise(sizes))
        else:
            self.layers = nn.ModuleList(nn.LSTM(a, b, batch_first=True) for a, b in pairwise(sizes))
        self.dropout = nn.Dropout(dropout)
        self.input_dropout = nn.Dropout(input_dropout)
        self.classifier = nn.Linear(hidden[-1], num_classes)

    def _check(self, x: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
        if x.dim() != 3 or x.shape[2] != self.input_dim:
            raise ValueError(f"x must be [B, T, {self.input_dim}], got {tuple(x.shape)}")
        B, T, _ = x.shape
        if lengths is None:
            return torch.full((B,), T, dtype=torch.long)
        lengths = torch.as_tensor(lengths).to("cpu", torch.long)
        if lengths.shape != (B,):
            raise ValueError(f"lengths must have shape [{B}], got {tuple(lengths.shape)}")
        if B and (lengths.min() < 1 or lengths.max() > T):
            raise ValueError(f"lengths must lie in [1, T={T}], got min {int(lengths.min())}, max {int(lengths.max())}")
        return lengths

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Per-step logits ``[B, T, C]`` for padded features ``x [B, T, D]`` with ``lengths [B]`` valid steps.

        ``lengths=None`` means every sequence is T long. Logits at padded steps (t >= lengths[b]) are 0.
        """
        lengths = self._check(x, lengths)
        T = x.shape[1]
        x = self.input_norm(x)
        if self.temporal_input != FEATURE_INPUTS:
            mask = self.valid_mask(lengths, T).to(x.device, x.dtype)[:, :, None]
            mean = (x * mask).sum(dim=1, keepdim=True) / lengths.to(x.device, x.dtype)[:, None, None]
            deviation = (x - mean) * mask
            x = torch.cat([x, deviation], dim=2) if self.temporal_input == BOTH_INPUTS else deviation
        x = self.input_dropout(x)
        if self.peephole:
            h = x
            for layer in self.layers:
                h = self.dropout(layer(h))
        else:
            packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
            for layer in self.layers:
                packed, _ = layer(packed)
                packed = packed._replace(data=self.dropout(packed.data))
            h, _ = pad_packed_sequence(packed, batch_first=True, total_length=T)
        logits: torch.Tensor = self.classifier(h)
        return logits * self.valid_mask(lengths, T).to(logits.device, logits.dtype)[:, :, None]

    def fit_input_stats(self, frames: torch.Tensor) -> None:
        """Standardize inputs with training statistics over all valid frames ``[N_frames, D]``."""
        self.input_norm.fit(frames)

    @staticmethod
    def valid_mask(lengths: torch.Tensor, T: int) -> torch.Tensor:
        """``[B, T]`` boolean mask, True where step t < lengths[b]."""
        return torch.arange(T)[None, :] < torch.as_tensor(lengths).cpu()[:, None]

    def pool(self, step_logits: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Per-step logits ``[B, T, C]`` -> video logits ``[B, C]`` with this model's pooling."""
        B, T, _ = step_logits.shape
        if lengths is None:
            lengths = torch.full((B,), T, dtype=torch.long)
        lengths = torch.as_tensor(lengths).to("cpu", torch.long)
        if self.pooling == "last":
            idx = (lengths - 1).to(step_logits.device)
            return step_logits[torch.arange(B, device=step_logits.device), idx]
        # Padded steps hold 0, so the sum over all T steps is the sum over valid ones.
        return step_logits.sum(dim=1) / lengths.to(step_logits.device, step_logits.dtype)[:, None]

    def video_logits(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """The video prediction ``[B, C]`` (logits; apply softmax, or sigmoid for multi-label, for scores)."""
        lengths = self._check(x, lengths)
        return self.pool(self.forward(x, lengths), lengths)


def sequence_loss(
    model: StreamLSTM,
    x: torch.Tensor,
    lengths: torch.Tensor | None,
    y: torch.Tensor,
    multilabel: bool = False,
    all_steps: bool = False,
) -> torch.Tensor:
    """Training loss on the video prediction, averaged over the batch (see :func:`steps_loss`)."""
    lengths = model._check(x, lengths)
    return steps_loss(model, model(x, lengths), lengths, y, multilabel, all_steps)


def steps_loss(
    model: StreamLSTM,
    step: torch.Tensor,
    lengths: torch.Tensor,
    y: torch.Tensor,
    multilabel: bool = False,
    all_steps: bool = False,
) -> torch.Tensor:
    """The loss of per-step logits ``step [B, T, C]`` (``model``'s forward output) against the videos' labels.

    ``y`` is ``[B]`` class indices (cross-entropy), or ``[B, C]`` multi-hot with ``multilabel=True``
    (BCE-with-logits, e.g. CCV). ``all_steps=True`` supervises the softmax at every valid step with the video's
    label (averaged over all valid steps of the batch), as the paper does (Sec. 3.2); the default trains only the
    pooled video prediction, which is what is evaluated.
    """
    lengths = torch.as_tensor(lengths).to("cpu", torch.long)
    if all_steps:
        mask = model.valid_mask(lengths, step.shape[1]).to(step.device)
        logits = step[mask]  # [sum(lengths), C], videos in batch order, steps in time order
        y = y.to(step.device).repeat_interleave(lengths.to(step.device), dim=0)
    else:
        logits = model.pool(step, lengths)
        y = y.to(step.device)
    if multilabel:
        if y.shape != logits.shape:
            raise ValueError(f"multi-label y must be [B, {model.num_classes}] multi-hot, got {tuple(y.shape)}")
        return nn.functional.binary_cross_entropy_with_logits(logits, y.to(logits.dtype))
    if y.dim() != 1:
        raise ValueError(
            f"single-label y must be [B] class indices, got shape {tuple(y.shape)}; pass multilabel=True for multi-hot")
    return nn.functional.cross_entropy(logits, y.long())


def make_optimizer(
    params: Iterable[torch.nn.Parameter],
    name: str = "sgd",
    lr: float | None = None,
    momentum: float = PAPER_MOMENTUM,
    weight_decay: float = 0.0,
) -> torch.optim.Optimizer:
    """The LSTM's optimizer: ``"sgd"`` (paper: lr 1e-4, momentum 0.9) or ``"adam"`` (default lr 1e-3).

    ``lr=None`` picks the default of the chosen optimizer; ``momentum`` only applies to SGD.
    """
    if name == "sgd":
        return torch.optim.SGD(params, lr=PAPER_LR if lr is None else lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=1e-3 if lr is None else lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; use 'sgd' (the paper's) or 'adam'")
