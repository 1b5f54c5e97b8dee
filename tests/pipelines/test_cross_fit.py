"""Feature rows keyed by the CNNs that made them, and cross-fitted CNN pairs (`--cross-fit K`).

Real Ray, Lance, MLflow (sqlite in tmp_path) and OpenCV-written videos: a UCF-layout set of two
classes defined by direction (a square moving right or left), five groups, where split 1 tests g01
and split 2 tests g02.
"""
from __future__ import annotations

import mlflow
import numpy as np
import pytest
from helpers.videos import write_ucf

from hyvid.models.cnn import random_crop_flip
from hyvid.pipelines import tracking
from hyvid.pipelines.features import FeaturesConfig, extract_features
from hyvid.pipelines.train_cnn import TrainCNNConfig, train_cnn
from hyvid.pipelines.training.data import deal_groups
from hyvid.pipelines.training.folds import check_cross_fit, video_folds
from hyvid.store.feature_store import FeatureStore
from hyvid.store.lance_io import open_table

pytestmark = [pytest.mark.slow, pytest.mark.integration]


@pytest.fixture(scope="module")
def ucf_store(tmp_path_factory, ray_session):
    from hyvid.pipelines.extract import ExtractConfig, extract

    root = tmp_path_factory.mktemp("crossfit")
    data = write_ucf(root / "data", {"Right": "Right", "Left": "Left"}, groups=(1, 2, 3, 4, 5), n_frames=14)
    store = str(root / "store")
    res = extract(ExtractConfig(dataset=str(data), store_uri=store, frames=4, stack=3, size=32, workers=2,
                                progress=False))
    assert res.ok == 10 and res.failed == 0
    return store


def _cnn(store, tmp_path, uri, **kw):
    return TrainCNNConfig(store_uri=store, epochs=1, batch_size=8, feature_dim=16, experiment="x", tracking_uri=uri,
                          checkpoint_path=str(tmp_path / "ckpt"), **kw)


def _features(store, uri, **kw):
    return FeaturesConfig(store_uri=store, experiment="x", tracking_uri=uri, videos_per_task=4, batch_size=16,
                          progress=False, **kw)


def test_features_of_split_2_leave_split_1_training_inputs_unchanged(ucf_store, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    one = train_cnn(_cnn(ucf_store, tmp_path, uri, split=1))
    extract_features(_features(ucf_store, uri, split=1))
    fs = FeatureStore(ucf_store)
    train1 = fs.video_features(1, "train")
    seq1 = fs.sequences(1, "train")
    assert fs.cnn_runs(1) == [(one.run_ids["spatial"], one.run_ids["motion"])]

    # Split 1's CNNs saw g02, split 2's test group: they may not describe split 2's videos.
    with pytest.raises(ValueError, match="not a spatial_cnn run of split 2"):
        extract_features(_features(ucf_store, uri, split=2, spatial_run_id=one.run_ids["spatial"],
                                   motion_run_id=one.run_ids["motion"]))

    two = train_cnn(_cnn(ucf_store, tmp_path, uri, split=2))
    r2 = extract_features(_features(ucf_store, uri, split=2))
    assert r2.n_features_written == 10  # every video of split 2 gets split 2's own rows
    fs = FeatureStore(ucf_store)
    assert fs.cnn_runs(2) == [(two.run_ids["spatial"], two.run_ids["motion"])]
    assert fs.cnn_runs(1) == [(one.run_ids["spatial"], one.run_ids["motion"])]
    again = fs.video_features(1, "train")
    assert again.video_ids == train1.video_ids
    for s in ("spatial", "motion"):
        np.testing.assert_array_equal(again.features[s], train1.features[s])
    for a, b in zip(seq1.features["spatial"], fs.sequences(1, "train").features["spatial"], strict=True):
        np.testing.assert_array_equal(a, b)
    # Two splits' rows side by side, and split 1's CNN scores untouched by split 2's.
    t = open_table(ucf_store, "frame_features").to_table(columns=["split"])
    assert sorted(set(t.column("split").to_pylist())) == [1, 2] and t.num_rows == 2 * 10 * 4
    assert fs.scores("spatial_cnn", 1).run_id == one.run_ids["spatial"]
    assert fs.scores("spatial_cnn", 2).run_id == two.run_ids["spatial"]


def test_cross_fitted_pairs_describe_only_videos_they_did_not_see(ucf_store, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    res = train_cnn(_cnn(ucf_store, tmp_path, uri, split=1, cross_fit=2, flip=False))
    assert set(res.fold_runs) == {0, 1} and all(set(p) == {"spatial", "motion"} for p in res.fold_runs.values())
    fs = FeatureStore(ucf_store)
    vids = fs.videos(split=1, status=None)
    ids, subsets = vids.column("video_id").to_pylist(), vids.column("subset").to_pylist()
    fold_of = video_folds(ids, subsets, vids.column("group").to_pylist(), 2)
    train_ids = [v for v, s in zip(ids, subsets, strict=True) if s == "train"]
    client = mlflow.MlflowClient(uri)
    for fold, pair in res.fold_runs.items():
        for run_id in pair.values():
            run = client.get_run(run_id)
            assert run.data.tags[tracking.TAG_CROSS_FIT] == "2" and run.data.tags[tracking.TAG_FOLD] == str(fold)
            assert run.data.params["flip"] == "False"
            # Fitted on the training videos outside its fold only.
            assert int(run.data.params["n_train_videos"]) == sum(fold_of[v] != fold for v in train_ids)

    fr = extract_features(_features(ucf_store, uri, split=1, cross_fit=2))
    assert fr.fold_runs == {f: (p["spatial"], p["motion"]) for f, p in res.fold_runs.items()}
    t = open_table(ucf_store, "frame_features").to_table(
        columns=["video_id", "split", "fold", "spatial_run_id", "motion_run_id"])
    rows = {(v, f, s, m) for v, sp, f, s, m in zip(*(t.column(c).to_pylist() for c in t.column_names), strict=True)
            if sp == 1}
    assert {r[0] for r in rows} == set(ids)
    for v, f, s, m in rows:  # each video is described by its fold's pair, which never trained on it
        assert f == fold_of[v] and (s, m) == fr.fold_runs[f]
    # Both folds describe some training videos, and val/test videos are dealt to the pairs too.
    assert {fold_of[v] for v in train_ids} == {0, 1}
    scores = open_table(ucf_store, "video_scores").to_table()
    for v, model, split, run, fold in zip(*(scores.column(c).to_pylist()
                                            for c in ("video_id", "model", "split", "run_id", "fold")), strict=True):
        if model == "spatial_cnn" and split == 1:
            assert fold == fold_of[v] and run == fr.fold_runs[fold][0]
    # Second-level training reads the two pairs' rows together.
    assert len(FeatureStore(ucf_store).video_features(1, "train").video_ids) == len(train_ids)
    # A re-run finds everything in place.
    again = extract_features(_features(ucf_store, uri, split=1, cross_fit=2))
    assert again.n_features_written == 0 and again.n_scored == 0


def test_fold_helpers_and_no_flip():
    assert deal_groups(["a", "a", "b", "c"], 3) == [0, 0, 1, 2]
    assert deal_groups(["a"], 2) == [0]  # fewer groups than folds: some fold gets none
    folds = video_folds(["t1", "t2", "t3", "v1", "x1"], ["train", "train", "train", "val", "test"],
                        ["g1", "g2", "g1", "g3", None], 2)
    assert folds["t1"] == folds["t3"] != folds["t2"] and folds["v1"] == 0 and folds["x1"] == 0
    assert set(video_folds(["a"], ["train"], ["g"], 0).values()) == {-1}
    for bad in (1, -1, True):
        with pytest.raises(ValueError, match="cross_fit must be 0"):
            check_cross_fit(bad)
    frames = np.arange(2 * 4 * 6 * 3, dtype=np.uint8).reshape(2, 4, 6, 3)
    rng = np.random.default_rng(0)
    kept = [random_crop_flip(frames, (0, 0), rng, "frames", flip=False) for _ in range(8)]
    assert all(np.array_equal(k, frames) for k in kept)  # never mirrored
    flipped = [random_crop_flip(frames, (0, 0), rng, "frames") for _ in range(8)]
    assert any(not np.array_equal(f, frames) for f in flipped)
