"""Indexes on the store's tables, built or brought up to date after a stage commits.

* A BTREE scalar index on `video_id` turns "all rows of one video" into an index lookup, so it
  costs the same on a 300k-row table as on a 300-row one (benchmarks/query.py measures it).
* A vector index (IVF_PQ, L2) on a `frame_features` stream makes `FeatureStore.similar` sublinear.
  Below `min_rows` a flat search is exact and fast enough, and PQ training on a few rows is
  noise, so no index is built.

Lance does not add appended fragments to an existing index by itself (queries then scan the
unindexed fragments as well); `ensure_*` calls `optimize_indices` to fold them in. Both
functions are idempotent: call them after every commit.
"""
from __future__ import annotations

import logging
import math

import lance

from hyvid.store.lance_io import open_table
from hyvid.store.tables import FRAME_FEATURES_NAME

log = logging.getLogger(__name__)

VECTOR_MIN_ROWS = 50_000
VECTOR_METRIC = "L2"  # FeatureStore.similar searches with the same metric


def scalar_index_name(column: str) -> str:
    return f"{column}_idx"


def vector_index_name(column: str) -> str:
    return f"{column}_ivf_pq"


def _unindexed_fragments(ds: lance.LanceDataset, name: str) -> int:
    covered: set[int] = set()
    for info in ds.list_indices():
        if info["name"] == name:
            covered.update(int(f) for f in info["fragment_ids"])
    return sum(1 for f in ds.get_fragments() if f.fragment_id not in covered)


def _has_index(ds: lance.LanceDataset, name: str) -> bool:
    return any(d.name == name for d in ds.describe_indices())


def _bring_up_to_date(ds: lance.LanceDataset, name: str) -> str:
    missing = _unindexed_fragments(ds, name)
    if missing == 0:
        return "up_to_date"
    ds.optimize.optimize_indices(index_names=[name])
    log.info("index %s: folded %d new fragment(s) in", name, missing)
    return "optimized"


def _open_for_index(store_uri: str, table: str, column: str, name: str,
                    storage_options: dict[str, str] | None) -> tuple[lance.LanceDataset, str | None]:
    """The table, and when index `name` exists already, what bringing it up to date did (else None)."""
    ds = open_table(store_uri, table, storage_options)
    if column not in ds.schema.names:
        raise ValueError(f"table {table!r} has no column {column!r} (columns: {ds.schema.names})")
    if _has_index(ds, name):
        return ds, _bring_up_to_date(ds, name)
    return ds, None


def ensure_scalar_index(store_uri: str, table: str, column: str = "video_id",
                        storage_options: dict[str, str] | None = None) -> str:
    """Create the BTREE index on `table.column`, or fold new fragments into it.

    Returns "created", "optimized" or "up_to_date".
    """
    name = scalar_index_name(column)
    ds, status = _open_for_index(store_uri, table, column, name, storage_options)
    if status is not None:
        return status
    ds.create_scalar_index(column, "BTREE", name=name)
    log.info("created BTREE index %s on %s.%s (%d rows)", name, table, column, ds.count_rows())
    return "created"


def ivf_pq_params(n_rows: int, dim: int) -> tuple[int, int]:
    """(num_partitions, num_sub_vectors) for IVF_PQ on `n_rows` vectors of `dim` values.

    ~sqrt(n) partitions (the usual IVF balance between probing cost and partition size), at
    least 256 rows each so k-means has data; sub-vectors of 16 values (8 or fewer for small
    dims), which must divide the dimension.
    """
    parts = max(1, min(int(round(math.sqrt(n_rows))), n_rows // 256, 4096))
    sub = 16 if dim >= 64 else 8 if dim >= 16 else 4
    while sub > 1 and dim % sub:
        sub -= 1
    return parts, max(1, dim // sub)


def ensure_vector_index(store_uri: str, table: str = FRAME_FEATURES_NAME, column: str = "spatial",
                        min_rows: int = VECTOR_MIN_ROWS, storage_options: dict[str, str] | None = None) -> str:
    """Create an IVF_PQ (L2) index on a vector column once the table has `min_rows` rows.

    Returns "skipped" (too few rows), "created", "optimized" or "up_to_date".
    """
    name = vector_index_name(column)
    ds, status = _open_for_index(store_uri, table, column, name, storage_options)
    if status is not None:
        return status
    n_rows = ds.count_rows()
    if n_rows < max(min_rows, 256):  # PQ codebooks have 256 centroids per sub-vector
        log.info("no vector index on %s.%s: %d rows < %d (flat search is exact and fast)",
                 table, column, n_rows, min_rows)
        return "skipped"
    dim = ds.schema.field(column).type.list_size
    parts, subs = ivf_pq_params(n_rows, dim)
    ds.create_index(column, "IVF_PQ", name=name, metric=VECTOR_METRIC,
                    num_partitions=parts, num_sub_vectors=subs)
    log.info("created IVF_PQ index %s on %s.%s: %d rows, %d partitions, %d sub-vectors",
             name, table, column, n_rows, parts, subs)
    return "created"
