"""`hyvid synth`: layout, decodable videos, determinism, and the class design itself.

The design tests check what the demo relies on: an order pair plays the same content in the other
order (same time-averaged appearance and flow energy, opposite halves), no flow stack ever holds both
sub-actions, and the classes of one kind share the other kind's clue. They run over the first
19-class catalogue and over the classes added for up to 116 (all of them where it is cheap, a sample
where a test decodes flow), and pin that the first 19 classes still render as generator 2 did.
"""
from __future__ import annotations

import filecmp
import json
import math
import re
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
    assert all(filecmp.cmp(a, b, shallow=False) for a, b in zip(tiny.paths(), again.paths(), strict=True))
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
    assert len(set(zip(groups, (c for _, c in S.assign_groups(n)), strict=True))) == n  # unique (group, clip)
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


# Generator 2's catalogue and selection, taken from it before the catalogue grew: the first 19
# classes must keep their places (a class's index seeds its videos) and every n <= 19 its classes.
FIRST_CATALOGUE = [
    "AppearanceCat", "AppearanceCoffee", "AppearanceRocket", "AppearanceAstronaut", "AppearanceMotorcycle",
    "AppearanceTissue", "AppearanceGalaxies", "AppearanceRetina", "MotionUp", "MotionFastRight",
    "MotionSlowRight", "MotionDown", "MotionDiagonal", "OrderLeftThenUp", "OrderUpThenLeft",
    "OrderUpThenZoom", "OrderZoomThenUp", "OrderLeftThenZoom", "OrderZoomThenLeft",
]
FIRST_SELECTION = {
    4: ["AppearanceCat", "MotionUp", "OrderLeftThenUp", "OrderUpThenLeft"],
    7: ["AppearanceCat", "AppearanceCoffee", "AppearanceRocket", "MotionFastRight", "MotionUp",
        "OrderLeftThenUp", "OrderUpThenLeft"],
    10: ["AppearanceCat", "AppearanceCoffee", "AppearanceRocket", "MotionFastRight", "MotionSlowRight",
         "MotionUp", "OrderLeftThenUp", "OrderUpThenLeft", "OrderUpThenZoom", "OrderZoomThenUp"],
    15: ["AppearanceAstronaut", "AppearanceCat", "AppearanceCoffee", "AppearanceMotorcycle", "AppearanceRocket",
         "MotionDown", "MotionFastRight", "MotionSlowRight", "MotionUp", "OrderLeftThenUp", "OrderLeftThenZoom",
         "OrderUpThenLeft", "OrderUpThenZoom", "OrderZoomThenLeft", "OrderZoomThenUp"],
    19: sorted(FIRST_CATALOGUE),
}


@pytest.mark.parametrize("n", sorted(FIRST_SELECTION))
def test_first_catalogue_selection_is_unchanged(n):
    assert [c.name for c in S.select_classes(n)] == FIRST_SELECTION[n]
    assert [c.name for c in S.CATALOGUE[:19]] == FIRST_CATALOGUE


def test_generator_2_draws_and_seeds_are_unchanged():
    """Values generator 2 drew (taken from it): the new sub-actions' draws come after all of its
    draws, so every video of the first 19 classes keeps its bytes (GENERATOR_VERSION stays 2)."""
    from hyvid.pipelines.data.synth.render import _Nuisance

    nz = _Nuisance.draw(11, (160, 120), 72)
    assert (nz.T, nz.bg_name, nz.neutral_name, nz.noise_seed) == (61, "moon", "clock", 2032229670)
    np.testing.assert_allclose(nz.halves[:3], [0.1338299149502256, 0.1387563265368994, 0.15624537355582244])
    np.testing.assert_allclose(nz.swing_speed[:3], [1.9184166532417788, 1.7035923964454671, 1.5101263290584988])
    np.testing.assert_allclose([nz.zoom_amp, *nz.start], [0.43196473882099623, 44.34318280539269, 9.974039728229087])
    assert len(nz.halves) == len(nz.swing_speed) == len(S.SUB_ACTIONS)
    assert S.video_seed(0, BY_NAME["OrderLeftThenUp"], 3, 1) == 684891914
    assert S.video_seed(7, BY_NAME["MotionUp"], 25, 2) == 2767775896
    assert S.GENERATOR_VERSION == 2


def test_101_classes_mix_every_kind_in_whole_pairs():
    chosen = S.select_classes(101)
    names = [c.name for c in chosen]
    assert len(chosen) == 101 and len(set(names)) == 101 and names == sorted(names)
    kinds = Counter(c.kind for c in chosen)
    assert set(kinds) == set(S.KINDS) and all(28 <= k <= 40 for k in kinds.values()), kinds  # about a third each
    orders = {c.order for c in chosen if c.kind == S.KIND_ORDER}
    assert all((b, a) in orders for a, b in orders)  # whole pairs
    assert set(FIRST_CATALOGUE) <= set(names)  # beyond 19, the first 19 stay in
    cfg = S.SynthConfig(out=Path("unused"), classes=101, videos_per_class=13)  # validates
    assert cfg.classes * cfg.videos_per_class >= 1300  # a tenth of UCF-101


def test_catalogue_names_and_specs_are_distinct():
    names = [c.name for c in S.CATALOGUE]
    assert len(set(names)) == len(names) == S.MAX_CLASSES >= 101
    for c in S.CATALOGUE:
        assert re.fullmatch(r"[A-Z][A-Za-z]+", c.name), c.name  # a plain folder name, no separators
        assert S.class_kind(c.name) == c.kind
    app = [(c.photo, c.roi, c.tint) for c in S.APPEARANCE_CLASSES]
    assert len(set(app)) == len(app)
    assert len({(c.angle, c.speed) for c in S.MOTION_CLASSES}) == len(S.MOTION_CLASSES)
    assert {a for pair in S.ORDER_PAIRS for a in pair} == set(S.SUB_ACTIONS)
    assert len({frozenset(p) for p in S.ORDER_PAIRS}) == len(S.ORDER_PAIRS)  # each pair once


def test_beyond_19_selection_keeps_the_first_19_and_grows_every_kind():
    for n in range(20, S.MAX_CLASSES + 1):
        counts = S.kind_counts(n)
        assert all(c >= f for c, f in zip(counts, (8, 5, 3), strict=True)), (n, counts)
        assert sum(counts) + counts[2] == n
    assert counts == (len(S.APPEARANCE_CLASSES), len(S.MOTION_CLASSES), len(S.ORDER_PAIRS))  # MAX takes them all


@pytest.mark.parametrize("n", [3, 0, -1, S.MAX_CLASSES + 1, 2.5, True])
def test_class_count_errors_name_the_value_and_the_range(n):
    with pytest.raises(ValueError, match=rf"--classes {re.escape(str(n))}: choose 4\.\.{S.MAX_CLASSES}"):
        S.select_classes(n)


def test_writes_and_decodes_a_dataset_beyond_the_first_19_classes(tmp_path):
    res = S.synth(S.SynthConfig(out=tmp_path / "d", classes=30, videos_per_class=1, frames=36, size=(64, 48)))
    class_ind = (res.lists_dir / "classInd.txt").read_text().splitlines()
    assert len(class_ind) == 30
    assert Counter(c.kind for c in res.classes) == {"appearance": 10, "motion": 10, "order": 10}
    for v in res.videos:
        if v.class_name not in FIRST_CATALOGUE:
            frames = _decode(res.root / v.path)
            assert frames.shape[1:] == (48, 64, 3) and len(frames) == v.n_frames, v.path


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


def _states(v) -> np.ndarray:
    """Every frame's object state (scene position, scale, rotation, stretch), in time order."""
    return np.column_stack([v.center + v.camera, v.scale, v.rotation, v.stretch])


@pytest.mark.parametrize("pair, apps", [
    (("Left", "Up"), ("Cat", "Coffee")),
    (("Zoom", "Rotate"), ("Colorwheel", "Shelves")),
    (("Circle", "Diagonal"), ("BlueLogo", "GreenLogo")),
    (("Stretch", "Left"), ("Face", "MagentaHelmet")),
])
def test_order_pair_has_the_same_time_average_as_each_other(pair, apps):
    """Same seed: an order pair plays the same sub-actions in the other order, so the multiset of
    object states and the time-averaged appearance match, while two appearance classes differ."""
    first, second = pair
    d_order, d_app = [], []
    for seed in SEEDS:
        a = S.render_video(BY_NAME[f"Order{first}Then{second}"], seed)
        b = S.render_video(BY_NAME[f"Order{second}Then{first}"], seed)
        states = [np.sort(_states(v), axis=0) for v in (a, b)]
        np.testing.assert_allclose(states[0], states[1], atol=1e-6)
        # ... but not in time order: the sequence differs.
        assert not np.allclose(_states(a), _states(b))
        d_order.append(np.abs(_colour_histogram(a.frames) - _colour_histogram(b.frames)).sum())
        c = S.render_video(BY_NAME[f"Appearance{apps[0]}"], seed)
        e = S.render_video(BY_NAME[f"Appearance{apps[1]}"], seed)
        np.testing.assert_allclose(c.center, e.center)  # appearance classes share their motion
        d_app.append(np.abs(_colour_histogram(c.frames) - _colour_histogram(e.frames)).sum())
    assert np.mean(d_order) < 0.2 * np.mean(d_app), (d_order, d_app)


def _path_over_net(centre: np.ndarray) -> np.ndarray:
    """Path length over net displacement of every possible stack of L flows."""
    steps = np.linalg.norm(np.diff(centre, axis=0), axis=1)
    path = np.convolve(steps, np.ones(L), "valid")
    net = np.linalg.norm(centre[L:] - centre[:-L], axis=1)
    return path / np.maximum(net, 1e-9)


def test_appearance_classes_shake_in_place():
    """Appearance objects shake: every flow stack of one reverses direction (its path is much longer
    than its net displacement), while a motion class's never does. So the motion stream can tell an
    appearance video from a motion one, but not which appearance class it is."""
    for seed in SEEDS:
        shake = S.render_video(BY_NAME["AppearanceCat"], seed, stack=L).center
        assert np.linalg.norm(np.diff(shake, axis=0), axis=1).mean() > 0.5  # it does move
        assert _path_over_net(shake).min() > 1.5, seed
        for name in ("MotionUp", "MotionSlowRight"):
            ratio = _path_over_net(S.render_video(BY_NAME[name], seed, stack=L).center)
            np.testing.assert_allclose(ratio, 1.0, atol=1e-3)  # a straight line


def test_motion_classes_share_appearance():
    """Same seed: motion classes start from the same frame (same object, background, noise)."""
    for seed in SEEDS:
        first = [S.render_video(BY_NAME[n], seed, frames=40).frames[0] for n in ("MotionUp", "MotionFastRight")]
        np.testing.assert_array_equal(first[0], first[1])


def test_every_appearance_class_shakes_as_the_first_and_looks_different():
    """All appearance classes, new ones too: with one seed the very same shake (the motion stream
    cannot tell them apart), while the pictures differ."""
    for seed in SEEDS[:2]:
        ref = S.render_video(S.APPEARANCE_CLASSES[0], seed, size=(64, 48), frames=36)
        for c in S.APPEARANCE_CLASSES[1:]:
            v = S.render_video(c, seed, size=(64, 48), frames=36)
            np.testing.assert_array_equal(v.center, ref.center)
            assert (v.scale == 1).all() and (v.rotation == 0).all() and (v.stretch == 1).all(), c.name
            assert np.abs(v.frames.astype(np.int16) - ref.frames).mean() > 1.0, c.name


def test_every_motion_and_order_class_shares_the_neutral_object_and_motion_is_straight():
    """All motion and order classes start from the same frame (same object, background, noise),
    and every motion class moves in a straight line: its path over any stack is its displacement."""
    for seed in SEEDS[:2]:
        ref = S.render_video(BY_NAME["MotionUp"], seed, size=(64, 48), frames=36).frames[0]
        for c in S.MOTION_CLASSES + S.ORDER_CLASSES:
            v = S.render_video(c, seed, size=(64, 48), frames=36)
            np.testing.assert_array_equal(v.frames[0], ref, err_msg=c.name)
            if c.kind == S.KIND_MOTION:
                np.testing.assert_allclose(_path_over_net(v.center), 1.0, atol=1e-3, err_msg=c.name)


@pytest.mark.parametrize("name", [c.name for c in S.ORDER_CLASSES])
def test_no_flow_stack_holds_both_sub_actions(name):
    for seed in SEEDS:
        for frames in (S.min_frames(L), 72):
            # The timeline depends on the frame count, not the frame size: small frames keep 42 classes cheap.
            v = S.render_video(BY_NAME[name], seed, size=(64, 48), frames=frames, stack=L)
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
    for a, b in zip(grey[:-1], grey[1:], strict=True):
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
            for a, b in zip(grey[:-1:4], grey[1::4], strict=True):
                flow = cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 3, 15, 3, 5, 1.2, 0)
                flow -= np.median(flow.reshape(-1, 2), axis=0)
                moving = np.linalg.norm(flow, axis=2) > 0.4  # the object, not the background
                if moving.sum() > 20:
                    flows.append(flow[moving].mean(0))
        means[name] = np.mean(flows, axis=0)
    assert means["MotionUp"][1] < -0.4 and abs(means["MotionUp"][0]) < 0.5 * abs(means["MotionUp"][1]), means
    assert means["MotionFastRight"][0] > 1.5 * means["MotionSlowRight"][0] > 0, means


def _object_flow(name: str, seed: int) -> np.ndarray:
    """Mean Farneback flow (x right, y down) of the moving pixels, camera motion removed, per flow."""
    v = S.render_video(BY_NAME[name], seed, frames=40)
    grey = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in v.frames]
    flows = []
    for a, b in zip(grey[:-1:4], grey[1::4], strict=True):
        flow = cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 3, 15, 3, 5, 1.2, 0)
        flow -= np.median(flow.reshape(-1, 2), axis=0)
        moving = np.linalg.norm(flow, axis=2) > 0.4
        if moving.sum() > 20:
            flows.append(flow[moving].mean(0))
    return np.array(flows)


@pytest.mark.parametrize("name", ["MotionFastDown", "MotionSlowSteepUpRight", "MotionShallowDownRight",
                                  "MotionVeryFastRight", "MotionFastDownRight", "MotionSteepDownRight"])
def test_new_motion_classes_flow_in_their_direction(name):
    mean = np.concatenate([_object_flow(name, seed) for seed in SEEDS[:2]]).mean(0)
    angle = math.degrees(math.atan2(-mean[1], mean[0]))
    assert abs((angle - BY_NAME[name].angle + 180) % 360 - 180) < 8, (name, angle)  # classes are 22.5 apart


def test_motion_speeds_are_ordered():
    speed = {s: np.linalg.norm(np.concatenate([_object_flow(f"Motion{s}Up", seed) for seed in SEEDS[:2]]).mean(0))
             for s in ("Slow", "", "Fast", "VeryFast")}
    values = list(speed.values())
    assert all(b > 1.3 * a for a, b in zip(values, values[1:], strict=False)), speed


def _flow_signature(frames_bgr: np.ndarray, flow_indices: np.ndarray) -> np.ndarray:
    """What one sub-action's flows look like: the magnitude-weighted histogram of flow axes (4 bins
    over 180 degrees; sign-free, as flips and the swing back make it) and |divergence|, |curl| and
    |anisotropy| per unit of speed. Translations differ by axis, Zoom/Rotate/Stretch by the rest."""
    grey = [cv2.cvtColor(f, cv2.COLOR_BGR2GRAY) for f in frames_bgr]
    hist, shape, speed = np.zeros(4), np.zeros(3), 0.0
    for t in flow_indices:
        flow = cv2.calcOpticalFlowFarneback(grey[t], grey[t + 1], None, 0.5, 3, 15, 3, 5, 1.2, 0)
        flow -= np.median(flow.reshape(-1, 2), axis=0)
        mag = np.linalg.norm(flow, axis=2)
        m = mag > 0.3
        if m.sum() < 20:
            continue
        axis = np.arctan2(-flow[..., 1], flow[..., 0])[m] % np.pi
        hist += np.bincount(((axis + np.pi / 8) // (np.pi / 4)).astype(int) % 4, weights=mag[m], minlength=4)
        du_dy, du_dx = np.gradient(flow[..., 0])
        dv_dy, dv_dx = np.gradient(flow[..., 1])
        shape += [np.abs(du_dx + dv_dy)[m].sum(), np.abs(dv_dx - du_dy)[m].sum(), np.abs(du_dx - dv_dy)[m].sum()]
        speed += mag[m].sum()
    return np.concatenate([hist / hist.sum(), 10 * shape / speed])


@pytest.mark.parametrize("first, second", [("Zoom", "Rotate"), ("Circle", "Diagonal"), ("Stretch", "Left")])
def test_new_sub_actions_are_told_apart_by_their_flow(tmp_path, first, second):
    """Encoded and decoded: a sub-action's flows look the same in either class of its pair and
    unlike the other sub-action's, so the bag of stacks tells the pairs apart (and the order is
    left to the sequence)."""
    same = diff = 0.0
    for seed in SEEDS[:2]:
        sig = {}
        for a, b in ((first, second), (second, first)):
            v = S.render_video(BY_NAME[f"Order{a}Then{b}"], seed)
            path = tmp_path / f"{a}{b}{seed}.avi"
            S.write_video(path, v.frames, 25.0)
            frames, phase = _decode(path), v.phase[:-1]
            sig[a, 1], sig[b, 2] = (_flow_signature(frames, np.where(phase == k)[0]) for k in (1, 2))
        same += np.abs(sig[first, 1] - sig[first, 2]).sum() + np.abs(sig[second, 1] - sig[second, 2]).sum()
        diff += np.abs(sig[first, 1] - sig[second, 2]).sum() + np.abs(sig[second, 1] - sig[first, 2]).sum()
    assert same < 0.4 * diff, (same, diff)


def test_multilabel_panels_are_single_label_renders_and_no_label_shakes_like_appearance(tmp_path):
    from hyvid.pipelines.data.synth import (
        APPEARANCE_CLASSES,
        NO_LABEL_PANEL,
        MultiLabelConfig,
        render_multilabel,
        render_video,
    )
    from hyvid.pipelines.data.synth.multilabel import _panel_seed, _plan

    cfg = MultiLabelConfig(out=tmp_path / "ml", classes=4, labels_per_video=2, videos=3, frames=30, size=(96, 72),
                           stack=3, empty_fraction=0.0)
    item = _plan(cfg)[0]
    assert len(item["panels"]) == 4 and sum(p is NO_LABEL_PANEL for p in item["panels"]) == 2
    frames = render_multilabel(cfg, item)
    assert frames.shape == (item["length"], 72, 96, 3)
    for k, spec in enumerate(item["panels"]):  # each panel is that class's own video, tiled row by row
        r, c = divmod(k, 2)
        alone = render_video(spec, _panel_seed(cfg.seed, 0, k), (48, 36), 30, 3, length=item["length"]).frames
        np.testing.assert_array_equal(frames[:, r * 36:(r + 1) * 36, c * 48:(c + 1) * 48], alone)
    # With one seed a label-less panel moves exactly as an appearance object does (the shared shake),
    # so the motion stream cannot tell it from an appearance label's panel.
    a = render_video(APPEARANCE_CLASSES[0], 5, (80, 60), 30, 3, length=33)
    n = render_video(NO_LABEL_PANEL, 5, (80, 60), 30, 3, length=33)
    assert len(n.frames) == 33
    np.testing.assert_allclose(n.center, a.center)
    assert not np.array_equal(n.frames, a.frames)  # but it looks neutral
