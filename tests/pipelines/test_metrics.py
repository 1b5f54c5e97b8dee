"""The paper's metrics against scikit-learn on random and hand-made score matrices."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from hyvid.pipelines.evaluation import metrics as M


@pytest.fixture
def single_label():
    rng = np.random.default_rng(0)
    n, c = 120, 7
    labels = rng.integers(0, c, n)
    scores = rng.normal(size=(n, c))
    scores[np.arange(n), labels] += rng.normal(1.0, 1.0, n)  # better than chance, not perfect
    return scores, labels


def test_accuracy_mean_class_accuracy_top5_match_sklearn(single_label):
    scores, labels = single_label
    pred = scores.argmax(1)
    assert M.accuracy(scores, labels) == pytest.approx(skm.accuracy_score(labels, pred))
    assert M.mean_class_accuracy(scores, labels) == pytest.approx(skm.balanced_accuracy_score(labels, pred))
    for k in (1, 3, 5):
        assert M.top_k_accuracy(scores, labels, k) == pytest.approx(
            skm.top_k_accuracy_score(labels, scores, k=k, labels=np.arange(scores.shape[1]))
        )
    assert 0.3 < M.accuracy(scores, labels) < 1.0  # the fixture is neither trivial nor chance


def test_top_k_ties_follow_sklearn():
    scores = np.array([[1.0, 1.0, 1.0, 0.0], [0.5, 0.5, 0.2, 0.2]])
    labels = np.array([0, 3])
    for k in (1, 2, 3):
        assert M.top_k_accuracy(scores, labels, k) == pytest.approx(
            skm.top_k_accuracy_score(labels, scores, k=k, labels=np.arange(4))
        )


def test_mean_class_accuracy_ignores_absent_classes():
    # Class 2 has no video: it must not count as a 0 recall.
    scores = np.eye(3)[[0, 0, 1, 1]]
    labels = np.array([0, 1, 1, 1])
    per = M.per_class_accuracy(scores, labels)
    assert per[0] == 1.0 and per[1] == pytest.approx(2 / 3) and np.isnan(per[2])
    assert M.mean_class_accuracy(scores, labels) == pytest.approx((1 + 2 / 3) / 2)


def test_map_matches_sklearn_and_skips_classes_without_positives():
    rng = np.random.default_rng(1)
    n, c = 80, 6
    y = (rng.random((n, c)) < 0.3).astype(int)
    y[:, 5] = 0  # a class with no positive video
    scores = rng.normal(size=(n, c)) + 1.5 * y
    labels_multi = [list(np.flatnonzero(r)) for r in y]
    ap = M.per_class_ap(scores, M.label_matrix(labels_multi, c))
    for j in range(5):
        assert ap[j] == pytest.approx(skm.average_precision_score(y[:, j], scores[:, j]))
    assert np.isnan(ap[5])
    expected = skm.average_precision_score(y[:, :5], scores[:, :5], average="macro")
    assert M.mean_average_precision(scores, y) == pytest.approx(expected)
    out = M.evaluate(scores, None, labels_multi, multilabel=True)
    assert out["map"] == pytest.approx(expected)
    assert "mean_class_accuracy" not in out


def test_ap_hand_computed():
    # Ranking: pos, neg, pos -> AP = (1/1 + 2/3) / 2.
    scores = np.array([[0.9], [0.8], [0.1]])
    y = np.array([[1], [0], [1]])
    assert M.per_class_ap(scores, y)[0] == pytest.approx((1 + 2 / 3) / 2)


def test_confusion_matrix_matches_sklearn(single_label):
    scores, labels = single_label
    cm = M.confusion_matrix(scores, labels)
    np.testing.assert_array_equal(cm, skm.confusion_matrix(labels, scores.argmax(1), labels=np.arange(7)))
    assert cm.sum() == len(labels)


def test_evaluate_single_label_keys_and_values(single_label):
    scores, labels = single_label
    out = M.evaluate(scores, labels)
    assert set(out) == {"accuracy", "mean_class_accuracy", "top5", "map"}
    assert out["accuracy"] == pytest.approx(M.accuracy(scores, labels))
    assert out["top5"] >= out["accuracy"]


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="labels must lie in"):
        M.accuracy(np.zeros((2, 3)), np.array([0, 3]))
    with pytest.raises(ValueError, match="2 score rows but 3 labels"):
        M.accuracy(np.zeros((2, 3)), np.array([0, 1, 2]))
