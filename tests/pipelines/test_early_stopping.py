"""Early stopping and the selected epoch's figures, on one fit run in this process (real Lance, real MLflow)."""
from __future__ import annotations

import pytest
from helpers.toy_store import build_toy_store


def test_early_stopping_ends_the_fit_and_logs_the_selected_epochs_val():
    from hyvid.pipelines.training.loops import early_stop

    assert not early_stop(5, 3, None) and not early_stop(50, 0, 0)  # None / 0: every epoch runs
    assert not early_stop(12, 3, 10) and early_stop(13, 3, 10)


@pytest.mark.slow
def test_a_fit_stops_after_patience_epochs_and_reports_the_kept_epoch(tmp_path):
    import mlflow

    from hyvid.pipelines.train import TrainConfig, fit_config
    from hyvid.pipelines.training.checkpoint import NullSession
    from hyvid.pipelines.training.loops import fit_loop

    store = str(tmp_path / "store")
    build_toy_store(store)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    exp = mlflow.MlflowClient(uri).create_experiment("early", artifact_location=str(tmp_path / "artifacts"))
    cfg = TrainConfig(store_uri=store, models=("fusion",), video_epochs=300, video_patience=4, cv_folds=0,
                      abstraction=16, fusion_units=16)
    config = {**fit_config(cfg, "fusion", store_uri=store, tracking_uri=uri, experiment_id=exp, fit_id="early-1",
                           num_classes=4, multilabel=False, storage_path=str(tmp_path / "ckpt")), "checkpoint": False}
    out = fit_loop(config, NullSession())
    m = out["metrics"]
    client = mlflow.MlflowClient(uri)
    train_steps = sorted(h.step for h in client.get_metric_history(out["run_id"], "train_loss"))
    # It stopped well before 300 epochs, exactly `patience` epochs after the last val accuracy gain at
    # or before the kept epoch, and logged every epoch it ran once.
    assert m["epochs_run"] < 300 and train_steps == list(range(int(m["epochs_run"])))
    assert 0 <= m["best_epoch"] < m["epochs_run"]
    val = {h.step: h.value for h in client.get_metric_history(out["run_id"], "val_accuracy")}
    # The final val accuracy (logged after the last epoch) is the kept epoch's, not a maximum of another.
    assert m["val_accuracy"] == pytest.approx(val[int(m["best_epoch"])])
    assert val[300] == pytest.approx(m["val_accuracy"])
    epochs = range(int(m["epochs_run"]))
    last_gain = max(e for e in epochs if all(val[e] > val[d] for d in range(e)))
    assert m["epochs_run"] - 1 - last_gain == 4
    assert client.get_run(out["run_id"]).data.params["patience"] == "4"
