"""End to end on a tiny real store: extract -> train-cnn (Ray Train, both streams) -> features.

Real Ray, real Lance tables in tmp_path, real MLflow (sqlite in tmp_path), real videos written
with OpenCV. The videos are tiny (64x48, 20 frames) and stored at 32 px so it all runs on 2 CPUs.
"""
from __future__ import annotations

import lance
import mlflow
import numpy as np
import pyarrow as pa
import pytest
import torch
from helpers.videos import DOWN, LEFT, RIGHT, square_frames, write_manifest, write_video

from hyvid.models.cnn import MotionCNN, SpatialCNN, spatial_input
from hyvid.models.registry import CNN_MODELS, MOTION_CNN, SPATIAL_CNN, TWO_STREAM_CNN
from hyvid.pipelines.features import FeaturesConfig, _commit_features, extract_features
from hyvid.pipelines.inference.packaging import load_fitted
from hyvid.pipelines.train_cnn import TrainCNNConfig, train_cnn
from hyvid.store.feature_store import FeatureStore
from hyvid.store.lance_io import open_table, table_uri
from hyvid.store.tables import frame_features_schema

CLASSES = ("redright", "greenleft", "bluedown")
N_POSITIONS, STACK, SIZE = 4, 3, 32


def _write_video(path, cls: int, seed: int, n_frames: int = 20, w: int = 64, h: int = 48) -> None:
    """A coloured square moving one way per class, on a noisy background."""
    rng = np.random.default_rng(seed)
    colour = [(255, 0, 0), (0, 255, 0), (0, 0, 255)][cls]  # RGB
    step = [RIGHT, LEFT, DOWN][cls]
    start = int(rng.integers(12, 40)), int(rng.integers(8, 24))
    # The noise is drawn as BGR, one frame at a time (the random stream these tests were tuned on).
    noise = np.stack([rng.integers(0, 60, (h, w, 3), dtype=np.uint8)[..., ::-1] for _ in range(n_frames)])
    write_video(path, square_frames(n_frames, start, step, noise, colour, square=12, w=w, h=h, wrap=12))


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory, ray_session):
    """3 classes x 4 groups of videos, extracted into a Lance store (split 1: g4 is test)."""
    from hyvid.pipelines.extract import ExtractConfig, extract

    root = tmp_path_factory.mktemp("tiny")
    rows = []
    for c, name in enumerate(CLASSES):
        for g in range(1, 5):
            p = root / "videos" / f"v_{name}_g{g:02d}_c01.avi"
            p.parent.mkdir(exist_ok=True)
            _write_video(p, c, seed=10 * c + g)
            rows.append({"path": str(p.relative_to(root)), "labels": name,
                         "subset": "test" if g == 4 else "train", "group": f"g{g:02d}"})
    manifest = write_manifest(root / "manifest.csv", rows)
    store = str(root / "store")
    res = extract(ExtractConfig(dataset=str(manifest), store_uri=store, frames=N_POSITIONS, stack=STACK,
                                size=SIZE, workers=2, progress=False))
    assert res.ok == 12 and res.failed == 0
    return store


@pytest.mark.slow
@pytest.mark.integration
def test_train_cnn_then_features(tiny_store, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # MLflow artifacts land in tmp_path
    tracking_uri = f"sqlite:///{tmp_path}/mlflow.db"
    store = tiny_store
    clips_version = open_table(store, "clips").version
    n_clips = open_table(store, "clips").count_rows()
    assert n_clips == 12 * N_POSITIONS

    # --- train-cnn: both streams, concurrently, one epoch --------------------------------------
    base = dict(store_uri=store, batch_size=8, feature_dim=48, experiment="t", tracking_uri=tracking_uri,
                checkpoint_path=str(tmp_path / "ckpt"), resume=True)
    res = train_cnn(TrainCNNConfig(stream="both", epochs=1, **base))
    assert set(res.run_ids) == {"spatial", "motion"}
    mlflow.set_tracking_uri(tracking_uri)
    client = mlflow.MlflowClient()
    for stream, model_name, cls in (("spatial", SPATIAL_CNN, SpatialCNN), ("motion", MOTION_CNN, MotionCNN)):
        run = client.get_run(res.run_ids[stream])
        assert run.info.status == "FINISHED"
        assert run.info.experiment_id == mlflow.get_experiment_by_name("t").experiment_id
        assert run.info.run_name.startswith(f"{model_name}-split1-")  # model, split, start time
        assert run.data.tags["hyvid.model"] == model_name and run.data.tags["hyvid.stage"] == "train-cnn"
        assert run.data.params["lineage.clips.version"] == str(clips_version)
        assert int(run.data.params["lineage.videos.version"]) >= 1
        assert run.data.params["num_classes"] == "3"
        for key in ("train_loss", "train_accuracy", "val_accuracy"):
            hist = client.get_metric_history(run.info.run_id, key)
            assert [m.step for m in hist] == [0], key
        assert np.isfinite(run.data.metrics["train_loss"]) and run.data.metrics["train_loss"] > 0
        assert 0.0 <= run.data.metrics["val_accuracy"] <= 1.0
        model = load_fitted(f"runs:/{run.info.run_id}/{model_name}")
        assert isinstance(model, cls) and model.num_classes == 3 and model.feature_dim == 48
        assert res.metrics[stream]["epoch"] == 0

    # The cached spatial head path: the backbone's output on whole frames, cached once, is what
    # the logged model computes on those frames.
    from hyvid.pipelines.data.clips import ClipsDataset
    from hyvid.pipelines.training.cnn_loop import _cache_pooled

    spatial = load_fitted(f"runs:/{res.run_ids['spatial']}/spatial_cnn")
    clip_ids = open_table(store, "clips").to_table(columns=["video_id"]).column("video_id").to_pylist()
    labels = {v: 0 for v in clip_ids[:1]}
    data = ClipsDataset(store, labels, "spatial")
    idx = np.arange(len(data))
    cached = _cache_pooled(spatial, data, idx, 3, torch.device("cpu"))
    x, _ = data.get_batch(idx)
    with torch.no_grad():
        direct = spatial.pooled(spatial_input(x))
    assert cached.shape == (N_POSITIONS, 1280) and torch.allclose(cached, direct, atol=1e-5)
    crops = _cache_pooled(spatial, data, idx, 3, torch.device("cpu"), (24, 24), np.random.default_rng(0))
    assert crops.shape == cached.shape and not torch.allclose(crops, cached, atol=1e-3)

    # --- features -----------------------------------------------------------------------------
    fcfg = FeaturesConfig(store_uri=store, experiment="t", tracking_uri=tracking_uri, videos_per_task=5,
                          batch_size=16, progress=False)
    fr = extract_features(fcfg)
    assert (fr.spatial_run_id, fr.motion_run_id) == (res.run_ids["spatial"], res.run_ids["motion"])
    assert fr.n_videos == 12 and fr.n_features_written == 12 and fr.n_rows_written == n_clips
    assert (fr.spatial_dim, fr.motion_dim) == (48, 48)
    assert sum(fr.node_tasks.values()) == 3  # ceil(12 / 5) tasks, each recorded with its node
    ff = lance.dataset(table_uri(store, "frame_features"))
    t = ff.to_table()
    assert t.num_rows == n_clips
    assert t.schema.field("spatial").type == pa.list_(pa.float32(), 48)
    keys = set(zip(t.column("video_id").to_pylist(), t.column("position").to_pylist(), strict=True))
    clips = open_table(store, "clips").to_table(columns=["video_id", "position", "frame_index"])
    assert keys == set(zip(clips.column("video_id").to_pylist(), clips.column("position").to_pylist(), strict=True))
    assert set(t.column("spatial_run_id").to_pylist()) == {res.run_ids["spatial"]}
    assert set(t.column("motion_run_id").to_pylist()) == {res.run_ids["motion"]}
    sp = np.stack(t.column("spatial").to_numpy(zero_copy_only=False))
    assert sp.shape == (n_clips, 48) and (sp >= 0).all() and sp.max() > 0  # post-ReLU fc1

    # The stored feature is what the logged model computes for that frame.
    fs = FeatureStore(store)
    vid = t.column("video_id")[0].as_py()
    from hyvid.store.clips import decode_frame

    row = fs.clips(vid).slice(0, 1)
    frame = decode_frame(row.column("frame")[0].as_py())
    model = load_fitted(f"runs:/{res.run_ids['spatial']}/spatial_cnn")

    with torch.no_grad():
        expect = model.features(spatial_input(frame[None]))[0].numpy()
    got = np.asarray(fs.frame_features(vid, 0, 1).column("spatial")[0].as_py(), np.float32)
    np.testing.assert_allclose(got, expect, rtol=1e-4, atol=1e-5)

    # --- video_scores: three CNN models for every ok video of the split -------------------------
    for model_name in CNN_MODELS:
        ss = fs.scores(model_name, split=1)
        assert len(ss.video_ids) == 12
        assert ss.scores.shape == (12, 3)
        np.testing.assert_allclose(ss.scores.sum(1), 1.0, rtol=1e-5)
        assert set(ss.subsets) == {"train", "val", "test"}
    two = fs.scores(TWO_STREAM_CNN, 1).scores
    np.testing.assert_allclose(two, (fs.scores(SPATIAL_CNN, 1).scores + fs.scores(MOTION_CNN, 1).scores) / 2,
                               rtol=1e-5, atol=1e-6)

    # --- every CNN run carries the video-level val_*/test_* metrics every model run logs --------
    from hyvid.pipelines.evaluation.metrics import evaluate

    runs = {SPATIAL_CNN: res.run_ids["spatial"], MOTION_CNN: res.run_ids["motion"]}
    two_runs = client.search_runs([run.info.experiment_id], "tags.`hyvid.model` = 'two_stream_cnn'")
    assert len(two_runs) == 1 and two_runs[0].data.tags["hyvid.stage"] == "features"
    assert two_runs[0].data.params["cnn.spatial_cnn.run_id"] == runs[SPATIAL_CNN]
    runs[TWO_STREAM_CNN] = two_runs[0].info.run_id
    for model_name, run_id in runs.items():
        ss = fs.scores(model_name, split=1)
        test = [i for i, sub in enumerate(ss.subsets) if sub == "test"]
        want = evaluate(ss.scores[test], ss.labels[test], [ss.labels_multi[i] for i in test], False)
        logged = client.get_run(run_id).data.metrics
        assert logged["test_accuracy"] == pytest.approx(want["accuracy"]) and logged["test_n_videos"] == len(test)
        assert logged["test_accuracy_ci_low"] <= logged["test_accuracy"] <= logged["test_accuracy_ci_high"]
        assert {"val_accuracy", "val_map", "test_map", "test_mean_class_accuracy", "test_top5"} <= set(logged)
        assert fr.metrics[model_name]["test_accuracy"] == logged["test_accuracy"]
    for stream, run_id in res.run_ids.items():  # params: only what the fit used
        params = client.get_run(run_id).data.params
        assert not {"address", "checkpoint_path", "tracking_uri", "resume"} & set(params), sorted(params)
        assert ("finetune" in params) is (stream == "spatial")

    # --- a re-run adds nothing ------------------------------------------------------------------
    v_ff, v_vs = ff.version, open_table(store, "video_scores").version
    again = extract_features(fcfg)
    assert again.n_rows_written == 0 and again.n_skipped == 12 and again.n_scored == 0
    assert len(client.get_metric_history(runs[TWO_STREAM_CNN], "test_accuracy")) == 1  # nothing logged twice
    assert len(client.search_runs([run.info.experiment_id], "tags.`hyvid.model` = 'two_stream_cnn'")) == 1
    assert open_table(store, "frame_features").version == v_ff
    assert open_table(store, "frame_features").count_rows() == n_clips
    assert open_table(store, "video_scores").version == v_vs

    # --- resume: a second epoch continues from the checkpoint instead of starting over ----------
    more = train_cnn(TrainCNNConfig(stream="motion", epochs=2, **base))
    h1, h2 = res.history["motion"], more.history["motion"]
    assert [m["epoch"] for m in h1] == [0] and [m["epoch"] for m in h2] == [0, 1]
    assert h2[0] == h1[0]  # epoch 0 was not re-run: its metrics come from the checkpoint
    assert [m.step for m in client.get_metric_history(more.run_ids["motion"], "train_loss")] == [0, 1]

    # --- features from the newer motion CNN replace the old rows (still one row per clip) --------
    newer = extract_features(fcfg)
    assert newer.motion_run_id == more.run_ids["motion"] and newer.spatial_run_id == res.run_ids["spatial"]
    assert newer.n_rows_written == n_clips and newer.n_scored == 12
    t = open_table(store, "frame_features").to_table(columns=["video_id", "motion_run_id"])
    assert t.num_rows == n_clips and set(t.column("motion_run_id").to_pylist()) == {more.run_ids["motion"]}
    assert fs.scores(MOTION_CNN, 1).run_id == more.run_ids["motion"]
    # Logged one step after the fit's last epoch: the run shows the video-level val metric, not epoch 1's
    # clip-level one, and no step holds two values.
    shown = client.get_run(more.run_ids["motion"]).data.metrics
    assert shown["val_accuracy"] == newer.metrics[MOTION_CNN]["val_accuracy"]
    assert [m.step for m in client.get_metric_history(more.run_ids["motion"], "test_accuracy")] == [2]
    assert [m.step for m in client.get_metric_history(more.run_ids["motion"], "val_accuracy")] == [0, 1, 2]


def test_commit_features_replaces_rows_of_other_runs(tmp_path):
    """Features from another CNN pair are swapped for the new ones in one atomic commit; another split's
    rows of the same video are left alone."""
    from hyvid.store.lance_io import append_rows, write_table_fragments

    store = str(tmp_path)
    schema = frame_features_schema(2, 2)

    def rows(vid: str, run: str, n: int, split: int = 1) -> pa.Table:
        return pa.table({
            "video_id": [vid] * n, "position": list(range(n)), "split": [split] * n, "fold": [-1] * n,
            "frame_index": list(range(n)), "timestamp": [0.0] * n,
            "spatial": pa.FixedSizeListArray.from_arrays(pa.array([1.0] * 2 * n, pa.float32()), 2),
            "motion": pa.FixedSizeListArray.from_arrays(pa.array([1.0] * 2 * n, pa.float32()), 2),
            "spatial_run_id": [run] * n, "motion_run_id": [run] * n,
        }, schema=schema)

    append_rows(store, "frame_features", pa.concat_tables([rows("a", "old", 3), rows("b", "old", 3),
                                                           rows("a", "split2", 3, split=2)]))
    v0 = open_table(store, "frame_features").version
    frags = write_table_fragments(store, "frame_features", rows("a", "new", 3))
    v1 = _commit_features(store, frags, ["a"], 1, schema, None)
    assert v1 == v0 + 1
    t = open_table(store, "frame_features").to_table()
    got = sorted(zip(t.column("video_id").to_pylist(), t.column("split").to_pylist(),
                     t.column("spatial_run_id").to_pylist(), strict=True))
    assert got == [("a", 1, "new")] * 3 + [("a", 2, "split2")] * 3 + [("b", 1, "old")] * 3
    # The previous version is intact (readers of v0 never saw a half-replaced video).
    assert open_table(store, "frame_features", version=v0).count_rows() == 9


def test_multilabel_val_map_and_sigmoid_scores():
    """The multi-label pieces of train-cnn: multi-hot clip targets, per-video val mAP, sigmoid scores."""
    from sklearn.metrics import average_precision_score

    from hyvid.models.cnn import build_stream_cnn
    from hyvid.pipelines.training.cnn_loop import _multi_hot, _video_map

    ids = np.asarray(["a", "a", "b", "c", "c"], dtype=object)  # clip rows of three videos
    targets = {"a": [0, 2], "b": [], "c": [1]}  # "b" has no positive label: all zeros
    y = _multi_hot(ids, targets, 3)
    np.testing.assert_array_equal(y, [[1, 0, 1], [1, 0, 1], [0, 0, 0], [0, 1, 0], [0, 1, 0]])
    probs = np.array([[0.9, 0.1, 0.2], [0.7, 0.3, 0.6], [0.2, 0.4, 0.1], [0.1, 0.8, 0.3], [0.3, 0.6, 0.5]])
    order = [np.array([0, 1]), np.array([2]), np.array([3, 4])]
    out = _video_map(probs, order, y[[0, 2, 3]], rank=0, world=1, n_videos=3, device=torch.device("cpu"))
    video = np.stack([probs[r].mean(0) for r in order])
    truth = y[[0, 2, 3]]
    expected = np.mean([average_precision_score(truth[:, c], video[:, c]) for c in range(3)])
    assert out["val_map"] == pytest.approx(expected)
    assert out["val_accuracy"] == pytest.approx(1.0)  # both labelled videos rank a true class first

    logits = torch.tensor([[2.0, -1.0, 0.5]])
    for multilabel, want in ((True, torch.sigmoid(logits)), (False, logits.softmax(1))):
        model = build_stream_cnn("motion", 3, STACK, feature_dim=8, multilabel=multilabel)
        assert model.multilabel is multilabel
        torch.testing.assert_close(model.scores(logits), want)


def test_training_crop_setting():
    """The 112-px crop by default, whole frames with 0, and one line naming the value otherwise."""
    from hyvid.pipelines.train_cnn import DEFAULT_CROP, WHOLE_FRAME, TrainCNNConfig

    assert TrainCNNConfig(store_uri="s").crop == DEFAULT_CROP == 112
    assert TrainCNNConfig(store_uri="s", crop=WHOLE_FRAME).crop == 0
    with pytest.raises(ValueError, match="crop must be 0 .* got -1"):
        TrainCNNConfig(store_uri="s", crop=-1)
