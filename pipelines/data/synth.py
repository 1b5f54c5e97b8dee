"""`hyvid synth`: a UCF-101-layout dataset of real encoded videos whose classes need every clue
the paper models.

Three kinds of class, each named after its kind (see docs/synth.md for the full design):

- **appearance** (`AppearanceCat`, ...): the object is a crop of one class-specific photo; it
  shakes in place (a fast oscillation along a random axis) drawn from one distribution shared by
  all appearance classes, so the motion stream can tell "one of the appearance classes" but not which.
- **motion** (`MotionUp`, `MotionFastRight`, ...): the object is a crop of a shared pool of neutral
  textures; the class is the direction or speed of its motion, visible within one flow stack.
- **order** (`OrderLeftThenUp` / `OrderUpThenLeft`, ...), in pairs: the same two sub-actions, each a
  swing out and back (so both classes visit the same positions for the same time), separated by a
  still pause longer than a flow stack. No single stack holds both sub-actions and every
  time-averaged statistic is the same for both classes of a pair; only the sequence tells them apart.

Every video draws its nuisance (length, start, object size and crop, camera drift, speed jitter,
occluder, distractor, brightness, noise) from its own seeded generator, in the same order for every
class, so a video depends only on (seed, class, clip) and `render_video` with one seed gives
the same nuisance to any class (the tests compare classes that way).
"""
from __future__ import annotations

import json
import logging
import math
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, fields
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from hyvid.store.splits import val_groups

log = logging.getLogger(__name__)

KIND_APPEARANCE = "appearance"
KIND_MOTION = "motion"
KIND_ORDER = "order"
KINDS = (KIND_APPEARANCE, KIND_MOTION, KIND_ORDER)
_KIND_PREFIX = {"Appearance": KIND_APPEARANCE, "Motion": KIND_MOTION, "Order": KIND_ORDER}

UCF_GROUPS = 25  # g01..g25, as UCF-101
UCF_SPLITS = (1, 2, 3)
LISTS_DIR = "ucfTrainTestlist"
MANIFEST = "synth.json"
_INCOMPLETE = ".synth-incomplete"  # present while a write is under way: marks the folder as ours

_NOISE_BANK = 7  # prime, so any step from 1 to 6 visits every field before repeating
# Geometry is designed at 160x120 and scaled by the frame size (see _unit).
_REF_W, _REF_H = 160, 120


@dataclass(frozen=True)
class ClassSpec:
    """One class of the catalogue: its name (which says its kind) and what generates it."""

    name: str
    kind: str
    description: str
    photo: str | None = None  # appearance: scikit-image photo the object is cropped from
    roi: tuple[float, float, float, float] | None = None  # appearance: (x0, y0, x1, y1) fractions
    angle: float = 0.0  # motion: degrees, 0 = right, 90 = up
    speed: float = 0.0  # motion: pixels per frame at 160x120
    order: tuple[str, str] | None = None  # order: (first, second) sub-action


# The catalogue, in the order classes are taken from it. Photos: scikit-image's bundled data.
def _appearance(name: str, photo: str, roi: tuple[float, float, float, float], what: str) -> ClassSpec:
    return ClassSpec(f"Appearance{name}", KIND_APPEARANCE, f"a crop of {what} (skimage {photo})", photo, roi)


APPEARANCE_CLASSES = (
    _appearance("Cat", "chelsea", (0.05, 0.0, 0.8, 1.0), "a cat's face"),
    _appearance("Coffee", "coffee", (0.1, 0.0, 0.85, 0.95), "a coffee cup"),
    _appearance("Rocket", "rocket", (0.43, 0.15, 0.57, 0.95), "a rocket on its pad"),
    _appearance("Astronaut", "astronaut", (0.1, 0.0, 0.9, 1.0), "an astronaut"),
    _appearance("Motorcycle", "motorcycle", (0.05, 0.35, 0.7, 0.95), "a motorcycle"),
    _appearance("Tissue", "immunohistochemistry", (0.0, 0.0, 1.0, 1.0), "stained tissue"),
    _appearance("Galaxies", "hubble_deep_field", (0.0, 0.0, 1.0, 1.0), "the Hubble deep field"),
    _appearance("Retina", "retina", (0.18, 0.18, 0.82, 0.82), "a retina"),
)
# No two motion classes are horizontal mirror images: the CNNs train with horizontal flips
# (flow x negated), which would merge Left with Right.
MOTION_CLASSES = (
    ClassSpec("MotionUp", KIND_MOTION, "moves up at 1.6 px/frame", angle=90.0, speed=1.6),
    ClassSpec("MotionFastRight", KIND_MOTION, "moves right at 3.0 px/frame", angle=0.0, speed=3.0),
    ClassSpec("MotionSlowRight", KIND_MOTION, "moves right at 0.9 px/frame", angle=0.0, speed=0.9),
    ClassSpec("MotionDown", KIND_MOTION, "moves down at 1.6 px/frame", angle=270.0, speed=1.6),
    ClassSpec("MotionDiagonal", KIND_MOTION, "moves up-right at 1.8 px/frame", angle=45.0, speed=1.8),
)
# Sub-actions: Left = swing left and back, Up = swing up and back, Zoom = grow and shrink back.
# Pairs differ by which sub-actions they use, so the bag of stacks tells the pairs apart.
ORDER_PAIRS = (("Left", "Up"), ("Up", "Zoom"), ("Left", "Zoom"))
SUB_ACTIONS = ("Left", "Up", "Zoom")


def _order_classes() -> tuple[ClassSpec, ...]:
    out = []
    for a, b in ORDER_PAIRS:
        for first, second in ((a, b), (b, a)):
            out.append(ClassSpec(
                f"Order{first}Then{second}", KIND_ORDER,
                f"{first.lower()} swing, still pause, {second.lower()} swing", order=(first, second),
            ))
    return tuple(out)


ORDER_CLASSES = _order_classes()
CATALOGUE = APPEARANCE_CLASSES + MOTION_CLASSES + ORDER_CLASSES
MIN_CLASSES = 4  # one appearance, one motion, one order pair
MAX_CLASSES = len(CATALOGUE)

# Texture pools shared by every class (disjoint from the appearance photos).
NEUTRAL_TEXTURES = ("camera", "coins", "clock", "text", "page", "cell")  # motion/order objects, distractors
BACKGROUND_TEXTURES = ("brick", "grass", "gravel", "moon")


def class_kind(name: str) -> str:
    """The kind of a synth class from its name: 'appearance', 'motion' or 'order'."""
    for prefix, kind in _KIND_PREFIX.items():
        if name.startswith(prefix):
            return kind
    raise ValueError(f"{name!r} is not a synth class name: they start with {', '.join(_KIND_PREFIX)}")


def select_classes(n: int) -> tuple[ClassSpec, ...]:
    """The n classes of a dataset, sorted by name (classInd order): some of each kind, pairs whole."""
    if not MIN_CLASSES <= n <= MAX_CLASSES:
        raise ValueError(f"--classes {n}: choose {MIN_CLASSES}..{MAX_CLASSES} (needs one order pair)")
    pairs = min(len(ORDER_PAIRS), max(1, n // 5))
    rest = n - 2 * pairs
    n_motion = min(len(MOTION_CLASSES), rest // 2)
    n_app = rest - n_motion
    chosen = APPEARANCE_CLASSES[:n_app] + MOTION_CLASSES[:n_motion] + ORDER_CLASSES[: 2 * pairs]
    return tuple(sorted(chosen, key=lambda c: c.name))


# --- groups and splits ----------------------------------------------------------------------------


def official_subset(group: int, split: int) -> str:
    """UCF-101: split k tests groups 7(k-1)+1..7k; the other groups train."""
    return "test" if 7 * (split - 1) < group <= 7 * split else "train"


def _subset(group: int, split: int) -> str:
    sub = official_subset(group, split)
    if sub == "test":
        return "test"
    train = [f"g{g:02d}" for g in range(1, UCF_GROUPS + 1) if official_subset(g, split) == "train"]
    return "val" if f"g{group:02d}" in val_groups(train) else "train"


def assign_groups(n: int) -> list[tuple[int, int]]:
    """(group, clip) for a class's n videos, spread so each split has train, val and test videos.

    Candidates are evenly spaced over g01..g25 at several phases; the chosen one covers every
    (split, subset) cell and keeps each split's train/val/test counts nearest UCF-101's
    proportions. Too few videos for any evenly spaced set to cover: a greedy cover instead. The
    same for every class, so the classes stay balanced in every subset.
    """
    cells = {g: {(k, _subset(g, k)) for k in UCF_SPLITS} for g in range(1, UCF_GROUPS + 1)}
    expected = {(k, s): sum(_subset(g, k) == s for g in cells) * n / UCF_GROUPS
                for k in UCF_SPLITS for s in ("train", "val", "test")}

    def score(groups: list[int]) -> tuple[int, float]:
        count = {c: 0 for c in expected}
        for g in groups:
            for c in cells[g]:
                count[c] += 1
        missing = sum(v == 0 for v in count.values())
        return missing, sum((count[c] - expected[c]) ** 2 for c in expected)

    candidates = [[int((i + phase) * UCF_GROUPS / n) + 1 for i in range(n)]
                  for phase in np.linspace(0.0, 1.0, 40, endpoint=False)]
    candidates.append(_greedy_cover(n, cells))
    best = min(candidates, key=score)
    out, clips = [], {}
    for g in sorted(best):
        clips[g] = clips.get(g, 0) + 1
        out.append((g, clips[g]))
    return out


def _greedy_cover(n: int, cells: dict[int, set]) -> list[int]:
    """Each pick covers the most uncovered (split, subset) cells, far from earlier picks."""
    uncovered = {c for cs in cells.values() for c in cs}
    chosen: list[int] = []
    while len(chosen) < n:
        g = max(cells, key=lambda g: (-chosen.count(g), len(cells[g] & uncovered),
                                      min((abs(g - c) for c in chosen), default=UCF_GROUPS), -g))
        uncovered -= cells[g]
        chosen.append(g)
    return chosen


def min_videos_for_coverage() -> int:
    """The fewest videos per class with which every split has train, val and test videos."""
    for n in range(1, UCF_GROUPS + 1):
        got = {(k, _subset(g, k)) for g, _ in assign_groups(n) for k in UCF_SPLITS}
        if len(got) == 9:
            return n
    return UCF_GROUPS


# --- config and result ----------------------------------------------------------------------------


def parse_size(text: str) -> tuple[int, int]:
    """'160x120' -> (160, 120)."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"--size {text!r}: expected WxH, e.g. 160x120") from None
    return w, h


@dataclass(frozen=True)
class SynthConfig:
    """What to write. Defaults suit the demo on a 2-core CPU."""

    out: Path
    classes: int = 10
    videos_per_class: int = 15
    frames: int = 72  # mean frames per video; each video draws its length within ±20%
    size: tuple[int, int] = (160, 120)  # (width, height)
    seed: int = 0
    fps: float = 25.0
    stack: int = 10  # L of the flow stacks: the order classes' still pause is longer than this
    workers: int = 2  # threads writing videos (OpenCV and NumPy release the GIL)
    overwrite: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "out", Path(self.out))
        object.__setattr__(self, "size", tuple(int(v) for v in self.size))
        select_classes(self.classes)  # validates the count
        if self.videos_per_class < 1:
            raise ValueError(f"--videos-per-class must be >= 1, got {self.videos_per_class}")
        if len(self.size) != 2 or min(self.size) < 32 or max(self.size) > 1920:
            raise ValueError(f"--size {self.size}: width and height must be 32..1920 pixels")
        if self.stack < 1:
            raise ValueError(f"stack must be >= 1, got {self.stack}")
        if self.fps <= 0:
            raise ValueError(f"fps must be > 0, got {self.fps}")
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        need = min_frames(self.stack)
        if self.frames < need:
            raise ValueError(
                f"--frames {self.frames} is too short: the order classes need a still pause longer than "
                f"a flow stack of {self.stack} plus two sub-actions, so at least {need} frames"
            )

    def content(self) -> dict:
        """The settings that decide the files (not where they go or how fast): the reuse key."""
        d = asdict(self)
        for k in ("out", "workers", "overwrite"):
            d.pop(k)
        d["size"] = list(self.size)
        d["generator"] = GENERATOR_VERSION
        return d


# Bumped whenever the same settings would render different videos, so a dataset written by an
# older hyvid is never silently reused (2: appearance objects shake in place instead of drifting).
GENERATOR_VERSION = 2

_MIN_HALF_SWING = 3  # frames out (and as many back) of the shortest sub-action


def min_frames(stack: int) -> int:
    """Shortest --frames for which even a -20% video fits two sub-actions and the pause."""
    return math.ceil((_pause_frames(stack, 0) + 4 * _MIN_HALF_SWING + 2) / 0.8)


@dataclass(frozen=True)
class SynthClass:
    name: str
    kind: str
    label: int  # 0-based (classInd.txt holds label + 1)
    description: str


@dataclass(frozen=True)
class SynthVideo:
    path: str  # relative to the dataset root, POSIX
    class_name: str
    group: int
    clip: int
    n_frames: int


@dataclass(frozen=True)
class SynthResult:
    root: Path
    classes: tuple[SynthClass, ...]
    videos: tuple[SynthVideo, ...]
    reused: bool = False  # an identical dataset was already there
    seconds: float = 0.0

    @property
    def lists_dir(self) -> Path:
        return self.root / LISTS_DIR

    def paths(self) -> list[Path]:
        return [self.root / v.path for v in self.videos]

    def kinds(self) -> dict[str, str]:
        """class name -> kind."""
        return {c.name: c.kind for c in self.classes}


# --- rendering ------------------------------------------------------------------------------------


@lru_cache(maxsize=None)
def _photo(name: str) -> np.ndarray:
    """A scikit-image photo as float32 RGB (grayscale ones as one channel), loaded once."""
    import skimage.data

    img = skimage.data.stereo_motorcycle()[0] if name == "motorcycle" else getattr(skimage.data, name)()
    img = np.asarray(img)
    if img.dtype == bool:
        img = img.astype(np.uint8) * 255
    if img.ndim == 3:
        img = img[..., :3]
    return np.ascontiguousarray(img, dtype=np.float32)


def _duotone(gray: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Colour a grayscale texture between two colours, so shared textures come in many colours."""
    g = (gray / 255.0)[..., None]
    return (lo + g * (hi - lo)).astype(np.float32)


def _unit(size: tuple[int, int]) -> float:
    return math.sqrt(size[0] * size[1] / (_REF_W * _REF_H))


def _pause_frames(stack: int, extra: int) -> int:
    # A stack starting at p holds flows p..p+L-1; it sees both sub-actions only if the pause has
    # at most L-2 still flows. Three more than L keeps a margin for the extractor's rounding.
    return stack + 3 + extra


@dataclass(frozen=True)
class RenderedVideo:
    """Frames plus the ground truth the tests check against."""

    frames: np.ndarray  # (T, H, W, 3) uint8 RGB
    phase: np.ndarray  # (T,) int8: sub-action (1 first, 2 second) of the flow t -> t+1, else 0
    center: np.ndarray  # (T, 2) float: object centre on screen, before wrapping
    scale: np.ndarray  # (T,) float: object scale
    camera: np.ndarray  # (T, 2) float: camera offset; center + camera is the object's scene position


def _sprite(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """RGBA float32 with a 2-pixel rim of zero alpha and edge-replicated colour: warped with
    BORDER_REPLICATE, what lies outside stays transparent and edges blend without dark fringes."""
    pad = 2
    rgb = cv2.copyMakeBorder(np.ascontiguousarray(rgb, np.float32), pad, pad, pad, pad, cv2.BORDER_REPLICATE)
    alpha = cv2.copyMakeBorder(np.ascontiguousarray(alpha, np.float32), pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=0)
    return np.dstack([rgb, alpha])


def _mask(h: int, w: int, ellipse: bool, soft: float) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    if ellipse:
        cv2.ellipse(m, (w // 2, h // 2), (max(1, w // 2 - 1), max(1, h // 2 - 1)), 0, 0, 360, 255, -1)
    else:
        r = max(1, min(h, w) // 5)
        cv2.rectangle(m, (r, 0), (w - 1 - r, h - 1), 255, -1)
        cv2.rectangle(m, (0, r), (w - 1, h - 1 - r), 255, -1)
        for cx, cy in ((r, r), (w - 1 - r, r), (r, h - 1 - r), (w - 1 - r, h - 1 - r)):
            cv2.circle(m, (cx, cy), r, 255, -1)
    k = max(3, int(soft) | 1)
    return cv2.GaussianBlur(m, (k, k), 0).astype(np.float32) / 255.0


def _crop(img: np.ndarray, roi: tuple[float, float, float, float], side_frac: float, aspect: float,
          fx: float, fy: float, out_w: int, out_h: int) -> np.ndarray:
    """A crop of img inside roi (fractions) with the output's aspect, resized to (out_w, out_h)."""
    H, W = img.shape[:2]
    x0, y0, x1, y1 = roi[0] * W, roi[1] * H, roi[2] * W, roi[3] * H
    side = side_frac * min(x1 - x0, y1 - y0)
    cw, ch = side * math.sqrt(aspect), side / math.sqrt(aspect)
    cw, ch = min(cw, x1 - x0), min(ch, y1 - y0)
    cx0 = x0 + fx * (x1 - x0 - cw)
    cy0 = y0 + fy * (y1 - y0 - ch)
    patch = img[int(cy0): int(cy0 + ch) + 1, int(cx0): int(cx0 + cw) + 1]
    return cv2.resize(patch, (out_w, out_h), interpolation=cv2.INTER_AREA)


def _paste(frame: np.ndarray, sprite: np.ndarray, cx: float, cy: float, scale: float, wrap: bool) -> None:
    """Alpha-blend a premultiplied RGBA sprite centred at (cx, cy) into frame, in place.

    Sub-pixel: warpAffine interpolates, so slow motion is smooth rather than 0/1-pixel jumps.
    With wrap, the screen is a torus: what leaves one edge enters the opposite one, so a uniform
    random start gives every time step the same distribution of positions whatever the class.
    """
    H, W = frame.shape[:2]
    sh, sw = sprite.shape[:2]
    half_w, half_h = scale * sw / 2 + 1, scale * sh / 2 + 1
    if wrap:
        cx, cy = cx % W, cy % H
        xs = [0] + ([-W] if cx + half_w > W else []) + ([W] if cx - half_w < 0 else [])
        ys = [0] + ([-H] if cy + half_h > H else []) + ([H] if cy - half_h < 0 else [])
        offsets = [(ox, oy) for ox in xs for oy in ys]
    else:
        offsets = [(0, 0)]
    for ox, oy in offsets:
        px, py = cx + ox, cy + oy
        x0, x1 = max(0, int(math.floor(px - half_w))), min(W, int(math.ceil(px + half_w)))
        y0, y1 = max(0, int(math.floor(py - half_h))), min(H, int(math.ceil(py + half_h)))
        if x1 <= x0 or y1 <= y0:
            continue
        # Inverse map: ROI pixel (x, y) <- sprite ((x + x0 - px) / s + sw/2, ...), pixel centres at +0.5.
        inv = 1.0 / scale
        m = np.array([[inv, 0, (x0 - px) * inv + sw / 2 - 0.5 + 0.5 * inv],
                      [0, inv, (y0 - py) * inv + sh / 2 - 0.5 + 0.5 * inv]], np.float32)
        warped = cv2.warpAffine(sprite, m, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                borderMode=cv2.BORDER_REPLICATE)
        roi = frame[y0:y1, x0:x1]
        alpha = np.ascontiguousarray(warped[..., 3])
        roi[...] = cv2.blendLinear(roi, warped[..., :3], 1.0 - alpha, alpha)  # bg·(1-a) + obj·a


def _tri(n_half: int) -> np.ndarray:
    """0 -> 1 -> 0 over 2*n_half + 1 frames: a swing out and back at constant speed."""
    up = np.arange(n_half + 1, dtype=np.float64) / n_half
    return np.concatenate([up, up[-2::-1]])


@dataclass(frozen=True)
class _Nuisance:
    """Everything random about a video except its class, drawn from its seed in one fixed order.

    Drawing all of it for every class (used or not) keeps the draws aligned: with one seed, any
    two classes get the same length, start, background, drift, object crop, noise and so on.
    """

    T: int  # frames
    # background and camera
    bg_name: str
    bg_lo: np.ndarray
    bg_hi: np.ndarray
    bg_scale: float
    drift: np.ndarray  # (T, 2) camera offset per frame: a steady pan
    # the object
    obj_h: float
    aspect: float
    ellipse: bool
    crop: tuple[float, float, float]  # side fraction, x and y position of the crop in its ROI
    hflip: bool
    saturation: float
    obj_gain: float
    neutral_name: str
    nt_lo: np.ndarray
    nt_hi: np.ndarray
    contrast: float | None  # low-contrast videos: pull towards the background colour by this
    alpha_max: float
    start: np.ndarray  # (2,) scene position at frame 0
    # motion
    # appearance classes: one shared shake for all of them (axis, amplitude in px, period in frames, phase)
    shake: tuple[float, float, float, float]
    speed_factor: float  # motion classes: per-video speed and direction jitter
    angle_jitter: float
    jitter: np.ndarray  # (T,) per-frame speed factor
    halves: np.ndarray  # order classes, per sub-action: half-swing length as a fraction of T
    swing_speed: np.ndarray  # per sub-action, px/frame (Left, Up)
    zoom_amp: float
    pause_extra: float  # fraction of T added to the minimal pause
    lead_frac: float  # where the sub-actions start within the free frames
    # extras
    distractor: tuple | None  # (size, texture, lo, hi, start, angle, speed)
    occluder: tuple | None  # (vertical, width fraction, position, texture, lo, hi)
    gains: np.ndarray  # (T,) brightness per frame
    noise_sigma: float
    noise_seed: int
    noise_picks: np.ndarray  # (T,) which bank field each frame uses
    noise_sign: np.ndarray  # (T,) +-1

    @classmethod
    def draw(cls, seed: int, size: tuple[int, int], frames: int) -> "_Nuisance":
        W, H = size
        u = _unit(size)
        rng = np.random.default_rng(seed)
        U = rng.uniform
        T = max(2, int(round(frames * U(0.8, 1.2))))
        t = np.arange(T, dtype=np.float64)
        bg_name = BACKGROUND_TEXTURES[rng.integers(len(BACKGROUND_TEXTURES))]
        bg_lo, bg_hi, bg_scale = U(0, 90, 3), U(150, 255, 3), U(0.45, 0.8)
        drift_a, drift_v = U(0, 2 * math.pi), U(0.0, 0.3) * u
        small, obj_small, obj_normal = U() < 0.15, U(0.22, 0.32), U(0.32, 0.55)
        aspect, ellipse = U(0.8, 1.25), U() < 0.5
        crop, hflip = (U(0.5, 0.9), U(), U()), U() < 0.5
        saturation, obj_gain = U(0.75, 1.25), U(0.85, 1.15)
        neutral_name = NEUTRAL_TEXTURES[rng.integers(len(NEUTRAL_TEXTURES))]
        nt_lo, nt_hi = U(0, 110, 3), U(140, 255, 3)
        low_contrast, contrast, alpha_low = U() < 0.15, U(0.5, 0.75), U(0.85, 0.95)
        start = np.array([U(0, W), U(0, H)])
        shake = (U(0, 2 * math.pi), U(2.0, 4.0) * u, U(6.0, 10.0), U(0, 2 * math.pi))
        speed_factor, angle_jitter = U(0.85, 1.15), math.radians(rng.normal(0, 5))
        jit_amp, jit_period, jit_phase = U(0.05, 0.2), U(12, 30), U(0, 2 * math.pi)
        # Drawn per sub-action (not per slot): with one seed both classes of an order pair play
        # the very same two swings, only in the other order.
        halves = U(0.12, 0.16, len(SUB_ACTIONS))
        swing_speed = U(1.5, 2.1, len(SUB_ACTIONS)) * u
        zoom_amp, pause_extra, lead_frac = U(0.4, 0.6), U(0.0, 0.08), U()
        has_distractor = U() < 0.15
        distractor = (H * U(0.08, 0.14), NEUTRAL_TEXTURES[rng.integers(len(NEUTRAL_TEXTURES))],
                      U(0, 110, 3), U(140, 255, 3), np.array([U(0, W), U(0, H)]), U(0, 2 * math.pi),
                      U(0.3, 1.5) * u)
        has_occluder = U() < 0.2
        occluder = (U() < 0.5, U(0.08, 0.16), U(0.15, 0.85),
                    BACKGROUND_TEXTURES[rng.integers(len(BACKGROUND_TEXTURES))], U(0, 90, 3), U(150, 255, 3))
        gain, flicker, flicker_phase = U(0.75, 1.2), U(0.0, 0.03), U(0, 2 * math.pi)
        noise_sigma, noise_seed = U(1.0, 6.0), int(rng.integers(2**31 - 1))
        noise_pick, noise_step = int(rng.integers(_NOISE_BANK)), int(rng.integers(1, _NOISE_BANK))
        return cls(
            T=T, bg_name=bg_name, bg_lo=bg_lo, bg_hi=bg_hi, bg_scale=bg_scale,
            drift=drift_v * np.column_stack([np.full(T, math.cos(drift_a)), np.full(T, math.sin(drift_a))]) * t[:, None],
            obj_h=H * (obj_small if small else obj_normal), aspect=aspect, ellipse=ellipse, crop=crop,
            hflip=hflip, saturation=saturation, obj_gain=obj_gain, neutral_name=neutral_name,
            nt_lo=nt_lo, nt_hi=nt_hi, contrast=contrast if low_contrast else None,
            alpha_max=alpha_low if low_contrast else 1.0, start=start,
            shake=shake, speed_factor=speed_factor, angle_jitter=angle_jitter,
            jitter=1.0 + jit_amp * np.sin(2 * math.pi * t / jit_period + jit_phase),
            halves=halves, swing_speed=swing_speed, zoom_amp=zoom_amp, pause_extra=pause_extra,
            lead_frac=lead_frac,
            distractor=distractor if has_distractor else None,
            occluder=occluder if has_occluder else None,
            gains=gain * (1.0 + flicker * np.sin(2 * math.pi * t / 9.0 + flicker_phase)),
            noise_sigma=noise_sigma, noise_seed=noise_seed,
            noise_picks=(noise_pick + np.arange(T) * noise_step) % _NOISE_BANK,  # never twice in a row
            noise_sign=rng.choice(np.array([-1.0, 1.0], np.float32), T),
        )


def _order_trajectory(spec: ClassSpec, nz: _Nuisance, stack: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scene position (T, 2), scale (T,) and phase (T,) of an order class: lead-in, swing A,
    still pause, swing B, still tail."""
    T = nz.T
    which = [SUB_ACTIONS.index(a) for a in spec.order]
    h = [max(_MIN_HALF_SWING, int(round(T * nz.halves[k]))) for k in which]
    # Short videos give up the pause's extra length first, then shorten the swings; the pause
    # never drops below _pause_frames(stack, 0), which is what hides the order.
    pause = _pause_frames(stack, int(round(T * nz.pause_extra)))
    pause = max(_pause_frames(stack, 0), min(pause, T - 2 - 2 * h[0] - 2 * h[1]))
    while 2 * h[0] + 2 * h[1] + pause + 2 > T and max(h) > _MIN_HALF_SWING:
        h = [max(_MIN_HALF_SWING, v - 1) for v in h]
    if 2 * h[0] + 2 * h[1] + pause + 2 > T:
        raise ValueError(f"a {T}-frame video cannot hold two sub-actions and a {pause}-frame pause: "
                         f"raise --frames (>= {min_frames(stack)})")
    t0 = int(nz.lead_frac * (T - (2 * h[0] + 2 * h[1] + pause + 1)))  # random start offset
    disp, scale, phase = np.zeros((T, 2)), np.ones(T), np.zeros(T, np.int8)
    for i, (action, k, t_a, hh) in enumerate(zip(spec.order, which, (t0, t0 + 2 * h[0] + pause), h)):
        tri = _tri(hh)
        sl = slice(t_a, t_a + len(tri))
        if action == "Left":
            disp[sl, 0] -= nz.swing_speed[k] * hh * tri
        elif action == "Up":
            disp[sl, 1] -= nz.swing_speed[k] * hh * tri
        else:  # Zoom
            scale[sl] *= 1.0 + nz.zoom_amp * tri
        phase[t_a: t_a + 2 * hh] = i + 1
    return nz.start + disp, scale, phase


def _trajectory(spec: ClassSpec, nz: _Nuisance, stack: int, u: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scene position (T, 2), scale (T,) and sub-action phase (T,) of the object."""
    if spec.kind == KIND_ORDER:
        return _order_trajectory(spec, nz, stack)
    if spec.kind == KIND_APPEARANCE:
        # A shake in place, not a translation: with a drift the appearance classes' flow overlapped
        # the motion classes' (an object drifting up *is* MotionUp to the motion stream), and the
        # motion LSTM named a motion class, confidently and wrongly, for most appearance videos.
        # A shake is distinct from every motion and order class in any single flow stack yet the
        # same for all appearance classes, so the motion stream is at chance only among them.
        axis, amp, period, phase = nz.shake
        off = amp * np.sin(2 * math.pi * np.arange(nz.T) / period + phase)
        pos = nz.start + off[:, None] * np.array([math.cos(axis), -math.sin(axis)])
        return pos, np.ones(nz.T), np.zeros(nz.T, np.int8)
    a, v = math.radians(spec.angle) + nz.angle_jitter, spec.speed * u * nz.speed_factor
    step = v * np.column_stack([np.cos(a) * nz.jitter, -np.sin(a) * nz.jitter])  # screen y points down
    pos = nz.start + np.vstack([np.zeros((1, 2)), np.cumsum(step[:-1], 0)])
    return pos, np.ones(nz.T), np.zeros(nz.T, np.int8)


def _object_sprite(spec: ClassSpec, nz: _Nuisance, bg_mean: np.ndarray) -> np.ndarray:
    """The object: a crop of its class photo (appearance) or of a shared neutral texture."""
    oh, ow = max(6, int(round(nz.obj_h))), max(6, int(round(nz.obj_h * nz.aspect)))
    side, fx, fy = nz.crop
    if spec.kind == KIND_APPEARANCE:
        tex = _crop(_photo(spec.photo), spec.roi, side, nz.aspect, fx, fy, ow, oh)
        grey = tex.mean(2, keepdims=True)
        tex = grey + (tex - grey) * nz.saturation
    else:  # one shared pool: motion and order classes look alike
        tex = _duotone(_crop(_photo(nz.neutral_name), (0, 0, 1, 1), side, nz.aspect, fx, fy, ow, oh), nz.nt_lo, nz.nt_hi)
    if nz.hflip:
        tex = tex[:, ::-1]
    tex = np.clip(tex * nz.obj_gain, 0, 255)
    if nz.contrast is not None:  # low contrast: pull the object towards the background's colour
        tex = bg_mean + (tex - bg_mean) * nz.contrast
    return _sprite(tex, _mask(oh, ow, nz.ellipse, 0.15 * oh) * nz.alpha_max)


def render_video(spec: ClassSpec, seed: int, size: tuple[int, int] = (_REF_W, _REF_H),
                 frames: int = 72, stack: int = 10) -> RenderedVideo:
    """Render one video of a class. The nuisance depends on `seed` only, not on the class."""
    W, H = size
    u = _unit(size)
    nz = _Nuisance.draw(seed, size, frames)
    T, drift = nz.T, nz.drift
    pos, scale, phase = _trajectory(spec, nz, stack, u)
    screen = pos - drift  # the camera pans by `drift`, so scene content moves by -drift

    bg_src = _duotone(cv2.resize(_photo(nz.bg_name), None, fx=nz.bg_scale * u, fy=nz.bg_scale * u,
                                 interpolation=cv2.INTER_AREA), nz.bg_lo, nz.bg_hi)
    obj = _object_sprite(spec, nz, bg_src.reshape(-1, 3).mean(0))
    dist = occ = None
    if nz.distractor is not None:
        d_h, d_name, d_lo, d_hi, d_start, d_angle, d_speed = nz.distractor
        dh = max(4, int(round(d_h)))
        dist = _sprite(_duotone(_crop(_photo(d_name), (0, 0, 1, 1), 0.7, 1.0, *nz.crop[1:], dh, dh), d_lo, d_hi),
                       _mask(dh, dh, True, 0.2 * dh))
        t = np.arange(T)
        d_pos = d_start + d_speed * np.column_stack([np.cos(d_angle) * t, -np.sin(d_angle) * t]) - drift
    if nz.occluder is not None:  # a bar fixed in the scene, drawn over the object
        vertical, frac, where, o_name, o_lo, o_hi = nz.occluder
        ow, oh = (max(4, int(W * frac)), H + 8) if vertical else (W + 8, max(4, int(H * frac)))
        occ = _sprite(_duotone(_crop(_photo(o_name), (0, 0, 1, 1), 0.5, ow / oh, *nz.crop[1:], ow, oh), o_lo, o_hi),
                      np.ones((oh, ow), np.float32))
        occ_c = np.array([where * W, H / 2]) if vertical else np.array([W / 2, where * H])

    # The background must hold the whole pan (getRectSubPix would replicate its border).
    margin = int(math.ceil(np.abs(drift[-1]).max())) + 2
    pad_y, pad_x = max(0, (H + 2 * margin - bg_src.shape[0] + 1) // 2), max(0, (W + 2 * margin - bg_src.shape[1] + 1) // 2)
    if pad_y or pad_x:
        bg_src = cv2.copyMakeBorder(bg_src, pad_y, pad_y, pad_x, pad_x, cv2.BORDER_REFLECT)
    bx0, by0 = (bg_src.shape[1] - W) / 2, (bg_src.shape[0] - H) / 2
    # Sensor noise from a small bank of fields, each used with a random sign and never twice in a
    # row: a fresh field per frame cost more than everything else together. Fields are not
    # shifted between frames, so the flow sees flicker rather than motion.
    cv2.setRNGSeed(nz.noise_seed)  # OpenCV's RNG is per thread: deterministic per video
    bank = np.empty((_NOISE_BANK, H, W, 3), np.float32)
    for b in bank:
        cv2.randn(b.reshape(H, W * 3), 0.0, nz.noise_sigma)  # one channel: a Scalar std would miss G, B
    out = np.empty((T, H, W, 3), np.uint8)
    for i in range(T):
        # Sub-pixel crop of the viewport: frame(x, y) = bg(x + bx0 + drift_x, y + by0 + drift_y).
        frame = cv2.getRectSubPix(bg_src, (W, H), (bx0 + drift[i, 0] + (W - 1) / 2, by0 + drift[i, 1] + (H - 1) / 2))
        if dist is not None:
            _paste(frame, dist, d_pos[i, 0], d_pos[i, 1], 1.0, wrap=True)
        _paste(frame, obj, screen[i, 0], screen[i, 1], scale[i], wrap=True)
        if occ is not None:
            _paste(frame, occ, occ_c[0] - drift[i, 0], occ_c[1] - drift[i, 1], 1.0, wrap=False)
        frame = cv2.scaleAdd(frame, float(nz.gains[i]), bank[nz.noise_picks[i]] * nz.noise_sign[i])
        np.clip(frame, 0, 255, out=frame)
        np.copyto(out[i], frame, casting="unsafe")
    return RenderedVideo(out, phase, screen, scale, drift)


def write_video(path: Path, frames: np.ndarray, fps: float) -> None:
    """Encode RGB frames as MJPG in an AVI (built into OpenCV, so opencv-headless writes it)."""
    T, H, W, _ = frames.shape
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (W, H))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot open a MJPG writer for {path}: is this OpenCV built with video I/O?")
    try:
        for f in frames:
            writer.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    finally:
        writer.release()
    cap = cv2.VideoCapture(str(path))
    try:
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        w, h = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
    finally:
        cap.release()
    if (n, w, h) != (T, W, H):
        raise RuntimeError(f"{path} reads back as {n} frames of {w}x{h}, wrote {T} of {W}x{H}")


# --- the stage ------------------------------------------------------------------------------------


def video_seed(seed: int, spec: ClassSpec, group: int, clip: int) -> int:
    """A video's seed from (seed, class, group, clip) only, so videos do not depend on --classes."""
    uid = CATALOGUE.index(spec)
    return int(np.random.SeedSequence([seed, uid, group, clip]).generate_state(1)[0])


def _plan(cfg: SynthConfig) -> list[tuple[ClassSpec, int, int, str]]:
    plan = []
    for spec in select_classes(cfg.classes):
        for group, clip in assign_groups(cfg.videos_per_class):
            rel = f"{spec.name}/v_{spec.name}_g{group:02d}_c{clip:02d}.avi"
            plan.append((spec, group, clip, rel))
    return plan


def _write_lists(root: Path, classes: tuple[ClassSpec, ...], videos: list[SynthVideo]) -> None:
    lists = root / LISTS_DIR
    lists.mkdir(parents=True, exist_ok=True)
    label = {c.name: i + 1 for i, c in enumerate(classes)}  # classInd is 1-based
    (lists / "classInd.txt").write_text("".join(f"{label[c.name]} {c.name}\n" for c in classes))
    for k in UCF_SPLITS:
        train = [v for v in videos if official_subset(v.group, k) == "train"]
        test = [v for v in videos if official_subset(v.group, k) == "test"]
        (lists / f"trainlist0{k}.txt").write_text("".join(f"{v.path} {label[v.class_name]}\n" for v in train))
        (lists / f"testlist0{k}.txt").write_text("".join(f"{v.path}\n" for v in test))


def _load_result(root: Path, seconds: float = 0.0, reused: bool = False) -> SynthResult:
    meta = json.loads((root / MANIFEST).read_text())
    return SynthResult(
        root=root,
        classes=tuple(SynthClass(**c) for c in meta["classes"]),
        videos=tuple(SynthVideo(**v) for v in meta["videos"]),
        reused=reused,
        seconds=seconds,
    )


def _prepare(cfg: SynthConfig) -> bool:
    """Make `out` ready to write. True when an identical complete dataset is already there."""
    out = cfg.out
    if not out.exists():
        return False
    if not out.is_dir():
        raise ValueError(f"{out} exists and is not a directory: choose another OUT")
    manifest, marker = out / MANIFEST, out / _INCOMPLETE
    if manifest.exists():
        meta = json.loads(manifest.read_text())
        if meta.get("config") == cfg.content() and all((out / v["path"]).is_file() for v in meta["videos"]):
            return True
        if not cfg.overwrite:
            raise ValueError(f"{out} holds a synth dataset made with other settings ({meta.get('config')}); "
                             "pass --overwrite to replace it, or choose another OUT")
        ours = [c["name"] for c in meta.get("classes", [])]
    elif marker.exists():
        ours = json.loads(marker.read_text()).get("classes", [])  # an interrupted write: ours to redo
    elif any(out.iterdir()):
        raise ValueError(f"{out} is not empty and is not a hyvid synth dataset: choose an empty or new OUT")
    else:
        return False
    # Remove only what a synth run writes, never anything else the user keeps there.
    for name in ours:
        if (out / name).is_dir() and class_kind(name):
            shutil.rmtree(out / name)
    for p in (out / LISTS_DIR, manifest, marker):
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
    return False


def synth(cfg: SynthConfig) -> SynthResult:
    """Write the dataset: videos, UCF-101 split lists and synth.json (classes, kinds, videos)."""
    t_start = time.perf_counter()
    if _prepare(cfg):
        log.info("%s already holds this dataset; reusing it", cfg.out)
        return _load_result(cfg.out, time.perf_counter() - t_start, reused=True)
    classes = select_classes(cfg.classes)
    if cfg.videos_per_class < min_videos_for_coverage():
        log.warning("with %d videos per class some splits lack train, val or test videos of a class "
                    "(%d or more cover all)", cfg.videos_per_class, min_videos_for_coverage())
    cfg.out.mkdir(parents=True, exist_ok=True)
    (cfg.out / _INCOMPLETE).write_text(json.dumps({"classes": [c.name for c in classes]}))
    plan = _plan(cfg)

    def one(item: tuple[ClassSpec, int, int, str]) -> SynthVideo:
        spec, group, clip, rel = item
        video = render_video(spec, video_seed(cfg.seed, spec, group, clip), cfg.size, cfg.frames, cfg.stack)
        write_video(cfg.out / rel, video.frames, cfg.fps)
        return SynthVideo(rel, spec.name, group, clip, len(video.frames))

    from tqdm import tqdm

    # Our threads are the parallelism: OpenCV's own pool only adds overhead on 160x120 images.
    cv_threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        with ThreadPoolExecutor(max_workers=cfg.workers) as pool:
            videos = list(tqdm(pool.map(one, plan), total=len(plan), desc="synth", unit="video",
                               disable=None, leave=False))
    finally:
        cv2.setNumThreads(cv_threads)
    _write_lists(cfg.out, classes, videos)
    meta = {
        "config": cfg.content(),
        "classes": [asdict(SynthClass(c.name, c.kind, i, c.description)) for i, c in enumerate(classes)],
        "videos": [asdict(v) for v in videos],
    }
    (cfg.out / MANIFEST).write_text(json.dumps(meta, indent=1))
    (cfg.out / _INCOMPLETE).unlink()
    seconds = time.perf_counter() - t_start
    log.info("wrote %d videos of %d classes to %s in %.1f s", len(videos), len(classes), cfg.out, seconds)
    return _load_result(cfg.out, seconds)


def config_defaults() -> dict:
    """SynthConfig's defaults, for the CLI (defaults have one home)."""
    return {f.name: f.default for f in fields(SynthConfig) if f.name != "out"}
