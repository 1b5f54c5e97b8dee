"""Writing a synth dataset: its settings (`SynthConfig`), the videos, UCF-101's split lists and
synth.json, and what was written (`SynthResult`)."""
from __future__ import annotations

import json
import logging
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np

from hyvid.pipelines.data.synth.catalogue import CATALOGUE, ClassSpec, class_kind, select_classes
from hyvid.pipelines.data.synth.groups import UCF_SPLITS, assign_groups, min_videos_for_coverage, official_subset
from hyvid.pipelines.data.synth.render import GENERATOR_VERSION, min_frames, render_video

log = logging.getLogger(__name__)

LISTS_DIR = "ucfTrainTestlist"
MANIFEST = "synth.json"
_INCOMPLETE = ".synth-incomplete"  # present while a write is under way: marks the folder as ours
# Top-level entries besides class folders that a synth run may write (the multi-label writer's),
# listed under "owned" in synth.json and the marker; nothing else is ever removed.
OWNED_ENTRIES = ("videos", "manifest.csv")


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


def video_seed(seed: int, spec: ClassSpec, group: int, clip: int) -> int:
    """A video's seed from (seed, class, group, clip) only, so videos do not depend on --classes."""
    uid = CATALOGUE.index(spec)
    return int(np.random.SeedSequence([seed, uid, group, clip]).generate_state(1)[0])


def _plan(cfg: SynthConfig) -> list[tuple[ClassSpec, int, int, str]]:
    plan = []
    groups = assign_groups(cfg.videos_per_class)  # the same for every class
    for spec in select_classes(cfg.classes):
        for group, clip in groups:
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


def _prepare(cfg: Any) -> bool:
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
        owned = meta.get("owned", [])
    elif marker.exists():
        mark = json.loads(marker.read_text())
        ours, owned = mark.get("classes", []), mark.get("owned", [])  # an interrupted write: ours to redo
    elif any(out.iterdir()):
        raise ValueError(f"{out} is not empty and is not a hyvid synth dataset: choose an empty or new OUT")
    else:
        return False
    # Remove only what a synth run writes, never anything else the user keeps there.
    for name in ours:
        if (out / name).is_dir() and class_kind(name):
            shutil.rmtree(out / name)
    for name in (n for n in owned if n in OWNED_ENTRIES):
        if (out / name).is_dir():
            shutil.rmtree(out / name)
        elif (out / name).exists():
            (out / name).unlink()
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
    return finish_dataset(cfg.out, cfg.content(), classes, videos, t_start, f"videos of {len(classes)} classes")


def finish_dataset(out: Path, content: dict, classes: list, videos: list, t_start: float, what: str,
                   load: Callable[[Path, float], Any] | None = None, **extra: Any) -> Any:
    """Write the dataset's synth.json (its config, classes, videos and `extra`), mark it complete and
    read it back with `load` (default: this writer's): the last step of every synthetic writer."""
    meta = {
        "config": content,
        "classes": [asdict(SynthClass(c.name, c.kind, i, c.description)) for i, c in enumerate(classes)],
        "videos": [asdict(v) for v in videos],
        **extra,
    }
    (out / MANIFEST).write_text(json.dumps(meta, indent=1))
    (out / _INCOMPLETE).unlink()
    seconds = time.perf_counter() - t_start
    log.info("wrote %d %s to %s in %.1f s", len(videos), what, out, seconds)
    return (load or _load_result)(out, seconds)  # the writer's own result type


def config_defaults() -> dict:
    """SynthConfig's defaults, for the CLI (defaults have one home)."""
    return {f.name: f.default for f in fields(SynthConfig) if f.name != "out"}
