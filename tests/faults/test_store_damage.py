"""Damage done to a real extracted store behind hyvid's back: `doctor` sees it, names the table and exits
non-zero; `--repair` mends it; `extract` redoes what can no longer be read instead of skipping it.

Each test extracts a few real encoded videos (no Ray: `use_ray=False`) into its own store, then
damages it as a disk, an operator or a killed process would: a deleted data file, a truncated or
deleted manifest, data files no commit names, a table whose first commit never happened.
"""
from __future__ import annotations

import os
import shutil

import pyarrow as pa
import pytest
from helpers.videos import write_ucf

from hyvid.pipelines.cli import main as cli_main
from hyvid.pipelines.extract import ExtractConfig, extract
from hyvid.store import damage as D
from hyvid.store.doctor import diagnose
from hyvid.store.lance_io import TableDamaged, open_table, table_exists, write_table_fragments
from hyvid.store.tables import CLIPS, VIDEOS

CLASSES = {"Up": "Up", "Down": "Down"}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_ucf(tmp_path_factory.mktemp("ucf"), CLASSES, groups=(1, 2, 3), n_frames=12)


def _extract(dataset, store, **kw):
    return extract(ExtractConfig(dataset=str(dataset), store_uri=str(store), frames=3, stack=2, size=32,
                                 workers=1, progress=False, use_ray=False, **kw))


@pytest.fixture
def store(dataset, tmp_path):
    """An extracted store with two commits of each table (the second run adds group 3's videos)."""
    uri = str(tmp_path / "store")
    first = write_ucf(tmp_path / "part", CLASSES, groups=(1, 2), n_frames=12)
    _extract(first, uri)
    r = _extract(dataset, uri)
    assert r.ok == 2 and r.skipped == 4
    return uri


def _data_files(store: str, table: str) -> list[str]:
    return sorted(os.listdir(os.path.join(store, f"{table}.lance", "data")))


def _doctor(store: str, *extra: str, capsys) -> tuple[int, str, str]:
    rc = cli_main(["doctor", "--store", store, *extra])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_a_deleted_clips_data_file_is_found_repaired_and_its_videos_extracted_again(store, dataset, capsys):
    ds = open_table(store, CLIPS.name)
    victim = ds.get_fragments()[-1]
    os.remove(os.path.join(store, "clips.lance", "data", victim.metadata.data_files()[0].path))
    rows_before = ds.count_rows()

    rc, out, err = _doctor(store, capsys=capsys)
    assert rc == 1 and "clips" in err and "--repair" in err
    assert "clips: DAMAGED: fragment" in out and "unreadable" in out
    assert "the next `hyvid extract` extracts them again" in out

    rc, out, err = _doctor(store, "--repair", capsys=capsys)
    assert rc == 0, err
    assert "dropped 1 unreadable fragment" in out
    left = open_table(store, CLIPS.name).count_rows()
    assert left == rows_before - victim.metadata.physical_rows
    lost = diagnose(store).incomplete_videos
    assert lost  # still listed: the repair dropped what was unreadable; extract brings them back

    r = _extract(dataset, store)
    assert r.redone == len(lost) and r.skipped == 6 - len(lost)
    assert open_table(store, CLIPS.name).count_rows() == rows_before
    assert diagnose(store).incomplete_videos == [] and not diagnose(store).damaged


def test_extract_itself_redoes_videos_whose_clips_cannot_be_read(store, dataset):
    ds = open_table(store, CLIPS.name)
    os.remove(os.path.join(store, "clips.lance", "data", ds.get_fragments()[0].metadata.data_files()[0].path))
    rows_before = ds.count_rows()
    r = _extract(dataset, store)
    assert r.fragments_dropped == 1 and r.redone >= 1 and r.skipped < 6  # not "all 6 already in the store"
    clips = open_table(store, CLIPS.name)
    assert clips.count_rows() == rows_before
    keys = clips.to_table(columns=["video_id", "position"]).to_pylist()
    assert len({(k["video_id"], k["position"]) for k in keys}) == len(keys)  # no duplicate
    assert not diagnose(store).damaged


def test_a_truncated_newest_manifest_goes_back_to_the_last_readable_version(store, capsys):
    folder = os.path.join(store, "videos.lance")
    newest = D.manifest_versions(folder)[0]
    before = open_table(store, VIDEOS.name, version=newest - 1).count_rows()
    path = os.path.join(folder, "_versions", f"{2**64 - 1 - newest:020d}.manifest")
    with open(path, "r+b") as f:
        f.truncate(20)
    with pytest.raises(TableDamaged, match="videos.*damaged.*hyvid doctor"):
        table_exists(store, VIDEOS.name)  # damaged is not absent: no stage rebuilds over it
    rc, out, err = _doctor(store, capsys=capsys)
    assert rc == 1 and "videos: DAMAGED: cannot be opened" in out and f"version is {newest - 1}" in out
    rc, out, err = _doctor(store, "--repair", capsys=capsys)
    assert rc == 0, err
    assert f"went back to version {newest - 1}" in out
    assert open_table(store, VIDEOS.name).count_rows() == before


def test_a_table_whose_versions_are_deleted_is_named_and_moved_aside(store, dataset, capsys):
    shutil.rmtree(os.path.join(store, "videos.lance", "_versions"))
    with pytest.raises(TableDamaged):
        open_table(store, VIDEOS.name)
    rc, out, err = _doctor(store, capsys=capsys)
    assert rc == 1 and "videos" in err and "no version reads" in out
    rc, out, err = _doctor(store, "--repair", capsys=capsys)
    assert rc == 0, err
    assert "moved the table to" in out and os.path.isdir(os.path.join(store, D.DAMAGED_DIR))
    assert not table_exists(store, VIDEOS.name)
    r = _extract(dataset, store)  # the videos table is rebuilt; every clip row is replaced, none doubled
    assert r.ok == 6
    keys = open_table(store, CLIPS.name).to_table(columns=["video_id", "position"]).to_pylist()
    assert len({(k["video_id"], k["position"]) for k in keys}) == len(keys) == 18


def test_files_no_version_names_are_reported_and_removed(store, capsys):
    # What a commit that failed (disk full) or a writer killed before committing leaves behind.
    rows = open_table(store, CLIPS.name).to_table().slice(0, 2)
    write_table_fragments(store, CLIPS.name, rows)
    files = _data_files(store, CLIPS.name)
    rc, out, err = _doctor(store, capsys=capsys)
    assert rc == 1 and "1 data file(s) that no version names" in out
    rc, out, err = _doctor(store, "--repair", capsys=capsys)
    assert rc == 0 and "removed 1 data file(s)" in out
    assert len(_data_files(store, CLIPS.name)) == len(files) - 1
    assert open_table(store, CLIPS.name).to_table().num_rows == 18  # every referenced file still reads


def test_a_table_killed_before_its_first_commit_is_absent_with_leftovers(tmp_path, capsys):
    store = str(tmp_path / "s")
    write_table_fragments(store, VIDEOS.name, pa.Table.from_pylist([{"video_id": "a", "status": "ok"}],
                                                                   schema=VIDEOS.schema))
    assert not table_exists(store, VIDEOS.name)
    with pytest.raises(FileNotFoundError, match="never committed.*doctor --repair"):
        open_table(store, VIDEOS.name)
    rc, out, err = _doctor(store, capsys=capsys)
    assert rc == 1 and "a first commit never made" in out
    rc, out, err = _doctor(store, "--repair", capsys=capsys)
    assert not os.path.exists(os.path.join(store, "videos.lance"))


def _mount_small_disk(path, size: str) -> bool:
    """A tmpfs of `size` at `path` (root only); False where it cannot be made."""
    import subprocess

    if os.geteuid() != 0:
        return False
    path.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


def test_a_full_disk_fails_in_one_line_and_leaves_nothing_to_mend(tmp_path, capsys):
    import subprocess

    disk = tmp_path / "disk"
    if not _mount_small_disk(disk, "800k"):
        pytest.skip("a small filesystem needs root and a tmpfs mount (not available here)")
    try:
        # ~1.3 MB of clips at these settings: the disk fills part-way through
        data = write_ucf(tmp_path / "ucf", CLASSES, groups=(1, 2, 3), clips=(1, 2), n_frames=30)
        store = str(disk / "s")
        args = ["extract", str(data), "--store", store, "--frames", "6", "--size", "96", "--workers", "1"]
        rc = cli_main(args)
        err = [ln for ln in capsys.readouterr().err.splitlines() if "hyvid extract:" in ln]
        assert rc != 0 and len(err) == 1 and "No space left on device" in err[0], err
        assert ".rs:" not in err[0]  # Lance's Rust source location is cut from the line
        assert "while extracting" in err[0] or "while committing" in err[0], err[0]  # the videos it concerned
        report = diagnose(store)
        assert not report.damaged, {t: d.describe() for t, d in report.damage.items()}  # no file left unnamed
        assert report.duplicate_rows == 0
        subprocess.run(["mount", "-o", "remount,size=20m", str(disk)], check=True)
        assert cli_main(args) == 0
        capsys.readouterr()
        videos = open_table(store, VIDEOS.name).to_table(columns=["video_id", "status"]).to_pylist()
        assert len(videos) == len({v["video_id"] for v in videos}) == 12
        assert all(v["status"] == "ok" for v in videos)
        keys = open_table(store, CLIPS.name).to_table(columns=["video_id", "position"]).to_pylist()
        assert len({(k["video_id"], k["position"]) for k in keys}) == len(keys) == 72
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)
