"""Faults of the writer process itself, on a real Lance store: lost commit races and I/O errors
while taking and releasing a writer lease.

An I/O fault is injected by making Lance's commit call raise OSError (a full or read-only disk
fails there); everything else is the real store.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict

import lance
import pytest

from hyvid.store.lease import EXTRACT_LEASE, Lease, _open, _swap, read_holder


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """One small store for the module: each test uses its own lease group or leaves it released."""
    uri = str(tmp_path_factory.mktemp("faults") / "s")
    _open(uri, None)
    return uri


def _disk_fails(monkeypatch) -> None:
    def commit(*args, **kwargs):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(lance.LanceDataset, "commit", staticmethod(commit))


def test_a_commit_race_lost_to_another_writer_is_a_refusal_not_a_crash(store):
    # Two writers read the same version; the first one's commit wins, the second is refused (False),
    # and the lease entry is the winner's. Before `lance.commit` was imported this raised AttributeError.
    stale = _open(store, None).version
    assert _swap(store, EXTRACT_LEASE, stale, json.dumps({"who": "first"}), None)
    assert not _swap(store, EXTRACT_LEASE, stale, json.dumps({"who": "second"}), None)
    assert _open(store, None).config()["hyvid.lease." + EXTRACT_LEASE] == json.dumps({"who": "first"})
    assert _swap(store, EXTRACT_LEASE, _open(store, None).version, None, None)  # leave it free


def test_an_io_error_while_taking_a_lease_is_an_oserror_naming_its_cause(store, monkeypatch):
    _disk_fails(monkeypatch)
    with pytest.raises(OSError, match="No space left on device") as e:
        Lease(store, EXTRACT_LEASE, "hyvid extract", wait_s=0).acquire()
    # an OSError is a user error for the CLI (one line); AttributeError would have been a traceback
    assert type(e.value) is OSError
    monkeypatch.undo()
    assert read_holder(store, EXTRACT_LEASE) is None


def test_an_io_error_while_releasing_keeps_the_writers_own_error(store, monkeypatch):
    lease = Lease(store, EXTRACT_LEASE, "hyvid extract", wait_s=0)
    with pytest.raises(ValueError, match="the writer's own error"):
        with lease:
            _disk_fails(monkeypatch)
            raise ValueError("the writer's own error")
    monkeypatch.undo()
    # The entry could not be cleared: it names this live process, so it is not stale yet, and it
    # is stale as soon as this process is gone (same host); the next writer then takes it over.
    left = read_holder(store, EXTRACT_LEASE)
    assert left is not None and left.pid == os.getpid() and left.token == lease.token
    assert lease.holder is None and lease._thread is None
    _swap(store, EXTRACT_LEASE, _open(store, None).version, None, None)
    with Lease(store, EXTRACT_LEASE, "next", wait_s=0) as nxt:
        assert read_holder(store, EXTRACT_LEASE).token == nxt.token
    assert asdict(left)["owner"] == "hyvid extract"


def _task_error(cause: BaseException, nested: bool = False) -> BaseException:
    """What `ray.get` raises for a task that failed with `cause` (Ray's own exception classes)."""
    from ray.exceptions import RayTaskError

    err = RayTaskError("_features_task", "Traceback (most recent call last): ...", cause).as_instanceof_cause()
    return RayTaskError("_outer_task", "Traceback ...", err).as_instanceof_cause() if nested else err


@pytest.mark.parametrize("nested", [False, True])
def test_an_error_inside_a_ray_task_names_its_root_cause_in_one_line(nested, capsys):
    from hyvid.pipelines.cli import COMMANDS, main

    def probe(args, settings):
        err = _task_error(OSError(28, "No space left on device"), nested)
        err.add_note("while computing the features of Up/v_Up_g01_c01 and 3 more")  # as features adds it
        raise err

    COMMANDS["__task"] = COMMANDS["jobs"]._replace(run=probe, add_arguments=lambda p, s: None)
    try:
        rc = main(["__task"])
    finally:
        del COMMANDS["__task"]
    err = capsys.readouterr().err.strip().splitlines()
    # A task's OSError is a user error (rc 2) when Ray can subclass it; nested, Ray raises a plain RayTaskError.
    assert rc == (1 if nested else 2)
    assert len(err) == 1, err
    assert err[0].startswith("hyvid __task: error: OSError: [Errno 28] No space left on device (in a Ray task, "
                             "while computing the features of Up/v_Up_g01_c01 and 3 more)")
    assert "_features_task" not in err[0] and "Traceback" not in err[0]


_MLFLOW_HTTP_VARS = ("MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
                     "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR")


@pytest.mark.parametrize("server", ["closed_port", "silent"])
def test_a_tracking_server_that_is_gone_or_silent_fails_fast_in_one_line(server, monkeypatch, capsys):
    """`hyvid runs` against a closed port or a server that accepts and never answers: one line naming
    the server and the fix, long before MLflow's own 120 s x 7 retries (250-264 s measured)."""
    import socket
    import time

    from hyvid.pipelines.cli import main

    for var in _MLFLOW_HTTP_VARS:  # main() sets them for the process: restore their absence afterwards
        monkeypatch.setenv(var, "0")
        monkeypatch.delenv(var)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        port = listener.getsockname()[1]
        if server == "silent":
            listener.listen(8)  # the kernel completes connections; nobody ever reads or answers
        else:
            listener.close()
        uri = f"http://127.0.0.1:{port}"
        t0 = time.monotonic()
        rc = main(["runs", "--tracking-uri", uri])
        elapsed = time.monotonic() - t0
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert rc == 2
    assert len(err) == 1, err
    assert err[0].startswith(f"hyvid runs: error: tracking server {uri} did not answer within 10 s"), err
    assert "MLFLOW_TRACKING_URI" in err[0] and "Traceback" not in err[0]
    assert elapsed < 60, f"took {elapsed:.0f} s: the wait is not bounded"  # a hang guard, not a speed target
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "10"  # every later MLflow call is bounded too
