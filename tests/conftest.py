"""The suite's shared fixtures:

- `ray_session` (session): one local Ray (2 CPUs, no dashboard) for every test that needs Ray;
- `tracking_uri`: a fresh MLflow sqlite store in tmp_path, exported as MLFLOW_TRACKING_URI;
- `one_thread` (module): torch limited to one intra-op thread while a module of tiny matmuls runs
  (such a module says `pytestmark = pytest.mark.usefixtures("one_thread")`).

A server fixture that one file alone uses stays in it: `ray_head` (cluster/test_jobs.py),
`s3_endpoint` (cluster/test_cluster_storage.py), `mlflow_server` (cluster/test_remote_tracking.py),
all three started with `helpers.servers.serve`.

It also sets RAY_DEDUP_LOGS=0 (unless set) before any test starts Ray. Helpers that are not
fixtures (videos, the toy store, servers) are in tests/helpers/; pytest puts tests/ on sys.path
when it imports this file, so test files import them as `helpers.<module>`.
"""
from __future__ import annotations

import os

import pytest

# Every worker's log line shown as it is, not folded into "repeated Nx across cluster" summaries.
os.environ.setdefault("RAY_DEDUP_LOGS", "0")


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray with 2 CPUs and no dashboard, shared by every test that needs one."""
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture
def tracking_uri(tmp_path, monkeypatch):
    """A fresh MLflow sqlite tracking store per test."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


@pytest.fixture(scope="module")
def one_thread():
    """Tiny matmuls: intra-op threads only spin against each other on a shared 2-core CI box."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
