"""`hyvid synth --multilabel`: a CCV-style dataset, several labels per video, one manifest CSV.

The labels are synth classes (`select_classes(n)`: appearance, motion and order labels). A video
is a G x G grid of panels; each positive label of the video is one panel, rendered by that class's
single-label rule (`render.render_video` at the panel's size), and the panels left over hold a
neutral object that shakes in place (`NO_LABEL_PANEL`). A video with no label is all such panels.
All panels of a video share its length; everything else (start, background, nuisance) is drawn
per panel from the panel's own seed, and which panel holds which label is random. So each
single-label guarantee (docs/synth.md) holds panel by panel: an appearance label needs the
spatial stream, a motion label the motion stream, an order label the order of the motion.

    from hyvid.pipelines.data.synth import MultiLabelConfig, synth_multilabel
    res = synth_multilabel(MultiLabelConfig(out="data/ccv_synth"))   # res.manifest: path,labels,subset,group
"""
from __future__ import annotations

import csv
import json
import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import cv2
import numpy as np

from hyvid.pipelines.data.synth.catalogue import KIND_NONE, ClassSpec, select_classes
from hyvid.pipelines.data.synth.groups import UCF_GROUPS, official_subset
from hyvid.pipelines.data.synth.render import GENERATOR_VERSION, min_frames, render_video
from hyvid.pipelines.data.synth.writer import (
    _INCOMPLETE,
    MANIFEST,
    OWNED_ENTRIES,
    SynthClass,
    _prepare,
    finish_dataset,
    write_video,
)

log = logging.getLogger(__name__)

VIDEOS_DIR, MANIFEST_CSV = OWNED_ENTRIES  # what writer._prepare may remove on --overwrite
# A panel with no label: neutral texture (like motion and order objects, so the spatial stream
# cannot tell it from them) shaking in place (like appearance objects, so the motion stream cannot
# tell it from them).
NO_LABEL_PANEL = ClassSpec("NoLabel", KIND_NONE, "a neutral object shaking in place (no label)")
_SEED_TAG = 0x4D4C  # "ML": keeps panel seeds apart from the single-label writer's video seeds


@dataclass(frozen=True)
class MultiLabelConfig:
    """What `synth_multilabel` writes. Defaults: 10 labels, 4 per video, 300 videos."""

    out: Path
    classes: int = 10  # labels, chosen as `--classes` chooses single-label classes
    labels_per_video: int = 4  # every labelled video has exactly this many (at most one panel each)
    empty_fraction: float = 0.05  # videos with no positive label (CCV has them)
    videos: int = 300
    frames: int = 72  # mean frames per video; each video draws its length within ±20%
    size: tuple[int, int] = (320, 240)  # (width, height): 2x2 panels of the single-label design size
    seed: int = 0
    fps: float = 25.0
    stack: int = 10  # L of the flow stacks: the order labels' still pause is longer than this
    workers: int = 2
    overwrite: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "out", Path(self.out))
        object.__setattr__(self, "size", tuple(int(v) for v in self.size))
        n = len(select_classes(self.classes))  # validates the count
        if not 1 <= self.labels_per_video <= n:
            raise ValueError(f"--labels-per-video must be 1..{n} (the number of labels), got {self.labels_per_video}")
        if not 0.0 <= self.empty_fraction < 1.0:
            raise ValueError(f"--empty-fraction must be in [0, 1), got {self.empty_fraction}")
        if self.videos < 2:
            raise ValueError(f"--videos must be >= 2, got {self.videos}")
        g = self.grid
        if len(self.size) != 2 or self.size[0] % g or self.size[1] % g:
            raise ValueError(f"--size {self.size}: width and height must divide into a {g}x{g} grid of panels")
        if min(self.size) // g < 24 or max(self.size) > 3840:
            raise ValueError(f"--size {self.size}: panels of {self.size[0] // g}x{self.size[1] // g} are too "
                             f"small; give at least {24 * g} pixels a side (the default is 320x240)")
        for name in ("stack", "workers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.fps <= 0:
            raise ValueError(f"fps must be > 0, got {self.fps}")
        if self.frames < min_frames(self.stack):
            raise ValueError(f"--frames {self.frames} is too short: the order labels need at least "
                             f"{min_frames(self.stack)} frames for a flow stack of {self.stack}")

    @property
    def grid(self) -> int:
        """Panels per side: enough for every label of a video, and at least 2 (a free panel to shuffle)."""
        return max(2, math.ceil(math.sqrt(self.labels_per_video)))

    @property
    def panel_size(self) -> tuple[int, int]:
        return self.size[0] // self.grid, self.size[1] // self.grid

    def content(self) -> dict:
        """The settings that decide the files: the reuse key."""
        d = asdict(self)
        for k in ("out", "workers", "overwrite"):
            d.pop(k)
        d["size"] = list(self.size)
        d.update(generator=GENERATOR_VERSION, multilabel=True)
        return d


@dataclass(frozen=True)
class MultiLabelVideo:
    path: str  # relative to the dataset root, POSIX
    labels: tuple[str, ...]  # () for a video with no positive label
    group: int  # 1..25; UCF-101 split 1's test groups (1..7) are the test subset
    clip: int
    subset: str  # train | test
    n_frames: int
    panels: tuple[str, ...]  # the class (or NoLabel) of each panel, row by row


@dataclass(frozen=True)
class MultiLabelResult:
    root: Path
    classes: tuple[SynthClass, ...]  # the labels, with their kind
    videos: tuple[MultiLabelVideo, ...]
    reused: bool = False
    seconds: float = 0.0

    @property
    def manifest(self) -> Path:
        return self.root / MANIFEST_CSV

    def kinds(self) -> dict[str, str]:
        """label name -> kind (appearance, motion or order)."""
        return {c.name: c.kind for c in self.classes}


def deal_labels(cfg: MultiLabelConfig) -> list[tuple[int, ...]]:
    """Each video's label indices: `labels_per_video` distinct ones dealt from shuffled decks of all
    labels (so every label is positive in nearly the same number of videos), none for the
    `empty_fraction` chosen at random. Depends on the seed and the counts only."""
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, _SEED_TAG, 0]))
    n = len(select_classes(cfg.classes))
    empty = set(rng.choice(cfg.videos, int(round(cfg.videos * cfg.empty_fraction)), replace=False).tolist())
    deck: list[int] = []
    out: list[tuple[int, ...]] = []
    for v in range(cfg.videos):
        if v in empty:
            out.append(())
            continue
        hand: list[int] = []
        while len(hand) < cfg.labels_per_video:
            if not deck:
                deck = rng.permutation(n).tolist()
            # The next card not already in the hand (a hand can straddle two decks).
            i = next((k for k, c in enumerate(deck) if c not in hand), None)
            if i is None:  # every card left repeats the hand: start a fresh deck on top
                deck = rng.permutation(n).tolist() + deck
                continue
            hand.append(deck.pop(i))
        out.append(tuple(sorted(hand)))
    return out


def _panel_seed(seed: int, video: int, panel: int) -> int:
    return int(np.random.SeedSequence([seed, _SEED_TAG, 1, video, panel]).generate_state(1)[0])


def _plan(cfg: MultiLabelConfig) -> list[dict]:
    """Every video: its group, clip, labels, panel classes (in grid order) and length."""
    labels = select_classes(cfg.classes)
    cells = cfg.grid ** 2
    clips: dict[int, int] = {}
    plan = []
    for v, hand in enumerate(deal_labels(cfg)):
        group = v % UCF_GROUPS + 1  # round robin: every group gets every kind of video
        clips[group] = clips.get(group, 0) + 1
        rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, _SEED_TAG, 2, v]))
        length = max(2, int(round(cfg.frames * rng.uniform(0.8, 1.2))))
        slots = rng.permutation(cells)  # which panel holds which label: position tells nothing
        panels: list[ClassSpec] = [NO_LABEL_PANEL] * cells
        for c, slot in zip(hand, slots, strict=False):
            panels[int(slot)] = labels[c]
        rel = f"{VIDEOS_DIR}/v_ml_g{group:02d}_c{clips[group]:03d}.avi"
        plan.append({"index": v, "group": group, "clip": clips[group], "labels": tuple(labels[c].name for c in hand),
                     "panels": panels, "length": length, "path": rel})
    return plan


def render_multilabel(cfg: MultiLabelConfig, item: dict) -> np.ndarray:
    """One planned video's frames (T, H, W, 3) uint8 RGB: its panels rendered and tiled."""
    g, (pw, ph) = cfg.grid, cfg.panel_size
    out = np.empty((item["length"], cfg.size[1], cfg.size[0], 3), np.uint8)
    for k, spec in enumerate(item["panels"]):
        r, c = divmod(k, g)
        panel = render_video(spec, _panel_seed(cfg.seed, item["index"], k), (pw, ph), cfg.frames, cfg.stack,
                             length=item["length"])
        out[:, r * ph:(r + 1) * ph, c * pw:(c + 1) * pw] = panel.frames
    return out


def _write_manifest(root: Path, videos: list[MultiLabelVideo]) -> None:
    with open(root / MANIFEST_CSV, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "labels", "subset", "group"])
        for v in videos:
            w.writerow([v.path, "|".join(v.labels), v.subset, f"g{v.group:02d}"])


def _load_result(root: Path, seconds: float = 0.0, reused: bool = False) -> MultiLabelResult:
    meta = json.loads((root / MANIFEST).read_text())
    return MultiLabelResult(
        root=root,
        classes=tuple(SynthClass(**c) for c in meta["classes"]),
        videos=tuple(MultiLabelVideo(**{**v, "labels": tuple(v["labels"]), "panels": tuple(v["panels"])})
                     for v in meta["videos"]),
        reused=reused, seconds=seconds,
    )


def synth_multilabel(cfg: MultiLabelConfig) -> MultiLabelResult:
    """Write the dataset: videos under OUT/videos/, OUT/manifest.csv and OUT/synth.json."""
    t_start = time.perf_counter()
    if _prepare(cfg):
        log.info("%s already holds this dataset; reusing it", cfg.out)
        return _load_result(cfg.out, time.perf_counter() - t_start, reused=True)
    labels = select_classes(cfg.classes)
    cfg.out.mkdir(parents=True, exist_ok=True)
    (cfg.out / _INCOMPLETE).write_text(json.dumps({"classes": [], "owned": list(OWNED_ENTRIES)}))
    plan = _plan(cfg)

    def one(item: dict) -> MultiLabelVideo:
        write_video(cfg.out / item["path"], render_multilabel(cfg, item), cfg.fps)
        return MultiLabelVideo(item["path"], item["labels"], item["group"], item["clip"],
                               official_subset(item["group"], 1), item["length"],
                               tuple(p.name for p in item["panels"]))

    from tqdm import tqdm

    cv_threads = cv2.getNumThreads()
    cv2.setNumThreads(1)  # our threads are the parallelism (see writer.synth)
    try:
        with ThreadPoolExecutor(max_workers=cfg.workers) as pool:
            videos = list(tqdm(pool.map(one, plan), total=len(plan), desc="synth", unit="video",
                               disable=None, leave=False))
    finally:
        cv2.setNumThreads(cv_threads)
    _write_manifest(cfg.out, videos)
    return finish_dataset(cfg.out, cfg.content(), labels, videos, t_start,
                          f"multi-label videos ({len(labels)} labels)", load=_load_result, owned=list(OWNED_ENTRIES))


def multilabel_defaults() -> dict:
    """MultiLabelConfig's defaults, for the CLI (defaults have one home)."""
    return {f.name: f.default for f in fields(MultiLabelConfig) if f.name != "out"}
