"""Dataset discovery: the UCF-101 layout with the official lists' quirks, and manifest CSVs."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest

from hyvid.pipelines.data.datasets import NO_LABEL, group_of, load_dataset, load_manifest, load_ucf101


def _touch(root: Path, rel: str) -> None:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(b"")  # discovery never decodes: empty files are enough


@pytest.fixture
def ucf(tmp_path) -> Path:
    """Official-style lists: 1-based classInd, unlabelled test lists, and the HandstandPushups
    mismatch (folder `HandstandPushups`, files `v_HandStandPushups_*`, lists spelled otherwise)."""
    root = tmp_path / "UCF-101"
    files = [
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi",
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g02_c01.avi",
        "HandstandPushups/v_HandStandPushups_g01_c01.avi",
        "HandstandPushups/v_HandStandPushups_g02_c01.avi",
        "HandstandPushups/v_HandStandPushups_g03_c02.avi",  # on disk, in no list
        "YoYo/v_YoYo_g02_c03.avi",
    ]
    for f in files:
        _touch(root, f)
    (root / "YoYo" / "notes.txt").write_text("not a video extension: ignored")
    lists = root / "ucfTrainTestlist"
    lists.mkdir()
    (lists / "classInd.txt").write_text("1 ApplyEyeMakeup\r\n2 HandstandPushups\r\n3 YoYo\r\n")
    (lists / "trainlist01.txt").write_text(
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g02_c01.avi 1\n"
        "HandStandPushups/v_HandStandPushups_g02_c01.avi 2\n"  # list spells the folder differently
        "YoYo/v_YoYo_g02_c03.avi 3\n"
    )
    (lists / "testlist01.txt").write_text(
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi\n"
        "HandstandPushups/v_HandstandPushups_g01_c01.avi\n"  # and the file name
        "YoYo/v_YoYo_g09_c01.avi\n"  # listed, not on disk
    )
    (lists / "trainlist02.txt").write_text("ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi 1\n")
    (lists / "testlist02.txt").write_text("ApplyEyeMakeup/v_ApplyEyeMakeup_g02_c01.avi\n")
    (lists / "testlist03.txt").write_text("ApplyEyeMakeup/v_ApplyEyeMakeup_g02_c01.avi\n")
    return root


def test_ucf_layout_quirks(ucf, caplog):
    with caplog.at_level(logging.WARNING):
        ds = load_ucf101(ucf)
    assert ds.kind == "ucf101"
    assert ds.classes == ("ApplyEyeMakeup", "HandstandPushups", "YoYo")  # classInd order, 0-based labels
    by_id = {e.video_id: e for e in ds.entries}
    assert len(by_id) == 6  # every video file on disk, notes.txt ignored
    hs = by_id["HandstandPushups/v_HandStandPushups_g01_c01"]  # id keeps the on-disk spelling
    assert hs.label == 1 and hs.labels == (1,) and hs.class_name == "HandstandPushups"
    assert hs.splits == ((1, "test"),)  # matched despite the case mismatch; class from the folder
    assert by_id["HandstandPushups/v_HandStandPushups_g02_c01"].splits == ((1, "train"),)
    assert by_id["HandstandPushups/v_HandStandPushups_g03_c02"].splits == ()
    assert by_id["ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01"].label == 0
    # membership in all three splits is recorded
    assert by_id["ApplyEyeMakeup/v_ApplyEyeMakeup_g02_c01"].splits == ((1, "train"), (2, "test"), (3, "test"))
    assert by_id["ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01"].splits == ((1, "test"), (2, "train"))
    assert by_id["YoYo/v_YoYo_g02_c03"].group == "g02" and by_id["YoYo/v_YoYo_g02_c03"].label == 2
    assert hs.path == str(ucf / "HandstandPushups" / "v_HandStandPushups_g01_c01.avi")
    assert "1 listed video(s) are not on disk" in caplog.text
    assert load_dataset(ucf).entries == ds.entries


def test_ucf_without_lists_uses_folders(tmp_path):
    _touch(tmp_path, "b/clip2.mp4")
    _touch(tmp_path, "a/clip1.avi")
    ds = load_ucf101(tmp_path)
    assert ds.classes == ("a", "b")
    assert [(e.video_id, e.label, e.group, e.splits) for e in ds.entries] == [
        ("a/clip1", 0, "a/clip1", ()), ("b/clip2", 1, "b/clip2", ())]


def test_ucf_bad_class_index_is_reported(ucf):
    (ucf / "ucfTrainTestlist" / "classInd.txt").write_text("0 ApplyEyeMakeup\n1 HandstandPushups\n")
    with pytest.raises(ValueError, match="1-based"):
        load_ucf101(ucf)


def test_ucf_empty_dataset_is_reported(tmp_path):
    (tmp_path / "Empty").mkdir()
    with pytest.raises(ValueError, match="no video files"):
        load_ucf101(tmp_path)


def test_ucf_same_stem_files_keep_their_extension_in_distinct_ids(tmp_path, caplog):
    for rel in ("Walk/v_Walk_g01_c01.avi", "Walk/v_Walk_g01_c01.mp4", "Walk/v_Walk_g02_c01.avi",
                "Run/v_Run_g01_c01.avi", "Run/V_RUN_G01_C01.MKV"):
        _touch(tmp_path, rel)
    lists = tmp_path / "ucfTrainTestlist"
    lists.mkdir()
    (lists / "classInd.txt").write_text("1 Run\n2 Walk\n")
    (lists / "trainlist01.txt").write_text("Walk/v_Walk_g01_c01.avi 2\nRun/v_Run_g01_c01.avi 1\n")
    (lists / "testlist01.txt").write_text("Walk/v_Walk_g02_c01.avi\n")
    with caplog.at_level(logging.WARNING):
        ds = load_ucf101(tmp_path)
    by_id = {e.video_id: e for e in ds.entries}
    # Every file is a video of its own: none dropped, no id shared (not even up to case).
    assert sorted(by_id) == ["Run/V_RUN_G01_C01.MKV", "Run/v_Run_g01_c01.avi", "Walk/v_Walk_g01_c01.avi",
                             "Walk/v_Walk_g01_c01.mp4", "Walk/v_Walk_g02_c01"]
    assert len({v.lower() for v in by_id}) == len(by_id) == 5
    walk = "Walk/v_Walk_g01_c01"
    assert by_id[f"{walk}.avi"].path.endswith(".avi") and by_id[f"{walk}.mp4"].path.endswith(".mp4")
    # The list line names the .avi: only it is in the split.
    assert by_id[f"{walk}.avi"].splits == ((1, "train"),) and by_id[f"{walk}.mp4"].splits == ()
    assert by_id["Run/v_Run_g01_c01.avi"].splits == ((1, "train"),) and by_id["Walk/v_Walk_g02_c01"].group == "g02"
    assert "keep their extension" in caplog.text


@pytest.mark.parametrize("a, b", [
    ("Run/V_Run_G01_C01.avi", "Run/v_Run_g01_c01.avi"),  # names that differ only in case
    ("Run/v_Run_g01_c01.avi", "run/v_Run_g01_c01.avi"),  # class folders that differ only in case
])
def test_ucf_case_variants_stop_with_an_error_naming_both(tmp_path, a, b):
    _touch(tmp_path, a)
    _touch(tmp_path, b)
    with pytest.raises(ValueError, match="differ only in case") as e:
        load_ucf101(tmp_path)
    assert a in str(e.value) and b in str(e.value)


def test_ucf_video_in_both_train_and_test_of_a_split_is_refused(ucf):
    with open(ucf / "ucfTrainTestlist" / "testlist01.txt", "a") as f:
        f.write("yoyo/V_YOYO_G02_C03.AVI\n")  # the trainlist's YoYo video, spelled otherwise
    with pytest.raises(ValueError, match=r"'YoYo/v_YoYo_g02_c03.avi' is in both trainlist01.txt and testlist01.txt"):
        load_ucf101(ucf)


def test_manifest_multilabel_subset_group_and_relative_paths(tmp_path):
    _touch(tmp_path, "videos/a.mp4")
    _touch(tmp_path, "videos/sub/b.avi")
    outside = tmp_path.parent / f"{tmp_path.name}_elsewhere" / "c.avi"
    outside.parent.mkdir()
    outside.write_bytes(b"")
    csv = tmp_path / "manifest.csv"
    csv.write_text(
        "path,labels,subset,group\n"
        "videos/a.mp4,Music|Dance,train,party1\n"
        "videos/sub/b.avi,Sports,test,\n"
        f"{outside},Dance,,\n"
    )
    ds = load_dataset(csv)
    assert ds.kind == "manifest" and ds.classes == ("Dance", "Music", "Sports")  # sorted names
    by_id = {e.video_id: e for e in ds.entries}
    a = by_id["videos/a"]
    assert a.labels == (1, 0) and a.label == 1 and a.class_name == "Music|Dance"
    assert a.splits == ((1, "train"),) and a.group == "party1"
    assert a.path == str((tmp_path / "videos" / "a.mp4").resolve())
    b = by_id["videos/sub/b"]
    assert b.splits == ((1, "test"),) and b.group == "videos/sub/b" and b.labels == (2,)
    c = next(e for e in ds.entries if e.path == str(outside.resolve()))
    assert c.splits == () and c.video_id.endswith(f"{tmp_path.name}_elsewhere/c") and "\\" not in c.video_id
    assert ds.multi_label


def test_manifest_multilabel_video_without_label(tmp_path):
    csv = tmp_path / "m.csv"
    csv.write_text("path,labels,subset,group\nx.avi,A|B,train,g1\ny.avi,,test,g2\nz.avi,B,train,g3\n")
    ds = load_manifest(csv)
    by_id = {e.video_id: e for e in ds.entries}
    assert by_id["y"].labels == () and by_id["y"].label == NO_LABEL == -1 and by_id["y"].class_name == ""
    assert by_id["x"].labels == (0, 1) and by_id["z"].labels == (1,)
    assert ds.multi_label and ds.classes == ("A", "B")


def test_manifest_without_optional_columns(tmp_path):
    csv = tmp_path / "m.csv"
    csv.write_text("path,labels\nx.avi,A\ny.avi,B\n")
    ds = load_manifest(csv)
    assert [(e.video_id, e.label, e.splits) for e in ds.entries] == [("x", 0, ()), ("y", 1, ())]
    assert not ds.multi_label


@pytest.mark.parametrize("text,match", [
    ("file,labels\nx.avi,A\n", r"missing \['path'\]"),
    ("path,labels,subset\nx.avi,A,holdout\n", r"m.csv:2: subset must be train or test"),
    ("path,labels\nx.avi,\n", r"m.csv:2: no label"),
    # single-label data (no video with several labels) still needs every label
    ("path,labels\nx.avi,A\ny.avi, \n", r"m.csv:3: no label for 'y.avi'; a single-label manifest"),
    ("path,labels\nx.avi,A\nx.avi,B\n", r"listed twice \(first on line 2\)"),
    ("path,labels\n", "lists no videos"),
    ("path,labels\nx.avi,A,extra,more\n", r"m.csv:2: 4 fields but the header has 2 \(path,labels\)"),
    ("path,labels\nx.avi,A\ny.avi,B\x00\n", r"m.csv:3: a NUL byte in the row"),
    ("path,labels\nx.avi,Archery\ny.avi, archery \n", r"labels 'Archery' and 'archery' differ only in case"),
])
def test_manifest_errors_name_file_and_line(tmp_path, text, match):
    csv = tmp_path / "m.csv"
    csv.write_text(text)
    with pytest.raises(ValueError, match=match):
        load_manifest(csv)


def test_group_of_and_missing_dataset(tmp_path):
    assert group_of("v_YoYo_g25_c04", "x") == "g25"
    assert group_of("clip", "x") == "x"
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_dataset(tmp_path / "nothing")
    (tmp_path / "list.txt").write_text("x")
    with pytest.raises(ValueError, match="manifest .csv"):
        load_dataset(tmp_path / "list.txt")


def test_manifest_not_utf8_names_the_file_and_the_fix(tmp_path):
    csv = tmp_path / "m.csv"
    csv.write_bytes("path,labels\nx.avi,Caf\u00e9\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"m.csv: not UTF-8 text .*save the manifest as UTF-8"):
        load_manifest(csv)


def test_manifest_symlink_loop_is_listed_not_raised(tmp_path):
    """A looping link stays one row (extract records it as failed) instead of a RuntimeError for all."""
    (tmp_path / "loop.avi").symlink_to(tmp_path / "loop.avi")
    csv = tmp_path / "m.csv"
    csv.write_text("path,labels\nloop.avi,A\nx.avi,B\n")
    ds = load_manifest(csv)
    assert [e.video_id for e in ds.entries] == ["loop", "x"]
    assert ds.entries[0].path == str(tmp_path / "loop.avi")
