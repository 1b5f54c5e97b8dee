"""Concurrent writers of one store: real `hyvid extract` processes, real Lance, real Ray.

Every writer of `videos`/`clips`, `frame_features` and `video_scores` holds that group's lease
(hyvid.store.lease) while it decides what to write and commits it, so none duplicates a row.
Processes are started with subprocess or multiprocessing spawn (Lance is not fork-safe); the
extracts attach to the session's Ray by address instead of each starting one.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter

import numpy as np
import pyarrow as pa
import pytest
from helpers.processes import run_concurrently
from helpers.videos import write_ucf

from hyvid.store.doctor import diagnose
from hyvid.store.lance_io import open_table, write_table_fragments
from hyvid.store.lease import EXTRACT_LEASE, Lease, read_holder
from hyvid.store.tables import CLIPS, FRAME_FEATURES_NAME, VIDEO_SCORES, VIDEOS, frame_features_schema

P, L, SIZE = 4, 3, 32
N_VIDEOS = 3 * 2 * 2


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("ucf")
    return write_ucf(root, {"Jump": "Jump", "Walk": "Walk", "Run": "Run"}, groups=(1, 2), clips=(1, 2), n_frames=12)


def _extract_cmd(dataset, store, address: str | None, *extra: str) -> list[str]:
    cmd = [sys.executable, "-m", "hyvid.pipelines.cli", "extract", str(dataset), "--store", str(store),
           "--frames", str(P), "--stack", str(L), "--size", str(SIZE), "--workers", "2", *extra]
    return cmd + (["--address", address] if address else [])


def _assert_each_row_once(store) -> None:
    ids = open_table(str(store), VIDEOS.name).to_table(columns=["video_id"]).column(0).to_pylist()
    assert len(ids) == len(set(ids)) == N_VIDEOS
    clips = open_table(str(store), CLIPS.name).to_table(columns=["video_id", "position"]).to_pylist()
    pairs = Counter((c["video_id"], c["position"]) for c in clips)
    assert len(pairs) == N_VIDEOS * P and set(pairs.values()) == {1}
    assert diagnose(str(store)).duplicate_rows == 0


def test_two_concurrent_extracts_leave_each_video_once(dataset, tmp_path, ray_session):
    store = tmp_path / "s"
    address = ray_session.get_runtime_context().gcs_address
    procs = [subprocess.Popen(_extract_cmd(dataset, store, address), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    extracted = [int(re.search(r"extracted (\d+) videos", o[0]).group(1)) for o in outs]
    assert sum(extracted) == N_VIDEOS  # one did the work, the other waited and skipped it
    _assert_each_row_once(store)


def test_an_extract_finding_a_live_writer_exits_in_one_line(dataset, tmp_path):
    store = tmp_path / "s"
    with Lease(str(store), EXTRACT_LEASE, "hyvid extract"):
        p = subprocess.run(_extract_cmd(dataset, store, None, "--wait", "0"), capture_output=True, text=True,
                           timeout=300)
    assert p.returncode == 2
    err = [line for line in p.stderr.splitlines() if "error" in line]
    assert len(err) == 1 and "is being written" in err[0] and f"pid {os.getpid()}" in err[0], p.stderr[-2000:]
    assert "Traceback" not in p.stderr


def test_an_extract_killed_with_sigkill_is_resumed_at_once(dataset, tmp_path, ray_session):
    """The driver dies holding the lease; the next run on this host sees its pid is gone, takes
    the lease without waiting for it to expire (--wait 0) and finishes with each row once."""
    store = tmp_path / "s"
    address = ray_session.get_runtime_context().gcs_address
    p = subprocess.Popen(_extract_cmd(dataset, store, address), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while read_holder(str(store), EXTRACT_LEASE) is None:
        assert p.poll() is None, "the extract ended before it took the lease"
        time.sleep(0.05)
    time.sleep(1.0)  # somewhere inside the run: no assertion depends on where
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert read_holder(str(store), EXTRACT_LEASE).pid == p.pid  # never released
    r = subprocess.run(_extract_cmd(dataset, store, address, "--wait", "0"), capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    _assert_each_row_once(store)


def _upsert(store: str, ids: list[str], rounds: int) -> None:
    from hyvid.store.scores import upsert_video_scores

    for k in range(rounds):
        batch = [f"{v}_{k}" for v in ids]  # new keys each round: the case merge_insert cannot catch
        upsert_video_scores(store, "spatial_cnn", 1, f"run{os.getpid()}", batch, ["test"] * len(batch),
                            np.full((len(batch), 3), 1 / 3), [0] * len(batch))


def test_concurrent_video_scores_upserts_never_duplicate_a_key(tmp_path):
    store = str(tmp_path / "s")
    ids = [f"C/v{i}" for i in range(5)]
    assert run_concurrently(_upsert, (store, ids, 4), 3) == [0, 0, 0]
    keys = open_table(store, VIDEO_SCORES.name).to_table(columns=["video_id", "model", "split"]).to_pylist()
    assert len(keys) == 5 * 4 and len({tuple(k.values()) for k in keys}) == 20


def _commit_features_rounds(store: str, ids: list[str], rounds: int) -> None:
    from hyvid.pipelines.features import _commit_features

    schema = frame_features_schema(4, 4)
    for k in range(rounds):
        rows = [{"video_id": v, "position": p, "split": 1, "fold": -1, "spatial": [float(k)] * 4, "motion": [0.0] * 4,
                 "spatial_run_id": str(os.getpid()), "motion_run_id": "m"} for v in ids for p in range(3)]
        frags = write_table_fragments(store, FRAME_FEATURES_NAME, pa.Table.from_pylist(rows, schema=schema))
        _commit_features(store, frags, ids, 1, schema, None)


def test_concurrent_features_commits_keep_one_set_of_rows_per_video(tmp_path):
    store = str(tmp_path / "s")
    ids = [f"C/v{i}" for i in range(4)]
    assert run_concurrently(_commit_features_rounds, (store, ids, 3), 2) == [0, 0]
    t = open_table(store, FRAME_FEATURES_NAME).to_table(columns=["video_id", "position", "spatial_run_id"])
    pairs = Counter(zip(t.column("video_id").to_pylist(), t.column("position").to_pylist(), strict=True))
    assert len(pairs) == 4 * 3 and set(pairs.values()) == {1}
    # each video's rows come from one commit, not a mix of the two processes' sets
    by_video = {}
    for v, run in zip(t.column("video_id").to_pylist(), t.column("spatial_run_id").to_pylist(), strict=True):
        by_video.setdefault(v, set()).add(run)
    assert all(len(runs) == 1 for runs in by_video.values())
