"""Interrupts of a real `hyvid train` (real Ray, Lance and MLflow on sqlite): SIGINT and SIGTERM end as
interrupts and leave no run RUNNING; after a SIGKILL, the next command closes the orphans.

Each test starts the command as its own process, waits until MLflow shows one of its runs RUNNING
(so the signal lands mid-fit, not before the first run), sends the signal and inspects the process's
exit, its stderr and every run of the experiment.
"""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from helpers.toy_store import build_toy_store

from hyvid.pipelines import ownership, tracking

EXPERIMENT = "interrupts"


@pytest.fixture(scope="module")
def toy_store(tmp_path_factory) -> str:
    uri = str(tmp_path_factory.mktemp("interrupts") / "store")
    build_toy_store(uri)
    return uri


def _train(store: str, db: str, workdir) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "hyvid.pipelines.cli", "train", "--store", store, "--experiment", EXPERIMENT,
           "--tracking-uri", f"sqlite:///{db}"]
    env = {**os.environ, "MLFLOW_TRACKING_URI": ""}
    env.pop("RAY_ADDRESS", None)
    return subprocess.Popen(cmd, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _runs(db: str) -> list:
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{db}")
    exp = client.get_experiment_by_name(EXPERIMENT)
    return [] if exp is None else list(client.search_runs([exp.experiment_id], max_results=1000))


def _any_running(db: str) -> bool:
    """Read-only sqlite, not an MlflowClient: a client would run MLflow's schema migrations on a
    database the command is still creating, and the two migrations collide."""
    import sqlite3

    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1.0)) as con:
            return con.execute("SELECT COUNT(*) FROM runs WHERE status = 'RUNNING'").fetchone()[0] > 0
    except sqlite3.Error:  # no runs table yet, or locked by a write
        return False


def _wait_for_running(proc: subprocess.Popen, db: str, timeout_s: float = 240.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"train ended before any run started: {proc.communicate()[1][-2000:]}"
        running = os.path.exists(db) and _any_running(db)
        if running:
            time.sleep(1.0)  # let the search open its trials too
            return
        time.sleep(0.5)
    proc.kill()
    pytest.fail("no MLflow run became RUNNING in time")


def test_an_interrupted_train_exits_as_interrupted_and_leaves_no_run_running(toy_store, tmp_path):
    # SIGINT here; SIGTERM (143) is sent to train-cnn below: the same unwinding, one process each.
    sig, code = signal.SIGINT, 130
    db = str(tmp_path / "mlflow.db")
    proc = _train(toy_store, db, tmp_path)
    _wait_for_running(proc, db)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == code, err[-2000:]
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[-1] == "hyvid train: interrupted", err[-2000:]
    assert "Traceback" not in err  # neither Ray's SIGTERM stack dump nor ours
    runs = _runs(db)
    assert runs and not [r.info.run_name for r in runs if r.info.status == "RUNNING"]
    killed = [r for r in runs if r.info.status == "KILLED"]
    assert killed  # the ones the signal cut short are KILLED, not FINISHED or FAILED
    assert all(r.data.tags.get(tracking.TAG_OWNER, "").split(":")[1] == str(proc.pid) for r in runs)


def test_runs_of_a_killed_train_are_closed_by_the_next_command(toy_store, tmp_path):
    db = str(tmp_path / "mlflow.db")
    proc = _train(toy_store, db, tmp_path)
    _wait_for_running(proc, db)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    time.sleep(1.0)
    left = {r.info.run_id for r in _runs(db) if r.info.status == "RUNNING"}
    assert left  # SIGKILL gives the command no chance to close anything
    # `doctor` talks to the tracking server too: it closes them before it checks the store.
    doctor = subprocess.run([sys.executable, "-m", "hyvid.pipelines.cli", "doctor", "--store", toy_store,
                             "--tracking-uri", f"sqlite:///{db}"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=180)
    assert doctor.returncode == 0, doctor.stderr[-2000:]
    after = {r.info.run_id: r for r in _runs(db)}
    assert all(after[i].info.status == "KILLED" for i in left)
    assert all("is gone" in after[i].data.tags[tracking.TAG_CLOSED_BY] for i in left)
    assert "closed" in doctor.stderr and "KILLED" in doctor.stderr


def test_an_owner_is_alive_while_its_process_runs_and_not_after():
    me = ownership.process_owner()
    assert me.startswith(f"{socket.gethostname()}:{os.getpid()}:") and ownership.owner_alive(me) is True
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    owner = ownership.process_owner(child.pid)
    assert ownership.owner_alive(owner) is True
    child.kill()
    child.wait()
    assert ownership.owner_alive(owner) is False
    host, pid, start = me.rsplit(":", 2)
    assert ownership.owner_alive(f"{host}:{pid}:{int(start) + 1}") is False  # same pid, another process
    assert ownership.owner_alive(f"some-other-host:{pid}:{start}") is None  # cannot be told from here
    assert ownership.owner_alive("not an owner") is None


def test_ctrl_c_during_features_is_an_interrupt_and_leaves_the_store_whole(tmp_path, monkeypatch):
    import threading

    from helpers.tiny_cnns import build_store_and_cnns

    from hyvid.store.doctor import diagnose
    from hyvid.store.lease import FEATURES_LEASE, read_holder

    db = str(tmp_path / "mlflow.db")
    uri = f"sqlite:///{db}"
    store, runs = build_store_and_cnns(tmp_path, uri, EXPERIMENT, groups=8, frames=4)
    cmd = [sys.executable, "-m", "hyvid.pipelines.cli", "features", "--store", store, "--experiment", EXPERIMENT,
           "--tracking-uri", uri, "--spatial-run", runs["spatial"], "--motion-run", runs["motion"]]
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    ray_up = threading.Event()

    def read() -> None:
        for line in proc.stderr:
            lines.append(line.rstrip("\n"))
            if "Ray resources" in line:
                ray_up.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert ray_up.wait(180), "\n".join(lines[-20:])
    time.sleep(1.0)  # the features tasks are starting on their workers
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=180)
    reader.join(30)
    text = [ln for ln in lines if ln.strip()]
    assert proc.returncode == 130, "\n".join(text[-20:])
    assert text[-1] == "hyvid features: interrupted" and not any("Traceback" in ln for ln in text)
    assert read_holder(store, FEATURES_LEASE) is None  # released on the way out
    report = diagnose(store)
    assert report.duplicate_rows == 0 and not report.damaged
    assert not [r.info.run_name for r in _runs(db) if r.info.status == "RUNNING"]


def test_a_terminated_train_cnn_leaves_no_run_finished_without_a_model(tmp_path):
    from helpers.tiny_cnns import extract_tiny_store

    store = extract_tiny_store(tmp_path, groups=4, frames=3)
    db = str(tmp_path / "mlflow.db")
    cmd = [sys.executable, "-m", "hyvid.pipelines.cli", "train-cnn", "--store", store, "--experiment", EXPERIMENT,
           "--tracking-uri", f"sqlite:///{db}", "--stream", "both", "--epochs", "50"]
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_running(proc, db)
    proc.send_signal(signal.SIGTERM)  # as a scheduler or `ray job stop` ends a job
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 143, err[-2000:]
    assert [ln for ln in err.splitlines() if ln.strip()][-1] == "hyvid train-cnn: interrupted"
    assert "Traceback" not in err  # not Ray's SIGTERM stack dump
    runs = _runs(db)
    # 50 epochs cannot have finished: no run may say FINISHED (that meant "done, with a model");
    # the fits the signal cut short are KILLED.
    assert runs and not [(r.info.run_name, r.info.status) for r in runs if r.info.status in ("RUNNING", "FINISHED")]
    assert any(r.info.status == "KILLED" for r in runs)
