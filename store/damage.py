"""Damage a Lance table can take outside hyvid's writers, how to see it and how to mend it.

A table is a folder: `data/` holds fragment files, `_versions/` one manifest per commit (naming the
fragments of that version) and `_transactions/` one file per commit. What goes wrong:

- **never committed**: a writer killed (or out of disk) before the table's first commit leaves
  `data/` files and no version. The table is absent; the files are garbage.
- **versions lost or unreadable**: `_versions/` deleted, or its newest manifest truncated. The table
  cannot be opened. If an older manifest still reads, the table goes back to it (the unreadable
  manifests are moved to `<table>/_damaged/`); if none does, the whole table is moved to
  `<store>/_damaged/`, so the stage that writes it rebuilds it from scratch.
- **unreadable fragments**: a data file the newest version names is gone or truncated. Every full
  scan fails. Dropping those fragments from the table (one commit) keeps every readable row; the
  videos they held are then incomplete, and `extract`/`features` redo them (their plans count each
  video's rows).
- **unreferenced files**: data files no version names, from a commit that failed (disk full) or a
  writer killed between writing fragments and committing them. Only removing them helps.

Nothing here takes a lease: the callers (`store.doctor`, the writers) hold the table's.
"""
from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass, field

import lance

from hyvid.store.lance_io import (
    TableDamaged,
    is_local_uri,
    lance_error_text,
    open_table,
    table_exists,
    table_state,
    table_uri,
)
from hyvid.store.tables import CLIPS

log = logging.getLogger(__name__)

DAMAGED_DIR = "_damaged"  # where unreadable manifests (in a table) and unopenable tables (in the store) go
_MAX_VERSION = 2**64 - 1  # Lance names manifests u64::MAX - version, so the newest sorts first


@dataclass(frozen=True)
class BrokenFragment:
    fragment_id: int
    files: tuple[str, ...]
    rows: int
    error: str


@dataclass
class TableDamage:
    """What is wrong with one table (all empty: nothing)."""

    table: str
    unopenable: str | None = None  # why the table cannot be opened at all
    readable_version: int | None = None  # with `unopenable`: the newest version that still reads
    broken: list[BrokenFragment] = field(default_factory=list)
    unreferenced: list[str] = field(default_factory=list)  # data files no readable version names
    uncommitted: bool = False  # the table never got a first commit

    @property
    def damaged(self) -> bool:
        return bool(self.unopenable or self.broken or self.unreferenced)

    def describe(self) -> list[str]:
        lines = []
        if self.unopenable:
            back = (f"the newest readable version is {self.readable_version}" if self.readable_version is not None
                    else "no version reads")
            lines.append(f"cannot be opened ({self.unopenable}); {back}")
        for b in self.broken:
            lines.append(f"fragment {b.fragment_id} ({b.rows} rows, {', '.join(b.files)}) is unreadable: {b.error}")
        if self.unreferenced:
            what = "a first commit never made" if self.uncommitted else "no version names"
            lines.append(f"{len(self.unreferenced)} data file(s) that {what} "
                         f"(e.g. {', '.join(self.unreferenced[:2])}): left by a failed or killed write")
        return lines


def _local_dir(store_uri: str, table: str) -> str | None:
    uri = table_uri(store_uri, table)
    return uri.removeprefix("file://") if is_local_uri(uri) else None


def _short(e: BaseException) -> str:
    return f"{type(e).__name__}: {lance_error_text(e)}"


def manifest_versions(table_dir: str) -> list[int]:
    """The versions `_versions/` holds manifests of, newest first."""
    folder = os.path.join(table_dir, "_versions")
    out = []
    for name in os.listdir(folder) if os.path.isdir(folder) else ():
        stem, ext = os.path.splitext(name)
        if ext == ".manifest" and stem.isdigit():
            n = int(stem)
            out.append(_MAX_VERSION - n if n > 2**63 else n)  # the V2 (inverted) naming, or V1's plain numbers
    return sorted(out, reverse=True)


def _newest_readable(uri: str, versions: list[int], storage_options: dict[str, str] | None) -> int | None:
    for v in versions:
        try:
            lance.dataset(uri, version=v, storage_options=storage_options).count_rows()
            return v
        except (OSError, ValueError):
            continue
    return None


def broken_fragments(ds: lance.LanceDataset) -> list[BrokenFragment]:
    """Fragments of this version whose data files cannot be read (gone, truncated)."""
    broken = []
    column = ds.schema.names[:1]
    for frag in ds.get_fragments():
        files = tuple(f.path for f in frag.metadata.data_files())
        try:
            frag.to_table(columns=column)
        except Exception as e:  # noqa: BLE001 - OSError, or pyarrow.ArrowInvalid "External error: Not found"
            broken.append(BrokenFragment(frag.fragment_id, files, frag.metadata.physical_rows, _short(e)))
    return broken


def _referenced_files(uri: str, versions: list[int], storage_options: dict[str, str] | None) -> set[str]:
    """Data files any readable version names (older versions too: lineage pins them)."""
    names: set[str] = set()
    for v in versions:
        try:
            ds = lance.dataset(uri, version=v, storage_options=storage_options)
        except (OSError, ValueError):
            continue
        for frag in ds.get_fragments():
            names.update(f.path for f in frag.metadata.data_files())
    return names


def inspect_table(store_uri: str, table: str, storage_options: dict[str, str] | None = None) -> TableDamage | None:
    """The damage of one table; None when the table does not exist at all."""
    state = table_state(store_uri, table, storage_options)
    if state == "absent":
        return None
    damage = TableDamage(table)
    uri = table_uri(store_uri, table)
    folder = _local_dir(store_uri, table)
    versions = manifest_versions(folder) if folder else []
    if state == "uncommitted":
        damage.uncommitted = True
    else:
        try:
            ds = open_table(store_uri, table, storage_options)
            damage.broken = broken_fragments(ds)
        except TableDamaged as e:
            damage.unopenable = str(e.reason)
            damage.readable_version = _newest_readable(uri, versions, storage_options)
    if folder and os.path.isdir(os.path.join(folder, "data")):
        referenced = _referenced_files(uri, versions, storage_options)
        damage.unreferenced = sorted(n for n in os.listdir(os.path.join(folder, "data")) if n not in referenced)
    return damage


def remove_unreferenced(store_uri: str, damage: TableDamage) -> int:
    """Delete the data files no version names; how many."""
    folder = _local_dir(store_uri, damage.table)
    if folder is None:
        return 0  # object stores: unreferenced files are only listed where the store is local
    removed = 0
    for name in damage.unreferenced:
        path = os.path.join(folder, "data", name)
        try:
            os.remove(path)
            removed += 1
        except FileNotFoundError:
            pass
    if damage.uncommitted and folder and not os.listdir(os.path.join(folder, "data")):
        shutil.rmtree(folder)  # nothing of a never-committed table remains: it is absent again
    return removed


def restore_readable(store_uri: str, damage: TableDamage) -> str:
    """An unopenable table goes back to its newest readable version, or, with none, moves aside; what was done."""
    folder = _local_dir(store_uri, damage.table)
    if folder is None:
        raise OSError(f"table {damage.table!r} cannot be opened and is not on a local disk: restore "
                      f"{table_uri(store_uri, damage.table)} from a backup")
    stamp = time.strftime("%Y%m%dT%H%M%S")
    if damage.readable_version is not None:
        aside = os.path.join(folder, DAMAGED_DIR, stamp)
        os.makedirs(aside, exist_ok=True)
        for v in manifest_versions(folder):
            if v > damage.readable_version:
                name = f"{_MAX_VERSION - v:020d}.manifest"
                for candidate in (name, f"{v}.manifest"):
                    src = os.path.join(folder, "_versions", candidate)
                    if os.path.exists(src):
                        shutil.move(src, os.path.join(aside, candidate))
        hint = os.path.join(folder, "_versions", "latest_version_hint.json")
        if os.path.exists(hint):
            os.remove(hint)  # it names the version moved aside
        return f"went back to version {damage.readable_version} (newer manifests moved to {aside})"
    aside = os.path.join(os.path.dirname(folder), DAMAGED_DIR, f"{os.path.basename(folder)}.{stamp}")
    os.makedirs(os.path.dirname(aside), exist_ok=True)
    shutil.move(folder, aside)
    return f"no version reads: moved the table to {aside}; the stage that writes it rebuilds it"


def drop_fragments(store_uri: str, table: str, fragment_ids: list[int], storage_options: dict[str, str] | None = None,
                   read_version: int | None = None) -> int:
    """Remove fragments from the table in one commit (their files stay for older versions); the new version."""
    ds = open_table(store_uri, table, storage_options, version=read_version)
    op = lance.LanceOperation.Update(removed_fragment_ids=list(fragment_ids), updated_fragments=[], new_fragments=[])
    out = lance.LanceDataset.commit(table_uri(store_uri, table), op, read_version=ds.version,
                                    storage_options=storage_options)
    return int(out.version)


def videos_missing_clips(store_uri: str, positions: dict[str, int], storage_options: dict[str, str] | None = None,
                         skip: set[int] | None = None) -> set[str]:
    """Of the videos in `positions` (video -> its sampled positions), those with fewer readable
    `clips` rows than that: rows lost to damage. `skip`: clips fragments known to be unreadable."""
    have: dict[str, int] = {}
    if table_exists(store_uri, CLIPS.name, storage_options):
        for v in readable_column(open_table(store_uri, CLIPS.name, storage_options), "video_id", skip):
            have[str(v)] = have.get(str(v), 0) + 1
    return {v for v, n in positions.items() if have.get(v, 0) < (n or 0)}


def readable_column(ds: lance.LanceDataset, column: str, skip: set[int] | None = None) -> list[object]:
    """`column` of every fragment that reads, leaving out `skip` (broken fragments)."""
    values: list[object] = []
    for frag in ds.get_fragments():
        if skip and frag.fragment_id in skip:
            continue
        values.extend(frag.to_table(columns=[column]).column(column).to_pylist())
    return values


def drop_broken(store_uri: str, table: str,
                storage_options: dict[str, str] | None = None) -> list[BrokenFragment]:
    """A writer's first step under its lease: drop the table's unreadable fragments (one commit, a
    warning naming them), so its plan reads what is left and redoes the videos they held."""
    if not table_exists(store_uri, table, storage_options):
        return []
    ds = open_table(store_uri, table, storage_options)
    broken = broken_fragments(ds)
    if broken:
        version = drop_fragments(store_uri, table, [b.fragment_id for b in broken], storage_options, ds.version)
        log.warning("%s: %d fragment(s) of %d row(s) could not be read (%s) and were dropped -> version %d; "
                    "the videos they held are done again", table, len(broken), sum(b.rows for b in broken),
                    broken[0].error, version)
    return broken
