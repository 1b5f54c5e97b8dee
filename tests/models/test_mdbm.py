"""M-DBM: shapes, determinism, mean-field features in [0, 1], and a learnable two-stream problem."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from hyvid.models.mdbm import RBM, MultimodalDBM, train_rbm

pytestmark = pytest.mark.usefixtures("one_thread")

NUM_CLASSES = 4


def two_streams(n: int, seed: int):
    """Each stream tells apart two of the four classes: fusing both is needed (as tests/models/test_baselines)."""
    rng = np.random.default_rng(seed)
    centers = np.random.default_rng(99).uniform(0, 3, size=(NUM_CLASSES, 12))
    y = rng.integers(0, NUM_CLASSES, size=n)
    xs = []
    for s in range(2):
        mean = np.where(((y % 2) == s)[:, None], centers[y], 1.0)
        xs.append(np.maximum(mean + 0.5 * rng.normal(size=(n, 12)), 0.0).astype(np.float32))
    return xs, y


@pytest.fixture(scope="module")
def fitted():
    (xs, y), (xt, yt) = two_streams(300, 1), two_streams(300, 2)
    model = MultimodalDBM(hidden=(32, 16), joint=32, lr=0.03, epochs=20, seed=3).fit(xs, y, num_classes=NUM_CLASSES)
    return model, xs, y, xt, yt


def test_learns_a_problem_that_needs_both_streams(fitted):
    model, _, _, xt, yt = fitted
    scores = model.predict_scores(xt)
    assert scores.shape == (len(yt), NUM_CLASSES)
    np.testing.assert_allclose(scores.sum(1), 1.0, rtol=1e-5)  # softmax for single-label data
    assert float((scores.argmax(1) == yt).mean()) >= 0.9


def test_mean_field_features_are_probabilities_of_the_joint_width(fitted):
    model, _, _, xt, _ = fitted
    feats = model.mean_field([torch.from_numpy(x) for x in xt])
    assert feats.shape == (len(xt[0]), 32)
    assert float(feats.min()) >= 0.0 and float(feats.max()) <= 1.0
    assert float(feats.std(0).mean()) > 0.01  # the features vary across videos


def test_same_seed_same_model_other_seed_other_model(fitted):
    model, xs, y, xt, _ = fitted
    again = MultimodalDBM(hidden=(32, 16), joint=32, lr=0.03, epochs=20, seed=3).fit(xs, y, num_classes=NUM_CLASSES)
    np.testing.assert_array_equal(model.predict_scores(xt), again.predict_scores(xt))
    other = MultimodalDBM(hidden=(32, 16), joint=32, lr=0.03, epochs=20, seed=4).fit(xs, y, num_classes=NUM_CLASSES)
    assert not np.array_equal(model.predict_scores(xt), other.predict_scores(xt))


def test_multilabel_gives_independent_sigmoids():
    (xs, y), (xt, _) = two_streams(200, 1), two_streams(50, 2)
    labels = [[int(c), 4] if c % 2 == 0 else [int(c)] for c in y]
    model = MultimodalDBM(hidden=(16, 8), joint=16, lr=0.03, epochs=5).fit(xs, labels, num_classes=5)
    scores = model.predict_scores(xt)
    assert model.multilabel and scores.shape == (50, 5)
    assert (scores >= 0).all() and (scores <= 1).all() and not np.allclose(scores.sum(1), 1.0)


def test_cd1_lowers_the_reconstruction_error():
    gen = torch.Generator().manual_seed(0)
    data = (torch.rand(200, 10, generator=gen) < torch.linspace(0.1, 0.9, 10)).float()
    data[:100, :5] = 1.0  # structure for the hidden units to find

    def recon_error(rbm: RBM) -> float:
        return float(((torch.sigmoid(rbm.hidden(data) @ rbm.W.T + rbm.b) - data) ** 2).mean())

    short = train_rbm(data, 8, gaussian=False, lr=0.1, epochs=1, batch_size=20, gen=torch.Generator().manual_seed(1))
    long = train_rbm(data, 8, gaussian=False, lr=0.1, epochs=50, batch_size=20, gen=torch.Generator().manual_seed(1))
    assert recon_error(long) < 0.8 * recon_error(short)


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="hidden"):
        MultimodalDBM(hidden=(8,))
    with pytest.raises(RuntimeError, match="not fitted"):
        MultimodalDBM().predict_scores([np.zeros((2, 3)), np.zeros((2, 3))])
    with pytest.raises(ValueError, match=">= 2 streams"):
        MultimodalDBM().fit([np.zeros((4, 3))], np.zeros(4, dtype=int), num_classes=2)
