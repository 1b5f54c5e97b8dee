"""`video_scores`: atomic, idempotent upserts keyed on (video_id, model, split), read back by FeatureStore."""
from __future__ import annotations

import numpy as np
import pytest

from hyvid.store.feature_store import FeatureStore
from hyvid.store.lance_io import open_table
from hyvid.store.scores import upsert_video_scores
from hyvid.store.tables import VIDEO_SCORES

IDS = ["A/v1", "A/v2", "B/it's_v3", "B/v4"]
SUBSETS = ["train", "train", "val", "test"]
LABELS = [0, 0, 1, 1]


def _scores(seed: int, n: int = 4, c: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).random((n, c)).astype(np.float32)


def test_upsert_creates_then_replaces_without_duplicates(tmp_path):
    uri = str(tmp_path / "store")
    first = _scores(0)
    v1 = upsert_video_scores(uri, "spatial_cnn", 1, "run1", IDS, SUBSETS, first, LABELS)
    v_other = upsert_video_scores(uri, "motion_cnn", 1, "run9", IDS, SUBSETS, _scores(9), LABELS)
    assert v_other > v1
    fs = FeatureStore(uri)
    got = fs.scores("spatial_cnn", 1)
    assert got.video_ids == sorted(IDS) and got.run_id == "run1"
    order = [IDS.index(v) for v in got.video_ids]
    np.testing.assert_array_equal(got.scores, first[order])
    assert got.labels.tolist() == [LABELS[i] for i in order]
    assert got.labels_multi == [[LABELS[i]] for i in order]
    assert got.subsets == [SUBSETS[i] for i in order]

    # Re-fit: same key -> replaced; one more video -> inserted; other model untouched.
    refit = _scores(1, n=5)
    ids5 = [*IDS, "C/v5"]
    v2 = upsert_video_scores(uri, "spatial_cnn", 1, "run2", ids5, [*SUBSETS, "test"], refit, [*LABELS, 2],
                             labels_multi=[[0], [0], [1], [1], [2, 0]])
    assert v2 == v_other + 1, "an upsert is one commit"
    table = open_table(uri, VIDEO_SCORES.name).to_table()
    keys = list(zip(table["video_id"].to_pylist(), table["model"].to_pylist(), table["split"].to_pylist(), strict=True))
    assert len(keys) == len(set(keys)) == 5 + 4
    got = fs.scores("spatial_cnn", 1)
    assert got.video_ids == sorted(ids5) and got.run_id == "run2"
    np.testing.assert_array_equal(got.scores, refit[[ids5.index(v) for v in got.video_ids]])
    assert got.labels_multi[got.video_ids.index("C/v5")] == [2, 0]
    np.testing.assert_array_equal(fs.scores("motion_cnn", 1).scores, _scores(9)[[IDS.index(v) for v in sorted(IDS)]])

    # Idempotent: the same upsert again changes no row.
    upsert_video_scores(uri, "spatial_cnn", 1, "run2", ids5, [*SUBSETS, "test"], refit, [*LABELS, 2],
                        labels_multi=[[0], [0], [1], [1], [2, 0]])
    assert open_table(uri, VIDEO_SCORES.name).count_rows() == 9

    test_only = fs.scores("spatial_cnn", 1, subset="test")
    assert test_only.video_ids == ["B/v4", "C/v5"]
    # Another split is a separate key space.
    upsert_video_scores(uri, "spatial_cnn", 2, "run3", IDS[:2], ["test", "test"], _scores(3, n=2), LABELS[:2])
    assert fs.scores("spatial_cnn", 2).video_ids == IDS[:2]
    assert len(fs.scores("spatial_cnn", 1).video_ids) == 5


def test_upsert_validates(tmp_path):
    uri = str(tmp_path / "store")
    with pytest.raises(ValueError, match="unknown model"):
        upsert_video_scores(uri, "resnet", 1, "r", IDS, SUBSETS, _scores(0), LABELS)
    with pytest.raises(ValueError, match="shape"):
        upsert_video_scores(uri, "spatial_cnn", 1, "r", IDS, SUBSETS, _scores(0)[:3], LABELS)
    with pytest.raises(ValueError, match="subset"):
        upsert_video_scores(uri, "spatial_cnn", 1, "r", IDS, ["train", "dev", "val", "test"], _scores(0), LABELS)
    with pytest.raises(ValueError, match="duplicate"):
        upsert_video_scores(uri, "spatial_cnn", 1, "r", ["a", "a", "b", "c"], SUBSETS, _scores(0), LABELS)
    bad = _scores(0)
    bad[1, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        upsert_video_scores(uri, "spatial_cnn", 1, "r", IDS, SUBSETS, bad, LABELS)
    fs = FeatureStore(uri)
    with pytest.raises(FileNotFoundError, match="video_scores"):
        fs.scores("spatial_cnn", 1)
    upsert_video_scores(uri, "spatial_cnn", 1, "r", IDS, SUBSETS, _scores(0), LABELS)
    with pytest.raises(FileNotFoundError, match="hybrid"):
        fs.scores("hybrid", 1)
    with pytest.raises(ValueError, match="unknown model"):
        fs.scores("x' OR '1'='1", 1)


def test_a_table_without_the_fold_column_gains_it(tmp_path):
    """A store written before video_scores had `fold`: the first upsert adds it, old rows keep null."""
    import lance
    import pyarrow as pa

    from hyvid.store.lance_io import table_uri

    uri = str(tmp_path / "store")
    old_schema = pa.schema([f for f in VIDEO_SCORES.schema if f.name != "fold"])
    old = pa.table({"video_id": ["A/v1"], "model": ["fusion"], "split": pa.array([1], pa.int32()),
                    "subset": ["test"], "run_id": ["r0"], "scores": pa.array([[0.1, 0.9]], pa.list_(pa.float32())),
                    "label": pa.array([1], pa.int32()), "labels": pa.array([[1]], pa.list_(pa.int32()))},
                   schema=old_schema)
    lance.write_dataset(old, table_uri(uri, VIDEO_SCORES.name))
    upsert_video_scores(uri, "spatial_cnn", 1, "run1", IDS, SUBSETS, _scores(0, c=2), LABELS, folds=[0, 1, 0, 2])
    t = open_table(uri, VIDEO_SCORES.name).to_table()
    keys = zip(t.column("video_id").to_pylist(), t.column("model").to_pylist(), strict=True)
    got = dict(zip(keys, t.column("fold").to_pylist(), strict=True))
    assert got[("A/v1", "fusion")] is None and got[("A/v2", "spatial_cnn")] == 1 and got[("B/v4", "spatial_cnn")] == 2
