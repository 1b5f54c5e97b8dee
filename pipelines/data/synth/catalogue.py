"""The synth class catalogue: every class a dataset can hold, and which n of them `--classes n` takes.

Classes are only ever appended: a class's index in `CATALOGUE` seeds its videos (see
`writer.video_seed`), so the first catalogue's 19 classes keep indices 0..18; and
`select_classes(n)` for n <= 19 takes exactly the classes it took when the catalogue had 19. So
datasets written before the catalogue grew keep their bytes.
"""
from __future__ import annotations

import math
import operator
from dataclasses import dataclass

KIND_APPEARANCE = "appearance"
KIND_MOTION = "motion"
KIND_ORDER = "order"
KINDS = (KIND_APPEARANCE, KIND_MOTION, KIND_ORDER)
# Not a class: a multi-label video's panel that carries no label (a neutral object shaking in
# place, like an appearance object, so neither stream can tell it from a labelled panel by the clue
# the other stream needs; see multilabel.NO_LABEL_PANEL).
KIND_NONE = "none"
_KIND_PREFIX = {"Appearance": KIND_APPEARANCE, "Motion": KIND_MOTION, "Order": KIND_ORDER}

RGB = tuple[int, int, int]


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
    tint: tuple[RGB, RGB] | None = None  # appearance: (dark, light) duotone of the photo's grey; None: its colours


# --- appearance -----------------------------------------------------------------------------------
# Photos: scikit-image's bundled data (no download). Every class is a photo, a region of a photo
# or a photo's grey in a duotone, chosen to stay recognisable in a 26-66 px crop at 160x120.


def _appearance(name: str, photo: str, roi: tuple[float, float, float, float], what: str,
                tint: tuple[RGB, RGB] | None = None, tint_name: str = "") -> ClassSpec:
    how = f", in {tint_name}" if tint else ""
    return ClassSpec(f"Appearance{name}", KIND_APPEARANCE, f"a crop of {what}{how} (skimage {photo})",
                     photo, roi, tint=tint)


_WHOLE = (0.0, 0.0, 1.0, 1.0)
# The first 19-class catalogue's eight, in their order.
_FIRST_APPEARANCE = (
    _appearance("Cat", "chelsea", (0.05, 0.0, 0.8, 1.0), "a cat's face"),
    _appearance("Coffee", "coffee", (0.1, 0.0, 0.85, 0.95), "a coffee cup"),
    _appearance("Rocket", "rocket", (0.43, 0.15, 0.57, 0.95), "a rocket on its pad"),
    _appearance("Astronaut", "astronaut", (0.1, 0.0, 0.9, 1.0), "an astronaut"),
    _appearance("Motorcycle", "motorcycle", (0.05, 0.35, 0.7, 0.95), "a motorcycle"),
    _appearance("Tissue", "immunohistochemistry", _WHOLE, "stained tissue"),
    _appearance("Galaxies", "hubble_deep_field", _WHOLE, "the Hubble deep field"),
    _appearance("Retina", "retina", (0.18, 0.18, 0.82, 0.82), "a retina"),
)
# New photos, and regions of the first eight's photos that their crops rarely show (the
# Astronaut class's crops are mostly the orange suit; Wood lies right of the Coffee class's region).
_MORE_APPEARANCE = (
    _appearance("Colorwheel", "colorwheel", (0.1, 0.1, 0.9, 0.9), "a colour wheel"),
    _appearance("Logo", "logo", (0.02, 0.02, 0.98, 0.98), "the scikit-image logo"),
    _appearance("Horse", "horse", _WHOLE, "a black horse silhouette on white"),
    _appearance("Checkerboard", "checkerboard", _WHOLE, "a black and white checkerboard"),
    _appearance("Phantom", "shepp_logan_phantom", (0.1, 0.05, 0.9, 0.95), "the Shepp-Logan phantom"),
    _appearance("Face", "astronaut", (0.33, 0.05, 0.62, 0.38), "a smiling face"),
    _appearance("Flag", "astronaut", (0.0, 0.0, 0.16, 0.6), "a flag's stars and stripes"),
    _appearance("Shuttle", "astronaut", (0.68, 0.0, 0.92, 0.55), "a model space shuttle"),
    _appearance("Helmet", "astronaut", (0.55, 0.66, 1.0, 1.0), "a black helmet"),
    _appearance("Wood", "coffee", (0.86, 0.0, 1.0, 1.0), "a wooden table top"),
    _appearance("Tower", "rocket", (0.0, 0.0, 0.22, 0.85), "a launch tower's lattice against the sky"),
    _appearance("Shelves", "motorcycle", (0.65, 0.0, 1.0, 0.45), "garage shelves with boxes"),
)
# Duotones: (dark, light) RGB. Blue, green and magenta sit far from every photo's own palette
# (mostly orange, red, brown and grey) and 120 degrees of hue from each other.
TINTS = {
    "Blue": ((0, 20, 90), (140, 205, 255)),
    "Green": ((0, 65, 10), (185, 255, 130)),
    "Magenta": ((75, 0, 65), (255, 150, 235)),
}
# Sources whose grey keeps a distinct shape (a proxy of the spatial stream, ImageNet features and
# a linear classifier, told these duotones apart as well as the natural photos; duotones of the
# cat, a face, the phantom, the flag or the galaxies it mostly confused).
_TINTED_SOURCES = (  # (name, photo, roi, what)
    ("Colorwheel", "colorwheel", (0.1, 0.1, 0.9, 0.9), "a colour wheel's brightness"),
    ("Shuttle", "astronaut", (0.68, 0.0, 0.92, 0.55), "a model space shuttle"),
    ("Logo", "logo", (0.02, 0.02, 0.98, 0.98), "the scikit-image logo"),
    ("Checkerboard", "checkerboard", _WHOLE, "a checkerboard"),
    ("Coffee", "coffee", (0.1, 0.0, 0.85, 0.95), "a coffee cup"),
    ("Helmet", "astronaut", (0.55, 0.66, 1.0, 1.0), "a helmet"),
)
# Tint by tint, so a partial selection still has every source in some colour.
_TINTED_APPEARANCE = tuple(
    _appearance(f"{tint}{name}", photo, roi, what, colours, f"{tint.lower()} duotone")
    for tint, colours in TINTS.items() for name, photo, roi, what in _TINTED_SOURCES
)
APPEARANCE_CLASSES = _FIRST_APPEARANCE + _MORE_APPEARANCE + _TINTED_APPEARANCE

# --- motion ---------------------------------------------------------------------------------------
# No two motion classes are horizontal mirror images: the CNNs train with horizontal flips
# (flow x negated), which would merge Left with Right. So every direction points right, up or
# down (-90..90 degrees); 22.5 degrees apart is 4.5 sigma of the per-video direction jitter, and
# speeds 0.9, 1.6, 3.0, 5.0 are each >= 1.6x the last, beyond the per-video +-15%.
_FIRST_MOTION = (
    ClassSpec("MotionUp", KIND_MOTION, "moves up at 1.6 px/frame", angle=90.0, speed=1.6),
    ClassSpec("MotionFastRight", KIND_MOTION, "moves right at 3.0 px/frame", angle=0.0, speed=3.0),
    ClassSpec("MotionSlowRight", KIND_MOTION, "moves right at 0.9 px/frame", angle=0.0, speed=0.9),
    ClassSpec("MotionDown", KIND_MOTION, "moves down at 1.6 px/frame", angle=270.0, speed=1.6),
    ClassSpec("MotionDiagonal", KIND_MOTION, "moves up-right at 1.8 px/frame", angle=45.0, speed=1.8),
)
_DIRECTIONS = {  # name -> degrees; coarse directions first, then the ones between them
    "Right": 0.0, "Up": 90.0, "Down": 270.0, "UpRight": 45.0, "DownRight": 315.0,
    "ShallowUpRight": 22.5, "SteepUpRight": 67.5, "ShallowDownRight": 337.5, "SteepDownRight": 292.5,
}
_SPEEDS = {"Slow": 0.9, "": 1.6, "Fast": 3.0, "VeryFast": 5.0}


def _more_motion() -> tuple[ClassSpec, ...]:
    """Every direction x speed the first five lack: the three first speeds over the coarse
    directions, then over the fine ones, then VeryFast over all."""
    taken = {(c.angle, c.speed) for c in _FIRST_MOTION} | {(45.0, 1.6)}  # MotionDiagonal is 45's medium
    dirs = list(_DIRECTIONS.items())
    tiers = [(dirs[:5], ("Slow", "", "Fast")), (dirs[5:], ("Slow", "", "Fast")), (dirs, ("VeryFast",))]
    out = []
    for tier_dirs, speeds in tiers:
        for dname, angle in tier_dirs:
            for sname in speeds:
                if (angle, _SPEEDS[sname]) in taken:
                    continue
                what = dname.replace("Right", " right").replace("Up", " up").replace("Down", " down").strip().lower()
                out.append(ClassSpec(f"Motion{sname}{dname}", KIND_MOTION,
                                     f"moves {what} ({angle:g} deg) at {_SPEEDS[sname]} px/frame",
                                     angle=angle, speed=_SPEEDS[sname]))
    return tuple(out)


MOTION_CLASSES = _FIRST_MOTION + _more_motion()

# --- order ----------------------------------------------------------------------------------------
# Sub-actions, each out and back so both orders visit the same states: Left = swing left (under
# flip augmentation: any horizontal swing), Up = swing up, Zoom = grow and shrink, Rotate = turn
# and turn back, Circle = one loop, Diagonal = swing up-left, Stretch = widen and narrow.
# None is another's mirror or time reversal (Right, Down, Shrink would be), so a single flow
# stack tells which sub-action it holds, and the bag of stacks tells the pairs apart.
SUB_ACTIONS = ("Left", "Up", "Zoom", "Rotate", "Circle", "Diagonal", "Stretch")
_FIRST_PAIRS = (("Left", "Up"), ("Up", "Zoom"), ("Left", "Zoom"))
# Then every other pair, in the order its later sub-action comes in SUB_ACTIONS.
ORDER_PAIRS = _FIRST_PAIRS + tuple(
    (SUB_ACTIONS[i], SUB_ACTIONS[j]) for j in range(3, len(SUB_ACTIONS)) for i in range(j)
)


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
# A class's index here seeds its videos, so the first 19 keep their places and the rest follow.
_FIRST_ORDER = ORDER_CLASSES[: 2 * len(_FIRST_PAIRS)]
CATALOGUE = (_FIRST_APPEARANCE + _FIRST_MOTION + _FIRST_ORDER + APPEARANCE_CLASSES[len(_FIRST_APPEARANCE):]
             + MOTION_CLASSES[len(_FIRST_MOTION):] + ORDER_CLASSES[len(_FIRST_ORDER):])
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


# The first catalogue: 8 appearance classes, 5 motion classes and 3 order pairs.
_FIRST = (len(_FIRST_APPEARANCE), len(_FIRST_MOTION), len(_FIRST_PAIRS))
_FIRST_MAX = _FIRST[0] + _FIRST[1] + 2 * _FIRST[2]


def kind_counts(n: int) -> tuple[int, int, int]:
    """How many (appearance, motion, order pair) classes `--classes n` takes."""
    bad = ValueError(f"--classes {n}: choose {MIN_CLASSES}..{MAX_CLASSES} ({MIN_CLASSES}: one appearance class, "
                     f"one motion class and one order pair; {MAX_CLASSES}: the whole catalogue)")
    try:
        count = operator.index(n)  # ints, NumPy ints too; not 2.5
    except TypeError:
        raise bad from None
    if isinstance(n, bool) or not MIN_CLASSES <= count <= MAX_CLASSES:
        raise bad
    n = count
    if n <= _FIRST_MAX:
        # The first catalogue's rule, kept as it was: every dataset of up to 19 classes keeps its classes.
        pairs = min(_FIRST[2], max(1, n // 5))
        rest = n - 2 * pairs
        motion = min(_FIRST[1], rest // 2)
        return rest - motion, motion, pairs
    # Beyond it: about a third of each kind, never fewer of any than the first catalogue had (so
    # all 19 are in), and a kind that runs out hands its share to the others.
    n_app, n_mot, n_pairs = len(APPEARANCE_CLASSES), len(MOTION_CLASSES), len(ORDER_PAIRS)
    pairs = min(n_pairs, max((n + 3) // 6, math.ceil((n - n_app - n_mot) / 2)))
    rest = n - 2 * pairs
    app = min(n_app, max(_FIRST[0], (rest + 1) // 2))
    motion = min(n_mot, rest - app)
    return rest - motion, motion, pairs


def select_classes(n: int) -> tuple[ClassSpec, ...]:
    """The n classes of a dataset, sorted by name (classInd order): some of each kind, pairs whole."""
    n_app, n_motion, pairs = kind_counts(n)
    chosen = APPEARANCE_CLASSES[:n_app] + MOTION_CLASSES[:n_motion] + ORDER_CLASSES[: 2 * pairs]
    return tuple(sorted(chosen, key=lambda c: c.name))
