"""`hyvid doctor`: check a store for damage, duplicate keys, orphan rows and its tables' version lineage.

Damage (`store.damage`: tables that cannot be opened, unreadable fragments, files no version names,
tables never committed) is checked first, in every table; a damaged part is left out of the
duplicate and orphan counts, which need whole scans. `repair` mends the damage first.

Writers cannot duplicate rows any more (`store.lease`), but a store written by an older hyvid, or
by a tool that bypassed the leases, may hold them. `diagnose` reports; `repair` deletes the surplus
copies of each duplicated key in one atomic commit per table, keeping one row per key, so no
distinct key is lost. Which copy stays: the first committed (lowest row address); for `videos`
an `ok` copy before a `failed` one. Orphans (rows of `clips`, `frame_features` and `video_scores`
whose video has no `videos` row) are reported, not deleted: the next `hyvid extract` removes
orphan clips of videos it extracts again, and `features` replaces features.
"""
from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import lance
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from hyvid.store import damage as D
from hyvid.store.lance_io import commit_replacing, open_table, row_addresses, table_exists
from hyvid.store.lease import EXTRACT_LEASE, FEATURES_LEASE, LEASE_TABLES, SCORES_LEASE, Holder, Lease, leases
from hyvid.store.tables import CLIPS, STATUS_OK, TABLE_KEYS, VIDEOS

log = logging.getLogger(__name__)

ORPHAN_TABLES = ("clips", "frame_features", "video_scores")
_LEASE_OF = {t: name for name, tables in LEASE_TABLES.items() for t in tables}
EXAMPLES = 3


@dataclass(frozen=True)
class Version:
    """One entry of a table's lineage: what the commit that made `version` did."""

    version: int
    timestamp: str
    operation: str  # Append, Update, Delete, Overwrite, Rewrite (compaction), CreateIndex, ...
    rows: int  # rows in the table at that version


@dataclass
class TableReport:
    name: str
    rows: int
    keys: int  # distinct keys
    duplicate_rows: int  # rows beyond the first of their key
    duplicate_examples: list[tuple[Any, ...]] = field(default_factory=list)
    differing_keys: int = 0  # duplicated keys whose copies differ beyond the key
    orphan_rows: int = 0
    orphan_examples: list[str] = field(default_factory=list)
    lineage: list[Version] = field(default_factory=list)  # newest last

    @property
    def version(self) -> int:
        return self.lineage[-1].version if self.lineage else 0


@dataclass
class StoreReport:
    store_uri: str
    tables: dict[str, TableReport]
    leases: dict[str, tuple[Holder, bool]]  # lease -> (holder, stale?)
    damage: dict[str, D.TableDamage] = field(default_factory=dict)  # damaged tables only
    incomplete_videos: list[str] = field(default_factory=list)  # ok videos with clip rows missing

    @property
    def damaged(self) -> bool:
        return bool(self.damage)

    @property
    def duplicate_rows(self) -> int:
        return sum(t.duplicate_rows for t in self.tables.values())

    @property
    def orphan_rows(self) -> int:
        return sum(t.orphan_rows for t in self.tables.values())


def _lineage(ds: lance.LanceDataset, last: int) -> list[Version]:
    versions = ds.versions()[-last:] if last > 0 else []
    try:
        txs = ds.get_transactions(len(versions))  # newest first; None where the file is gone
    except (OSError, ValueError):
        txs = [None] * len(versions)
    ops = {ds.version - i: (type(t.operation).__name__ if t is not None else "?") for i, t in enumerate(txs)}
    return [Version(int(v["version"]), str(v["timestamp"])[:19], ops.get(int(v["version"]), "?"),
                    int(v["metadata"].get("total_rows", -1))) for v in versions]


def _keys(t: pa.Table, key: tuple[str, ...]) -> list[tuple[Any, ...]]:
    cols = [t.column(k).to_pylist() for k in key]
    return list(zip(*cols, strict=True))


def _surplus(ds: lance.LanceDataset, table: str) -> tuple[np.ndarray, list[tuple[Any, ...]], int, int]:
    """Row addresses of the copies to delete, example duplicated keys, differing keys, distinct keys."""
    key = TABLE_KEYS[table]
    t = row_addresses(ds, list(key))
    keys = _keys(t, key)
    addrs = t.column("_rowaddr").to_numpy()
    groups: dict[tuple[Any, ...], list[int]] = defaultdict(list)
    for i, k in enumerate(keys):
        groups[k].append(i)
    dup = {k: idx for k, idx in groups.items() if len(idx) > 1}
    if not dup:
        return np.zeros(0, np.uint64), [], 0, len(groups)
    # Read the duplicated keys' full rows only (clips rows carry images).
    flt = None
    if "video_id" in key:
        flt = pc.field("video_id").isin(pa.array(sorted({k[key.index("video_id")] for k in dup}), pa.string()))
    full = row_addresses(ds, ds.schema.names, flt)
    by_addr = {int(a): r for a, r in zip(full.column("_rowaddr").to_pylist(),
                                         full.drop(["_rowaddr"]).to_pylist(), strict=True)}
    drop: list[int] = []
    differing = 0
    for idx in dup.values():
        rows = sorted((int(addrs[i]) for i in idx))
        if table == VIDEOS.name:  # an ok copy first, then the first committed
            rows.sort(key=lambda a: (by_addr[a].get("status") != STATUS_OK, a))
        if any(by_addr[a] != by_addr[rows[0]] for a in rows[1:]):
            differing += 1
        drop.extend(rows[1:])
    return np.asarray(sorted(drop), np.uint64), sorted(dup, key=str)[:EXAMPLES], differing, len(groups)


def diagnose(store_uri: str, storage_options: dict[str, str] | None = None, versions: int = 5) -> StoreReport:
    """Duplicates by each table's key, orphan rows and the last `versions` commits of each table."""
    reports: dict[str, TableReport] = {}
    damages: dict[str, D.TableDamage] = {}
    for table in TABLE_KEYS:
        found = D.inspect_table(store_uri, table, storage_options)
        if found is not None and found.damaged:
            damages[table] = found
    readable = [t for t in TABLE_KEYS if t not in damages and table_exists(store_uri, t, storage_options)]
    video_ids: set[str] | None = None
    if VIDEOS.name in readable:
        video_ids = set(open_table(store_uri, VIDEOS.name, storage_options)
                        .to_table(columns=["video_id"]).column("video_id").to_pylist())
    for table in readable:
        ds = open_table(store_uri, table, storage_options)
        drop, examples, differing, n_keys = _surplus(ds, table)
        rep = TableReport(table, ds.count_rows(), n_keys, len(drop), examples, differing,
                          lineage=_lineage(ds, versions))
        if table in ORPHAN_TABLES and video_ids is not None:
            ids = pc.value_counts(ds.to_table(columns=["video_id"]).column("video_id"))
            orphans = {str(v["values"]): int(v["counts"]) for v in ids.to_pylist() if v["values"] not in video_ids}
            rep.orphan_rows = sum(orphans.values())
            rep.orphan_examples = sorted(orphans)[:EXAMPLES]
        reports[table] = rep
    return StoreReport(store_uri, reports, leases(store_uri, storage_options), damages,
                       _incomplete_videos(store_uri, storage_options, damages))


def _incomplete_videos(store_uri: str, storage_options: dict[str, str] | None,
                       damages: dict[str, D.TableDamage]) -> list[str]:
    """Ok videos whose readable `clips` rows are fewer than their positions: the ones to re-extract."""
    clips = damages.get(CLIPS.name)
    if VIDEOS.name in damages or (clips is not None and clips.unopenable) \
            or not table_exists(store_uri, VIDEOS.name, storage_options):
        return []
    videos = open_table(store_uri, VIDEOS.name, storage_options).to_table(
        columns=["video_id", "status", "n_positions"]).to_pylist()
    positions = {r["video_id"]: r["n_positions"] for r in videos if r["status"] == STATUS_OK}
    skip = {b.fragment_id for b in clips.broken} if clips else None
    return sorted(D.videos_missing_clips(store_uri, positions, storage_options, skip))


def repair_damage(store_uri: str, report: StoreReport, storage_options: dict[str, str] | None = None,
                  wait_s: float = 0.0) -> list[str]:
    """Mend what `diagnose` found damaged, each table under its writer's lease; a line per action.

    Unreferenced files are deleted; an unopenable table goes back to its newest readable version
    (or is moved aside); unreadable fragments are dropped. The videos whose clips that loses are
    extracted again by the next `hyvid extract` (it counts each ok video's clip rows), and lost
    features by the next `hyvid features`.
    """
    done: list[str] = []
    for table, damage in report.damage.items():
        with Lease(store_uri, _LEASE_OF.get(table, EXTRACT_LEASE), "hyvid doctor --repair", wait_s=wait_s,
                   storage_options=storage_options):
            if damage.unopenable:
                done.append(f"{table}: {D.restore_readable(store_uri, damage)}")
            if damage.broken:
                version = D.drop_fragments(store_uri, table, [b.fragment_id for b in damage.broken], storage_options)
                done.append(f"{table}: dropped {len(damage.broken)} unreadable fragment(s) of "
                            f"{sum(b.rows for b in damage.broken)} rows -> version {version}")
            if damage.unreferenced and not (damage.unopenable and damage.readable_version is None):
                n = D.remove_unreferenced(store_uri, damage)
                done.append(f"{table}: removed {n} data file(s) no version names")
    return done


def repair(store_uri: str, storage_options: dict[str, str] | None = None, wait_s: float = 0.0) -> dict[str, int]:
    """Delete every duplicate copy (one atomic commit per table); returns rows removed per table.

    Holds each table's writer lease while it reads and commits, so no writer adds rows meanwhile.
    """
    removed: dict[str, int] = {}
    for name in (EXTRACT_LEASE, FEATURES_LEASE, SCORES_LEASE):
        tables = [t for t in TABLE_KEYS if _LEASE_OF.get(t) == name and table_exists(store_uri, t, storage_options)]
        if not tables:
            continue
        with Lease(store_uri, name, "hyvid doctor --repair", wait_s=wait_s, storage_options=storage_options) as lease:
            for table in tables:
                ds = open_table(store_uri, table, storage_options)
                drop = _surplus(ds, table)[0]
                if len(drop):
                    lease.check()
                    version = commit_replacing(store_uri, table, drop.tolist(), (), storage_options,
                                               read_version=ds.version)
                    log.info("%s: removed %d duplicate row(s) -> version %d", table, len(drop), version)
                removed[table] = len(drop)
    return removed
