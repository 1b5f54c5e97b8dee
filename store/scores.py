"""Writing the `video_scores` table: per (video, model, split) class scores, replaced on re-fit.

Readers use `FeatureStore.scores`. Writes are one Lance commit each: an upsert keyed on
(video_id, model, split), so re-running a fit replaces that model's scores for those videos
instead of adding a second copy, and a crash leaves the previous version intact.
"""
from __future__ import annotations

import logging
from typing import Sequence

import lance
import numpy as np
import pyarrow as pa

from hyvid.models.registry import check_model_names
from hyvid.store.lance_io import open_table, table_exists, table_uri
from hyvid.store.lease import SCORES_LEASE, Lease
from hyvid.store.tables import SUBSETS, VIDEO_SCORES

log = logging.getLogger(__name__)

SCORE_KEY = ("video_id", "model", "split")


def upsert_video_scores(
    store_uri: str,
    model: str,
    split: int,
    run_id: str,
    video_ids: Sequence[str],
    subsets: Sequence[str],
    scores: np.ndarray,
    labels: Sequence[int],
    labels_multi: Sequence[Sequence[int]] | None = None,
    storage_options: dict[str, str] | None = None,
    folds: Sequence[int] | None = None,
) -> int:
    """Store one model's class scores for some videos of a split in one atomic commit.

    `folds` (the CNN models' rows): the fold of the CNN pair that scored each video (see
    `store.tables.FOLD_ALL`); None leaves the column null (models fitted by `train`).

    Rows are keyed on (video_id, model, split): existing ones are replaced, new ones inserted,
    other models' rows are untouched. Creates the table on first write. Returns the version.
    Concurrent upserts (two fits finishing at once) take turns under the store's video_scores
    lease, so none duplicates a key.
    """
    # Validate before anything is written: a bad score set must not reach the table.
    check_model_names([model])
    scores = np.asarray(scores, dtype=np.float32)
    n = len(video_ids)
    if scores.ndim != 2 or scores.shape[0] != n:
        raise ValueError(f"scores must be [n_videos={n}, n_classes], got shape {scores.shape}")
    if not np.isfinite(scores).all():
        raise ValueError(f"scores of model {model!r} contain NaN or inf; refusing to store them")
    # Without labels_multi, each video's one label; a negative one (unknown, or none) is no label.
    labels_multi = [[int(x)] if int(x) >= 0 else [] for x in labels] if labels_multi is None else labels_multi
    if folds is not None and len(folds) != n:
        raise ValueError(f"folds ({len(folds)}) must have one entry per video ({n})")
    if len(subsets) != n or len(labels) != n or len(labels_multi) != n:
        raise ValueError(
            f"video_ids ({n}), subsets ({len(subsets)}), labels ({len(labels)}) and "
            f"labels_multi ({len(labels_multi)}) must have the same length")
    bad = sorted({s for s in subsets if s not in SUBSETS})
    if bad:
        raise ValueError(f"unknown subset(s) {bad}; choose from {list(SUBSETS)}")
    if len(set(video_ids)) != n:
        dup = sorted({v for v in video_ids if list(video_ids).count(v) > 1})[:3]
        raise ValueError(f"duplicate video ids in scores of model {model!r}, e.g. {dup}")
    data = pa.table(
        {
            "video_id": pa.array(list(video_ids), pa.string()),
            "model": pa.array([model] * n, pa.string()),
            "split": pa.array([int(split)] * n, pa.int32()),
            "subset": pa.array(list(subsets), pa.string()),
            "run_id": pa.array([run_id] * n, pa.string()),
            "fold": pa.nulls(n, pa.int32()) if folds is None else pa.array([int(f) for f in folds], pa.int32()),
            "scores": pa.array(list(scores), pa.list_(pa.float32())),
            "label": pa.array([int(x) for x in labels], pa.int32()),
            "labels": pa.array([[int(x) for x in m] for m in labels_multi], pa.list_(pa.int32())),
        },
        schema=VIDEO_SCORES.schema,
    )
    if data.num_rows == 0:
        raise ValueError(f"no scores to store for model {model!r} split {split}")
    # Under the video_scores lease: two upserts inserting the same new keys would otherwise both
    # insert (Lance's merge_insert sees no conflict between disjoint new fragments).
    with Lease(store_uri, SCORES_LEASE, f"video_scores upsert ({model}, split {split})",
               storage_options=storage_options) as lease:
        lease.check()
        return _upsert(store_uri, model, split, data, storage_options)


def _upsert(store_uri: str, model: str, split: int, data: pa.Table, storage_options: dict[str, str] | None) -> int:
    uri = table_uri(store_uri, VIDEO_SCORES.name)
    if not table_exists(store_uri, VIDEO_SCORES.name, storage_options):
        ds = lance.write_dataset(data, uri, schema=VIDEO_SCORES.schema, mode="create",
                                 storage_options=storage_options)
        log.info("created %s with %d %s scores (version %d)", uri, data.num_rows, model, ds.version)
        return int(ds.version)
    ds = open_table(store_uri, VIDEO_SCORES.name, storage_options)
    missing = [f for f in VIDEO_SCORES.schema if f.name not in ds.schema.names]
    if missing:  # a store written before these columns existed: they start null on the old rows
        ds.add_columns(missing)
        ds = open_table(store_uri, VIDEO_SCORES.name, storage_options)
        log.info("video_scores: added column(s) %s to the existing table", [f.name for f in missing])
    stats = (
        ds.merge_insert(list(SCORE_KEY))
        .when_matched_update_all()
        .when_not_matched_insert_all()
        .execute(data)
    )
    version = int(open_table(store_uri, VIDEO_SCORES.name, storage_options).version)
    log.info("upserted %s scores of split %d: %s (version %d)", model, split, stats, version)
    return version
