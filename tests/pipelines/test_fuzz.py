"""Fuzz: 50 random corruptions of a valid video through a real extract (real Ray workers, so a
decoder that crashes on a file kills a worker, not the test).

Each corrupted file must end as an `ok` or a `failed` row with a reason, the run must not raise,
and no video or clip may appear twice, in this run or a re-run.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from helpers.videos import moving_square_frames, write_video

from hyvid.pipelines.extract import ExtractConfig, extract
from hyvid.store.doctor import diagnose
from hyvid.store.lance_io import open_table
from hyvid.store.tables import CLIPS, STATUS_FAILED, STATUS_OK, VIDEOS

N = 50
P, L, SIZE = 3, 2, 32


def _corrupt(data: bytes, rng: np.random.Generator) -> tuple[str, bytes]:
    """One random corruption: a truncation, byte flips, header damage, or a cut/repeated chunk."""
    b = bytearray(data)
    kind = ("truncate", "flip", "header", "chunk")[int(rng.integers(4))]
    if kind == "truncate":
        b = b[:int(rng.integers(1, len(b)))]
    elif kind == "flip":
        for i in rng.integers(0, len(b), size=int(rng.integers(1, 64))):
            b[i] ^= int(rng.integers(1, 256))
    elif kind == "header":
        n = int(rng.integers(4, 512))
        b[:n] = rng.integers(0, 256, size=n, dtype=np.uint8).tobytes()
    else:
        a = int(rng.integers(0, len(b) - 1))
        z = int(rng.integers(a + 1, min(len(b), a + 4096) + 1))
        b = b[:a] + b[z:] if rng.random() < 0.5 else b[:z] + b[a:z] + b[z:]
    return kind, bytes(b)


@pytest.fixture(scope="module")
def corrupted(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("fuzz")
    good = write_video(root / "clean.avi", moving_square_frames(20, dx=2))
    data = good.read_bytes()
    good.unlink()
    rng = np.random.default_rng(14)
    kinds, rows = {}, ["path,labels"]
    for i in range(N):
        kind, blob = _corrupt(data, rng)
        (root / "v").mkdir(exist_ok=True)
        (root / "v" / f"f{i:02d}.avi").write_bytes(blob)
        kinds[f"v/f{i:02d}"] = kind
        rows.append(f"v/f{i:02d}.avi,{'AB'[i % 2]}")
    (root / "v" / "clean.avi").write_bytes(data)
    rows.append("v/clean.avi,A")
    (root / "m.csv").write_text("\n".join(rows) + "\n")
    return root / "m.csv", kinds


def _check(store: str, n_total: int) -> list[dict]:
    videos = open_table(store, VIDEOS.name).to_table().to_pylist()
    ids = [v["video_id"] for v in videos]
    assert len(ids) == len(set(ids)) == n_total
    clips = Counter((c["video_id"], c["position"]) for c in
                    open_table(store, CLIPS.name).to_table(columns=["video_id", "position"]).to_pylist())
    assert set(clips.values()) <= {1}
    per_video = Counter(v for v, _ in clips)
    for v in videos:
        assert v["status"] in (STATUS_OK, STATUS_FAILED)
        if v["status"] == STATUS_OK:
            assert per_video[v["video_id"]] == v["n_positions"] >= 1
        else:
            assert v["error"] and per_video[v["video_id"]] == 0
    assert diagnose(store).duplicate_rows == 0
    return videos


def test_fifty_corruptions_end_ok_or_failed_without_duplicates(corrupted, tmp_path, ray_session):
    manifest, kinds = corrupted
    store = str(tmp_path / "s")
    cfg = ExtractConfig(dataset=str(manifest), store_uri=store, frames=P, stack=L, size=SIZE, workers=2,
                        task_retries=0, progress=False)
    r = extract(cfg)
    assert r.ok + r.failed == N + 1 and r.exit_code == 0
    videos = _check(store, N + 1)
    status = {v["video_id"]: v["status"] for v in videos}
    assert status["v/clean"] == STATUS_OK
    assert any(s == STATUS_FAILED for s in status.values())  # the corruptions did something
    assert any(s == STATUS_FAILED for v, s in status.items() if kinds.get(v) == "truncate")
    r2 = extract(cfg)  # a re-run decodes nothing again (no file changed) and adds nothing
    assert (r2.ok, r2.failed, r2.skipped) == (0, 0, N + 1)
    _check(store, N + 1)
