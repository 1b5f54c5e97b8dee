"""Table 2's baselines (NN-EF, NN-LF, SVM-EF, SVM-LF) on a toy problem where fusion is needed."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics.pairwise import chi2_kernel as sk_chi2_kernel

from hyvid.models.baselines import (
    EarlyFusionMLP,
    LateFusionMLP,
    SingleStreamSVM,
    SVMEarlyFusion,
    SVMLateFusion,
    chi2_gamma,
    chi2_kernel,
    encode_labels,
    mlp_loss,
)

NUM_CLASSES = 4
DIM = 12

# Tiny matmuls: one torch thread (conftest.one_thread).
pytestmark = pytest.mark.usefixtures("one_thread")


def split_streams(n: int, seed: int):
    """Non-negative (post-ReLU-like) features; stream s only tells apart classes with c % 2 == s.

    Either stream alone confuses the other stream's two classes (~75% at best), so fusing both is needed.
    """
    rng = np.random.default_rng(seed)
    centers = np.random.default_rng(99).uniform(0, 3, size=(NUM_CLASSES, DIM))
    y = rng.integers(0, NUM_CLASSES, size=n)
    xs = []
    for s in range(2):
        own = (y % 2) == s
        mean = np.where(own[:, None], centers[y], 1.0)
        xs.append(np.maximum(mean + 0.5 * rng.normal(size=(n, DIM)), 0.0))
    return xs, y


@pytest.fixture(scope="module")
def data():
    return split_streams(300, seed=1), split_streams(300, seed=2)


def accuracy(scores: np.ndarray, y: np.ndarray) -> float:
    return float((np.asarray(scores).argmax(1) == y).mean())


def fit_mlp(model, xs, y, epochs=60, lr=1e-2):
    torch.manual_seed(0)
    xs = [torch.as_tensor(x, dtype=torch.float32) for x in xs]
    y = torch.as_tensor(y)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(epochs):
        opt.zero_grad()
        mlp_loss(model, xs, y).backward()
        opt.step()
    return model


def mlp_scores(model, xs) -> np.ndarray:
    with torch.no_grad():
        return model([torch.as_tensor(x, dtype=torch.float32) for x in xs]).numpy()


def test_chi2_kernel_matches_sklearn_and_the_formula():
    rng = np.random.default_rng(0)
    X, Y = rng.uniform(0, 2, size=(6, 5)), rng.uniform(0, 2, size=(4, 5))
    X[0, 0] = -1e-9  # float noise below 0 is clipped
    K = chi2_kernel(X, Y, gamma=0.3)
    np.testing.assert_allclose(K, sk_chi2_kernel(np.clip(X, 0, None), Y, gamma=0.3))
    by_hand = np.exp(-0.3 * (((X[:, None] - Y[None]) ** 2) / (X[:, None] + Y[None])).sum(-1))
    np.testing.assert_allclose(K, by_hand, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(np.diag(chi2_kernel(Y)), 1.0)
    with pytest.raises(ValueError, match="non-negative"):
        chi2_kernel(X - 1.0)
    g = chi2_gamma(X)
    assert g > 0 and np.isclose(np.log(chi2_kernel(X, gamma=g)).mean(), -1.0)  # 1 / mean distance


def test_encode_labels():
    np.testing.assert_array_equal(encode_labels(np.array([2, 0]), 3), [[0, 0, 1], [1, 0, 0]])
    np.testing.assert_array_equal(encode_labels([[0, 2], [1]], 3), [[1, 0, 1], [0, 1, 0]])
    with pytest.raises(ValueError, match="out of range"):
        encode_labels([[0, 5]], 3)


@pytest.mark.parametrize("cls", [EarlyFusionMLP, LateFusionMLP])
def test_nn_baselines_fuse_the_streams(cls, data):
    (xs, y), (xt, yt) = data
    model = fit_mlp(cls([DIM, DIM], NUM_CLASSES, hidden=(32,)), xs, y)
    scores = mlp_scores(model, xt)
    assert scores.shape == (len(yt), NUM_CLASSES)
    np.testing.assert_allclose(scores.sum(1), 1.0, rtol=1e-5)  # averaged softmax scores
    assert accuracy(scores, yt) >= 0.9
    assert model.head_logits([torch.zeros(2, DIM)] * 2).shape[0] == (1 if cls is EarlyFusionMLP else 2)


@pytest.mark.parametrize("cls", [SVMEarlyFusion, SVMLateFusion])
def test_svm_baselines_fuse_the_streams(cls, data):
    (xs, y), (xt, yt) = data
    scores = cls(C=10.0).fit(xs, y).predict_scores(xt)
    assert scores.shape == (len(yt), NUM_CLASSES)
    assert accuracy(scores, yt) >= 0.9
    single = SVMLateFusion(C=10.0).fit(xs[:1], y).predict_scores(xt[:1])  # one stream: Table 2's "Spatial SVM"
    assert accuracy(single, yt) <= 0.8


def test_svm_multilabel_and_unseen_class(data):
    (xs, y), (xt, yt) = data
    # Multi-label: every video also carries label 4 when its class is even; class 5 never occurs in training.
    labels = [[int(c), 4] if c % 2 == 0 else [int(c)] for c in y]
    model = SVMEarlyFusion(C=10.0).fit(xs, labels, num_classes=6)
    scores = model.decision_values(xt)
    assert scores.shape == (len(yt), 6)
    assert accuracy(scores[:, :4], yt) >= 0.9
    even = yt % 2 == 0
    assert (scores[even, 4] > 0).mean() > 0.9 and (scores[~even, 4] < 0).mean() > 0.9
    assert (scores[:, 5] == -1.0).all()
    # What the hybrid mixes: per-class sigmoids of the margins on multi-label data.
    probs = model.predict_scores(xt)
    np.testing.assert_allclose(probs, 1 / (1 + np.exp(-scores)), rtol=1e-6)
    single = SVMEarlyFusion(C=10.0).fit(xs, y).predict_scores(xt)
    np.testing.assert_allclose(single.sum(axis=1), 1.0, rtol=1e-6)  # softmax on single-label data


def test_nn_multilabel_loss_and_scores():
    torch.manual_seed(0)
    model = LateFusionMLP([3, 4], 5, hidden=(8,), multilabel=True)
    xs = [torch.rand(6, 3), torch.rand(6, 4)]
    y = torch.zeros(6, 5)
    y[:, 1] = 1
    loss = mlp_loss(model, xs, y)
    heads = model.head_logits(xs)
    expected = sum(torch.nn.functional.binary_cross_entropy_with_logits(h, y) for h in heads)
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(model(xs), torch.sigmoid(heads).mean(0))
    with pytest.raises(ValueError, match="multi-hot"):
        mlp_loss(model, xs, torch.zeros(6, dtype=torch.long))


def test_single_stream_svm_reads_only_its_stream(data):
    (xs, y), (xt, yt) = data
    spatial = SingleStreamSVM(stream=0, C=10.0).fit(xs, y)
    # The same model as SVM-LF fitted on that stream alone, but called with every stream.
    np.testing.assert_allclose(spatial.predict_scores(xt), SVMLateFusion(C=10.0).fit(xs[:1], y).predict_scores(xt[:1]))
    motion = SingleStreamSVM(stream=1, C=10.0).fit(xs, y).predict_scores(xt)
    # Stream s only tells apart the classes with c % 2 == s.
    even, odd = yt % 2 == 0, yt % 2 == 1
    assert accuracy(spatial.predict_scores(xt)[even], yt[even]) > accuracy(motion[even], yt[even])
    assert accuracy(motion[odd], yt[odd]) > accuracy(spatial.predict_scores(xt)[odd], yt[odd])
    with pytest.raises(ValueError, match="reads stream 2"):
        SingleStreamSVM(stream=2).fit(xs, y)


@pytest.mark.parametrize("cls", [EarlyFusionMLP, LateFusionMLP])
def test_nn_baselines_standardize_their_inputs_like_the_fusion_net(cls, data):
    (xs, _), _ = data
    model = cls([DIM, DIM], NUM_CLASSES, hidden=(8,))
    scaled = [torch.as_tensor(x, dtype=torch.float32) * k for x, k in zip(xs, (1.0, 1000.0), strict=True)]
    model.fit_input_stats(scaled)
    for norm, x in zip(model.input_norms, scaled, strict=True):
        z = norm(x)
        torch.testing.assert_close(z.mean(0), torch.zeros(DIM), atol=1e-4, rtol=0)
        assert float(z.std(0, unbiased=False).max()) < 1.0 + 1e-3
    assert {k for k in model.state_dict() if k.startswith("input_norms")} >= {"input_norms.0.mean", "input_norms.1.std"}
    # The logits see standardized inputs: rescaling a stream after fitting the statistics changes them.
    with torch.no_grad():
        before = model.head_logits(scaled)
        model.fit_input_stats([x / 1000.0 for x in scaled])
        assert not torch.allclose(before, model.head_logits(scaled))
