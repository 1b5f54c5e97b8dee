"""The query API over real Lance tables written in tmp_path (no extraction or CNN stage needed)."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import torch

from hyvid.store.feature_store import FeatureStore, SequenceDataset, collate_sequences
from hyvid.store.indexes import ensure_scalar_index, ensure_vector_index, ivf_pq_params
from hyvid.store.lance_io import append_rows, open_table
from hyvid.store.tables import CLASSES, CLIPS, FRAME_FEATURES_NAME, VIDEOS, frame_features_schema

DS, DM = 8, 6
CLASS_NAMES = ["Archery", "Bowling", "Jo's \"Quote\" Class"]
INJECTION = "x' OR '1'='1"
QUOTED_ID = "Bowling/v_it's_g03_c01"


def _video(vid, cls, labels, group, splits, status="ok", n_positions=4):
    return {
        "video_id": vid, "path": f"/data/{vid}.avi", "class_name": cls, "label": labels[0],
        "labels": labels, "group": group, "splits": splits, "n_frames": 100, "fps": 25.0,
        "width": 64, "height": 48, "n_positions": n_positions, "clamped": False, "status": status,
        "error": None if status == "ok" else "cannot decode", "extract_config": "h",
        "flow_bound": 20.0, "node_id": "n0",
    }


def make_videos():
    """24 videos: 3 classes x groups g01..g08; split 1: g01-g05 train, g06-g08 test."""
    rows = []
    for g in range(1, 9):
        for c, cls in enumerate(CLASS_NAMES):
            sub1 = "train" if g <= 5 else "test"
            sub2 = "test" if g <= 2 else "train"
            vid = f"{cls}/v_{c}_g{g:02d}_c01"
            if c == 1 and g == 3:
                vid = QUOTED_ID
            rows.append(_video(vid, cls, [c], f"g{g:02d}",
                               [{"split": 1, "subset": sub1}, {"split": 2, "subset": sub2}],
                               n_positions=3 + (g % 3)))
    # A multi-label video, a failed one, and a video outside split 2.
    rows.append(_video("multi/v_ml_g04_c02", "Archery|Bowling", [0, 1], "g04",
                       [{"split": 1, "subset": "train"}], n_positions=5))
    rows.append(_video("bad/v_bad_g01_c09", "Archery", [0], "g01",
                       [{"split": 1, "subset": "train"}], status="failed", n_positions=0))
    return pa.Table.from_pylist(rows, schema=VIDEOS.schema)


def make_features(videos: pa.Table, rng, shuffle=True):
    rows = []
    for v in videos.to_pylist():
        if v["status"] != "ok":
            continue
        for p in range(v["n_positions"]):
            rows.append({"video_id": v["video_id"], "position": p, "split": 1, "fold": -1, "frame_index": 10 * p + 1,
                         "timestamp": (10 * p + 1) / 25.0,
                         "spatial": rng.standard_normal(DS).astype(np.float32).tolist(),
                         "motion": rng.standard_normal(DM).astype(np.float32).tolist(),
                         "spatial_run_id": "rs", "motion_run_id": "rm"})
    if shuffle:  # stored order must not matter: the API orders by position
        rows = [rows[i] for i in rng.permutation(len(rows))]
    return pa.Table.from_pylist(rows, schema=frame_features_schema(DS, DM))


@pytest.fixture
def store(tmp_path):
    rng = np.random.default_rng(0)
    uri = str(tmp_path / "store")
    videos = make_videos()
    append_rows(uri, VIDEOS.name, videos)
    append_rows(uri, CLASSES.name, pa.table(
        {"label": pa.array([2, 0, 1], pa.int32()), "class_name": [CLASS_NAMES[2], CLASS_NAMES[0], CLASS_NAMES[1]]},
        schema=CLASSES.schema))
    feats = make_features(videos, rng)
    clips = [{"video_id": r["video_id"], "position": r["position"], "frame_index": r["frame_index"],
              "timestamp": r["timestamp"], "frame": b"jpg", "flow_stack": b"\x80" * 4, "height": 2,
              "width": 1, "stack": 1}
             for r in feats.select(["video_id", "position", "frame_index", "timestamp"]).to_pylist()]
    append_rows(uri, CLIPS.name, pa.Table.from_pylist(clips, schema=CLIPS.schema))
    # Two commits, so lookups span fragments.
    half = feats.num_rows // 2
    append_rows(uri, FRAME_FEATURES_NAME, feats.slice(0, half))
    append_rows(uri, FRAME_FEATURES_NAME, feats.slice(half))
    return uri, videos, feats


def _as_video(t: pa.Table, vid: str) -> pa.Table:
    """The same rows under another video id (keeping the schema's non-null video_id field)."""
    return t.set_column(0, t.schema.field(0), pa.array([vid] * t.num_rows, pa.string()))


def _expected(feats: pa.Table, vid: str) -> pa.Table:
    return feats.filter(pc.equal(feats["video_id"], vid)).sort_by("position")


def test_videos_filters(store):
    uri, videos, _ = store
    fs = FeatureStore(uri)
    assert fs.class_names() == CLASS_NAMES
    assert fs.is_multilabel()
    assert fs.videos().num_rows == videos.num_rows - 1  # the failed one is left out
    assert fs.videos(status=None).num_rows == videos.num_rows

    s1 = fs.videos(split=1)
    assert set(s1.column("subset").to_pylist()) == {"train", "val", "test"}
    groups = {sub: set(s1.filter(pc.equal(s1["subset"], sub))["group"].to_pylist()) for sub in ("train", "val", "test")}
    assert not groups["train"] & groups["val"], "val must be carved by group"
    assert groups["train"] | groups["val"] == {f"g0{g}" for g in range(1, 6)}
    assert groups["test"] == {"g06", "g07", "g08"}
    trainval = fs.videos(split=1, subset="trainval")
    assert trainval.num_rows == fs.videos(split=1, subset="train").num_rows + fs.videos(split=1, subset="val").num_rows
    # Split 2 does not contain the multi-label video (it lists only split 1).
    assert "multi/v_ml_g04_c02" not in fs.videos(split=2).column("video_id").to_pylist()

    bowling = fs.videos(class_name="Bowling").column("video_id").to_pylist()
    assert "multi/v_ml_g04_c02" in bowling and QUOTED_ID in bowling and len(bowling) == 9
    archery = fs.videos(class_name="Archery").column("video_id").to_pylist()
    assert "multi/v_ml_g04_c02" in archery and len(archery) == 9
    quoted = fs.videos(class_name=CLASS_NAMES[2])
    assert quoted.num_rows == 8 and set(quoted["class_name"].to_pylist()) == {CLASS_NAMES[2]}
    test_bowl = fs.videos(split=1, subset="test", class_name="Bowling")
    assert test_bowl.num_rows == 3 and set(test_bowl["subset"].to_pylist()) == {"test"}

    with pytest.raises(ValueError, match="needs a split"):
        fs.videos(subset="train")
    with pytest.raises(ValueError, match="unknown subset"):
        fs.videos(split=1, subset="holdout")


def test_frame_features_ordering_and_slicing(store):
    uri, _, feats = store
    fs = FeatureStore(uri)
    for indexed in (False, True):
        if indexed:
            assert ensure_scalar_index(uri, FRAME_FEATURES_NAME) == "created"
            assert ensure_scalar_index(uri, FRAME_FEATURES_NAME) == "up_to_date"
        vid = "Archery/v_0_g05_c01"
        exp = _expected(feats, vid)
        got = fs.frame_features(vid)
        assert got.column("position").to_pylist() == list(range(exp.num_rows))
        assert got.column("spatial").to_pylist() == exp.column("spatial").to_pylist()
        assert got.column("frame_index").to_pylist() == exp.column("frame_index").to_pylist()
        part = fs.frame_features(vid, start=1, stop=3)
        assert part.column("position").to_pylist() == [1, 2]
        assert part.column("motion").to_pylist() == exp.column("motion").to_pylist()[1:3]
        assert fs.frame_features(vid, start=2).column("position").to_pylist() == list(range(2, exp.num_rows))
        assert fs.frame_features("no/such_video").num_rows == 0
    clips = fs.clips(QUOTED_ID, columns=["frame_index"])
    assert clips.column("frame_index").to_pylist() == _expected(feats, QUOTED_ID).column("frame_index").to_pylist()
    assert set(clips.column_names) == {"frame_index", "position"}
    with pytest.raises(ValueError, match="slice"):
        fs.frame_features("Archery/v_0_g05_c01", start=3, stop=1)
    # Bounds outside the int32 position column, floats and bools: one clear ValueError, never Arrow's.
    for bad, match in (({"stop": 2**31}, "stop=2147483648 is out of range"),
                       ({"start": 10**18}, "start=.* is out of range"), ({"start": -1}, "out of range"),
                       ({"start": 1.5}, "start must be an integer"), ({"start": True}, "start must be an integer"),
                       ({"split": "1"}, "split must be an integer")):
        with pytest.raises(ValueError, match=match):
            fs.frame_features("Archery/v_0_g05_c01", **bad)
    assert fs.frame_features("Archery/v_0_g05_c01", start=np.int64(1), stop=2**31 - 1).num_rows > 0


def test_sequences_and_collate(store):
    uri, videos, feats = store
    fs = FeatureStore(uri)
    ds = fs.sequences(1, "train")
    assert isinstance(ds, SequenceDataset)
    train_ids = fs.videos(split=1, subset="train").column("video_id").to_pylist()
    assert ds.video_ids == train_ids
    assert ds.dims() == {"spatial": DS, "motion": DM}
    by_id = {v["video_id"]: v for v in videos.to_pylist()}
    for i in range(len(ds)):
        x, label, labels, vid = ds[i]
        exp = _expected(feats, vid)
        assert x["spatial"].shape == (by_id[vid]["n_positions"], DS) and x["spatial"].dtype == torch.float32
        np.testing.assert_array_equal(x["motion"].numpy(), np.asarray(exp.column("motion").to_pylist(), np.float32))
        assert label == by_id[vid]["label"] and labels == by_id[vid]["labels"]

    loader = torch.utils.data.DataLoader(ds, batch_size=5, collate_fn=collate_sequences)
    x, lengths, labels, labels_multi, vids = next(iter(loader))
    assert x["spatial"].shape == (5, int(lengths.max()), DS) and x["motion"].shape[2] == DM
    assert lengths.tolist() == [by_id[v]["n_positions"] for v in vids]
    assert len(set(lengths.tolist())) > 1, "fixture should give unequal lengths"
    for b, n in enumerate(lengths.tolist()):
        assert torch.equal(x["spatial"][b, :n], ds[b][0]["spatial"])
        assert torch.count_nonzero(x["spatial"][b, n:]) == 0
    assert labels.tolist() == [by_id[v]["label"] for v in vids]
    assert labels_multi == [by_id[v]["labels"] for v in vids]

    only_motion = fs.sequences(1, "test", streams=("motion",))
    assert set(only_motion[0][0]) == {"motion"}
    with pytest.raises(ValueError, match="unknown stream"):
        fs.sequences(1, "test", streams=("audio",))


def test_video_features_is_the_mean(store):
    uri, _, feats = store
    fs = FeatureStore(uri)
    vf = fs.video_features(1, "test")
    assert vf.video_ids == fs.videos(split=1, subset="test").column("video_id").to_pylist()
    assert vf.features["spatial"].shape == (len(vf.video_ids), DS)
    assert vf.features["motion"].dtype == np.float32
    for i, vid in enumerate(vf.video_ids):
        exp = _expected(feats, vid)
        for stream in ("spatial", "motion"):
            np.testing.assert_allclose(vf.features[stream][i], np.mean(exp.column(stream).to_pylist(), axis=0),
                                       rtol=1e-5, atol=1e-6)
    multi = fs.video_features(1, "trainval")
    i = multi.video_ids.index("multi/v_ml_g04_c02")
    assert multi.labels_multi[i] == [0, 1] and multi.labels[i] == 0


def test_similar_with_and_without_index(store):
    uri, videos, feats = store
    # PQ needs >= 256 rows to train its codebooks: add a filler video of 300 frames.
    filler = make_features(videos.slice(0, 1), np.random.default_rng(3), shuffle=False)
    filler = _as_video(pa.concat_tables([filler] * 75), "filler")
    append_rows(uri, FRAME_FEATURES_NAME, filler)
    feats = pa.concat_tables([feats, filler])
    fs = FeatureStore(uri)
    rng = np.random.default_rng(1)
    picks = rng.choice(feats.num_rows - filler.num_rows, 5, replace=False)
    for use_index in (False, True):
        if use_index:
            assert ensure_vector_index(uri, column="spatial", min_rows=10**9) == "skipped"
            assert ensure_vector_index(uri, column="spatial", min_rows=256) == "created"
            assert fs.has_vector_index("spatial") and not fs.has_vector_index("motion")
        for r in picks:
            row = feats.slice(int(r), 1).to_pylist()[0]
            hits = fs.similar(row["spatial"], k=4)
            assert hits.column_names == ["video_id", "position", "frame_index", "_distance"]
            assert hits.num_rows == 4
            assert (hits["video_id"][0].as_py(), hits["position"][0].as_py()) == (row["video_id"], row["position"])
            assert hits["_distance"][0].as_py() == pytest.approx(0.0, abs=1e-5)
            assert hits["_distance"].to_pylist() == sorted(hits["_distance"].to_pylist())
    with pytest.raises(ValueError, match="dim"):
        fs.similar([0.0] * (DS + 1))
    assert ivf_pq_params(333_000, 1024) == (577, 64)


def test_versions_change_after_append_and_index_catches_up(store):
    uri, videos, feats = store
    fs = FeatureStore(uri)
    before = fs.versions()
    assert set(before) == {"videos", "classes", "clips", "frame_features"}
    ensure_scalar_index(uri, FRAME_FEATURES_NAME)
    extra = make_features(videos.slice(0, 1), np.random.default_rng(5), shuffle=False)
    extra = _as_video(extra, "new/v_new_g09_c01")
    append_rows(uri, FRAME_FEATURES_NAME, extra)
    after = fs.versions()
    assert after["frame_features"] > before["frame_features"]
    assert after["videos"] == before["videos"]
    # The cached handle follows the new commit, and the index folds the fragment in.
    assert fs.frame_features("new/v_new_g09_c01").num_rows == extra.num_rows
    assert ensure_scalar_index(uri, FRAME_FEATURES_NAME) == "optimized"
    assert ensure_scalar_index(uri, FRAME_FEATURES_NAME) == "up_to_date"
    assert fs.frame_features("new/v_new_g09_c01").num_rows == extra.num_rows

    pinned = FeatureStore(uri, follow_latest=False)
    v = pinned.versions()["frame_features"]
    append_rows(uri, FRAME_FEATURES_NAME, extra.slice(0, 1))
    assert pinned.versions()["frame_features"] == v
    pinned.refresh()
    assert pinned.versions()["frame_features"] == v + 1


def test_injection_strings_never_leak(store):
    uri, videos, feats = store
    fs = FeatureStore(uri)
    ensure_scalar_index(uri, FRAME_FEATURES_NAME)
    n_total = open_table(uri, FRAME_FEATURES_NAME).count_rows()
    for evil in (INJECTION, "' OR 1=1 --", "x\" OR \"1\"=\"1", "%", "a' ; DROP TABLE videos; --"):
        assert fs.frame_features(evil).num_rows == 0
        assert fs.clips(evil).num_rows == 0
        with pytest.raises(ValueError, match="unknown class"):
            fs.videos(class_name=evil)
    # A video id containing quotes that does exist is found, with exactly its rows.
    got = fs.frame_features(QUOTED_ID)
    exp = _expected(feats, QUOTED_ID)
    assert got.num_rows == exp.num_rows > 0 and set(got["video_id"].to_pylist()) == {QUOTED_ID}
    # An injection-looking id that exists is matched literally, and only it.
    evil_rows = make_features(videos.slice(0, 1), np.random.default_rng(2), shuffle=False)
    evil_rows = _as_video(evil_rows, INJECTION)
    append_rows(uri, FRAME_FEATURES_NAME, evil_rows)
    got = fs.frame_features(INJECTION)
    assert got.num_rows == evil_rows.num_rows < n_total
    assert set(got["video_id"].to_pylist()) == {INJECTION}
    assert fs.frame_features("x").num_rows == 0


def test_missing_tables_name_their_stage(tmp_path):
    fs = FeatureStore(str(tmp_path / "empty"))
    assert fs.versions() == {}
    with pytest.raises(FileNotFoundError, match="frame_features.*hyvid features"):
        fs.frame_features("a")
    with pytest.raises(FileNotFoundError, match="videos.*hyvid extract"):
        fs.videos()
    with pytest.raises(FileNotFoundError, match="video_scores"):
        fs.scores("spatial_cnn", 1)
    with pytest.raises(FileNotFoundError, match="clips"):
        fs.clips("a")


def test_cli_query_json_and_similar(store, capsys, tmp_path):
    from hyvid.pipelines.cli import main

    uri, _, feats = store
    exp = _expected(feats, QUOTED_ID)
    assert main(["query", "--store", uri, "--video", QUOTED_ID, "--frames", "1:3", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["position"] for r in rows] == [1, 2]
    assert {r["video_id"] for r in rows} == {QUOTED_ID}
    np.testing.assert_allclose([r["spatial"] for r in rows], exp.column("spatial").to_pylist()[1:3], rtol=1e-6)

    assert main(["query", "--store", uri, "--video", QUOTED_ID]) == 0
    out = capsys.readouterr().out
    assert "frame_index" in out and f"spatial[{DS}]" in out and out.count("\n") >= exp.num_rows + 1

    assert main(["similar", "--store", uri, "--video", QUOTED_ID, "--frame", "2", "-k", "3", "--format", "json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert len(hits) == 3 and (hits[0]["video_id"], hits[0]["position"]) == (QUOTED_ID, 2)
    assert main(["query", "--store", uri, "--video", "no/such"]) == 2

    out_file = tmp_path / "q.parquet"
    assert main(["query", "--store", uri, "--video", QUOTED_ID, "--format", "parquet", "--out", str(out_file)]) == 0
    import pyarrow.parquet as pq
    back = pq.read_table(out_file)
    assert back.num_rows == exp.num_rows and back.column("spatial").to_pylist() == exp.column("spatial").to_pylist()


@pytest.mark.parametrize("vector_fill, k, message", [
    (np.nan, 3, "1 NaN or infinite"),  # Lance would answer with no rows, read as "nothing similar"
    (np.inf, 3, "1 NaN or infinite"),
    (0.0, 2.5, "k must be an integer >= 1, got 2.5"),
    (0.0, True, "k must be an integer >= 1, got True"),
    (0.0, 0, "got 0"),
])
def test_similar_refuses_non_finite_vectors_and_non_integer_k(store, vector_fill, k, message):
    uri, _, feats = store
    q = np.asarray(feats.column("spatial")[0].as_py(), dtype=np.float32)
    q[1] = vector_fill if not np.isfinite(vector_fill) else q[1]
    with pytest.raises(ValueError, match=message):
        FeatureStore(uri).similar(q, k=k)
    assert FeatureStore(uri).similar(feats.column("spatial")[0].as_py(), k=np.int64(2)).num_rows == 2


def test_training_inputs_are_the_rows_their_split_s_cnns_made(store):
    """Rows another split's CNNs made (or another pair of CNNs) never reach a split's training inputs."""
    uri, videos, feats = store
    fs = FeatureStore(uri)
    before = fs.video_features(1, "train")
    seq_before = fs.sequences(1, "train")
    assert fs.cnn_runs(1) == [("rs", "rm")]
    # Split 2's CNNs describe the same videos differently: rows of their own, keyed by split.
    other = feats.set_column(feats.schema.get_field_index("split"), "split", pa.array([2] * feats.num_rows, pa.int32()))
    nines = pa.array(np.full(feats.num_rows * DS, 9.0, np.float32))
    other = other.set_column(other.schema.get_field_index("spatial"), other.schema.field("spatial"),
                             pa.FixedSizeListArray.from_arrays(nines, DS))
    other = other.set_column(other.schema.get_field_index("spatial_run_id"), "spatial_run_id",
                             pa.array(["rs2"] * feats.num_rows))
    append_rows(uri, FRAME_FEATURES_NAME, other)
    after = FeatureStore(uri).video_features(1, "train")
    assert after.video_ids == before.video_ids
    np.testing.assert_array_equal(after.features["spatial"], before.features["spatial"])
    seq_after = FeatureStore(uri).sequences(1, "train")
    for a, b in zip(seq_before.features["spatial"], seq_after.features["spatial"], strict=True):
        np.testing.assert_array_equal(a, b)
    assert FeatureStore(uri).cnn_runs(2) == [("rs2", "rm")]
    # Selecting CNN runs the split does not hold is refused, naming what it holds.
    with pytest.raises(FileNotFoundError, match="rs2"):
        FeatureStore(uri).video_features(1, "train", cnn_runs=[("rs2", "rm")])
    # One video's rows: each split's, or one split's.
    vid = before.video_ids[0]
    assert set(FeatureStore(uri).frame_features(vid).column("split").to_pylist()) == {1, 2}
    assert set(FeatureStore(uri).frame_features(vid, split=2).column("split").to_pylist()) == {2}


def test_features_of_two_cnn_pairs_in_one_split_are_refused(store):
    uri, videos, feats = store
    one = feats.slice(0, 1)
    one = one.set_column(one.schema.get_field_index("spatial_run_id"), "spatial_run_id", pa.array(["rs_new"]))
    append_rows(uri, FRAME_FEATURES_NAME, one)
    with pytest.raises(ValueError, match="mixes CNN pairs"):
        FeatureStore(uri).video_features(1, "train")


def test_old_layout_frame_features_asks_for_a_rebuild(tmp_path):
    uri = str(tmp_path / "store")
    videos = make_videos()
    append_rows(uri, VIDEOS.name, videos)
    old = pa.schema([f for f in frame_features_schema(DS, DM) if f.name not in ("split", "fold")])
    append_rows(uri, FRAME_FEATURES_NAME, make_features(videos, np.random.default_rng(0)).select(old.names))
    with pytest.raises(ValueError, match=r"old layout .* re-run `hyvid features"):
        FeatureStore(uri).sequences(1, "train")
