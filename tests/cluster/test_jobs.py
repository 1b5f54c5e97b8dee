"""Stages as Ray jobs against a real, token-authenticated Ray head on 127.0.0.1.

The head runs in its own process session (never `ray.init` here, never `ray stop`, which would
stop every Ray on the machine): teardown kills exactly the processes of that session.
"""
from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import requests
from helpers.servers import free_port, serve
from helpers.videos import DOWN, RIGHT, SquareClip, write_square_dataset

from hyvid.cluster import jobs
from hyvid.pipelines import cli

slow = pytest.mark.slow
integration = pytest.mark.integration

VENV_BIN = Path(sys.executable).parent


class RayHead:
    def __init__(self, dashboard: str, token: str, proc: subprocess.Popen, temp_dir: str):
        self.dashboard, self.token, self.proc, self.temp_dir = dashboard, token, proc, temp_dir


@pytest.fixture(scope="module")
def ray_head():
    """`ray start --head --block` on 127.0.0.1 with token auth, its own token and ports."""
    token = secrets.token_hex(16)  # this cluster's own token: ~/.ray/auth_token is left alone
    temp_dir = tempfile.mkdtemp(prefix="hvj", dir="/tmp")  # short: Ray's unix sockets live here
    dash_port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token, RAY_USAGE_STATS_ENABLED="0",
               PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}")  # the jobs' `python` is this venv's
    cmd = [
        str(VENV_BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
        f"--port={free_port()}", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dash_port}", f"--ray-client-server-port={free_port()}",
        f"--dashboard-agent-listen-port={free_port()}", "--num-cpus=2", f"--temp-dir={temp_dir}",
        "--disable-usage-stats",
    ]
    dashboard = f"http://127.0.0.1:{dash_port}"
    try:
        with serve(cmd, f"{dashboard}/api/version", env=env, log=Path(temp_dir) / "head.log", timeout=120,
                   headers={"Authorization": f"Bearer {token}"}) as proc:
            yield RayHead(dashboard, token, proc, temp_dir)
    finally:
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture
def as_client(ray_head, monkeypatch):
    """This process talks to the test head with the head's token (as a user with RAY_AUTH_TOKEN)."""
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    monkeypatch.setenv("RAY_AUTH_TOKEN", ray_head.token)
    monkeypatch.setenv("HYVID_DASHBOARD", ray_head.dashboard)
    return ray_head


def test_auth_token_found_where_ray_looks(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    for var in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(var, raising=False)
    assert jobs.auth_headers() == {}
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("from-home\n")
    assert jobs.auth_headers() == {"Authorization": "Bearer from-home"}
    (tmp_path / "tok").write_text("from-path")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "tok"))
    assert jobs.auth_token() == "from-path"
    monkeypatch.setenv("RAY_AUTH_TOKEN", "from-env")
    assert jobs.auth_token() == "from-env"
    monkeypatch.delenv("RAY_AUTH_TOKEN")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="RAY_AUTH_TOKEN_PATH"):
        jobs.auth_token()


def test_submit_config_refuses_secrets_and_builds_the_entrypoint():
    cfg = jobs.SubmitConfig(address="http://h:8265", args=("extract", "my data", "--store", "s3://b/s"),
                            working_dir=str(jobs.default_working_dir()), env={"HYVID_STORE": "s3://b/s"})
    assert cfg.entrypoint() == "python -m hyvid.pipelines.cli extract 'my data' --store s3://b/s"
    rt = cfg.runtime_env()
    assert rt["working_dir"] == str(jobs.default_working_dir()) and rt["env_vars"] == {"HYVID_STORE": "s3://b/s"}
    assert {".venv", "*.lance", "mlruns"} <= set(rt["excludes"])
    with pytest.raises(ValueError, match="AWS_SECRET_ACCESS_KEY"):
        jobs.SubmitConfig(address="http://h:8265", args=("extract",), env={"AWS_SECRET_ACCESS_KEY": "x"})
    with pytest.raises(ValueError, match="nothing to submit"):
        jobs.SubmitConfig(address="http://h:8265", args=())
    with pytest.raises(ValueError, match="http://HOST:8265"):
        jobs.client("127.0.0.1:6379")


def test_relative_store_paths_are_flagged():
    warn = jobs.relative_path_warnings
    assert warn(["extract", "data", "--store", "rel"], "s3://b/x") and warn(["train"], "hyvid_store")
    assert "'rel'" in warn(["extract", "d", "--store=rel"], "s3://b/x")[0]
    assert warn(["extract", "d", "--store", "s3://b/x"], "hyvid_store") == []
    assert warn(["extract", "d", "--store", "/shared/store"], "hyvid_store") == []


@slow
@integration
def test_auth_stays_on(ray_head, monkeypatch):
    # No header at all: the Jobs API refuses (token auth is on for the head).
    assert requests.get(f"{ray_head.dashboard}/api/jobs/", timeout=5).status_code == 401
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    monkeypatch.setenv("RAY_AUTH_TOKEN", "not-the-token")
    with pytest.raises(Exception, match="(?i)forbidden|invalid"):
        jobs.client(ray_head.dashboard)
    monkeypatch.setenv("RAY_AUTH_TOKEN", ray_head.token)
    assert requests.get(f"{ray_head.dashboard}/api/jobs/", headers=jobs.auth_headers(), timeout=5).status_code == 200


@slow
@integration
def test_failed_stage_fails_the_job(as_client, capsys):
    rc = cli.main(["submit", "--submission-id", "hyvid-bad-1", "--wait", "--", "query", "--no-such-flag"])
    out = capsys.readouterr().out
    assert rc == 1 and "job hyvid-bad-1: FAILED" in out
    assert jobs.status(as_client.dashboard, "hyvid-bad-1") == "FAILED"


@slow
@integration
def test_stop_a_running_job(as_client, capsys):
    # A job that would run for minutes, submitted with the SDK; `hyvid stop` ends it.
    job_id = jobs.client(as_client.dashboard).submit_job(entrypoint="sleep 300", submission_id="hyvid-sleep-1")
    deadline = time.monotonic() + 60
    while jobs.status(as_client.dashboard, job_id) != "RUNNING" and time.monotonic() < deadline:
        time.sleep(0.5)
    assert cli.main(["stop", job_id]) == 0
    assert "stop requested" in capsys.readouterr().out
    assert jobs.wait(as_client.dashboard, job_id, timeout_s=60) == "STOPPED"


def _tiny_videos(root: Path, per_class: int = 2) -> Path:
    """A manifest dataset of real encoded videos: a square moving right or down."""
    return write_square_dataset(root, [
        SquareClip(f"{cls}/{cls}_{i}.avi", cls, "train" if i else "test", f"{cls}{i}", 40 + 30 * i, (8, 8), step)
        for cls, step in {"right": RIGHT, "down": DOWN}.items() for i in range(per_class)
    ], square=10)


@slow
@integration
def test_submit_extract_fills_the_store(as_client, tmp_path, capsys):
    """`hyvid submit --wait -- extract ...` on a tiny dataset; the job's logs, listing and store."""
    import pyarrow.compute as pc

    from hyvid.store.lance_io import open_table
    from hyvid.store.tables import STATUS_OK, VIDEOS

    manifest = _tiny_videos(tmp_path / "data")
    store = tmp_path / "store"  # absolute: the job runs in a copy of the working dir
    stage = ["extract", str(manifest), "--store", str(store), "--frames", "4", "--stack", "2",
             "--size", "64", "--workers", "2"]
    rc = cli.main(["submit", "--submission-id", "hyvid-extract-1", "--wait", "--", *stage])
    out = capsys.readouterr().out
    assert rc == 0, out[-3000:]
    assert "submitted hyvid-extract-1: python -m hyvid.pipelines.cli extract" in out
    assert "extracted 4 videos, 0 failed" in out and "job hyvid-extract-1: SUCCEEDED" in out

    videos = open_table(str(store), VIDEOS.name).to_table()
    ids = videos.column("video_id").to_pylist()
    assert len(ids) == 4 and len(set(ids)) == 4
    assert pc.all(pc.equal(videos.column("status"), STATUS_OK)).as_py(), videos.column("error").to_pylist()

    assert cli.main(["logs", "hyvid-extract-1"]) == 0
    assert "extracted 4 videos" in capsys.readouterr().out
    assert cli.main(["jobs"]) == 0
    listing = [line for line in capsys.readouterr().out.splitlines() if line.startswith("hyvid-extract-1")]
    assert len(listing) == 1 and "SUCCEEDED" in listing[0] and "hyvid.pipelines.cli extract" in listing[0]
