"""The worker side of `hyvid extract`: a few videos -> their clips rows as uncommitted Lance
fragments, and their `videos` rows (ok or failed, with the reason) for the driver to commit.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from hyvid.pipelines import faults
from hyvid.pipelines.data.datasets import VideoEntry
from hyvid.pipelines.data.video import (
    DEFAULT_MAX_ASPECT,
    DEFAULT_MAX_LONG_SIDE,
    FLOW_CHUNK,
    FlowBatch,
    FlowServiceError,
    VideoError,
    extract_clip_arrays,
    flow_batch_fn,
    resolve_flow_device,
)
from hyvid.store import clips as clip_codec
from hyvid.store.lance_io import write_table_fragments
from hyvid.store.tables import CLIPS, FLOW_BOUND, STATUS_FAILED, STATUS_OK, VIDEOS

log = logging.getLogger(__name__)


@dataclass
class ShardResult:
    clip_fragments: list  # lance FragmentMetadata, not yet committed
    videos: pa.Table  # one row per video of the shard (ok or failed)
    frames: int  # source frames decoded
    clips: int
    seconds: float
    cpu_seconds: float = 0.0  # CPU time the task's process used: shows whether it got a core


class FlowActor:
    """A GPU flow actor of `hyvid extract --flow tvl1-torch`: solves the frame-pair batches that
    the extraction tasks send (their `flow_batch`) on the GPU Ray gave it, or on its CPU where
    torch sees none (a GPU resource declared on a machine without one, as the tests do)."""

    def __init__(self, device: str = "auto"):
        self.device = resolve_flow_device(device)
        self._calc = flow_batch_fn("tvl1-torch", self.device)
        self.pairs = 0

    def flows(self, i0: np.ndarray, i1: np.ndarray) -> np.ndarray:
        """Flows of the pairs (i0[k], i1[k]): float32 [K, H, W, 2]."""
        out = self._calc(i0, i1)
        self.pairs += len(i0)
        return out

    def stats(self) -> dict:
        return {"device": self.device, "pairs": self.pairs}


def file_signature(path: str) -> tuple[int | None, float | None]:
    """(size, mtime) of a local file; (None, None) when it does not exist or is not local."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None, None
    return int(st.st_size), float(st.st_mtime)


def videos_row(e: VideoEntry, *, status: str, error: str | None, config_hash: str, node_id: str,
                ca=None, n_positions: int = 0, signature: tuple = (None, None)) -> dict:
    return {
        "video_id": e.video_id,
        "path": e.path,
        "class_name": e.class_name,
        "label": e.label,
        "labels": list(e.labels),
        "group": e.group,
        "splits": [{"split": s, "subset": sub} for s, sub in e.splits],
        "n_frames": ca.n_frames if ca is not None else None,
        "fps": ca.fps if ca is not None else None,
        "width": ca.width if ca is not None else None,
        "height": ca.height if ca is not None else None,
        "n_positions": n_positions,
        "clamped": ca.clamped if ca is not None else None,
        "status": status,
        "error": error,
        "extract_config": config_hash,
        "flow_bound": FLOW_BOUND,
        "node_id": node_id,
        "file_size": signature[0],
        "file_mtime": signature[1],
    }


def extract_shard(entries: list[VideoEntry], store_uri: str, settings: dict, config_hash: str,
                  storage_options: dict | None, node_id: str, fault_spec: str | None = None,
                  flow_device: str = "cpu", flow_batch: FlowBatch | None = None,
                  flow_chunk: int = FLOW_CHUNK) -> ShardResult:
    """Extract a few videos: write their clips as uncommitted fragments, return the metadata.

    tvl1-torch runs on `flow_device`, or through `flow_batch` (`flow_chunk` pairs at a time) when
    given: extract's GPU path sends the flows to a flow actor that way.
    """
    t0, c0 = time.perf_counter(), time.process_time()
    clip_rows: dict[str, list] = {name: [] for name in CLIPS.schema.names}
    video_rows, frames = [], 0
    for e in entries:
        faults.at_video(e.video_id, fault_spec)
        sig = file_signature(e.path)  # before decoding: a file changed meanwhile is seen as changed
        try:
            ca = extract_clip_arrays(e.path, settings["frames"], settings["stack"], settings["size"], settings["flow"],
                                     settings.get("max_long_side", DEFAULT_MAX_LONG_SIDE),
                                     settings.get("max_aspect", DEFAULT_MAX_ASPECT), flow_device=flow_device,
                                     flow_batch=flow_batch, flow_chunk=flow_chunk)
        except FlowServiceError:
            raise
        except VideoError as err:
            video_rows.append(videos_row(e, status=STATUS_FAILED, error=err.reason, config_hash=config_hash,
                                          node_id=node_id, signature=sig))
            continue
        except Exception as err:  # an OpenCV error on a strange file must not stop the shard
            log.exception("unexpected error extracting %s", e.path)
            video_rows.append(videos_row(e, status=STATUS_FAILED, error=f"{type(err).__name__}: {err}",
                                          config_hash=config_hash, node_id=node_id, signature=sig))
            continue
        frames += ca.n_frames
        h, w = ca.frames.shape[1:3]
        for p in range(len(ca.frame_indices)):
            clip_rows["video_id"].append(e.video_id)
            clip_rows["position"].append(p)
            clip_rows["frame_index"].append(int(ca.frame_indices[p]))
            clip_rows["timestamp"].append(float(ca.timestamps[p]))
            clip_rows["frame"].append(clip_codec.encode_frame(ca.frames[p]))
            clip_rows["flow_stack"].append(clip_codec.encode_flow_stack(ca.flow_stacks[p]))
            clip_rows["height"].append(h)
            clip_rows["width"].append(w)
            clip_rows["stack"].append(ca.stack)
        video_rows.append(videos_row(e, status=STATUS_OK, error=None, config_hash=config_hash, node_id=node_id,
                                      ca=ca, n_positions=len(ca.frame_indices), signature=sig))
    clips = pa.Table.from_pydict(clip_rows, schema=CLIPS.schema)
    fragments = write_table_fragments(store_uri, CLIPS.name, clips, storage_options)
    videos = pa.Table.from_pylist(video_rows, schema=VIDEOS.schema)
    return ShardResult(fragments, videos, frames, clips.num_rows, time.perf_counter() - t0,
                       time.process_time() - c0)
