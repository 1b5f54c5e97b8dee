"""A synthetic store at the feature level: `videos`, `classes` and `frame_features` of any size,
with class structure the temporal and fusion models can learn, written through the store's own
writers. It lets `hyvid train` and `hyvid hybrid` be measured at UCF-101's size (13,320 videos x
25 frames x 1,024 + 1,024 floats) without decoding a single video (benchmarks/scale.py).

How the features are made (post-ReLU, non-negative, like fc1 outputs, so the χ² SVMs apply), with
``codes="sparse"`` (the default):
- every class has a sparse prototype per stream (`active` dims of `dim` on, amplitude ~1); a third
  of the classes is told apart mostly by the spatial stream, a third mostly by the motion stream,
  the rest by both, so fusing the streams pays;
- `order_fraction` of the classes come in pairs that show the same two patterns in opposite order
  (first half, second half): every time average is the same for both, only a sequence model can
  tell them apart, as the synthetic videos' Order* classes;
- each UCF-style group adds its own offset (videos of a group look alike, as in UCF-101), each
  video its own, each frame Gaussian noise of `noise`; then ReLU.
With ``codes="dense"`` every class needs both streams: each stream's class code is a dense
Gaussian vector made of a code shared by a family of classes (a factorial design: a class is a
(spatial family, motion family) pair, so one stream alone confuses the ~sqrt(classes) classes of
its family) plus a weaker code of the class's own; the order pairs show two dense patterns in
opposite order in both streams; group, video and frame noise as above, around a positive base,
then ReLU.

Split 1 follows UCF-101's protocol: groups g01-g07 test, g08-g25 train (validation is carved
from the training groups by `store.splits`), `test_videos` of `videos` in test.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from hyvid.store.lance_io import canonical_store_uri, commit_fragments, write_table_fragments
from hyvid.store.tables import CLASSES, FOLD_ALL, FRAME_FEATURES_NAME, STATUS_OK, VIDEOS, frame_features_schema

log = logging.getLogger(__name__)

UCF101_VIDEOS = 13_320
UCF101_CLASSES = 101
UCF101_TEST_VIDEOS = 3_783  # split 1: 9,537 train, 3,783 test
TEST_GROUPS = 7  # split 1 tests g01..g07
GROUPS = 25
CODES = ("sparse", "dense")
SOURCE = "feature-synth"  # the extract_config of its `videos` rows: no video was ever extracted


@dataclass(frozen=True)
class FeatureSynthConfig:
    """How big a synthetic feature store to write, and how hard to make it."""

    store_uri: str
    videos: int = UCF101_VIDEOS
    classes: int = UCF101_CLASSES
    positions: int = 25
    spatial_dim: int = 1024
    motion_dim: int = 1024
    test_videos: int = UCF101_TEST_VIDEOS
    active: int = 32  # prototype dims on per class and stream
    order_fraction: float = 0.2  # classes in order-only pairs
    noise: float = 1.0  # per-frame noise, against prototype amplitudes ~1
    video_noise: float = 0.3  # each video's own offset from its class (frames share it: no averaging removes it)
    codes: str = "sparse"  # "sparse" prototypes, or "dense" class codes that need both streams (module doc)
    own_code: float = 0.5  # dense codes: the weight of a class's own code beside its family's (1)
    signal: float = 1.0  # dense codes: their standard deviation per dimension (the base is 1)
    seed: int = 0
    chunk_videos: int = 500  # videos per written fragment (~100 MB of features at full size)
    storage_options: dict | None = None

    def __post_init__(self) -> None:
        if self.classes < 2:
            raise ValueError(f"classes must be >= 2, got {self.classes}")
        if self.videos < 2 * self.classes:
            raise ValueError(f"videos must be >= 2 x classes ({2 * self.classes}) so every class has train and "
                             f"test videos, got {self.videos}")
        if not 0 < self.test_videos < self.videos:
            raise ValueError(f"test_videos must be in (0, videos={self.videos}), got {self.test_videos}")
        for name in ("positions", "spatial_dim", "motion_dim", "active", "chunk_videos"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.active > min(self.spatial_dim, self.motion_dim):
            raise ValueError(f"active ({self.active}) must not exceed the feature dims")
        if not 0 <= self.order_fraction <= 1:
            raise ValueError(f"order_fraction must be in [0, 1], got {self.order_fraction}")
        for name in ("noise", "video_noise"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.codes not in CODES:
            raise ValueError(f"codes must be one of {CODES}, got {self.codes!r}")
        if self.own_code < 0 or self.signal <= 0:
            raise ValueError(f"own_code must be >= 0 and signal > 0, got {self.own_code}, {self.signal}")


@dataclass(frozen=True)
class FeatureSynthResult:
    store_uri: str
    videos: int
    classes: int
    frame_rows: int
    train_videos: int  # official training list (train + val)
    test_videos: int
    seconds: float


def _sparse(rng: np.random.Generator, dim: int, active: int) -> np.ndarray:
    v = np.zeros(dim, np.float32)
    v[rng.choice(dim, active, replace=False)] = rng.uniform(0.5, 1.5, active)
    return v


def _plan(cfg: FeatureSynthConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per video: its class, its group (1..25) and whether it is a test video; classes round-robin."""
    labels = np.arange(cfg.videos) % cfg.classes
    test = np.zeros(cfg.videos, bool)
    test[: cfg.test_videos] = True  # round-robin labels: every class gets its share of test videos
    groups = np.where(test, 1 + np.arange(cfg.videos) % TEST_GROUPS,
                      TEST_GROUPS + 1 + np.arange(cfg.videos) % (GROUPS - TEST_GROUPS))
    return labels, groups, test


def _dense(rng: np.random.Generator, dim: int, scale: float = 1.0) -> np.ndarray:
    return (scale * rng.standard_normal(dim)).astype(np.float32)


class FeatureSynth:
    """The generator of one config: each video's class, group, subset and per-frame features."""

    def __init__(self, cfg: FeatureSynthConfig) -> None:
        self.cfg = cfg
        rng = np.random.default_rng(cfg.seed)
        self.dims = {"spatial": cfg.spatial_dim, "motion": cfg.motion_dim}
        self.n_order = 2 * int(cfg.classes * cfg.order_fraction / 2)
        self.n_plain = cfg.classes - self.n_order
        self.names = [f"Synth{'Order' if c >= self.n_plain else 'Class'}{c:03d}" for c in range(cfg.classes)]
        self.labels, self.groups, self.test = _plan(cfg)
        if cfg.codes == "dense":
            self._dense_codes(rng)
        else:
            self._sparse_codes(rng)

    def _sparse_codes(self, rng: np.random.Generator) -> None:
        cfg, dims, n_plain = self.cfg, self.dims, self.n_plain
        # Which stream tells each plain class apart: a third spatial, a third motion, a third both.
        strength = {"spatial": np.ones(cfg.classes, np.float32), "motion": np.ones(cfg.classes, np.float32)}
        strength["motion"][: n_plain // 3] = 0.35
        strength["spatial"][n_plain // 3: 2 * n_plain // 3] = 0.35
        self.protos = {s: np.stack([_sparse(rng, d, cfg.active) * strength[s][c] for c in range(cfg.classes)])
                       for s, d in dims.items()}
        # Order pairs (c, c+1): pattern A then B against B then A.
        self.patterns = {s: [(_sparse(rng, d, cfg.active), _sparse(rng, d, cfg.active))
                             for _ in range(self.n_order // 2)] for s, d in dims.items()}
        self.group_offset = {s: np.stack([_sparse(rng, d, cfg.active) * 0.4 for _ in range(GROUPS + 1)])
                             for s, d in dims.items()}
        self.base = 0.0

    def _dense_codes(self, rng: np.random.Generator) -> None:
        cfg, dims, n_plain = self.cfg, self.dims, self.n_plain
        # A factorial design: plain class c is (spatial family c // k, motion family c % k), so each
        # stream alone tells only its family (~k classes) apart strongly; its own weaker code the rest.
        k = max(2, int(np.ceil(np.sqrt(max(n_plain, 1)))))
        family = {"spatial": np.arange(cfg.classes) // k % k, "motion": np.arange(cfg.classes) % k}
        a = cfg.signal
        families = {s: np.stack([_dense(rng, d, a) for _ in range(k)]) for s, d in dims.items()}
        self.protos = {s: np.stack([families[s][family[s][c]] + _dense(rng, d, a * cfg.own_code)
                                    for c in range(cfg.classes)]) for s, d in dims.items()}
        self.patterns = {s: [(_dense(rng, d, a), _dense(rng, d, a)) for _ in range(self.n_order // 2)]
                         for s, d in dims.items()}
        self.group_offset = {s: np.stack([_dense(rng, d, 0.4 * a) for _ in range(GROUPS + 1)])
                             for s, d in dims.items()}
        # Around a positive base, so that ReLU keeps most of each code (fc1 outputs are mostly > 0).
        self.base = 1.0

    def frames(self, stream: str, label: int, group: int, vrng: np.random.Generator) -> np.ndarray:
        """One video's features of one stream, [positions, dim], non-negative."""
        cfg, d = self.cfg, self.dims[stream]
        half = cfg.positions // 2
        if label < self.n_plain:
            mean = np.broadcast_to(self.protos[stream][label], (cfg.positions, d))
        else:
            a, b = self.patterns[stream][(label - self.n_plain) // 2]
            first, second = (a, b) if (label - self.n_plain) % 2 == 0 else (b, a)
            parts = [np.broadcast_to(first, (half, d)), np.broadcast_to(second, (half, d))]
            if cfg.positions % 2:
                # The middle frame: the second pattern in sparse stores (whose time averages then
                # differ by 1/positions of the patterns' difference), both halves' mean in dense ones,
                # so that only the order tells the pair apart.
                parts.insert(1, ((first + second) / 2 if cfg.codes == "dense" else second)[None])
            mean = np.concatenate(parts)
        video = vrng.normal(0.0, self.cfg.video_noise, d).astype(np.float32)  # this video's own take
        if cfg.codes == "sparse":
            video *= mean.max(0) > 0
        noise = vrng.normal(0.0, cfg.noise, (cfg.positions, d)).astype(np.float32)
        x = self.base + mean + self.group_offset[stream][group] + video + noise
        return np.maximum(x, 0.0, dtype=np.float32)

    def video(self, v: int) -> tuple[int, int, bool, dict[str, np.ndarray]]:
        """Video v's (label, group, is_test, {stream: [positions, dim]})."""
        label, group = int(self.labels[v]), int(self.groups[v])
        vrng = np.random.default_rng((self.cfg.seed, v))
        return label, group, bool(self.test[v]), {s: self.frames(s, label, group, vrng) for s in self.dims}

    def video_id(self, v: int) -> str:
        name = self.names[int(self.labels[v])]
        return f"{name}/v_{name}_g{int(self.groups[v]):02d}_c{v:05d}"


def write_feature_store(cfg: FeatureSynthConfig) -> FeatureSynthResult:
    """Write `videos`, `classes` and `frame_features` of a synthetic feature store (see the module doc)."""
    t0 = time.perf_counter()
    store = canonical_store_uri(cfg.store_uri)
    so = cfg.storage_options
    gen = FeatureSynth(cfg)
    dims, names, test = gen.dims, gen.names, gen.test

    schema = frame_features_schema(cfg.spatial_dim, cfg.motion_dim)
    fragments, video_rows = [], []
    for start in range(0, cfg.videos, cfg.chunk_videos):
        cols: dict[str, list] = {k: [] for k in ("video_id", "position", "frame_index", "timestamp")}
        feats: dict[str, list[np.ndarray]] = {s: [] for s in dims}
        for v in range(start, min(cfg.videos, start + cfg.chunk_videos)):
            label, group, _, video = gen.video(v)
            vid = gen.video_id(v)
            for s in dims:
                feats[s].append(video[s])
            cols["video_id"] += [vid] * cfg.positions
            cols["position"] += list(range(cfg.positions))
            cols["frame_index"] += [3 * p for p in range(cfg.positions)]
            cols["timestamp"] += [3 * p / 25.0 for p in range(cfg.positions)]
            video_rows.append({
                "video_id": vid, "path": f"{SOURCE}://{vid}", "class_name": names[label], "label": label,
                "labels": [label], "group": f"g{group:02d}",
                "splits": [{"split": 1, "subset": "test" if test[v] else "train"}],
                "n_frames": 3 * cfg.positions, "fps": 25.0, "width": 0, "height": 0, "n_positions": cfg.positions,
                "clamped": False, "status": STATUS_OK, "error": None, "extract_config": SOURCE, "flow_bound": None,
                "node_id": None,
            })
        n = len(cols["video_id"])
        table = pa.table({
            "video_id": pa.array(cols["video_id"], pa.string()),
            "position": pa.array(cols["position"], pa.int32()),
            "frame_index": pa.array(cols["frame_index"], pa.int32()),
            "timestamp": pa.array(cols["timestamp"], pa.float64()),
            "split": pa.array([1] * n, pa.int32()),  # the one split it writes
            "fold": pa.array([FOLD_ALL] * n, pa.int32()),
            **{s: pa.FixedSizeListArray.from_arrays(pa.array(np.concatenate(feats[s]).reshape(-1)), dims[s])
               for s in dims},
            "spatial_run_id": pa.array([SOURCE] * n, pa.string()),
            "motion_run_id": pa.array([SOURCE] * n, pa.string()),
        }, schema=schema)
        fragments += write_table_fragments(store, FRAME_FEATURES_NAME, table, so)
        log.info("feature synth: %d of %d videos written", min(cfg.videos, start + cfg.chunk_videos), cfg.videos)
    # The driver's commits, as in every stage: features first, then the videos that own them.
    commit_fragments(store, FRAME_FEATURES_NAME, fragments, schema, so)
    classes = pa.table({"label": pa.array(range(cfg.classes), pa.int32()), "class_name": names}, schema=CLASSES.schema)
    commit_fragments(store, CLASSES.name, write_table_fragments(store, CLASSES.name, classes, so), CLASSES.schema, so)
    videos = pa.Table.from_pylist(video_rows, schema=VIDEOS.schema)
    commit_fragments(store, VIDEOS.name, write_table_fragments(store, VIDEOS.name, videos, so), VIDEOS.schema, so)
    from hyvid.store.indexes import ensure_scalar_index

    ensure_scalar_index(store, FRAME_FEATURES_NAME, storage_options=so)
    n_test = int(test.sum())
    return FeatureSynthResult(store, cfg.videos, cfg.classes, cfg.videos * cfg.positions, cfg.videos - n_test,
                              n_test, time.perf_counter() - t0)
