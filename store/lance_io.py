"""Two-phase Lance writes: workers write fragments, the driver commits them as one atomic append.

Readers never see a half-written batch: a fragment is invisible until a manifest that names it
is committed, and a crashed worker's orphan files are simply never referenced.
"""
from __future__ import annotations

import logging
import os
from typing import Iterable

import lance
import numpy as np
import pyarrow as pa
from lance.fragment import FragmentMetadata, write_fragments

log = logging.getLogger(__name__)


def table_uri(store_uri: str, table: str) -> str:
    """URI of one table of the store: `<store>/<table>.lance` (local path or s3://...)."""
    return f"{store_uri.rstrip('/')}/{table}.lance"


def is_local_uri(uri: str) -> bool:
    """A path on this machine's file system (plain or file://), not an object-store URI."""
    return "://" not in uri or uri.startswith("file://")


def canonical_store_uri(uri: str) -> str:
    """One spelling per store: local paths absolute (Ray workers run in other directories, and
    MLflow tags compare stores as strings); object-store URIs unchanged."""
    if is_local_uri(uri):
        return os.path.abspath(os.path.expanduser(uri.removeprefix("file://")))
    return uri.rstrip("/")


class TableDamaged(OSError):
    """A table that exists and cannot be opened (its versions deleted, its newest manifest truncated).

    An OSError, so the CLI reports it in one line; not a FileNotFoundError, so no stage mistakes it
    for an absent table and rebuilds over it."""

    def __init__(self, store_uri: str, table: str, reason: str):
        self.table, self.reason = table, reason
        super().__init__(f"table {table!r} of store {store_uri!r} is damaged ({reason}); run "
                         f"`hyvid doctor --store {store_uri}` to see the damage and `--repair` to mend it")


def lance_error_text(e: BaseException) -> str:
    """A Lance error's text on one line, without the Rust source location it ends with."""
    text = " ".join(str(e).split())
    return text.split(", /home/runner")[0].split(", /Users/")[0][:200]


def table_state(store_uri: str, table: str, storage_options: dict[str, str] | None = None) -> str:
    """"absent", "uncommitted" (data files and no commit: a writer died before the first one) or
    "present" (which may still be damaged: `open_table` says). Object stores: "absent" or "present"."""
    uri = table_uri(store_uri, table)
    if not is_local_uri(uri):
        return "present"
    folder = uri.removeprefix("file://")
    if not os.path.exists(folder):
        return "absent"
    committed = any(os.path.isdir(os.path.join(folder, d)) and os.listdir(os.path.join(folder, d))
                    for d in ("_versions", "_transactions"))
    return "present" if committed else "uncommitted"


def table_exists(store_uri: str, table: str, storage_options: dict[str, str] | None = None) -> bool:
    """Whether the table exists; a damaged one raises TableDamaged rather than passing for absent."""
    try:
        open_table(store_uri, table, storage_options)
        return True
    except FileNotFoundError:
        return False
    except OSError:
        if is_local_uri(table_uri(store_uri, table)):
            raise  # TableDamaged: on a local disk, damage is told from absence
        return False  # an object store that cannot be listed (no credentials, no endpoint) holds no table for us


def open_table(
    store_uri: str, table: str, storage_options: dict[str, str] | None = None, version: int | None = None
) -> lance.LanceDataset:
    """Open one table; FileNotFoundError naming the table and what creates it, TableDamaged when it
    exists and cannot be opened."""
    uri = table_uri(store_uri, table)
    state = table_state(store_uri, table, storage_options)
    if state != "present":
        leftover = (" (it holds data files of a write that was never committed: `hyvid doctor --repair` "
                    "removes them)" if state == "uncommitted" else "")
        raise FileNotFoundError(
            f"table {table!r} does not exist in store {store_uri!r} ({uri}){leftover}; "
            "run the stage that writes it first (see `hyvid --help`)"
        )
    try:
        return lance.dataset(uri, version=version, storage_options=storage_options)
    except (OSError, ValueError) as e:
        if not is_local_uri(uri) and "was not found" in str(e) and version is None:
            raise FileNotFoundError(f"table {table!r} does not exist in store {store_uri!r} ({uri}); "
                                    "run the stage that writes it first (see `hyvid --help`)") from None
        if version is not None and "not found" in str(e).lower() and "_versions" not in str(e):
            raise ValueError(f"table {table!r} has no version {version}: {lance_error_text(e)}") from None
        if not is_local_uri(uri):  # an object store's error may be the network's, not the table's
            raise OSError(f"table {table!r} of store {store_uri!r} could not be read: {lance_error_text(e)}") from None
        raise TableDamaged(store_uri, table, lance_error_text(e)) from None


def write_table_fragments(
    store_uri: str, table: str, data: pa.Table, storage_options: dict[str, str] | None = None
) -> list[FragmentMetadata]:
    """Worker side: write `data` as new fragment files, visible to nobody until committed."""
    if data.num_rows == 0:
        return []
    return write_fragments(
        data, table_uri(store_uri, table), schema=data.schema, storage_options=storage_options
    )


def commit_fragments(
    store_uri: str,
    table: str,
    fragments: Iterable[FragmentMetadata],
    schema: pa.Schema,
    storage_options: dict[str, str] | None = None,
    overwrite: bool = False,
) -> int:
    """Driver side: commit fragments as one atomic append (creating the table if needed).

    `overwrite`: the fragments replace every row of an existing table, its schema too (a table of
    derived data rebuilt in a new layout). Returns the new table version.
    """
    fragments = list(fragments)
    uri = table_uri(store_uri, table)
    try:
        if table_exists(store_uri, table, storage_options) and not overwrite:
            ds = open_table(store_uri, table, storage_options)
            append = lance.LanceOperation.Append(fragments)
            ds = lance.LanceDataset.commit(uri, append, read_version=ds.version, storage_options=storage_options)
        else:
            op = lance.LanceOperation.Overwrite(schema, fragments)
            ds = lance.LanceDataset.commit(uri, op, storage_options=storage_options)
    except BaseException:
        discard_fragments(store_uri, table, fragments)
        raise
    log.debug("committed %d fragment(s) to %s -> version %d", len(fragments), uri, ds.version)
    return ds.version


def discard_fragments(store_uri: str, table: str, fragments: Iterable[FragmentMetadata]) -> int:
    """Delete the data files of fragments whose commit failed (a full disk, an interrupt), so no
    file that no version names is left behind; how many. Local stores only: on an object store
    they stay until `hyvid doctor --repair`."""
    uri = table_uri(store_uri, table)
    if not is_local_uri(uri):
        return 0
    folder = os.path.join(uri.removeprefix("file://"), "data")
    n = 0
    for frag in fragments:
        for f in frag.data_files():
            try:
                os.remove(os.path.join(folder, f.path))
                n += 1
            except OSError:
                pass
    if n:
        log.debug("%s: removed %d data file(s) of an uncommitted write", table, n)
    return n


def commit_replacing(
    store_uri: str,
    table: str,
    row_addresses: Iterable[int],
    new_fragments: Iterable[FragmentMetadata] = (),
    storage_options: dict[str, str] | None = None,
    read_version: int | None = None,
) -> int:
    """Delete rows by address and add new fragments in one atomic commit; returns the version.

    Row addresses (`_rowaddr`: fragment id << 32 | offset) come from a scan of version
    `read_version` (default: the latest). Readers see the old rows or the new ones, never both.
    """
    ds = open_table(store_uri, table, storage_options, version=read_version)
    addrs = np.asarray(list(row_addresses), dtype=np.uint64)
    removed: list[int] = []
    updated: list[FragmentMetadata] = []
    frag_ids = addrs >> np.uint64(32)
    for fid in np.unique(frag_ids):
        offsets = (addrs[frag_ids == fid] & np.uint64(0xFFFFFFFF)).astype(np.int64).tolist()
        frag = ds.get_fragment(int(fid))
        if frag is None:
            raise ValueError(f"{table}: row addresses name fragment {int(fid)}, which version {ds.version} lacks")
        new = frag.delete_rows(offsets)
        if new is None:  # every row of the fragment is gone
            removed.append(int(fid))
        else:
            updated.append(new)
    new_fragments = list(new_fragments)
    op = lance.LanceOperation.Update(removed_fragment_ids=removed, updated_fragments=updated,
                                     new_fragments=new_fragments)
    try:
        out = lance.LanceDataset.commit(table_uri(store_uri, table), op, read_version=ds.version,
                                        storage_options=storage_options)
    except BaseException:
        discard_fragments(store_uri, table, new_fragments)
        raise
    log.debug("%s: deleted %d row(s), added fragments -> version %d", table, len(addrs), out.version)
    return int(out.version)


def row_addresses(ds: lance.LanceDataset, columns: list[str], filter: object = None) -> pa.Table:
    """`columns` and each row's `_rowaddr` (for `commit_replacing`), optionally filtered."""
    return ds.scanner(columns=columns, filter=filter, with_row_address=True).to_table()


def append_rows(
    store_uri: str, table: str, data: pa.Table, storage_options: dict[str, str] | None = None
) -> int:
    """Driver-side convenience for small tables: write and commit in one step."""
    frags = write_table_fragments(store_uri, table, data, storage_options)
    return commit_fragments(store_uri, table, frags, data.schema, storage_options)


def table_versions(
    store_uri: str, tables: Iterable[str], storage_options: dict[str, str] | None = None
) -> dict[str, int]:
    """Current version of each existing table: the lineage a run logs."""
    out = {}
    for t in tables:
        if table_exists(store_uri, t, storage_options):
            out[t] = open_table(store_uri, t, storage_options).version
    return out
