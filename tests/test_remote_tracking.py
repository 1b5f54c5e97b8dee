"""Tracking to a remote MLflow server: `mlflow server` on 127.0.0.1 with a sqlite backend and a
proxied artifacts directory, written through pipelines.tracking and found with MlflowClient."""
from __future__ import annotations

import copy
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pytest
import requests
import yaml

from cluster.settings import DEFAULT_CONFIG, load_settings

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow_server")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    artifacts = root / "artifacts"
    cmd = [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
           "--backend-store-uri", f"sqlite:///{root}/backend.db", "--artifacts-destination", str(artifacts),
           "--workers", "1"]
    log_path = root / "server.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=root)
    try:
        # A few seconds on an idle machine; minutes when many processes share two cores.
        deadline = time.monotonic() + 300
        while True:
            try:
                if requests.get(f"{url}/health", timeout=5).status_code == 200:
                    break
            except requests.RequestException:  # not listening yet, or still importing (slow start)
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mlflow server did not come up on {url}:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url, artifacts
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_runs_logged_through_tracking_are_found_on_the_server(mlflow_server, tmp_path, monkeypatch):
    import mlflow
    from mlflow.tracking import MlflowClient

    from pipelines import tracking
    from store.lance_io import append_rows
    from store.tables import CLASSES, VIDEOS

    url, artifacts = mlflow_server
    # The server's URL comes from the settings block, as on a cluster (tracking_uri: http://head:5000).
    with open(DEFAULT_CONFIG) as f:
        doc = copy.deepcopy(yaml.safe_load(f))
    doc["metadata"]["hyvid"].update(tracking_uri=url, experiment="remote-test")
    cfg = tmp_path / "ray_config.yaml"
    cfg.write_text(yaml.safe_dump(doc))
    monkeypatch.setenv("HYVID_CONFIG", str(cfg))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    settings = load_settings()
    uri = tracking.resolve_tracking_uri(None, settings)
    assert uri == url

    store = str(tmp_path / "store")
    append_rows(store, VIDEOS.name, pa.Table.from_pylist([{"video_id": "a/v1"}, {"video_id": "b/v2"}],
                                                         schema=VIDEOS.schema))
    append_rows(store, VIDEOS.name, pa.Table.from_pylist([{"video_id": "a/v3"}], schema=VIDEOS.schema))
    append_rows(store, CLASSES.name, pa.Table.from_pylist([{"label": 0, "class_name": "a"},
                                                           {"label": 1, "class_name": "b"}], schema=CLASSES.schema))

    exp_id = tracking.setup(uri, settings.experiment)
    with tracking.start_run("fusion", "train", split=1, store_uri=store) as run:
        lineage = tracking.log_lineage(store, [VIDEOS.name, CLASSES.name, "frame_features"])
        mlflow.log_metric(tracking.metric_name("test", "accuracy"), 0.75)
        tracking.log_params_safe({"lr": 0.01, "tracking_token": "must-not-appear"})
    assert lineage["tables"] == {VIDEOS.name: 2, CLASSES.name: 1}

    client = MlflowClient(tracking_uri=url)
    found = client.search_runs([exp_id], filter_string="tags.`hyvid.model` = 'fusion' and tags.`hyvid.split` = '1'")
    assert [r.info.run_id for r in found] == [run.info.run_id]
    r = found[0]
    assert r.info.status == "FINISHED" and r.data.tags["hyvid.stage"] == "train"
    assert r.data.metrics["test_accuracy"] == 0.75
    assert r.data.params["lineage.videos.version"] == "2" and r.data.params["lineage.classes.version"] == "1"
    assert r.data.params["lr"] == "0.01" and "tracking_token" not in r.data.params
    # The artifact went through the server's proxy into its artifacts directory, not a local mlruns.
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["lineage.json"]
    on_server = list(artifacts.rglob("lineage.json"))
    assert len(on_server) == 1 and '"videos": 2' in on_server[0].read_text()
    assert not (Path.cwd() / "mlruns").exists() or run.info.run_id not in str(list((Path.cwd() / "mlruns").rglob("*")))


def test_credentials_in_a_tracking_uri_are_redacted(mlflow_server, tmp_path):
    import mlflow
    from mlflow.tracking import MlflowClient

    from pipelines import tracking

    url, _ = mlflow_server
    exp_id = tracking.setup(url, "remote-test")
    store = "s3://someone:p4ssw0rd@bucket/hyvid"  # a URI with userinfo, as some users paste them
    with tracking.start_run("spatial_cnn", "train-cnn", split=1, store_uri=store) as run:
        tracking.log_params_safe({"store_uri": store})
    r = MlflowClient(tracking_uri=url).get_run(run.info.run_id)
    assert "p4ssw0rd" not in repr(r.data.params) + repr(r.data.tags)
    assert r.data.params["store_uri"] == "s3://***@bucket/hyvid"
    assert mlflow.get_experiment(exp_id).name == "remote-test"
