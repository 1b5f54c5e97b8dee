"""Tiny real videos and datasets of them, written with cv2.VideoWriter (no dependency on synth).

Frames are RGB arrays; `write_video` encodes them (MJPG .avi by default). Three kinds of frames:
`moving_square_frames` (a textured square over a smooth background, for optical flow),
`translating_photo_frames` (a real photo moving at a known sub-pixel velocity, for flow accuracy)
and `square_frames` (a flat square over a flat or noisy background, for the stage and cluster tests).
Datasets: `write_ucf` (UCF-101 layout with split lists), `write_manifest` (a CSV manifest of rows),
`write_square_dataset` (one `square_frames` video per `SquareClip`, plus their manifest).
"""
from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np

W, H = 64, 48
SQUARE = 12


def texture(seed: int = 0, size: int = SQUARE) -> np.ndarray:
    """A random RGB texture: gives optical flow something to lock on to."""
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def moving_square_frames(n: int, dx: int = 2, dy: int = 0, w: int = W, h: int = H, seed: int = 0) -> list[np.ndarray]:
    """RGB frames of a textured square moving (dx, dy) pixels per frame over a smooth background."""
    tex = texture(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    bg = np.stack([80 + 40 * np.sin(xx / 7.0), 90 + 30 * np.cos(yy / 5.0), np.full_like(xx, 100.0)], -1)
    bg = bg.astype(np.uint8)
    frames = []
    for i in range(n):
        f = bg.copy()
        x = 4 + (dx * i) % (w - SQUARE - 8)
        y = 4 + (dy * i) % (h - SQUARE - 8)
        f[y:y + SQUARE, x:x + SQUARE] = tex
        frames.append(f)
    return frames


def translating_photo_frames(n: int, velocity: tuple[float, float], w: int = W, h: int = H, seed: int = 0,
                             photo: str = "astronaut") -> list[np.ndarray]:
    """RGB frames of a photo (scikit-image's, shipped with it) translating `velocity` (vx, vy)
    pixels per frame: frame t is the photo shifted by t * velocity (bicubic), so the true flow
    is `velocity` everywhere but where content enters at the borders."""
    from skimage import data

    img = getattr(data, photo)()
    img = img if img.ndim == 3 else np.repeat(img[..., None], 3, axis=2)
    # The photo shrunk (INTER_AREA, no aliasing) to leave a margin of 1/4 frame around the view.
    side = int(1.5 * max(w, h))
    base = cv2.resize(img, (side, side), interpolation=cv2.INTER_AREA).astype(np.float32)
    ox, oy = np.random.default_rng(seed).uniform(0.1, 0.25, 2) * side
    frames = []
    for t in range(n):
        # dst(x, y) = base(x + ox - vx t, y + oy - vy t): content moves by +velocity per frame
        m = np.float32([[1, 0, ox - velocity[0] * t], [0, 1, oy - velocity[1] * t]])
        f = cv2.warpAffine(base, m, (w, h), flags=cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP,
                           borderMode=cv2.BORDER_REFLECT)
        frames.append(np.clip(f, 0, 255).round().astype(np.uint8))
    return frames


def write_video(path: Path, frames: list[np.ndarray], fps: float = 25.0, fourcc: str = "MJPG") -> Path:
    """Write RGB frames as a real encoded video file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = frames[0].shape[:2]
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (w, h))
    assert vw.isOpened(), f"cv2.VideoWriter cannot write {path} with {fourcc}"
    for f in frames:
        vw.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    vw.release()
    return path


def write_bad_files(folder: Path, prefix: str) -> dict[str, Path]:
    """One file of each bad kind, named like UCF-101 videos: kind -> path."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    out["empty"] = folder / f"{prefix}_g09_c01.avi"
    out["empty"].write_bytes(b"")
    out["text"] = folder / f"{prefix}_g09_c02.avi"
    out["text"].write_text("this is a text file, not a video\n" * 20)
    good = write_video(folder / f"{prefix}_g09_c03.tmp.avi", moving_square_frames(30))
    data = good.read_bytes()
    good.unlink()
    out["truncated"] = folder / f"{prefix}_g09_c03.avi"
    out["truncated"].write_bytes(data[: len(data) // 2])
    out["one_frame"] = write_video(folder / f"{prefix}_g09_c04.avi", moving_square_frames(1))
    return out


def write_ucf(root: Path, classes: dict[str, str], groups=(1, 2), clips=(1,), n_frames: int = 20,
              bad: bool = False) -> Path:
    """A UCF-101-layout dataset: `classes` maps folder name -> the name used in video file names.

    Split 1 puts g01 in test and the rest in train; splits 2 and 3 shift the test group.
    """
    root = Path(root)
    lists = root / "ucfTrainTestlist"
    lists.mkdir(parents=True, exist_ok=True)
    (lists / "classInd.txt").write_text("".join(f"{i + 1} {c}\n" for i, c in enumerate(classes)))
    names = []
    for ci, (folder, file_name) in enumerate(classes.items()):
        for g in groups:
            for c in clips:
                rel = f"{folder}/v_{file_name}_g{g:02d}_c{c:02d}.avi"
                dx = 2 if ci % 2 == 0 else -2
                write_video(root / rel, moving_square_frames(n_frames + g + c, dx=dx, seed=ci))
                names.append((rel, ci, g))
    for split in (1, 2, 3):
        test_group = groups[(split - 1) % len(groups)]
        train = [f"{rel} {ci + 1}" for rel, ci, g in names if g != test_group]
        test = [rel for rel, ci, g in names if g == test_group]
        (lists / f"trainlist0{split}.txt").write_text("\n".join(train) + "\n")
        (lists / f"testlist0{split}.txt").write_text("\n".join(test) + "\n")
    if bad:
        folder, file_name = next(iter(classes.items()))
        write_bad_files(root / folder, f"v_{file_name}")
    return root


# --- flat squares and manifest datasets ---------------------------------------------------------

RIGHT, LEFT, DOWN = (2, 0), (-2, 0), (0, 2)
MANIFEST_FIELDS = ("path", "labels", "subset", "group")


def square_frames(n: int, start: tuple[int, int], step: tuple[int, int], background: int | np.ndarray = 0,
                  colour: int | Sequence[int] = 230, square: int = 8, w: int = 64, h: int = 48,
                  wrap: int = 0) -> list[np.ndarray]:
    """RGB frames of a flat `colour` square (`square` px) at `start` + t * `step` over `background`.

    `background` is a grey level, or an array of n frames (n, h, w, 3) drawn over; with `wrap`, the
    square's position is taken modulo (w - wrap, h - wrap) instead of running off the frame.
    """
    frames = []
    for t in range(n):
        f = np.full((h, w, 3), background, np.uint8) if np.isscalar(background) else background[t].copy()
        x, y = start[0] + step[0] * t, start[1] + step[1] * t
        if wrap:
            x, y = x % (w - wrap), y % (h - wrap)
        f[y:y + square, x:x + square] = colour
        frames.append(f)
    return frames


def write_manifest(path: Path, rows: Iterable[dict]) -> Path:
    """A manifest CSV (path, labels, subset, group) of `rows`."""
    path = Path(path)
    with open(path, "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=list(MANIFEST_FIELDS))
        wr.writeheader()
        wr.writerows(rows)
    return path


class SquareClip(NamedTuple):
    """One video of `write_square_dataset`: its manifest row, and how its square moves."""

    path: str  # relative to the dataset root
    labels: str
    subset: str
    group: str
    background: int
    start: tuple[int, int]
    step: tuple[int, int]


def write_square_dataset(root: Path, clips: Iterable[SquareClip], n_frames: int = 16, square: int = 8,
                         colour: int = 230, fps: float = 10.0) -> Path:
    """Each clip as a real video under `root`, and `root`/manifest.csv listing them in order."""
    root = Path(root)
    rows = []
    for c in clips:
        write_video(root / c.path, square_frames(n_frames, c.start, c.step, c.background, colour, square), fps=fps)
        rows.append({"path": c.path, "labels": c.labels, "subset": c.subset, "group": c.group})
    return write_manifest(root / "manifest.csv", rows)
