"""Torch datasets over the Lance `clips` table: frames or flow stacks of chosen videos, read in place.

Nothing is copied to another format: a dataset holds the row offsets of its videos' clips in a
pinned version of the table and reads each batch with one `LanceDataset.take`, decoding the
JPEG frames / zstd flow stacks on the fly. Lance is not fork-safe, so batches are read in the
calling process (a background thread overlaps reading with compute), never in DataLoader workers.
"""
from __future__ import annotations

import concurrent.futures as cf
import logging
from typing import Iterator, Mapping, Sequence

import numpy as np
import pyarrow as pa
import torch
from torch.utils.data import Dataset

from hyvid.store.clips import decode_flow_stack, decode_frame
from hyvid.store.lance_io import open_table
from hyvid.store.tables import CLIPS

log = logging.getLogger(__name__)

STREAM_COLUMNS = {
    "spatial": ["frame", "height", "width"],
    "motion": ["flow_stack", "stack", "height", "width"],
}


def decode_rows(rows: pa.Table, stream: str) -> np.ndarray:
    """Decode clip rows' blobs: frames uint8 [N, H, W, 3] or flow stacks uint8 [N, 2L, H, W]."""
    if stream not in STREAM_COLUMNS:
        raise ValueError(f"unknown stream {stream!r}; choose from {list(STREAM_COLUMNS)}")
    h = rows.column("height").to_pylist()
    w = rows.column("width").to_pylist()
    if stream == "spatial":
        blobs = rows.column("frame").to_pylist()
        out = [decode_frame(b, hh, ww) for b, hh, ww in zip(blobs, h, w, strict=True)]
    else:
        blobs = rows.column("flow_stack").to_pylist()
        stacks = rows.column("stack").to_pylist()
        out = [decode_flow_stack(b, s, hh, ww) for b, s, hh, ww in zip(blobs, stacks, h, w, strict=True)]
    shapes = {a.shape for a in out}
    if len(shapes) > 1:
        raise ValueError(
            f"clips of one batch have different shapes {sorted(shapes)}; extract all videos with the "
            "same --size and --stack"
        )
    return np.stack(out) if out else np.zeros((0,), np.uint8)


class ClipsDataset(Dataset):
    """The clips of some videos, for one stream: item = (uint8 array, label).

    `labels` maps video id -> class index. Rows are found by one scan of the `video_id` column
    at `version` (default: the latest), so their offsets stay valid while the table grows.
    """

    def __init__(
        self,
        store_uri: str,
        labels: Mapping[str, int],
        stream: str,
        version: int | None = None,
        storage_options: dict | None = None,
    ) -> None:
        if stream not in STREAM_COLUMNS:
            raise ValueError(f"unknown stream {stream!r}; choose from {list(STREAM_COLUMNS)}")
        self.store_uri = store_uri
        self.stream = stream
        self.storage_options = storage_options
        self._ds = open_table(store_uri, CLIPS.name, storage_options, version=version)
        self.version = self._ds.version
        vids = self._ds.to_table(columns=["video_id"]).column("video_id").to_numpy(zero_copy_only=False)
        wanted = np.asarray(sorted(labels), dtype=object)
        mask = np.isin(vids, wanted)
        self.offsets = np.flatnonzero(mask).astype(np.int64)
        self.video_ids = vids[self.offsets]
        self.labels = np.asarray([labels[v] for v in self.video_ids], dtype=np.int64)
        missing = set(labels) - set(self.video_ids.tolist())
        if missing:
            log.warning("%d of %d videos have no clips in %s (e.g. %s)", len(missing), len(labels),
                        self.store_uri, sorted(missing)[:3])

    def __len__(self) -> int:
        return len(self.offsets)

    def get_batch(self, idx: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Items `idx` (dataset indices) as (uint8 batch, int64 labels), in the order given."""
        idx = np.asarray(idx, dtype=np.int64)
        # take() in ascending offset order reads each fragment sequentially; restore order after.
        order = np.argsort(self.offsets[idx], kind="stable")
        rows = self._ds.take(self.offsets[idx][order].tolist(), columns=STREAM_COLUMNS[self.stream])
        x = decode_rows(rows, self.stream)
        inv = np.empty_like(order)
        inv[order] = np.arange(len(order))
        return x[inv], self.labels[idx]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x, y = self.get_batch([i])
        return torch.from_numpy(x[0]), int(y[0])

    def __getitems__(self, idx: list[int]) -> list[tuple[torch.Tensor, int]]:
        # DataLoader's batched fetch: one take per batch instead of one per item.
        x, y = self.get_batch(idx)
        return [(torch.from_numpy(a), int(b)) for a, b in zip(x, y, strict=True)]


def iter_batches(
    dataset: ClipsDataset, indices: np.ndarray, batch_size: int, prefetch: bool = True
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Batches (x uint8, y, indices) of `dataset` in the order of `indices`.

    With prefetch, the next batch is read and decoded in a thread while the caller computes
    (Lance reads and OpenCV decoding release the GIL).
    """
    chunks = [indices[i:i + batch_size] for i in range(0, len(indices), batch_size)]
    if not prefetch or len(chunks) < 2:
        for c in chunks:
            x, y = dataset.get_batch(c)
            yield x, y, c
        return
    with cf.ThreadPoolExecutor(max_workers=1) as pool:
        fut = pool.submit(dataset.get_batch, chunks[0])
        for k, c in enumerate(chunks):
            x, y = fut.result()
            if k + 1 < len(chunks):
                fut = pool.submit(dataset.get_batch, chunks[k + 1])
            yield x, y, c
