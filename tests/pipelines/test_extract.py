"""Extraction end to end: real Ray tasks, real Lance tables on disk, real encoded videos."""
from __future__ import annotations

import os
import shutil
from collections import Counter
from pathlib import Path

import lance
import numpy as np
import pyarrow.compute as pc
import pytest
from helpers.videos import write_bad_files, write_ucf, write_video

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
    args = ["extract", str(dataset), "--store", str(store), "--frames", str(P), "--stack", str(L), "--size",
            str(SIZE)]
    code = cli_main([*args, "--workers", "2", "--allow-failures"])
    out = capsys.readouterr().out
    assert code == 0
    assert f"extracted {N_GOOD} videos, 4 failed, 0 skipped" in out
    assert "Jump/v_Jump_g09_c01: file is empty (0 bytes)" in out
    assert "videos per node:" in out
    # Without --allow-failures a failed input makes the exit status 1 (here: the 4 left failed, unchanged).
    assert cli_main(args) == 1
    captured = capsys.readouterr()
    assert f"0 failed, {N_GOOD + 4} skipped" in captured.out and "4 of" in captured.err
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


# --- bounded cost per video ------------------------------------------------------------------------

@pytest.mark.parametrize("field,value,flag", [
    ("frames", 10**20, "--frames"), ("frames", 0, "--frames"), ("stack", 100_000, "--stack"),
    ("size", 100_000, "--size"), ("workers", 100_000, "--workers"), ("max_long_side", 16, "--max-long-side"),
    ("max_aspect", float("nan"), "--max-aspect"), ("wait_s", float("inf"), "--wait"),
    ("local_cpus", 0, "--local-cpus"),
])
def test_every_count_and_size_has_an_upper_bound_named_in_one_line(tmp_path, field, value, flag):
    with pytest.raises(ValueError) as e:
        _cfg(tmp_path, tmp_path / "s", **{field: value})
    assert flag in str(e.value) and "\n" not in str(e.value)


def test_settings_whose_product_is_too_costly_are_refused(tmp_path):
    with pytest.raises(ValueError, match="GB per video"):
        _cfg(tmp_path, tmp_path / "s", frames=500, stack=64, size=512, max_long_side=2048)


@pytest.mark.parametrize("flag", ["--frames", "--stack", "--size", "--workers"])
def test_cli_refuses_a_huge_count_in_one_line(tmp_path, capsys, flag):
    code = cli_main(["extract", str(tmp_path), "--store", str(tmp_path / "s"), flag, "100000"])
    err = capsys.readouterr().err
    assert code == 2 and flag in err and len(err.strip().splitlines()) == 1


def test_a_local_ray_never_claims_more_cpus_than_the_machine_has(tmp_path):
    from hyvid.pipelines.extract import _local_cpus

    cores = os.cpu_count()
    assert _local_cpus(_cfg(tmp_path, "s", workers=4096)) == cores
    assert _local_cpus(_cfg(tmp_path, "s", workers=1)) == 1
    assert _local_cpus(_cfg(tmp_path, "s", workers=4096, local_cpus=cores + 3)) == cores + 3  # asked explicitly


def test_frames_beyond_a_videos_length_are_clamped_and_recorded(dataset, tmp_path):
    store = tmp_path / "s"
    r = extract(_cfg(dataset, store, frames=40, use_ray=False))
    assert r.ok == N_GOOD
    ok = [v for v in _videos(store) if v["status"] == STATUS_OK]
    counts = _clip_counts(store)
    for v in ok:  # 14..16 frames each: one position per frame, not 40
        assert v["clamped"] and v["n_positions"] == v["n_frames"] == counts[v["video_id"]] < 40


def _noise_video(path: Path, w: int, h: int, n: int = 30) -> Path:
    rng = np.random.default_rng(0)
    return write_video(path, [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(n)])


def _extract_and_measure(dataset: str, store: str, out) -> None:
    import resource

    r = extract(ExtractConfig(dataset=dataset, store_uri=store, use_ray=False, progress=False))
    out.put((r.ok, r.failed, dict(r.failures), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024))


def test_extreme_aspect_noise_videos_stay_bounded(tmp_path):
    """At the default settings: a 2000x8 noise video is failed with the reason, a 4:1 one (the
    widest allowed) is stored with its long side capped, each clip row under 2 MB, and the whole
    extraction process peaks under 3 GB (ru_maxrss of a spawned process)."""
    import multiprocessing as mp

    root = tmp_path / "d"
    _noise_video(root / "wide" / "strip.avi", 2000, 8)
    _noise_video(root / "wide" / "tall.avi", 8, 2000)
    _noise_video(root / "wide" / "four.avi", 1024, 256)
    (tmp_path / "m.csv").write_text("path,labels\nd/wide/strip.avi,W\nd/wide/tall.avi,W\nd/wide/four.avi,W\n")
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_extract_and_measure, args=(str(tmp_path / "m.csv"), str(tmp_path / "s"), q))
    p.start()
    ok, failed, failures, peak = q.get(timeout=600)
    p.join()
    assert (ok, failed) == (1, 2)
    assert "aspect ratio 2000x8 = 250.0:1" in failures["d/wide/strip"] and "--max-aspect" in failures["d/wide/strip"]
    assert "aspect ratio 8x2000" in failures["d/wide/tall"]
    clips = open_table(str(tmp_path / "s"), CLIPS.name).to_table()
    assert set(zip(clips["height"].to_pylist(), clips["width"].to_pylist(), strict=True)) == {(128, 512)}
    row_bytes = [len(f) + len(s) for f, s in zip(clips["frame"].to_pylist(), clips["flow_stack"].to_pylist(),
                                                 strict=True)]
    assert 0 < max(row_bytes) < 2 * 1024**2
    assert peak < 3 * 1024**3


def test_a_raised_aspect_limit_still_caps_the_long_side(tmp_path):
    root = tmp_path / "d"
    _noise_video(root / "strip.avi", 2000, 8, n=8)
    (tmp_path / "m.csv").write_text("path,labels\nd/strip.avi,W\n")
    r = extract(_cfg(tmp_path / "m.csv", tmp_path / "s", use_ray=False, max_aspect=32))
    assert r.failed == 1 and "aspect" in r.failures[0][1]
    # within the aspect limit but too thin once the long side is capped: failed, not stored huge
    _noise_video(root / "thin.avi", 640, 32, n=8)
    (tmp_path / "m2.csv").write_text("path,labels\nd/thin.avi,W\n")
    r = extract(_cfg(tmp_path / "m2.csv", tmp_path / "s2", use_ray=False, size=64, max_long_side=256, max_aspect=32))
    assert r.failed == 1 and "under the 16 px" in r.failures[0][1]


# --- re-runs that revisit --------------------------------------------------------------------------

def test_a_fixed_file_is_retried_and_an_unchanged_one_only_with_retry_failed(dataset, tmp_path):
    root = tmp_path / "d"
    shutil.copytree(dataset, root)
    store = tmp_path / "s"
    r = extract(_cfg(root, store, use_ray=False))
    assert r.failed == 4
    broken = root / "Jump" / "v_Jump_g09_c02.avi"  # the text file
    shutil.copy(root / "Jump" / "v_Jump_g01_c01.avi", broken)  # fixed: now a valid video
    versions = {t: open_table(str(store), t).version for t in (VIDEOS.name, CLIPS.name)}
    r = extract(_cfg(root, store, use_ray=False))
    assert (r.ok, r.failed, r.retried, r.skipped, r.skipped_failed) == (1, 0, 1, N_GOOD + 3, 3)
    assert open_table(str(store), VIDEOS.name).version == versions[VIDEOS.name] + 1  # the row replaced in one commit
    _assert_each_video_once(store, N_GOOD + 4, N_GOOD + 1)
    assert next(v for v in _videos(store) if v["video_id"] == "Jump/v_Jump_g09_c02")["status"] == STATUS_OK

    r = extract(_cfg(root, store, use_ray=False))  # nothing changed: nothing decoded
    assert (r.ok, r.failed, r.retried) == (0, 0, 0)
    r = extract(_cfg(root, store, use_ray=False, retry_failed=True))
    assert (r.ok, r.failed, r.retried) == (0, 3, 3)
    _assert_each_video_once(store, N_GOOD + 4, N_GOOD + 1)


def test_changed_manifest_labels_update_rows_without_re_extracting(tmp_path, dataset):
    (tmp_path / "videos").mkdir()
    for name in ("a", "b", "c"):
        shutil.copy(dataset / "Jump" / "v_Jump_g01_c01.avi", tmp_path / "videos" / f"{name}.avi")
    m = tmp_path / "m.csv"
    m.write_text("path,labels,subset,group\nvideos/a.avi,Dance,train,g1\nvideos/b.avi,Music,train,g1\n"
                 "videos/c.avi,Dance,train,g1\n")
    store = tmp_path / "s"
    extract(_cfg(m, store, use_ray=False))
    before = {t: open_table(str(store), t).version for t in (VIDEOS.name, CLIPS.name)}
    m.write_text("path,labels,subset,group\nvideos/a.avi,Music,test,g2\nvideos/b.avi,Music,train,g1\n"
                 "videos/c.avi,Dance,train,g1\n")
    r = extract(_cfg(m, store, use_ray=False))
    assert (r.ok, r.relabeled, r.skipped) == (0, 1, 3)
    assert open_table(str(store), VIDEOS.name).version == before[VIDEOS.name] + 1  # one commit
    assert open_table(str(store), CLIPS.name).version == before[CLIPS.name]  # nothing re-extracted
    row = next(v for v in _videos(store) if v["video_id"] == "videos/a")
    assert (row["class_name"], row["group"], row["splits"]) == ("Music", "g2", [{"split": 1, "subset": "test"}])
    assert row["status"] == STATUS_OK and row["n_positions"] == P
    _assert_each_video_once(store, 3, 3)
    assert extract(_cfg(m, store, use_ray=False)).relabeled == 0  # applied once


def test_a_rerun_whose_every_video_is_failed_exits_non_zero_in_one_line(tmp_path, capsys):
    root = tmp_path / "bad"
    write_bad_files(root / "Only", "v_Only")
    args = ["extract", str(root), "--store", str(tmp_path / "s"), "--frames", str(P), "--stack", str(L),
            "--size", str(SIZE), "--workers", "1"]
    extract(_cfg(root, tmp_path / "s", use_ray=False))
    r = extract(_cfg(root, tmp_path / "s", use_ray=False))
    assert (r.ok, r.skipped, r.skipped_failed, r.exit_code) == (0, 4, 4, 1)
    assert cli_main(args) == 1
    # hyvid's own log lines (warnings about the folder) may come first; the error itself is one line.
    err = [line for line in capsys.readouterr().err.splitlines()
           if line.strip() and " INFO " not in line and " WARNING " not in line]
    assert len(err) == 1 and "all 4 videos are failed in the store" in err[0] and "--retry-failed" in err[0]
