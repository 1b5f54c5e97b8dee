"""Every table of the store: its name and its one schema. Readers and writers import from here.

Column names are module constants so nobody spells them from memory.
"""
from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

# Flow is clipped to ±FLOW_BOUND pixels/frame and mapped linearly to uint8 (two-stream convention).
FLOW_BOUND = 20.0

# How the `clips` table's blob columns are encoded (store.clips encodes and decodes them; the
# choices are explained there). Recorded in the table's schema metadata so readers can check.
FRAME_ENCODING = "jpeg"
FRAME_JPEG_QUALITY = 90
FLOW_ENCODING = "zstd-uint8"
FLOW_ZSTD_LEVEL = 1  # level 3+ gains ~0% on flow and costs time

# The extraction settings of a store, as JSON in the `videos` table's schema metadata: `predict`
# prepares new videos the same way, and `extract` refuses to mix settings.
EXTRACT_SETTINGS_METADATA_KEY = b"hyvid.extract_settings"

SUBSETS = ("train", "val", "test")
STATUS_OK = "ok"
STATUS_FAILED = "failed"


@dataclass(frozen=True)
class Table:
    name: str
    schema: pa.Schema


VIDEOS = Table(
    "videos",
    pa.schema(
        [
            pa.field("video_id", pa.string(), nullable=False),  # stable: derived from the relative path
            pa.field("path", pa.string()),  # absolute path (or URI) of the source file
            pa.field("class_name", pa.string()),  # "A|B" for multi-label videos
            pa.field("label", pa.int32()),  # first (or only) class index, -1 when unknown
            pa.field("labels", pa.list_(pa.int32())),  # all class indices (multi-label)
            pa.field("group", pa.string()),  # UCF-101 gXX group; validation is carved by group
            # One entry per official split the video belongs to: {split: 1, subset: "train"}.
            pa.field("splits", pa.list_(pa.struct([("split", pa.int32()), ("subset", pa.string())]))),
            pa.field("n_frames", pa.int32()),
            pa.field("fps", pa.float32()),
            pa.field("width", pa.int32()),
            pa.field("height", pa.int32()),
            pa.field("n_positions", pa.int32()),  # sampled positions stored in `clips`
            pa.field("clamped", pa.bool_()),  # too short for frames + L: positions were clamped
            pa.field("status", pa.string()),  # "ok" | "failed"
            pa.field("error", pa.string()),  # readable reason for failed videos
            pa.field("extract_config", pa.string()),  # hash of the extraction settings
            pa.field("flow_bound", pa.float32()),  # the ± clip bound used to quantize flow
            pa.field("node_id", pa.string()),  # Ray node that extracted it (spread record)
            # The source file when it was extracted (local files): a failed video whose file has
            # changed since is extracted again by the next run.
            pa.field("file_size", pa.int64()),
            pa.field("file_mtime", pa.float64()),  # seconds since the epoch
        ]
    ),
)

# Class index -> name, in label order (UCF-101: classInd.txt order, 0-based here).
CLASSES = Table(
    "classes",
    pa.schema([pa.field("label", pa.int32(), nullable=False), pa.field("class_name", pa.string())]),
)

CLIPS_COLUMNS = ("video_id", "position", "frame_index", "timestamp", "frame", "flow_stack")


def clips_schema() -> pa.Schema:
    """Rows of (video, sampled position): the RGB frame and the 2L-channel flow stack there.

    `frame` is an encoded image (see the `frame_encoding` schema metadata); `flow_stack` is
    uint8 of shape (2L, H, W) with channels x0, y0, x1, y1, ...; 128 means zero flow, stored
    as `flow_encoding` says. Decode both with `store.clips.decode_frame` / `decode_flow_stack`.
    """
    return pa.schema(
        [
            pa.field("video_id", pa.string(), nullable=False),
            pa.field("position", pa.int32()),  # 0..n_positions-1
            pa.field("frame_index", pa.int32()),  # index of the source frame
            pa.field("timestamp", pa.float64()),  # seconds
            pa.field("frame", pa.binary()),
            pa.field("flow_stack", pa.binary()),
            pa.field("height", pa.int32()),
            pa.field("width", pa.int32()),
            pa.field("stack", pa.int32()),  # L: flows in the stack (2L channels)
        ],
        metadata=clips_schema_metadata(),
    )


def clips_schema_metadata() -> dict[bytes, bytes]:
    """Schema metadata recording how the blob columns are encoded."""
    return {
        b"frame_encoding": FRAME_ENCODING.encode(),
        b"frame_jpeg_quality": str(FRAME_JPEG_QUALITY).encode(),
        b"flow_encoding": FLOW_ENCODING.encode(),
        b"flow_bound": str(FLOW_BOUND).encode(),
        b"flow_layout": b"[2L, H, W] uint8, channels x0,y0,x1,y1,...; value = round((clip(f,-B,B)+B)*255/(2B))",
    }


CLIPS = Table("clips", clips_schema())


# `fold` of rows made by a CNN pair fitted on all of a split's training videos (no cross-fitting).
# With `--cross-fit K` a row's fold k (0..K-1) names the pair fitted on the training groups outside
# fold k: a training video of fold k gets its features from that pair only, which never saw it.
FOLD_ALL = -1


def frame_features_schema(spatial_dim: int, motion_dim: int) -> pa.Schema:
    """Per-frame CNN features: the output of each stream CNN's first FC layer, keyed by what made them.

    `split` is the split whose CNNs made the row (their training groups exclude that split's test
    groups); `fold` and the two run ids name the CNN pair (see FOLD_ALL). One set of rows per
    (video, split): `hyvid features --split 2` never touches split 1's rows.
    """
    return pa.schema(
        [
            pa.field("video_id", pa.string(), nullable=False),
            pa.field("position", pa.int32()),
            pa.field("split", pa.int32()),
            pa.field("fold", pa.int32()),
            pa.field("frame_index", pa.int32()),
            pa.field("timestamp", pa.float64()),
            pa.field("spatial", pa.list_(pa.float32(), spatial_dim)),
            pa.field("motion", pa.list_(pa.float32(), motion_dim)),
            pa.field("spatial_run_id", pa.string()),
            pa.field("motion_run_id", pa.string()),
        ]
    )


FRAME_FEATURES_NAME = "frame_features"
# The columns that say which CNNs made a frame_features row (a store written before they existed
# lacks them and must be rebuilt by `hyvid features`).
FRAME_FEATURES_PROVENANCE = ("split", "fold", "spatial_run_id", "motion_run_id")

VIDEO_SCORES = Table(
    "video_scores",
    pa.schema(
        [
            pa.field("video_id", pa.string(), nullable=False),
            pa.field("model", pa.string()),  # a name from models.registry.MODEL_NAMES
            pa.field("split", pa.int32()),
            pa.field("subset", pa.string()),  # train | val | test
            pa.field("run_id", pa.string()),  # MLflow run that produced the scores
            # The CNN models' rows: the fold of the CNN pair that scored the video (FOLD_ALL without
            # cross-fitting; see frame_features). Null for the models `train` and `hybrid` fit.
            pa.field("fold", pa.int32()),
            pa.field("scores", pa.list_(pa.float32())),  # one score per class
            pa.field("label", pa.int32()),
            pa.field("labels", pa.list_(pa.int32())),
        ]
    ),
)

TABLE_NAMES = (VIDEOS.name, CLASSES.name, CLIPS.name, FRAME_FEATURES_NAME, VIDEO_SCORES.name)

# The key of each table: no two rows share one (`hyvid doctor` checks and repairs this).
TABLE_KEYS = {
    VIDEOS.name: ("video_id",),
    CLASSES.name: ("label",),
    CLIPS.name: ("video_id", "position"),
    FRAME_FEATURES_NAME: ("video_id", "position", "split"),
    VIDEO_SCORES.name: ("video_id", "model", "split"),
}
