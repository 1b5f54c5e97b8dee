"""A tracking database that is itself at fault (corrupt, read-only) is named in one line with its fix,
with no MLflow or SQLAlchemy traceback on the console (real sqlite files, real `hyvid` processes)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
from helpers.toy_store import build_toy_store


def _hyvid(*args: str, cwd) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    return subprocess.run([sys.executable, "-m", "hyvid.pipelines.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_a_corrupt_database_is_named_as_corrupt_in_one_line(tmp_path):
    db = tmp_path / "mlflow.db"
    db.write_bytes(os.urandom(5000))
    proc = _hyvid("runs", "--tracking-uri", f"sqlite:///{db}", cwd=tmp_path)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("hyvid runs: error: MLflow tracking database") and "is corrupt" in lines[0]
    assert str(db) in lines[0] and "--tracking-uri" in lines[0]


def _read_only_folder(path) -> bool:
    """A folder nothing can write to, root included: a tmpfs remounted read-only (root), else chmod."""
    path.mkdir()
    if os.geteuid() == 0:
        if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(path)]).returncode != 0:
            return False
    return True


def test_a_read_only_database_is_named_and_no_traceback_reaches_the_console(tmp_path):
    store = str(tmp_path / "store")
    build_toy_store(store)
    folder = tmp_path / "ro"
    if not _read_only_folder(folder):
        pytest.skip("cannot make a read-only folder here (tmpfs mount refused)")
    db = folder / "mlflow.db"
    try:
        # A database with its tables, as a first run leaves it; made in a process of its own, which
        # holds no connection open afterwards (an open file keeps the mount from going read-only).
        subprocess.run([sys.executable, "-c", "import sys; from mlflow import MlflowClient; "
                        "MlflowClient(sys.argv[1]).create_experiment('hyvid')", f"sqlite:///{db}"],
                       check=True, capture_output=True, timeout=120)
        if os.geteuid() == 0:
            subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
        else:
            os.chmod(db, 0o444)
            os.chmod(folder, 0o555)
        proc = _hyvid("train", "--store", store, "--tracking-uri", f"sqlite:///{db}", "--models", "fusion",
                      cwd=tmp_path)
        assert proc.returncode == 2, proc.stderr[-3000:]
        assert "Traceback" not in proc.stderr and "[SQL:" not in proc.stderr.split("ERROR", 1)[0]
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        assert len(lines) <= 3, lines  # Ray's resources line, MLflow's one ERROR line, ours
        assert lines[-1].startswith("hyvid train: error: MLflow tracking database") and "is read-only" in lines[-1]
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", "-l", str(folder)], capture_output=True)
        else:
            os.chmod(folder, 0o755)
