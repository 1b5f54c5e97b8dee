"""Tracking to a remote MLflow server: `mlflow server` on 127.0.0.1 with a sqlite backend and a
proxied artifacts directory, written through pipelines.tracking and found with MlflowClient."""
from __future__ import annotations

import copy
import sys
from pathlib import Path

import pyarrow as pa
import pytest
import yaml
from helpers.servers import free_port, serve
from helpers.toy_store import build_toy_store

from hyvid.cluster.settings import DEFAULT_CONFIG, load_settings

pytestmark = [pytest.mark.slow, pytest.mark.integration]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow_server")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    artifacts = root / "artifacts"
    cmd = [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
           "--backend-store-uri", f"sqlite:///{root}/backend.db", "--artifacts-destination", str(artifacts),
           "--workers", "1"]
    # A few seconds on an idle machine; minutes when many processes share two cores.
    with serve(cmd, f"{url}/health", cwd=root, log=root / "server.log", timeout=300, grace_s=15):
        yield url, artifacts


def test_runs_logged_through_tracking_are_found_on_the_server(mlflow_server, tmp_path, monkeypatch):
    import mlflow
    from mlflow.tracking import MlflowClient

    from hyvid.pipelines import tracking
    from hyvid.store.lance_io import append_rows
    from hyvid.store.tables import CLASSES, VIDEOS

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

    from hyvid.pipelines import tracking

    url, _ = mlflow_server
    exp_id = tracking.setup(url, "remote-test")
    store = "s3://someone:p4ssw0rd@bucket/hyvid"  # a URI with userinfo, as some users paste them
    with tracking.start_run("spatial_cnn", "train-cnn", split=1, store_uri=store) as run:
        tracking.log_params_safe({"store_uri": store})
    r = MlflowClient(tracking_uri=url).get_run(run.info.run_id)
    assert "p4ssw0rd" not in repr(r.data.params) + repr(r.data.tags)
    assert r.data.params["store_uri"] == "s3://***@bucket/hyvid"
    assert mlflow.get_experiment(exp_id).name == "remote-test"


def test_train_stage_logs_to_the_server(mlflow_server, tmp_path, monkeypatch, ray_session):
    """A real `hyvid train` (Ray Train workers and a Ray task) tracking to the server through
    MLFLOW_TRACKING_URI, as on a cluster: runs, metrics, lineage and models all land there."""
    from mlflow.tracking import MlflowClient

    from hyvid.pipelines.hybrid import HybridConfig, hybrid
    from hyvid.pipelines.train import TrainConfig, train
    from hyvid.store.feature_store import FeatureStore

    url, artifacts = mlflow_server
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    store = str(tmp_path / "toy")
    build_toy_store(store)
    res = train(TrainConfig(store_uri=store, models=("spatial_lstm", "motion_lstm", "fusion", "svm_ef"),
                            lstm_epochs=6, lstm_hidden=(32, 16), lstm_optimizer="adam", lstm_lr=0.01,
                            video_epochs=6, lam2_grid=(0.0,), lam3_grid=(0.0,), svm_c_grid=(1.0,), cv_folds=0,
                            experiment="remote-train"))
    assert res.tracking_uri == url
    client = MlflowClient(tracking_uri=url)
    runs = {r.data.tags["hyvid.model"]: r for r in client.search_runs([res.experiment_id])}
    assert set(runs) == {"spatial_lstm", "motion_lstm", "fusion", "svm_ef"}
    for name, run in runs.items():
        assert run.info.run_id == res.models[name].run_id
        assert run.info.status == "FINISHED", name
        assert 0.0 <= run.data.metrics["test_accuracy"] <= 1.0 and "val_accuracy" in run.data.metrics
        assert run.data.params["lineage.frame_features.version"] == "1"
    history = client.get_metric_history(runs["motion_lstm"].info.run_id, "train_loss")
    assert sorted(m.step for m in history) == list(range(6))
    # Each fit's model is an MLflow logged model of its run, stored through the server's artifact
    # proxy in the server's artifacts directory.
    logged = client.search_logged_models(experiment_ids=[res.experiment_id])
    assert {m.source_run_id for m in logged} >= {r.info.run_id for r in runs.values()}
    assert len(list(artifacts.rglob("MLmodel"))) >= 4
    # The scores of the runs on the server feed the hybrid, which logs to the same server.
    assert len(FeatureStore(store).scores("fusion", 1, "test").video_ids) > 0
    h = hybrid(HybridConfig(store_uri=store, experiment="remote-train"))
    hrun = client.get_run(h.run_id)
    assert hrun.info.status == "FINISHED" and hrun.data.metrics["test_accuracy"] > 0.25
