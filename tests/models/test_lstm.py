"""The per-stream LSTM (Sec. 3.2): peephole equations, padding invariance, and learning temporal order."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from hyvid.models.lstm import PeepholeLSTMCell, StreamLSTM, make_optimizer, sequence_loss

D = 16

# Tiny matmuls: one torch thread (conftest.one_thread).
pytestmark = pytest.mark.usefixtures("one_thread")


def order_task(n: int, seed: int, T: int = 20, t_min: int = 12):
    """Two classes that differ only in order: pulse A in the first half and B in the second, or the reverse.

    Noise everywhere, variable lengths (zero padding after the end). Every video holds one A and one B, so the
    mean over time has the same distribution for both classes.
    """
    g = torch.Generator().manual_seed(seed)
    pg = torch.Generator().manual_seed(1234)
    A, B = torch.randn(D, generator=pg), torch.randn(D, generator=pg)
    A, B = 8 * A / A.norm(), 8 * B / B.norm()
    y = torch.randint(0, 2, (n,), generator=g)
    lengths = torch.randint(t_min, T + 1, (n,), generator=g)
    x = torch.randn(n, T, D, generator=g)
    for k in range(n):
        L = int(lengths[k])
        t1 = int(torch.randint(0, L // 2, (1,), generator=g))
        t2 = int(torch.randint(L // 2, L, (1,), generator=g))
        first, second = (A, B) if y[k] == 0 else (B, A)
        x[k, t1] += first
        x[k, t2] += second
        x[k, L:] = 0
    return x, lengths, y


def fit(model, x, lengths, y, epochs=5, lr=5e-3, batch=20):
    torch.manual_seed(0)
    opt = make_optimizer(model.parameters(), "adam", lr=lr)  # Adam keeps the toy fast; SGD is the paper's default
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(y))
        for i in range(0, len(y), batch):
            b = perm[i : i + batch]
            opt.zero_grad()
            sequence_loss(model, x[b], lengths[b], y[b]).backward()
            opt.step()
    model.eval()
    return model


def accuracy(model, x, lengths, y) -> float:
    with torch.no_grad():
        return float((model.video_logits(x, lengths).argmax(1) == y).float().mean())


def peephole_reference(cell: PeepholeLSTMCell, x, h, c):
    """The paper's equations in NumPy, gate by gate."""
    H = cell.hidden_size
    Wx, Wh, b = (p.detach().numpy().astype(np.float64) for p in (cell.weight_ih, cell.weight_hh, cell.bias))
    wci, wcf, wco = (p.detach().numpy().astype(np.float64) for p in (cell.w_ci, cell.w_cf, cell.w_co))

    def sig(z):
        return 1 / (1 + np.exp(-z))

    def pre(k):
        return x @ Wx[k * H : (k + 1) * H].T + h @ Wh[k * H : (k + 1) * H].T + b[k * H : (k + 1) * H]

    i = sig(pre(0) + wci * c)
    f = sig(pre(1) + wcf * c)
    c_new = f * c + i * np.tanh(pre(2))
    o = sig(pre(3) + wco * c_new)
    return o * np.tanh(c_new), c_new


def test_peephole_cell_matches_the_papers_equations():
    torch.manual_seed(0)
    cell = PeepholeLSTMCell(5, 7)
    x, h, c = torch.randn(3, 5), torch.randn(3, 7), torch.randn(3, 7)
    h1, c1 = cell(x, (h, c))
    rh, rc = peephole_reference(cell, x.double().numpy(), h.double().numpy(), c.double().numpy())
    np.testing.assert_allclose(h1.detach().numpy(), rh, atol=1e-6)
    np.testing.assert_allclose(c1.detach().numpy(), rc, atol=1e-6)


def test_peephole_cell_without_peepholes_is_nn_lstmcell():
    torch.manual_seed(0)
    ref = torch.nn.LSTMCell(5, 7)
    cell = PeepholeLSTMCell(5, 7)
    with torch.no_grad():
        cell.weight_ih.copy_(ref.weight_ih)
        cell.weight_hh.copy_(ref.weight_hh)
        cell.bias.copy_(ref.bias_ih + ref.bias_hh)
        for p in (cell.w_ci, cell.w_cf, cell.w_co):
            p.zero_()
    x, h, c = torch.randn(3, 5), torch.randn(3, 7), torch.randn(3, 7)
    for a, b in zip(cell(x, (h, c)), ref(x, (h, c)), strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("peephole", [False, True])
def test_shapes_and_padded_steps(peephole):
    model = StreamLSTM(D, 3, hidden=(8, 6, 4), peephole=peephole)
    assert len(model.layers) == 3
    x, lengths = torch.randn(4, 9, D), torch.tensor([9, 3, 1, 5])
    step = model(x, lengths)
    assert step.shape == (4, 9, 3)
    assert (step[1, 3:] == 0).all() and (step[2, 1:] == 0).all()
    assert (step[0] != 0).all()
    assert model.video_logits(x, lengths).shape == (4, 3)
    assert model(x).shape == (4, 9, 3)  # lengths=None: all T steps valid


@pytest.mark.parametrize("peephole", [False, True])
@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_padding_after_the_end_does_not_change_video_logits(pooling, peephole):
    torch.manual_seed(0)
    model = StreamLSTM(D, 3, hidden=(8, 6), pooling=pooling, peephole=peephole).eval()
    lengths = torch.tensor([7, 3, 5])
    x = torch.randn(3, 7, D)
    garbage = torch.cat([x, 100 * torch.randn(3, 6, D)], dim=1)  # longer T, junk after each end
    for k, L in enumerate(lengths):
        garbage[k, L:] = 100 * torch.randn(garbage.shape[1] - L, D)
    with torch.no_grad():
        a = model.video_logits(x, lengths)
        b = model.video_logits(garbage, lengths)
        # And the same as running each video alone at its exact length.
        alone = torch.cat([model.video_logits(x[k : k + 1, :L], torch.tensor([L])) for k, L in enumerate(lengths)])
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a, alone, rtol=1e-5, atol=1e-6)


def test_mean_and_last_pooling_are_what_they_say():
    torch.manual_seed(0)
    x, lengths = torch.randn(2, 6, D), torch.tensor([6, 4])
    last = StreamLSTM(D, 3, hidden=(8,), pooling="last").eval()
    mean = StreamLSTM(D, 3, hidden=(8,), pooling="mean").eval()
    mean.load_state_dict(last.state_dict())
    with torch.no_grad():
        step = last(x, lengths)
        torch.testing.assert_close(last.video_logits(x, lengths)[1], step[1, 3])
        torch.testing.assert_close(mean.video_logits(x, lengths)[1], step[1, :4].mean(0))


def test_lstm_learns_order_while_mean_pooled_features_are_at_chance():
    x, lengths, y = order_task(400, seed=1)
    xt, lt, yt = order_task(400, seed=2)
    torch.manual_seed(0)
    model = fit(StreamLSTM(D, 2, hidden=(32, 16)), x, lengths, y)
    assert accuracy(model, xt, lt, yt) >= 0.95

    def mean(a, n):
        return (a.sum(1) / n[:, None]).numpy()

    pooled = LogisticRegression(max_iter=1000).fit(mean(x, lengths), y.numpy())
    assert pooled.score(mean(xt, lt), yt.numpy()) <= 0.65


def test_peephole_lstm_learns_order():
    x, lengths, y = order_task(400, seed=1)
    xt, lt, yt = order_task(400, seed=2)
    torch.manual_seed(0)
    model = fit(StreamLSTM(D, 2, hidden=(32, 16), peephole=True), x, lengths, y)
    assert accuracy(model, xt, lt, yt) >= 0.9


def test_sequence_loss_variants():
    torch.manual_seed(0)
    model = StreamLSTM(D, 3, hidden=(8,))
    x, lengths = torch.randn(4, 5, D), torch.tensor([5, 2, 4, 1])
    y = torch.tensor([0, 2, 1, 2])
    ce = sequence_loss(model, x, lengths, y)
    torch.testing.assert_close(ce, torch.nn.functional.cross_entropy(model.video_logits(x, lengths), y))
    multi = torch.tensor([[1, 0, 1], [0, 0, 1], [1, 1, 0], [0, 1, 0]]).float()
    bce = sequence_loss(model, x, lengths, multi, multilabel=True)
    torch.testing.assert_close(
        bce, torch.nn.functional.binary_cross_entropy_with_logits(model.video_logits(x, lengths), multi))
    dense = sequence_loss(model, x, lengths, y, all_steps=True)
    assert dense.isfinite() and not torch.isclose(dense, ce)
    with pytest.raises(ValueError, match="multilabel=True"):
        sequence_loss(model, x, lengths, multi)
    with pytest.raises(ValueError, match="lengths"):
        model(x, torch.tensor([6, 2, 4, 1]))


def test_make_optimizer_defaults_to_the_paper():
    p = [torch.nn.Parameter(torch.zeros(2))]
    sgd = make_optimizer(p)
    assert isinstance(sgd, torch.optim.SGD)
    assert sgd.defaults["lr"] == 1e-4 and sgd.defaults["momentum"] == 0.9
    assert isinstance(make_optimizer(p, "adam"), torch.optim.Adam)
    with pytest.raises(ValueError, match="unknown optimizer"):
        make_optimizer(p, "rmsprop")


def test_temporal_inputs_remove_the_video_offset_and_ignore_padding():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 3)
    lengths = torch.tensor([5, 3])
    shifted = x + torch.tensor([5.0, -2.0, 1.0])  # a per-video offset, constant over time
    both = StreamLSTM(3, 2, hidden=(4,), temporal_input="both")
    out = both(x, lengths)
    assert both.layers[0].input_size == 6 and out.shape == (2, 5, 2)
    # The deviation half is offset-free; with the features half's input weights zeroed, so is the output.
    with torch.no_grad():
        both.layers[0].weight_ih_l0[:, :3] = 0
    assert torch.allclose(both(x, lengths), both(shifted, lengths), atol=1e-5)
    deviation = StreamLSTM(3, 2, hidden=(4,), temporal_input="deviation")
    assert deviation.layers[0].input_size == 3
    assert torch.allclose(deviation(x, lengths), deviation(shifted, lengths), atol=1e-5)
    features = StreamLSTM(3, 2, hidden=(4,))
    assert not torch.allclose(features(x, lengths), features(shifted, lengths), atol=1e-3)
    for net in (both, deviation):
        # Padded steps do not enter the mean: a video's outputs do not depend on what follows its end.
        padded = x.clone()
        padded[1, 3:] = 100.0
        assert torch.allclose(net(x, lengths)[1, :3], net(padded, lengths)[1, :3], atol=1e-5)
    with pytest.raises(ValueError, match="temporal_input"):
        StreamLSTM(3, 2, temporal_input="residual")
