"""`hyvid synth`: layout, decodable videos, determinism, and the class design itself.

The design tests check what the demo relies on: an order pair plays the same content in the other
order (same time-averaged appearance and flow energy, opposite halves), no flow stack ever holds both
sub-actions, and the classes of one kind share the other kind's clue.
"""
from __future__ import annotations

import filecmp
import json
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

from hyvid.pipelines.data import synth as S
from hyvid.store.splits import subset_of, val_groups

TINY = dict(classes=6, videos_per_class=2, frames=40, size=(96, 72), seed=3)
L = 10  # flow stack length the demo extracts with
SEEDS = (11, 12, 13)
BY_NAME = {c.name: c for c in S.CATALOGUE}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> S.SynthResult:
    return S.synth(S.SynthConfig(out=tmp_path_factory.mktemp("synth") / "data", **TINY))


def _decode(path: Path) -> np.ndarray:
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(f)
    cap.release()
    return np.stack(frames)


# --- layout -----------------------------------------------------------------------------------


def test_layout_and_split_lists_parse(tiny):
    root, lists = tiny.root, tiny.lists_dir
    class_ind = [line.split() for line in (lists / "classInd.txt").read_text().splitlines()]
    assert [int(i) for i, _ in class_ind] == list(range(1, TINY["classes"] + 1))  # 1-based
    names = [n for _, n in class_ind]
    assert names == sorted(names) == [c.name for c in tiny.classes]
    assert sorted(p.name for p in root.iterdir() if p.is_dir() and p.name != S.LISTS_DIR) == names
    assert {c.kind for c in tiny.classes} == set(S.KINDS)
    for c in tiny.classes:
        assert S.class_kind(c.name) == c.kind

    all_videos = {v.path for v in tiny.videos}
    assert len(all_videos) == TINY["classes"] * TINY["videos_per_class"]
    for k in (1, 2, 3):
        train = [line.split() for line in (lists / f"trainlist0{k}.txt").read_text().splitlines()]
        test = [line.split() for line in (lists / f"testlist0{k}.txt").read_text().splitlines()]
        assert all(len(t) == 2 for t in train) and all(len(t) == 1 for t in test)  # test lists: no label
        for rel, label in train:
            cls, fname = rel.split("/")
            assert names[int(label) - 1] == cls and fname.startswith(f"v_{cls}_g")
        listed = [t[0] for t in train] + [t[0] for t in test]
        assert sorted(listed) == sorted(all_videos)  # each video in exactly one list per split
        for (rel,) in test:
            group = int(rel.split("_g")[1][:2])
            assert 7 * (k - 1) < group <= 7 * k, rel
    for v in tiny.videos:
        assert (root / v.path).is_file() and f"_g{v.group:02d}_c{v.clip:02d}.avi" in v.path
    meta = json.loads((root / S.MANIFEST).read_text())
    assert meta["config"]["seed"] == TINY["seed"] and len(meta["videos"]) == len(all_videos)


def test_every_video_decodes_with_expected_frames_and_size(tiny):
    W, H = TINY["size"]
    for v in tiny.videos:
        frames = _decode(tiny.root / v.path)
        assert frames.shape[1:] == (H, W, 3), v.path
        assert len(frames) == v.n_frames, v.path
        assert 0.8 * TINY["frames"] - 1 <= len(frames) <= 1.2 * TINY["frames"] + 1, v.path
        assert frames.std() > 10, f"{v.path} decodes to a flat image"
    assert len({v.n_frames for v in tiny.videos}) > 1  # lengths are jittered


def test_same_seed_same_bytes_other_seed_other_videos(tiny, tmp_path):
    again = S.synth(S.SynthConfig(out=tmp_path / "again", workers=1, **TINY))
    assert [v.path for v in again.videos] == [v.path for v in tiny.videos]
    assert all(filecmp.cmp(a, b, shallow=False) for a, b in zip(tiny.paths(), again.paths()))
    other = S.synth(S.SynthConfig(out=tmp_path / "other", **{**TINY, "seed": 4}))
    first = tiny.paths()[0]
    assert not np.array_equal(_decode(first)[:5], _decode(other.root / tiny.videos[0].path)[:5])


def test_rerun_reuses_and_other_settings_need_overwrite(tmp_path):
    cfg = S.SynthConfig(out=tmp_path / "d", classes=4, videos_per_class=1, frames=36, size=(64, 48))
    first = S.synth(cfg)
    assert not first.reused
    before = first.paths()[0].read_bytes()
    assert S.synth(cfg).reused
    changed = S.SynthConfig(out=cfg.out, classes=4, videos_per_class=1, frames=36, size=(64, 48), seed=9)
    with pytest.raises(ValueError, match="--overwrite"):
        S.synth(changed)
    redone = S.synth(S.SynthConfig(**{**vars(changed), "overwrite": True}))
    assert not redone.reused and len(redone.videos) == 4
    assert redone.paths()[0].read_bytes() != before

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="not a hyvid synth dataset"):
        S.synth(S.SynthConfig(out=foreign, classes=4, videos_per_class=1, frames=36, size=(64, 48), overwrite=True))
    assert (foreign / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize("bad, match", [
    (dict(classes=3), "--classes 3"),
    (dict(classes=S.MAX_CLASSES + 1), "--classes"),
    (dict(videos_per_class=0), "--videos-per-class"),
    (dict(frames=20), "--frames 20 is too short"),
    (dict(size=(16, 16)), "--size"),
])
def test_config_rejects_bad_values(tmp_path, bad, match):
    with pytest.raises(ValueError, match=match):
        S.SynthConfig(out=tmp_path, **bad)


def test_groups_give_every_split_train_val_and_test():
    n = S.config_defaults()["videos_per_class"]
    groups = [f"g{g:02d}" for g, _ in S.assign_groups(n)]
    assert len(set(zip(groups, (c for _, c in S.assign_groups(n))))) == n  # unique (group, clip)
    for k in (1, 2, 3):
        official = {g: ("test" if 7 * (k - 1) < int(g[1:]) <= 7 * k else "train") for g in groups}
        val = val_groups(f"g{g:02d}" for g in range(1, 26) if official_split_train(g, k))
        subsets = Counter(subset_of(official[g], g, val) for g in groups)
        assert subsets["train"] >= subsets["test"] >= 2 and subsets["val"] >= 1, (k, subsets)
    assert S.min_videos_for_coverage() <= 5


def official_split_train(group: int, split: int) -> bool:
    return not 7 * (split - 1) < group <= 7 * split


def test_class_selection_keeps_kinds_and_pairs():
    for n in range(S.MIN_CLASSES, S.MAX_CLASSES + 1):
        chosen = S.select_classes(n)
        names = {c.name for c in chosen}
        assert len(names) == n and {c.kind for c in chosen} == set(S.KINDS)
        for c in chosen:
            if c.kind == S.KIND_ORDER:  # its partner, the same sub-actions reversed, is there too
                a, b = c.order
                assert f"Order{b}Then{a}" in names
    # No two motion classes are mirror images: horizontal-flip augmentation would merge them.
    for a in S.MOTION_CLASSES:
        for b in S.MOTION_CLASSES:
            if a is not b:
                assert not (a.speed == b.speed and (a.angle + b.angle) % 360 == 180), (a.name, b.name)


def test_cli_writes_and_reports(tmp_path, capsys):
    from hyvid.pipelines.cli import main

    out = tmp_path / "cli"
    assert main(["synth", str(out), "--classes", "4", "--videos-per-class", "1", "--frames", "36",
                 "--size", "64x48", "--seed", "5"]) == 0
    text = capsys.readouterr().out
    assert "wrote 4 videos of 4 classes" in text and "OrderLeftThenUp" in text
    assert len(list(out.glob("*/*.avi"))) == 4
    assert main(["synth", str(tmp_path / "x"), "--size", "sixty"]) == 2
    assert "WxH" in capsys.readouterr().err


# --- the class design -----------------------------------------------------------------------------


def _colour_histogram(frames: np.ndarray) -> np.ndarray:
    """Time-averaged RGB histogram (8 bins per channel): a time-averaged appearance feature."""
    q = (frames // 32).reshape(-1, 3).astype(np.int64)
    h = np.bincount(q[:, 0] * 64 + q[:, 1] * 8 + q[:, 2], minlength=512).astype(np.float64)
    return h / h.sum()


def test_order_pair_has_the_same_time_average_as_each_other():
    """Same seed: an order pair plays the same swings in the other order, so the multiset of object
    states and the time-averaged appearance match, while two appearance classes differ."""
    d_order, d_app = [], []
    for seed in SEEDS:
        a = S.render_video(BY_NAME["OrderLeftThenUp"], seed)
        b = S.render_video(BY_NAME["OrderUpThenLeft"], seed)
        states = [np.sort(np.column_stack([v.center + v.camera, v.scale]), axis=0) for v in (a, b)]
        np.testing.assert_allclose(states[0], states[1], atol=1e-6)
        # ... but not in time order: the sequence differs.
        assert not np.allclose(a.center + a.camera, b.center + b.camera)
        d_order.append(np.abs(_colour_histogram(a.frames) - _colour_histogram(b.frames)).sum())
        c = S.render_video(BY_NAME["AppearanceCat"], seed)
        e = S.render_video(BY_NAME["AppearanceCoffee"], seed)
        np.testing.assert_allclose(c.center, e.center)  # appearance classes share their motion
        d_app.append(np.abs(_colour_histogram(c.frames) - _colour_histogram(e.frames)).sum())
    assert np.mean(d_order) < 0.2 * np.mean(d_app), (d_order, d_app)


def test_appearance_classes_shake_in_place():
    """Appearance objects shake: every flow stack of one reverses direction (its path is much longer
    than its net displacement), while a motion class's never does. So the motion stream can tell an
    appearance video from a motion one, but not which appearance class it is."""

    def path_over_net(centre: np.ndarray) -> np.ndarray:
        steps = np.linalg.norm(np.diff(centre, axis=0), axis=1)
        path = np.convolve(steps, np.ones(L), "valid")  # the L flows of every possible stack
        net = np.linalg.norm(centre[L:] - centre[:-L], axis=1)
        return path / np.maximum(net, 1e-9)

    for seed in SEEDS:
        shake = S.render_video(BY_NAME["AppearanceCat"], seed, stack=L).center
        assert np.linalg.norm(np.diff(shake, axis=0), axis=1).mean() > 0.5  # it does move
        assert path_over_net(shake).min() > 1.5, seed
        for name in ("MotionUp", "MotionSlowRight"):
            ratio = path_over_net(S.render_video(BY_NAME[name], seed, stack=L).center)
            np.testing.assert_allclose(ratio, 1.0, atol=1e-3)  # a straight line


def test_motion_classes_share_appearance():
    """Same seed: motion classes start from the same frame (same object, background, noise)."""
    for seed in SEEDS:
        first = [S.render_video(BY_NAME[n], seed, frames=40).frames[0] for n in ("MotionUp", "MotionFastRight")]
        np.testing.assert_array_equal(first[0], first[1])


@pytest.mark.parametrize("name", [c.name for c in S.ORDER_CLASSES])
def test_no_flow_stack_holds_both_sub_actions(name):
    for seed in SEEDS:
        for frames in (S.min_frames(L), 72):
            v = S.render_video(BY_NAME[name], seed, frames=frames, stack=L)
            phase = v.phase[:-1]  # phase of flow t -> t+1
            assert (phase == 1).any() and (phase == 2).any()
            last_first, first_second = np.where(phase == 1)[0].max(), np.where(phase == 2)[0].min()
            assert first_second - last_first - 1 >= L + 2, "the still pause must outlast a stack"
            for p in range(len(phase) - L + 1):  # any start the extractor may sample
                assert not {1, 2} <= set(phase[p: p + L].tolist()), (name, seed, p)
            # ... while 25 uniformly sampled stacks see each sub-action, first before second.
            starts = np.floor(np.linspace(0, len(v.frames) - 1 - L, 25) + 0.5).astype(int)
            seen = [set(phase[s: s + L].tolist()) - {0} for s in starts]
            assert [1] in [sorted(x) for x in seen] and [2] in [sorted(x) for x in seen]


def _flow_energy(frames_bgr: np.ndarray) -> np.ndarray:
    """Per flow: mean |u|, |v| of Farneback flow after removing the camera's (median) motion."""
    grey = [cv2.cvtColor(f, cv2.COLOR_BGR2GRAY) for f in frames_bgr]
    out = []
    for a, b in zip(grey[:-1], grey[1:]):
        flow = cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 3, 15, 3, 5, 1.2, 0)
        flow -= np.median(flow.reshape(-1, 2), axis=0)
        out.append(np.abs(flow).mean(axis=(0, 1)))
    return np.array(out)


def test_order_pair_flow_same_overall_opposite_halves(tmp_path):
    """Encoded and decoded, as the extractor sees them: over the whole video the pair has the same
    horizontal/vertical flow energy; split at the pause, LeftThenUp is horizontal first and
    vertical second, UpThenLeft the reverse."""
    total = {n: np.zeros(2) for n in ("OrderLeftThenUp", "OrderUpThenLeft")}
    halves = {n: [np.zeros(2), np.zeros(2)] for n in total}
    for seed in SEEDS:
        for name in total:
            v = S.render_video(BY_NAME[name], seed)
            path = tmp_path / f"{name}_{seed}.avi"
            S.write_video(path, v.frames, 25.0)
            e = _flow_energy(_decode(path))
            phase = v.phase[:-1]
            mid = (np.where(phase == 1)[0].max() + np.where(phase == 2)[0].min()) // 2
            total[name] += e.sum(0)
            halves[name][0] += e[:mid].sum(0)
            halves[name][1] += e[mid:].sum(0)
    ratio = {n: t[0] / t[1] for n, t in total.items()}  # horizontal / vertical
    assert ratio["OrderLeftThenUp"] == pytest.approx(ratio["OrderUpThenLeft"], rel=0.1), ratio
    h = {n: [x[0] / x[1] for x in hv] for n, hv in halves.items()}
    assert h["OrderLeftThenUp"][0] > 1.4 * h["OrderLeftThenUp"][1], h
    assert h["OrderUpThenLeft"][1] > 1.4 * h["OrderUpThenLeft"][0], h


def test_motion_classes_flow_in_their_direction_and_speed():
    means = {}
    for name in ("MotionUp", "MotionFastRight", "MotionSlowRight"):
        flows = []
        for seed in SEEDS:
            v = S.render_video(BY_NAME[name], seed, frames=40)
            bgr = v.frames[..., ::-1]
            grey = [cv2.cvtColor(np.ascontiguousarray(f), cv2.COLOR_BGR2GRAY) for f in bgr]
            for a, b in zip(grey[:-1:4], grey[1::4]):
                flow = cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 3, 15, 3, 5, 1.2, 0)
                flow -= np.median(flow.reshape(-1, 2), axis=0)
                moving = np.linalg.norm(flow, axis=2) > 0.4  # the object, not the background
                if moving.sum() > 20:
                    flows.append(flow[moving].mean(0))
        means[name] = np.mean(flows, axis=0)
    assert means["MotionUp"][1] < -0.4 and abs(means["MotionUp"][0]) < 0.5 * abs(means["MotionUp"][1]), means
    assert means["MotionFastRight"][0] > 1.5 * means["MotionSlowRight"][0] > 0, means
