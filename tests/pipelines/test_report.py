"""`hyvid report` and `hyvid runs` on a small experiment built directly in MLflow (sqlite)."""
from __future__ import annotations

import json

import pytest
from mlflow.tracking import MlflowClient

from hyvid.pipelines import tracking
from hyvid.pipelines.report import ReportConfig, collect, report
from hyvid.pipelines.runs import RunsConfig, format_table, list_runs

T0 = 1_700_000_000_000  # ms; explicit start times make "latest" deterministic


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    """Runs shaped like the stages': tags, test metrics, lineage params, a nested late fusion.

    One sqlite database for the module: creating MLflow's schema takes seconds.
    """
    tracking_uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    client = MlflowClient(tracking_uri)
    exp = client.create_experiment("exp")
    clock = iter(range(T0, T0 + 10_000_000, 60_000))

    def run(model, split, metrics, stage="train", status="FINISHED", params=None, parent=None):
        tags = {tracking.TAG_MODEL: model, tracking.TAG_STAGE: stage, tracking.TAG_SPLIT: str(split)}
        if parent:
            tags["mlflow.parentRunId"] = parent
        start = next(clock)
        r = client.create_run(exp, start_time=start, tags=tags, run_name=model)
        for k, v in metrics.items():
            client.log_metric(r.info.run_id, k, v)
        for k, v in (params or {}).items():
            client.log_param(r.info.run_id, k, v)
        client.set_terminated(r.info.run_id, status, end_time=start + 42_000)
        return r.info.run_id

    lineage = {"lineage.store_uri": "/data/store", "lineage.frame_features.version": "3",
               "lineage.videos.version": "1", "lr": "0.0001", "epochs": "5"}
    run("spatial_cnn", 1, {"test_accuracy": 0.50}, stage="train-cnn")
    run("spatial_cnn", 1, {"test_accuracy": 0.60, "test_mean_class_accuracy": 0.55, "test_map": 0.65,
                           "test_top5": 0.9}, stage="train-cnn", params=lineage)
    run("spatial_cnn", 1, {"test_accuracy": 0.99}, stage="train-cnn", status="FAILED")  # ignored
    run("spatial_lstm", 1, {"test_accuracy": 0.70}, params=lineage)
    run("spatial_lstm", 2, {"test_accuracy": 0.80})
    run("motion_cnn", 1, {"train_accuracy": 0.9}, stage="train-cnn")  # no test metric: not reported
    run("fusion", 1, {"test_accuracy": 0.75, "test_map": 0.8})
    run("fusion_noreg", 1, {"test_accuracy": 0.72})
    hyb = run("hybrid", 1, {"test_accuracy": 0.85, "test_mean_class_accuracy": 0.84,
                            "eval.svm_ef.test_accuracy": 0.66, "eval.fusion.test_accuracy": 0.11},
              stage="hybrid", params={"weight.spatial_lstm": "0.5", "weight.motion_lstm": "0.2",
                                      "weight.fusion": "0.3", "component.fusion.run_id": "abc"})
    run("spatial_cnn+spatial_lstm", 1, {"test_accuracy": 0.77}, stage="late_fusion", parent=hyb)
    client.create_experiment("other")
    yield {"uri": tracking_uri, "hybrid": hyb}
    mp.undo()


def test_collect_picks_latest_finished_run_with_test_metrics(experiment):
    rep = collect(ReportConfig("exp", experiment["uri"]))
    assert rep.splits == (1, 2)
    assert rep.entries["spatial_cnn"][1].metrics["accuracy"] == 0.60  # latest, not the FAILED 0.99
    assert "motion_cnn" not in rep.entries
    assert rep.mean("spatial_lstm")["accuracy"] == pytest.approx(0.75)  # mean over splits 1, 2
    # The hybrid's recomputed metrics fill in a model without its own test metric, never override one.
    assert rep.entries["svm_ef"][1].source == "hybrid-eval" and rep.mean("svm_ef")["accuracy"] == 0.66
    assert rep.entries["fusion"][1].source == "run" and rep.mean("fusion")["accuracy"] == 0.75


def test_json_has_every_model_with_the_right_values(experiment):
    out = json.loads(report(ReportConfig("exp", experiment["uri"], splits=(1,), format="json")))
    assert set(out) == {"spatial_cnn", "spatial_lstm", "fusion", "fusion_noreg", "svm_ef", "hybrid",
                        "spatial_cnn+spatial_lstm"}
    assert out["spatial_cnn"] == {"accuracy": 0.60, "mean_class_accuracy": 0.55, "map": 0.65, "top5": 0.9}
    assert out["spatial_lstm"]["accuracy"] == 0.70  # split 1 only
    assert out["hybrid"]["accuracy"] == 0.85 and out["hybrid"]["map"] is None
    assert out["spatial_cnn+spatial_lstm"]["accuracy"] == 0.77


def test_markdown_has_the_three_tables_beside_the_paper(experiment):
    md = report(ReportConfig("exp", experiment["uri"]))
    for title in ("## Table 1", "## Table 2", "## Table 3"):
        assert title in md
    lines = md.splitlines()
    row = next(line for line in lines if line.startswith("| `spatial_cnn` "))
    cells = [c.strip() for c in row.strip("|").split("|")]
    # model, row, acc split 1, acc split 2, mean acc, mca, mAP, top-5, paper UCF, paper CCV
    assert cells[2:] == ["60.0", "—", "60.0 ²", "55.0 ²", "65.0 ²", "90.0 ²", "80.1", "75.0"]
    lstm = next(line for line in lines if line.startswith("| `spatial_lstm` "))
    assert "| 70.0 | 80.0 | 75.0 |" in lstm
    hybrid = next(line for line in lines if line.startswith("| `hybrid` "))
    assert "85.0" in hybrid and "91.3" in hybrid and "83.5" in hybrid
    svm = next(line for line in lines if line.startswith("| `svm_ef` "))
    assert "¹" in svm and "66.0" in svm
    assert "| `nn_ef` | NN-EF | — | — |" in md  # a model with no run is listed, empty


def test_unknown_experiment_is_named(experiment):
    with pytest.raises(ValueError, match=r"no MLflow experiment 'nope'.*other"):
        collect(ReportConfig("nope", experiment["uri"]))
    with pytest.raises(ValueError, match="unknown format"):
        ReportConfig("x", format="html")


def test_runs_table_shows_params_metrics_and_lineage(experiment):
    rows = list_runs(RunsConfig("exp", experiment["uri"]))
    assert len(rows) == 10 and rows[0]["run"] == "spatial_cnn+spatial_lstm"  # newest first
    cnn = next(r for r in rows if r["run"] == "spatial_cnn" and "acc=0.600" in r["test"])
    assert "mca=0.550" in cnn["test"] and "mAP=0.650" in cnn["test"]
    assert cnn["lineage"] == "/data/store frame_features@v3 videos@v1"
    assert cnn["params"] == "epochs=5 lr=0.0001" and cnn["duration"] == "42.0s" and cnn["split"] == "1"
    hyb = next(r for r in rows if r["run"] == "hybrid")
    assert "weight.fusion=0.3" in hyb["params"] and "component." not in hyb["params"]
    only = list_runs(RunsConfig("exp", experiment["uri"], model="spatial_lstm"))
    assert [r["split"] for r in only] == ["2", "1"]
    text = format_table(rows)
    assert text.splitlines()[0].split()[:4] == ["run", "id", "stage", "split"] and "late_fusion" in text


def test_cli_report_and_runs(experiment, capsys):
    from hyvid.pipelines.cli import main

    assert main(["report", "--experiment", "exp", "--split", "2", "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out == {"spatial_lstm": {"accuracy": 0.8, "mean_class_accuracy": None, "map": None, "top5": None}}
    assert main(["runs", "--experiment", "exp", "--model", "hybrid"]) == 0
    text = capsys.readouterr().out
    assert "hybrid" in text and "mlflow ui --backend-store-uri" in text
    assert main(["report", "--experiment", "missing"]) == 2


def test_markdown_flags_means_over_fewer_splits(experiment):
    md = report(ReportConfig("exp", experiment["uri"], splits=(1, 2)))
    row = next(line for line in md.splitlines() if line.startswith("| `fusion` "))
    assert "75.0 ²" in row and "² mean over only the splits" in md
    lstm = next(line for line in md.splitlines() if line.startswith("| `spatial_lstm` "))
    assert "²" not in lstm
