"""A local run is private to its command: loopback sockets only, its own Ray by address, no leftovers.

Each test runs hyvid in a subprocess marked by an environment variable that every process it
starts inherits (Ray's GCS, raylet, agents, workers, Ray Train's controller), so the processes a
command started can be found (psutil) while it runs and after it exits, without touching any
other Ray on the machine. The session's `ray_session` is that other Ray: it runs beside them.
"""
from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
import time
import uuid

import psutil
import pytest
from helpers.videos import DOWN, RIGHT, SquareClip, write_square_dataset

MARK = "HYVID_TEST_PROCESS_MARK"
pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _marked(mark: str) -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter():
        try:
            if p.environ().get(MARK) == mark:
                out.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return out


def _listening(procs: list[psutil.Process]) -> set[tuple[str, str, int]]:
    """(process name, address, port) of every listening TCP/UDP socket of `procs`."""
    out = set()
    for p in procs:
        try:
            name = p.name()
            for c in p.net_connections(kind="inet"):
                if c.status == psutil.CONN_LISTEN or (c.type == 2 and not c.raddr):  # TCP listen, bound UDP
                    out.add((name, c.laddr.ip, c.laddr.port))
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return out


def _is_loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip.split("%")[0])
    mapped = getattr(addr, "ipv4_mapped", None)  # ::ffff:127.0.0.1
    return (mapped or addr).is_loopback


def _left_over(mark: str, wait_s: float = 30.0) -> list[str]:
    """Marked processes still alive once the command has exited (workers get `wait_s` to finish dying)."""
    deadline = time.monotonic() + wait_s
    while True:
        alive = [p for p in _marked(mark) if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        if not alive or time.monotonic() > deadline:
            return [f"{p.pid} {' '.join(p.cmdline())[:120]}" for p in alive]
        time.sleep(0.5)


def _env(mark: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "HYVID_CONFIG")}
    env[MARK] = mark
    return env


def test_local_extract_listens_on_loopback_only_and_leaves_no_process(ray_session, tmp_path):
    # Two classes, three training groups (train-cnn carves validation by group) and a test group.
    data = write_square_dataset(tmp_path / "data", [
        SquareClip(f"{c}/v_{c}_g0{g}_c01.avi", c, "train" if g < 4 else "test", f"g0{g}", 40 + 10 * g, (4, 4), move)
        for c, move in (("a", RIGHT), ("b", DOWN)) for g in (1, 2, 3, 4)
    ], n_frames=12)
    mark = uuid.uuid4().hex
    cmd = [sys.executable, "-m", "hyvid.pipelines.cli", "extract", str(data), "--store", str(tmp_path / "store"),
           "--frames", "3", "--stack", "2", "--workers", "1"]
    proc = subprocess.Popen(cmd, env=_env(mark), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen: set[tuple[str, str, int]] = set()
    while proc.poll() is None:  # sample the sockets of every process the command has started so far
        seen |= _listening(_marked(mark))
        time.sleep(0.2)
    out = proc.stdout.read()
    assert proc.returncode == 0, out
    assert "extracted 8 videos" in out, out
    names = {name for name, _, _ in seen}
    assert "gcs_server" in names and "raylet" in names, f"the local Ray's servers were never seen: {seen}"
    public = sorted(s for s in seen if not _is_loopback(s[1]))
    assert not public, f"a local run listened beyond loopback: {public}"
    assert not _left_over(mark), "processes outlived `hyvid extract`"

    # An impossible request on that local Ray fails as soon as Ray is up, naming it and what there is.
    proc = subprocess.run([sys.executable, "-m", "hyvid.pipelines.cli", "train-cnn", "--store", str(tmp_path / "store"),
                           "--cpus-per-worker", "100000", "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"],
                          env=_env(mark), capture_output=True, text=True, timeout=600)
    last = proc.stderr.strip().splitlines()[-1]
    want = (f"hyvid train-cnn: error: one train-cnn worker asks for 100000 CPU, more than the Ray cluster has "
            f"({os.cpu_count()} CPU)")
    assert proc.returncode == 2 and last.startswith(want), proc.stderr[-2000:]
    assert not _left_over(mark), "processes outlived `hyvid train-cnn`"


_TWO_RAYS = r"""
import json, os, sys, tempfile
import ray
from ray._private.services import canonicalize_bootstrap_address_or_die
from hyvid.cluster.connect import connect, disconnect

connect(num_cpus=1)
own = ray.get_runtime_context().gcs_address

@ray.remote(num_cpus=0)
def looks_up():
    # What Ray Train's placement-group cleaner and the state API do: find Ray without an address.
    return os.environ.get("RAY_ADDRESS"), canonicalize_bootstrap_address_or_die(None)

seen = ray.get(looks_up.remote())
from ray.train import RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

def fit(config):
    ray.train.report({"ok": 1})

TorchTrainer(fit, scaling_config=ScalingConfig(num_workers=1, resources_per_worker={"CPU": 1}),
             run_config=RunConfig(storage_path=tempfile.mkdtemp(), name="t")).fit()
print("RESULT", json.dumps({"own": own, "driver": os.environ.get("RAY_ADDRESS"), "worker": seen}))
disconnect()
print("AFTER", json.dumps({"RAY_ADDRESS": os.environ.get("RAY_ADDRESS")}))
"""


def test_each_local_ray_is_addressed_by_its_own_processes_beside_another(ray_session):
    other = ray_session.get_runtime_context().gcs_address  # a second Ray on this machine
    mark = uuid.uuid4().hex
    proc = subprocess.run([sys.executable, "-c", _TWO_RAYS], env=_env(mark), capture_output=True, text=True,
                          timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    res = json.loads(next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")).split(" ", 1)[1])
    assert res["own"] != other
    # The driver and its workers find their own Ray, not the other one, not an error.
    assert res["driver"] == res["own"] and res["worker"] == [res["own"], res["own"]]
    assert "Found multiple active Ray instances" not in out
    after = json.loads(next(ln for ln in proc.stdout.splitlines() if ln.startswith("AFTER")).split(" ", 1)[1])
    assert after["RAY_ADDRESS"] is None  # disconnect() undid what connect() set
    left = _left_over(mark)
    assert not left, f"processes (Ray Train's controller among them?) outlived their command: {left}"
    assert ray_session.is_initialized() and ray_session.cluster_resources()  # the other Ray is untouched


def test_unreachable_address_fails_fast_on_one_line(tmp_path):
    env = _env(uuid.uuid4().hex)
    env["HYVID_CONNECT_TIMEOUT"] = "3"
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.avi").write_bytes(b"")
    proc = subprocess.run([sys.executable, "-m", "hyvid.pipelines.cli", "extract", str(tmp_path),
                           "--store", str(tmp_path / "s"), "--address", "127.0.0.1:1"],
                          env=env, capture_output=True, text=True, timeout=120)
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert err[-1].startswith("hyvid extract: error: no Ray cluster answers at --address 127.0.0.1:1"), err
    assert "Traceback" not in proc.stderr


def test_probe_times_out_on_a_silent_host():
    from hyvid.cluster.connect import probe

    # 192.0.2.0/24 is TEST-NET-1 (RFC 5737): never routed, so the connect can only time out or be refused.
    with pytest.raises(ConnectionError, match=r"no Ray cluster answers at --address 192.0.2.1:6379 .*at most 1 s"):
        probe("192.0.2.1:6379", 1.0)
    with pytest.raises(ValueError, match="expected HOST:PORT"):
        probe("head-without-port", 1.0)
    probe("auto", 1.0)  # Ray's own lookups are not probed


def test_connect_timeout_setting(monkeypatch, tmp_path):
    from hyvid.cluster.settings import DEFAULT_CONNECT_TIMEOUT_S, load_settings

    monkeypatch.setenv("HYVID_CONFIG", str(tmp_path / "none.yaml"))
    monkeypatch.delenv("HYVID_CONNECT_TIMEOUT", raising=False)
    assert load_settings().connect_timeout_s == DEFAULT_CONNECT_TIMEOUT_S <= 30
    monkeypatch.setenv("HYVID_CONNECT_TIMEOUT", "7.5")
    assert load_settings().connect_timeout_s == 7.5
    for bad in ("0", "nan", "inf", "soon"):
        monkeypatch.setenv("HYVID_CONNECT_TIMEOUT", bad)
        with pytest.raises(ValueError, match="connect_timeout_s"):
            load_settings()

