"""Extraction end to end: real Ray tasks, real Lance tables on disk, real encoded videos."""
from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import lance
import numpy as np
import pyarrow.compute as pc
import pytest
from helpers.videos import write_bad_files, write_ucf

from hyvid.pipelines import faults
from hyvid.pipelines.cli import main as cli_main
from hyvid.pipelines.data.video import dequantize_flow
from hyvid.pipelines.extract import ExtractConfig, extract, ok_video_ids
from hyvid.store.clips import decode_flow_stack, decode_frame
from hyvid.store.lance_io import open_table
from hyvid.store.tables import CLASSES, CLIPS, STATUS_FAILED, STATUS_OK, VIDEOS

P, L, SIZE = 4, 3, 32  # small settings keep each run well under a second of work
CLASSES_ON_DISK = {"Jump": "Jump", "HandstandPushups": "HandStandPushups"}
N_GOOD = 2 * 2 * 2  # classes x groups x clips
BAD_REASONS = {
    "v_Jump_g09_c01": "empty",
    "v_Jump_g09_c02": "cannot be opened as a video",
    "v_Jump_g09_c03": "truncated",
    "v_Jump_g09_c04": "only 1 frame",
}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ucf")
    return write_ucf(root, CLASSES_ON_DISK, groups=(1, 2), clips=(1, 2), n_frames=12, bad=True)


def _cfg(dataset, store, **kw) -> ExtractConfig:
    base = dict(frames=P, stack=L, size=SIZE, workers=2, progress=False)
    base.update(kw)
    return ExtractConfig(dataset=str(dataset), store_uri=str(store), **base)


def _videos(store) -> list[dict]:
    return open_table(str(store), VIDEOS.name).to_table().to_pylist()


def _clip_counts(store) -> Counter:
    return Counter(open_table(str(store), CLIPS.name).to_table(columns=["video_id"])["video_id"].to_pylist())


def _assert_each_video_once(store, n_total: int, n_ok: int) -> None:
    ids = [r["video_id"] for r in _videos(store)]
    assert len(ids) == len(set(ids)) == n_total
    counts = _clip_counts(store)
    assert len(counts) == n_ok and set(counts.values()) == {P}


@pytest.fixture(scope="module")
def extracted(dataset, tmp_path_factory, ray_session):
    store = tmp_path_factory.mktemp("store") / "s"
    return store, extract(_cfg(dataset, store))


def test_extracts_good_videos_and_records_each_bad_kind(extracted):
    store, r = extracted
    assert (r.total, r.ok, r.failed, r.skipped) == (N_GOOD + 4, N_GOOD, 4, 0)
    assert r.exit_code == 0 and r.clips == N_GOOD * P and r.frames > 0
    failed = {Path(r_["path"]).stem: r_ for r_ in _videos(store) if r_["status"] == STATUS_FAILED}
    assert set(failed) == set(BAD_REASONS)
    for stem, reason in BAD_REASONS.items():
        assert reason in failed[stem]["error"], failed[stem]["error"]
    assert {vid for vid, _ in r.failures} == {f"Jump/{s}" for s in BAD_REASONS}
    _assert_each_video_once(store, N_GOOD + 4, N_GOOD)
    # the work ran on Ray nodes, and each ok video says where
    assert sum(r.node_spread.values()) == N_GOOD
    assert all(v["node_id"] for v in _videos(store) if v["status"] == STATUS_OK)


def test_tables_follow_their_schemas(extracted):
    store, r = extracted
    videos = open_table(str(store), VIDEOS.name)
    clips = open_table(str(store), CLIPS.name)
    for ds, table in ((videos, VIDEOS), (clips, CLIPS), (open_table(str(store), CLASSES.name), CLASSES)):
        assert [(f.name, f.type) for f in ds.schema] == [(f.name, f.type) for f in table.schema]
    assert clips.schema.metadata[b"frame_encoding"] == b"jpeg"
    classes = open_table(str(store), CLASSES.name).to_table().to_pylist()
    assert classes == [{"label": 0, "class_name": "Jump"}, {"label": 1, "class_name": "HandstandPushups"}]

    row = next(v for v in videos.to_table().to_pylist()
               if v["video_id"] == "HandstandPushups/v_HandStandPushups_g01_c01")
    assert row["label"] == 1 and row["labels"] == [1] and row["group"] == "g01" and row["status"] == STATUS_OK
    assert {(s["split"], s["subset"]) for s in row["splits"]} == {(1, "test"), (2, "train"), (3, "test")}
    assert row["n_frames"] == 12 + 1 + 1 and (row["width"], row["height"]) == (64, 48)
    assert row["n_positions"] == P and row["clamped"] is False and row["extract_config"] == r.config_hash

    t = clips.to_table(filter=pc.field("video_id") == row["video_id"]).to_pylist()
    assert sorted(c["position"] for c in t) == list(range(P))
    c = t[0]
    frame = decode_frame(c["frame"])
    assert frame.shape == (c["height"], c["width"], 3) == (SIZE, 43, 3)
    flow = decode_flow_stack(c["flow_stack"], c["stack"], c["height"], c["width"])
    assert flow.shape == (2 * L, SIZE, 43)
    assert np.abs(dequantize_flow(flow)).max() > 0.5  # the square moves: real flow, not constant
    assert c["timestamp"] == pytest.approx(c["frame_index"] / 25.0)
    assert set(ok_video_ids(str(store))) == set(_clip_counts(store))


def test_rerun_is_idempotent(extracted, dataset):
    store, _ = extracted
    before = {t: lance.dataset(f"{store}/{t}.lance").version for t in ("videos", "clips", "classes")}
    r = extract(_cfg(dataset, store))
    assert (r.ok, r.failed, r.skipped, r.clips) == (0, 0, N_GOOD + 4, 0) and r.exit_code == 0
    after = {t: lance.dataset(f"{store}/{t}.lance").version for t in ("videos", "clips", "classes")}
    assert after == before  # nothing committed at all
    _assert_each_video_once(store, N_GOOD + 4, N_GOOD)


def test_cli_extract_prints_summary(dataset, tmp_path, capsys, ray_session):
    """Runs while the plain workers are warm (before the tests that start workers with a test env)."""
    store = tmp_path / "s"
    code = cli_main(["extract", str(dataset), "--store", str(store), "--frames", str(P), "--stack", str(L),
                     "--size", str(SIZE), "--workers", "2"])
    out = capsys.readouterr().out
    assert code == 0
    assert f"extracted {N_GOOD} videos, 4 failed, 0 skipped" in out
    assert "Jump/v_Jump_g09_c01: file is empty (0 bytes)" in out
    assert "videos per node:" in out
    code = cli_main(["extract", str(dataset), "--store", str(store), "--frames", str(P), "--stack", str(L + 1),
                     "--size", str(SIZE)])
    assert code == 2 and "--overwrite" in capsys.readouterr().err


def test_changed_settings_need_overwrite(dataset, tmp_path):
    store = tmp_path / "s"
    extract(_cfg(dataset, store, use_ray=False))
    with pytest.raises(ValueError, match="--overwrite") as e:
        extract(_cfg(dataset, store, stack=L + 1, use_ray=False))
    assert '"stack": 3' in str(e.value)  # the stored settings are shown
    r = extract(_cfg(dataset, store, stack=L + 1, overwrite=True, use_ray=False))
    assert r.ok == N_GOOD and r.skipped == 0
    stacks = set(open_table(str(store), CLIPS.name).to_table(columns=["stack"])["stack"].to_pylist())
    assert stacks == {L + 1}
    _assert_each_video_once(store, N_GOOD + 4, N_GOOD)


@pytest.mark.slow  # worker restarts: ~10 s idle, 20+ s on a loaded machine
def test_resume_after_a_worker_is_killed(dataset, tmp_path, ray_session):
    """The worker extracting one video dies mid-shard; Ray retries the shard and no row doubles."""
    flag = tmp_path / "crashed"
    store = tmp_path / "s"
    victim = "Jump/v_Jump_g02_c01"
    fault = faults.Fault(faults.EXTRACT_VIDEO, victim, once=str(flag))
    r = extract(_cfg(dataset, store, shard_size=2, faults=faults.spec(fault)))
    assert flag.exists()  # the worker really died
    assert r.ok == N_GOOD and r.failed == 4
    _assert_each_video_once(store, N_GOOD + 4, N_GOOD)
    assert extract(_cfg(dataset, store)).skipped == N_GOOD + 4


@pytest.mark.slow  # two worker deaths and restarts
def test_poison_file_is_isolated_and_failed(dataset, tmp_path, ray_session):
    """A file that kills its worker every time is found by retrying its shard video by video."""
    store = tmp_path / "s"
    victim = "HandstandPushups/v_HandStandPushups_g01_c02"
    r = extract(_cfg(dataset, store, shard_size=3, task_retries=0,
                     faults=faults.spec(faults.Fault(faults.EXTRACT_VIDEO, victim))))
    assert r.ok == N_GOOD - 1 and r.failed == 5
    reason = dict(r.failures)[victim]
    assert "worker process died" in reason
    _assert_each_video_once(store, N_GOOD + 4, N_GOOD - 1)


def test_resume_after_crash_between_the_two_commits(dataset, tmp_path):
    """Clips committed but not their videos rows (the driver died in between): the re-run deletes
    those orphan clips and extracts the videos again, so each appears exactly once."""
    store = tmp_path / "s"
    extract(_cfg(dataset, store, use_ray=False))
    lost = ["Jump/v_Jump_g01_c01", "HandstandPushups/v_HandStandPushups_g02_c02"]
    open_table(str(store), VIDEOS.name).delete(pc.field("video_id").isin(lost))
    assert _clip_counts(store)[lost[0]] == P  # orphans present
    r = extract(_cfg(dataset, store, use_ray=False))
    assert r.orphans_deleted == 2 * P and r.ok == 2 and r.skipped == N_GOOD + 4 - 2
    _assert_each_video_once(store, N_GOOD + 4, N_GOOD)


def test_nothing_extracted_gives_exit_code_1(tmp_path):
    root = tmp_path / "bad"
    write_bad_files(root / "Only", "v_Only")
    r = extract(_cfg(root, tmp_path / "s", use_ray=False))
    assert r.ok == 0 and r.failed == 4 and r.exit_code == 1


def test_manifest_multilabel(tmp_path, dataset):
    (tmp_path / "videos").mkdir()
    shutil.copy(dataset / "Jump" / "v_Jump_g01_c01.avi", tmp_path / "videos" / "a.avi")
    (tmp_path / "m.csv").write_text("path,labels,subset\nvideos/a.avi,Music|Dance,train\nvideos/gone.avi,Dance,test\n")
    r = extract(_cfg(tmp_path / "m.csv", tmp_path / "s", use_ray=False))
    assert (r.ok, r.failed) == (1, 1) and "does not exist" in dict(r.failures)["videos/gone"]
    row = next(v for v in _videos(tmp_path / "s") if v["video_id"] == "videos/a")
    assert row["labels"] == [1, 0] and row["class_name"] == "Music|Dance"
    assert row["splits"] == [{"split": 1, "subset": "train"}]
