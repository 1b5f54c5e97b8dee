"""The hybrid weight search on constructed scores, and the hybrid stage end to end on a tiny store."""
from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

from hyvid.models.registry import LATE_FUSIONS
from hyvid.pipelines import hybrid as H
from hyvid.pipelines.evaluation import metrics as M
from hyvid.pipelines.evaluation import weights as W


def _planted(weights, n=300, c=5, noise=20.0, seed=0, labels=None):
    """Three score sets whose weighted sum with `weights` (and nothing near it) is the clean signal.

    S_k = T + D_k with sum_k w_k D_k = 0, so sum_k w_k S_k = T (one-hot labels). Moving any
    weight by one grid step adds 0.05 * D of noise with std ~ noise/20 = 1 >> the margin,
    which breaks the classification of many videos.
    """
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, c, n) if labels is None else labels
    t = np.eye(c)[labels]
    d1, d2 = rng.normal(0, noise, (n, c)), rng.normal(0, noise, (n, c))
    d3 = -(weights[0] * d1 + weights[1] * d2) / weights[2]
    return [t + d1, t + d2, t + d3], labels


def test_simplex_grid_counts_and_sums():
    g = W.simplex_grid(3, 0.05)
    assert g.shape == (math.comb(22, 2), 3) == (231, 3)
    np.testing.assert_allclose(g.sum(1), 1.0)
    assert (g >= 0).all()
    assert len({tuple(r) for r in np.round(g, 9)}) == len(g)
    assert W.simplex_grid(2, 0.25).tolist() == [[0, 1], [0.25, 0.75], [0.5, 0.5], [0.75, 0.25], [1, 0]]
    with pytest.raises(ValueError, match="does not divide 1"):
        W.simplex_grid(3, 0.3)


@pytest.mark.parametrize("true_w", [(0.5, 0.3, 0.2), (0.15, 0.25, 0.6)])
def test_search_finds_planted_weights(true_w):
    scores, labels = _planted(true_w)
    w, table = W.search_weights(scores, labels, step=0.05, names=["a", "b", "c"])
    np.testing.assert_allclose(w, true_w, atol=1e-9)
    assert table["chosen"].sum() == 1 and len(table) == 231
    assert table.loc[table["chosen"], "val_accuracy"].item() == 1.0
    # Only the planted point separates the classes: the runner-up is far below.
    assert np.sort(table["val_accuracy"].to_numpy())[-2] < 0.9
    # And the plain average of the three is no good.
    assert M.accuracy(W.combine(scores, [1 / 3] * 3), labels) < 0.6


def test_refinement_finds_off_grid_weights():
    true_w = (0.4125, 0.3375, 0.25)  # on the 0.0125 lattice, not on the 0.05 grid
    scores, labels = _planted(true_w, noise=60.0)
    coarse, _ = W.search_weights(scores, labels, step=0.05)
    fine, table = W.search_weights(scores, labels, step=0.05, refine=True)
    np.testing.assert_allclose(fine, true_w, atol=1e-9)
    assert np.abs(coarse - np.asarray(true_w)).max() > 1e-6
    assert set(table["stage"]) == {"grid", "refine"}
    assert M.accuracy(W.combine(scores, fine), labels) > M.accuracy(W.combine(scores, coarse), labels)


def test_ties_go_to_the_plain_average():
    # Three identical, perfect score sets: every candidate scores 1.0.
    labels = np.arange(6) % 3
    s = np.eye(3)[labels]
    w, table = W.search_weights([s, s, s], labels, step=0.1)
    assert (table["val_accuracy"] == 1.0).all()
    np.testing.assert_allclose(w, [0.3, 0.3, 0.4], atol=1e-9)  # the grid point nearest (1/3, 1/3, 1/3)
    w2, _ = W.search_weights([s, s], labels, step=0.1)
    np.testing.assert_allclose(w2, [0.5, 0.5])


def test_search_by_map_on_multilabel_scores():
    rng = np.random.default_rng(3)
    n, c = 200, 4
    y = (rng.random((n, c)) < 0.35).astype(int)
    good = y + rng.normal(0, 0.3, (n, c))
    bad = rng.normal(0, 1, (n, c))
    labels_multi = [list(np.flatnonzero(r)) for r in y]
    w, table = W.search_weights([bad, good], None, step=0.1, metric="map", labels_multi=labels_multi)
    assert w[1] >= 0.9  # nearly all the weight on the informative set
    assert "val_map" in table


def test_combine_checks_shapes():
    with pytest.raises(ValueError, match="2 score sets but 1 weights"):
        W.combine([np.zeros((2, 3)), np.zeros((2, 3))], [1.0])
    with pytest.raises(ValueError, match="one shape"):
        W.combine([np.zeros((2, 3)), np.zeros((3, 3))], [0.5, 0.5])


def test_config_validation_names_the_bad_value():
    with pytest.raises(ValueError, match="unknown model name"):
        H.HybridConfig(store_uri="s", models=("spatial_lstm", "nope"))
    with pytest.raises(ValueError, match="at least 2 distinct"):
        H.HybridConfig(store_uri="s", models=("fusion",))
    with pytest.raises(ValueError, match="does not divide 1"):
        H.HybridConfig(store_uri="s", step=0.07)
    with pytest.raises(ValueError, match="unknown metric"):
        H.HybridConfig(store_uri="s", metric="f1")


# -- the stage, end to end on a tiny store ---------------------------------------------------------
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CLASSES = ["jump", "run", "swim", "wave"]


def _make_store(root, true_w=(0.5, 0.3, 0.2), n_val=120, n_test=120, extra=True, seed=0):
    """A store with videos, classes and video_scores of the LSTMs, fusion and (optionally) CNNs."""
    import pyarrow as pa

    from hyvid.store.lance_io import append_rows
    from hyvid.store.scores import upsert_video_scores
    from hyvid.store.tables import CLASSES as CLASSES_T
    from hyvid.store.tables import VIDEOS

    c = len(CLASSES)
    store = str(root / "store")
    rows, ids, subsets = [], [], []
    for subset, n in (("val", n_val), ("test", n_test)):
        for i in range(n):
            vid = f"{subset}_{i:03d}"
            ids.append(vid)
            subsets.append(subset)
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, c, len(ids))
    for vid, lab in zip(ids, labels, strict=True):
        rows.append({"video_id": vid, "class_name": CLASSES[lab], "label": int(lab), "labels": [int(lab)],
                     "group": "g01", "status": "ok"})
    meta = {b"hyvid.extract_settings": json.dumps({"frames": 6, "stack": 2, "flow": "dis", "size": 32}).encode()}
    append_rows(store, VIDEOS.name, pa.Table.from_pylist(rows, schema=VIDEOS.schema.with_metadata(meta)))
    append_rows(store, CLASSES_T.name, pa.Table.from_pylist(
        [{"label": i, "class_name": n} for i, n in enumerate(CLASSES)], schema=CLASSES_T.schema))
    scores, _ = _planted(true_w, n=len(ids), c=c, seed=seed, labels=labels)
    t = np.eye(c)[labels]
    named = dict(zip(("spatial_lstm", "motion_lstm", "fusion"), scores, strict=True))
    if extra:
        named["spatial_cnn"] = t * 0.6 + rng.random((len(ids), c))
        named["motion_cnn"] = t * 0.4 + rng.random((len(ids), c))
    for m, s in named.items():
        upsert_video_scores(store, m, 1, f"run_{m}", ids, subsets, s, labels.tolist())
    return store, labels, named


def test_hybrid_stage_end_to_end(tmp_path, tracking_uri):
    import mlflow
    from mlflow.tracking import MlflowClient

    from hyvid.store.feature_store import FeatureStore

    store, labels, named = _make_store(tmp_path)
    out = tmp_path / "plots"
    res = H.hybrid(H.HybridConfig(store_uri=store, experiment="exp", tracking_uri=tracking_uri,
                                  out_dir=str(out)))
    assert res.weights == pytest.approx({"spatial_lstm": 0.5, "motion_lstm": 0.3, "fusion": 0.2})
    assert res.val_metric == 1.0 and res.test_metrics["accuracy"] == 1.0
    assert set(res.late_fusion) == set(LATE_FUSIONS)
    assert res.components["spatial_lstm"]["accuracy"] < 0.9  # a component alone is noisy

    client = MlflowClient(tracking_uri)
    run = client.get_run(res.run_id)
    assert run.data.tags["hyvid.model"] == "hybrid" and run.data.tags["hyvid.stage"] == "hybrid"
    assert run.data.tags["hyvid.split"] == "1"
    assert client.get_experiment(run.info.experiment_id).name == "exp"
    assert float(run.data.params["weight.spatial_lstm"]) == pytest.approx(0.5)
    assert run.data.params["component.fusion.run_id"] == "run_fusion"
    assert run.data.metrics["test_accuracy"] == 1.0
    # Its own metrics and weights only: no copies of the components' metrics from their runs.
    assert not [k for k in run.data.metrics if k.startswith("eval.")]
    assert {k.split("_", 1)[0] for k in run.data.metrics} <= {"val", "test"}, sorted(run.data.metrics)
    assert "lineage.video_scores.version" in run.data.params
    # What `hyvid predict` needs to prepare a new video like the training ones.
    assert run.data.params["extract.stack"] == "2" and run.data.params["extract.flow"] == "dis"

    arts = {a.path for a in client.list_artifacts(res.run_id)}
    assert {"hybrid_candidates.json", "hybrid_summary.json", "plots", "extract_settings.json", "classes.json"} <= arts
    plots_logged = {a.path for a in client.list_artifacts(res.run_id, "plots")}
    assert len(plots_logged) == 3
    for key in ("weights", "per_class", "confusion"):
        with open(res.files[key], "rb") as f:
            assert f.read(8) == PNG_MAGIC
        assert f"plots/{os.path.basename(res.files[key])}" in plots_logged
    local = mlflow.artifacts.download_artifacts(run_id=res.run_id, artifact_path="plots", tracking_uri=tracking_uri)
    import matplotlib.image

    img = matplotlib.image.imread(f"{local}/{os.path.basename(res.files['weights'])}")
    assert img.shape[0] > 100 and img.shape[1] > 100

    children = client.search_runs([run.info.experiment_id], f"tags.`mlflow.parentRunId` = '{res.run_id}'")
    by_model = {r.data.tags["hyvid.model"]: r for r in children}
    assert set(by_model) == set(LATE_FUSIONS)
    four = by_model["spatial_cnn+motion_cnn+spatial_lstm+motion_lstm"]
    avg = W.combine([named[m][len(labels) // 2:] for m in LATE_FUSIONS[four.data.tags["hyvid.model"]]], [0.25] * 4)
    assert four.data.metrics["test_accuracy"] == pytest.approx(M.accuracy(avg, labels[len(labels) // 2:]))

    hyb = FeatureStore(store).scores("hybrid", 1, "test")
    assert hyb.run_id == res.run_id and len(hyb.video_ids) == len(labels) // 2
    assert M.accuracy(hyb.scores, hyb.labels) == 1.0


def test_hybrid_stage_names_missing_models(tmp_path, tracking_uri):
    store, _, _ = _make_store(tmp_path, extra=False)
    with pytest.raises(FileNotFoundError, match=r"motion_cnn.*hyvid features"):
        H.hybrid(H.HybridConfig(store_uri=store, models=("spatial_lstm", "motion_cnn"),
                                tracking_uri=tracking_uri))


def test_hybrid_cli_reports_missing_scores(tmp_path, tracking_uri, capsys):
    from hyvid.pipelines.cli import main

    store, _, _ = _make_store(tmp_path, extra=False, n_val=8, n_test=8)
    rc = main(["hybrid", "--store", store, "--models", "spatial_lstm,two_stream_cnn", "--out", str(tmp_path)])
    assert rc == 2
    assert "two_stream_cnn" in capsys.readouterr().err
    assert main(["hybrid", "--store", store, "--splits", "1,4"]) == 2


def test_weight_source_is_checked(tmp_path):
    from hyvid.pipelines.hybrid import HybridConfig

    assert HybridConfig(store_uri=str(tmp_path)).weights_from == "oof"
    with pytest.raises(ValueError, match="weights_from"):
        HybridConfig(store_uri=str(tmp_path), weights_from="test")
