"""Writer leases: at most one process at a time writes each group of the store's tables.

Lance commits are atomic, but two writers that both decide a video is missing both append it,
and Lance's conflict check cannot see that (appends touch disjoint fragments). So every writer
of `videos`/`clips`/`classes`, of `frame_features` and of `video_scores` first takes that
group's lease, and decides what to write only once it holds it.

A lease is an entry in the config of the store's `_leases.lance` dataset: who holds it (command,
host, pid, a random token) and until when. Taking, renewing and releasing it are Lance
`UpdateConfig` commits made against the version the holder read; Lance refuses a commit when a
concurrent commit changed the same key, so that read-check-write is a compare-and-swap, and it
works wherever Lance can commit (a local disk, S3, GCS, Azure).

A holder renews its lease from a background thread every `ttl_s / 3`. A holder killed with
`kill -9` stops renewing: its lease can be taken over once it has expired, or at once by a process
on the same host that sees the holder's pid is gone. Expiry compares wall clocks of different
machines: keep them within a few seconds of each other (NTP), far below the default TTL of 60 s.

A process whose lease was taken over (it stalled for longer than the TTL) learns it at its next
`check()`, which every commit under a lease calls first, and stops with `LeaseLost`.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import timedelta
from types import TracebackType
from typing import Any

import lance
import pyarrow as pa

# `import lance` alone does not load its `commit` submodule: `except lance.commit.CommitConflictError`
# raised AttributeError on a failed commit unless some other import had loaded it first.
from lance.commit import CommitConflictError

from hyvid.store.lance_io import table_uri

log = logging.getLogger(__name__)

LEASES_TABLE = "_leases"
# Lease groups: each names the tables its holder may write.
EXTRACT_LEASE = "extract"  # videos, clips, classes
FEATURES_LEASE = "frame_features"
SCORES_LEASE = "video_scores"
LEASE_TABLES = {EXTRACT_LEASE: ("videos", "clips", "classes"), FEATURES_LEASE: ("frame_features",),
                SCORES_LEASE: ("video_scores",)}
DEFAULT_TTL_S = 60.0  # a dead holder blocks others this long at most (less on its own host)
DEFAULT_WAIT_S = 600.0  # how long a writer waits for a live holder before giving up
POLL_S = 1.0
_KEY_PREFIX = "hyvid.lease."


# ValueErrors, like a bad flag: every command reports them as one line naming what to do.
class LeaseHeld(ValueError):
    """Another live writer holds the lease; the message names it and what to do."""


class LeaseLost(ValueError):
    """This process's lease expired and another writer took it over: it must not commit."""


@dataclass(frozen=True)
class Holder:
    """Who holds a lease, and until when (seconds since the epoch)."""

    owner: str  # what the holder is doing: "hyvid extract", "hyvid doctor --repair", ...
    host: str
    pid: int
    token: str
    acquired_at: float
    expires_at: float

    def describe(self) -> str:
        since = time.strftime("%H:%M:%S", time.localtime(self.acquired_at))
        left = self.expires_at - time.time()
        return f"`{self.owner}` (pid {self.pid} on {self.host}, since {since}, lease expires in {left:.0f} s)"


def _parse(text: str | None) -> Holder | None:
    if not text:
        return None
    try:
        return Holder(**json.loads(text))
    except (TypeError, ValueError):
        log.warning("ignoring an unreadable lease entry %r", text)
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def is_stale(holder: Holder, now: float | None = None) -> bool:
    """True when the holder can no longer be writing: its lease expired, or it died on this host."""
    if (now if now is not None else time.time()) >= holder.expires_at:
        return True
    return holder.host == socket.gethostname() and holder.pid != os.getpid() and not _pid_alive(holder.pid)


def _open(store_uri: str, storage_options: dict[str, str] | None) -> lance.LanceDataset:
    """The leases dataset, created on first use (an empty table: leases live in its config)."""
    uri = table_uri(store_uri, LEASES_TABLE)
    try:
        return lance.dataset(uri, storage_options=storage_options)
    except (FileNotFoundError, ValueError, OSError):
        pass
    try:
        return lance.write_dataset(pa.table({"unused": pa.array([], pa.int8())}), uri, mode="create",
                                   storage_options=storage_options)
    except (OSError, ValueError):
        # Another writer created it between our two calls.
        return lance.dataset(uri, storage_options=storage_options)


def read_holder(store_uri: str, name: str, storage_options: dict[str, str] | None = None) -> Holder | None:
    """The current holder of lease `name`, live or stale (None when nobody took it)."""
    ds = _open(store_uri, storage_options)
    return _parse(ds.config().get(_KEY_PREFIX + name))


def _swap(store_uri: str, name: str, expect_version: int, value: str | None,
          storage_options: dict[str, str] | None) -> bool:
    """Set the lease entry unless another commit changed it since `expect_version`; True on success."""
    op = lance.LanceOperation.UpdateConfig(
        config_updates=lance.LanceOperation.UpdateMap({_KEY_PREFIX + name: value}, False))
    try:
        lance.LanceDataset.commit(table_uri(store_uri, LEASES_TABLE), op, read_version=expect_version,
                                  storage_options=storage_options)
        return True
    except CommitConflictError:  # a subclass of OSError: caught first, other OSErrors propagate
        return False


class Lease:
    """A writer lease on one group of tables; use as a context manager (`with Lease(...):`).

    `wait_s` is how long to wait for a live holder (0: fail at once with `LeaseHeld`).
    """

    def __init__(self, store_uri: str, name: str, owner: str, *, wait_s: float = DEFAULT_WAIT_S,
                 ttl_s: float = DEFAULT_TTL_S, storage_options: dict[str, str] | None = None) -> None:
        if name not in LEASE_TABLES:
            raise ValueError(f"unknown lease {name!r}; leases are {sorted(LEASE_TABLES)}")
        if not (ttl_s > 0 and wait_s >= 0):
            raise ValueError(f"lease ttl_s must be > 0 and wait_s >= 0, got {ttl_s} and {wait_s}")
        self.store_uri, self.name, self.owner = store_uri, name, owner
        self.wait_s, self.ttl_s, self.storage_options = wait_s, ttl_s, storage_options
        self.token = uuid.uuid4().hex
        self.holder: Holder | None = None
        self._lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _mine(self, acquired_at: float) -> Holder:
        now = time.time()
        return Holder(self.owner, socket.gethostname(), os.getpid(), self.token, acquired_at, now + self.ttl_s)

    def _try_take(self) -> Holder | None:
        """Take the lease if it is free or stale; else return its live holder."""
        while True:
            ds = _open(self.store_uri, self.storage_options)
            current = _parse(ds.config().get(_KEY_PREFIX + self.name))
            if current is not None and current.token != self.token and not is_stale(current):
                return current
            if current is not None and current.token != self.token:
                log.warning("taking over the %s lease of store %s from %s, which is no longer running",
                            self.name, self.store_uri, current.describe())
            mine = self._mine(time.time())
            if _swap(self.store_uri, self.name, ds.version, json.dumps(asdict(mine)), self.storage_options):
                self.holder = mine
                return None
            # Someone else changed the entry first: read it again.

    def acquire(self) -> Lease:
        deadline = time.monotonic() + self.wait_s
        said = False
        while True:
            other = self._try_take()
            if other is None:
                break
            if time.monotonic() >= deadline:
                waited = f"waited {self.wait_s:.0f} s; " if self.wait_s else ""
                raise LeaseHeld(
                    f"store {self.store_uri!r} is being written ({', '.join(LEASE_TABLES[self.name])}) by "
                    f"{other.describe()}; {waited}run again once it has finished, or give --wait SECONDS")
            if not said:
                log.warning("store %s: waiting up to %.0f s for %s to finish writing %s", self.store_uri,
                            self.wait_s, other.describe(), "/".join(LEASE_TABLES[self.name]))
                said = True
            time.sleep(min(POLL_S, max(0.0, deadline - time.monotonic())))
        self._stop.clear()
        self._thread = threading.Thread(target=self._renew_loop, name=f"lease-{self.name}", daemon=True)
        self._thread.start()
        log.debug("took the %s lease of %s", self.name, self.store_uri)
        return self

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            try:
                self._renew()
            except LeaseLost as e:
                self._lost = str(e)
                return
            except (OSError, ValueError) as e:  # a transient store error: the next round tries again
                log.warning("could not renew the %s lease of %s: %s", self.name, self.store_uri, e)

    def _renew(self) -> None:
        assert self.holder is not None
        while True:
            ds = _open(self.store_uri, self.storage_options)
            current = _parse(ds.config().get(_KEY_PREFIX + self.name))
            if current is None or current.token != self.token:
                raise LeaseLost(self._lost_message(current))
            mine = self._mine(self.holder.acquired_at)
            if _swap(self.store_uri, self.name, ds.version, json.dumps(asdict(mine)), self.storage_options):
                self.holder = mine
                return

    def _lost_message(self, current: Holder | None) -> str:
        by = f" to {current.describe()}" if current else ""
        return (f"the {self.name} lease of store {self.store_uri!r} was lost{by} (this process stalled for "
                f"more than {self.ttl_s:.0f} s); nothing more was committed, run the command again")

    def check(self) -> None:
        """Raise LeaseLost unless this process still holds the lease; call right before each commit."""
        if self._lost:
            raise LeaseLost(self._lost)
        current = read_holder(self.store_uri, self.name, self.storage_options)
        if current is None or current.token != self.token:
            self._lost = self._lost_message(current)
            raise LeaseLost(self._lost)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        try:
            while self.holder is not None:
                ds = _open(self.store_uri, self.storage_options)
                current = _parse(ds.config().get(_KEY_PREFIX + self.name))
                if current is None or current.token != self.token:
                    break  # taken over already: nothing of ours to release
                if _swap(self.store_uri, self.name, ds.version, None, self.storage_options):
                    if ds.version % 200 == 0:  # each take, renewal and release is a version: drop old ones
                        _open(self.store_uri, self.storage_options).cleanup_old_versions(
                            older_than=timedelta(hours=1))
                    break
        except OSError as e:
            # Raising here (from __exit__) would hide the error that ended the writer's work, and the
            # entry needs no cleanup: it names this pid, so it is stale once this process exits (at
            # once on this host, after the TTL elsewhere).
            log.warning("could not release the %s lease of %s (%s); it expires in %.0f s", self.name,
                        self.store_uri, e, self.ttl_s)
        self.holder = None

    def __enter__(self) -> Lease:
        return self.acquire()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()


def leases(store_uri: str, storage_options: dict[str, str] | None = None) -> dict[str, Any]:
    """Every lease entry of the store: name -> (holder, stale?), for `hyvid doctor`."""
    try:
        ds = lance.dataset(table_uri(store_uri, LEASES_TABLE), storage_options=storage_options)
    except (FileNotFoundError, ValueError, OSError):
        return {}
    out: dict[str, Any] = {}
    for key, text in ds.config().items():
        if key.startswith(_KEY_PREFIX):
            h = _parse(text)
            if h is not None:
                out[key[len(_KEY_PREFIX):]] = (h, is_stale(h))
    return out
