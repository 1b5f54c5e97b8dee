"""Writer leases on a real Lance store, held by real processes (spawned: Lance is not fork-safe)."""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import socket
import threading
import time
from dataclasses import asdict
from pathlib import Path

import pytest
from helpers.processes import run_concurrently

from hyvid.store.lease import (
    EXTRACT_LEASE,
    SCORES_LEASE,
    Holder,
    Lease,
    LeaseHeld,
    LeaseLost,
    _open,
    _swap,
    leases,
    read_holder,
)


def _plant(store: str, name: str, holder: Holder) -> None:
    """Write a lease entry as another process (or host) would have left it."""
    ds = _open(store, None)
    assert _swap(store, name, ds.version, json.dumps(asdict(holder)), None)


def test_a_second_writer_is_refused_in_one_line_naming_the_holder(tmp_path):
    store = str(tmp_path / "s")
    with Lease(store, EXTRACT_LEASE, "hyvid extract"):
        with pytest.raises(LeaseHeld) as e:
            Lease(store, EXTRACT_LEASE, "hyvid extract", wait_s=0).acquire()
        msg = str(e.value)
        assert "\n" not in msg and f"pid {os.getpid()}" in msg and "hyvid extract" in msg and "--wait" in msg
        # other groups of tables are independent
        with Lease(store, SCORES_LEASE, "video_scores upsert", wait_s=0):
            pass
    assert read_holder(store, EXTRACT_LEASE) is None  # released
    Lease(store, EXTRACT_LEASE, "again", wait_s=0).acquire().release()


def test_a_waiting_writer_gets_the_lease_once_the_holder_releases_it(tmp_path):
    store = str(tmp_path / "s")
    first = Lease(store, EXTRACT_LEASE, "first").acquire()
    threading.Timer(1.0, first.release).start()
    with Lease(store, EXTRACT_LEASE, "second", wait_s=60) as second:
        assert read_holder(store, EXTRACT_LEASE).token == second.token


def test_an_expired_lease_of_another_host_is_taken_over_and_a_live_one_is_not(tmp_path):
    store = str(tmp_path / "s")
    now = time.time()
    _plant(store, EXTRACT_LEASE, Holder("hyvid extract", "other-host", 1, "t-live", now, now + 3600))
    with pytest.raises(LeaseHeld, match="other-host"):
        Lease(store, EXTRACT_LEASE, "me", wait_s=0).acquire()
    _plant(store, EXTRACT_LEASE, Holder("hyvid extract", "other-host", 1, "t-dead", now - 120, now - 60))
    with Lease(store, EXTRACT_LEASE, "me", wait_s=0) as lease:
        assert read_holder(store, EXTRACT_LEASE).token == lease.token


def _hold(store: str, ready: str) -> None:
    Lease(store, EXTRACT_LEASE, "holder", ttl_s=3600).acquire()
    Path(ready).touch()
    time.sleep(3600)


def test_a_lease_survives_kill_9_and_is_taken_over_on_the_same_host(tmp_path):
    """A holder killed with SIGKILL never releases: its lease (1 h TTL here) is still taken at once,
    because on its own host the dead pid shows it cannot be writing."""
    store, ready = str(tmp_path / "s"), tmp_path / "ready"
    p = mp.get_context("spawn").Process(target=_hold, args=(store, str(ready)))
    p.start()
    while not ready.exists():
        assert p.is_alive()
        time.sleep(0.1)
    with pytest.raises(LeaseHeld):  # alive: refused
        Lease(store, EXTRACT_LEASE, "me", wait_s=0).acquire()
    os.kill(p.pid, signal.SIGKILL)
    p.join()
    held = read_holder(store, EXTRACT_LEASE)
    assert held is not None and held.pid == p.pid and held.host == socket.gethostname()
    with Lease(store, EXTRACT_LEASE, "me", wait_s=0) as lease:
        assert read_holder(store, EXTRACT_LEASE).token == lease.token


def test_a_holder_whose_lease_was_taken_over_may_not_commit(tmp_path):
    store = str(tmp_path / "s")
    stalled = Lease(store, EXTRACT_LEASE, "stalled", ttl_s=0.5).acquire()
    stalled._stop.set()  # as if the process hung: no more renewals
    stalled._thread.join()
    time.sleep(0.6)
    with Lease(store, EXTRACT_LEASE, "new", wait_s=0):
        with pytest.raises(LeaseLost, match="was lost"):
            stalled.check()
        stalled.release()  # releases nothing of the new holder's
        assert read_holder(store, EXTRACT_LEASE).owner == "new"
    assert leases(store) == {}


def _count(store: str, counter: str, rounds: int) -> None:
    for _ in range(rounds):
        with Lease(store, EXTRACT_LEASE, "counter", wait_s=120):
            n = int(Path(counter).read_text())
            time.sleep(0.01)  # widen the read-modify-write window
            Path(counter).write_text(str(n + 1))


def test_leases_exclude_each_other_across_processes(tmp_path):
    """Three processes increment a file under the lease: without mutual exclusion updates are lost."""
    store, counter = str(tmp_path / "s"), tmp_path / "n"
    counter.write_text("0")
    assert run_concurrently(_count, (store, str(counter), 8), 3) == [0, 0, 0]
    assert int(counter.read_text()) == 24
