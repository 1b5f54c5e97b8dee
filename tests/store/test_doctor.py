"""`hyvid doctor` on a real Lance store with injected duplicates and orphans."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from hyvid.pipelines.cli import main as cli_main
from hyvid.store.doctor import diagnose, repair
from hyvid.store.lance_io import append_rows, open_table
from hyvid.store.lease import EXTRACT_LEASE, Lease, LeaseHeld
from hyvid.store.tables import CLIPS, FRAME_FEATURES_NAME, TABLE_KEYS, VIDEO_SCORES, VIDEOS, frame_features_schema

IDS = [f"C/v_C_g01_c{i:02d}" for i in range(4)]


def _tables() -> dict[str, pa.Table]:
    rng = np.random.default_rng(0)
    videos = pa.Table.from_pylist([{"video_id": v, "status": "ok", "label": 0, "labels": [0], "node_id": "n1"}
                                   for v in IDS], schema=VIDEOS.schema)
    clips = pa.Table.from_pylist([{"video_id": v, "position": p, "frame": rng.bytes(16), "stack": 2}
                                  for v in IDS for p in range(3)], schema=CLIPS.schema)
    schema = frame_features_schema(4, 4)
    feats = pa.Table.from_pylist([{"video_id": v, "position": p, "split": 1, "fold": -1,
                                   "spatial": rng.random(4).tolist(),
                                   "motion": rng.random(4).tolist(), "spatial_run_id": "r"}
                                  for v in IDS for p in range(3)], schema=schema)
    scores = pa.Table.from_pylist([{"video_id": v, "model": "spatial_cnn", "split": 1, "subset": "test",
                                    "scores": [0.5, 0.5], "label": 0} for v in IDS], schema=VIDEO_SCORES.schema)
    return {VIDEOS.name: videos, CLIPS.name: clips, FRAME_FEATURES_NAME: feats, VIDEO_SCORES.name: scores}


def _rows(store: str, table: str) -> list[str]:
    """Every row, as a comparable string, in key order (doctor may change the order, nothing else)."""
    t = open_table(store, table).to_table()
    return sorted(str(r) for r in t.to_pylist())


@pytest.fixture
def damaged(tmp_path):
    """A store whose every table holds each row once, plus copies of some rows (as a concurrent
    writer without leases would have added) and rows of a video that `videos` does not know."""
    store = str(tmp_path / "s")
    originals = _tables()
    for name, t in originals.items():
        append_rows(store, name, t)
        append_rows(store, name, t.slice(0, 2))  # two duplicated keys per table
    orphan = _tables()[CLIPS.name].slice(0, 1).to_pylist()
    orphan[0]["video_id"] = "Gone/v_Gone_g01_c01"
    append_rows(store, CLIPS.name, pa.Table.from_pylist(orphan, schema=CLIPS.schema))
    return store, originals


def test_diagnose_reports_duplicates_orphans_and_lineage(damaged):
    store, originals = damaged
    report = diagnose(store, versions=10)
    assert set(report.tables) == set(originals)
    for name, t in report.tables.items():
        assert t.duplicate_rows == 2 and t.keys == originals[name].num_rows + (name == CLIPS.name)
        assert len(t.duplicate_examples) == 2 and t.differing_keys == 0
        assert [v.operation for v in t.lineage][:2] == ["Overwrite", "Append"]
    assert report.tables[CLIPS.name].orphan_rows == 1
    assert report.tables[CLIPS.name].orphan_examples == ["Gone/v_Gone_g01_c01"]
    assert report.tables[FRAME_FEATURES_NAME].orphan_rows == 0


def test_repair_removes_every_duplicate_in_one_commit_per_table_and_loses_no_row(damaged):
    store, originals = damaged
    before = {name: open_table(store, name).version for name in originals}
    assert repair(store) == {name: 2 for name in originals}
    for name, t in originals.items():
        assert open_table(store, name).version == before[name] + 1  # one commit
        expected = sorted(str(r) for r in t.to_pylist())
        if name == CLIPS.name:  # the orphan is a distinct row: kept
            expected = sorted(expected + [r for r in _rows(store, name) if "Gone" in r])
        assert _rows(store, name) == expected
        keys = open_table(store, name).to_table(columns=list(TABLE_KEYS[name])).to_pylist()
        assert len({tuple(k.values()) for k in keys}) == len(keys)
    assert diagnose(store).duplicate_rows == 0
    assert repair(store) == {name: 0 for name in originals}  # idempotent: nothing more committed
    assert {name: open_table(store, name).version for name in originals} == {n: v + 1 for n, v in before.items()}


def test_videos_repair_keeps_the_ok_copy(tmp_path):
    store = str(tmp_path / "s")
    append_rows(store, VIDEOS.name, pa.Table.from_pylist([{"video_id": "a", "status": "failed"}], schema=VIDEOS.schema))
    append_rows(store, VIDEOS.name, pa.Table.from_pylist([{"video_id": "a", "status": "ok"}], schema=VIDEOS.schema))
    assert diagnose(store).tables[VIDEOS.name].differing_keys == 1
    repair(store)
    assert open_table(store, VIDEOS.name).to_table(columns=["status"]).column(0).to_pylist() == ["ok"]


def test_repair_refuses_while_a_writer_is_live(damaged):
    store, _ = damaged
    with Lease(store, EXTRACT_LEASE, "hyvid extract"):
        with pytest.raises(LeaseHeld, match="hyvid extract"):
            repair(store)
    assert diagnose(store).tables[VIDEOS.name].duplicate_rows == 2


def test_cli_doctor_exits_1_on_duplicates_and_repairs(damaged, capsys):
    store, _ = damaged
    assert cli_main(["doctor", "--store", store]) == 1
    captured = capsys.readouterr()
    assert "videos: 6 rows, 4 keys, 2 duplicate rows" in captured.out and "orphan rows" in captured.out
    assert "--repair" in captured.err
    assert cli_main(["doctor", "--store", store, "--repair"]) == 0
    assert "no duplicate rows" in capsys.readouterr().out
    assert cli_main(["doctor", "--store", store + "_nothing_here"]) == 2
