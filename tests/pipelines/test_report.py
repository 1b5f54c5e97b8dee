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
    run("svm_mkl", 1, {"test_accuracy": 0.70, "test_accuracy_ci_low": 0.62, "test_accuracy_ci_high": 0.78,
                       "test_map": 0.72, "test_map_ci_low": 0.65, "test_map_ci_high": 0.80, "test_n_videos": 120})
    run("spatial_cnn", 1, {"test_accuracy": 0.99}, stage="train-cnn", status="FAILED")  # ignored
    run("spatial_lstm", 1, {"test_accuracy": 0.70}, params=lineage)
    run("spatial_lstm", 2, {"test_accuracy": 0.80, "test_accuracy_ci_low": 0.70, "test_accuracy_ci_high": 0.88,
                            "test_n_videos": 60})
    run("motion_cnn", 1, {"train_accuracy": 0.9}, stage="train-cnn")  # no test metric: not reported
    run("fusion", 1, {"test_accuracy": 0.75, "test_map": 0.8})
    run("fusion_noreg", 1, {"test_accuracy": 0.72})
    run("svm_ef", 1, {"test_accuracy": 0.66})
    run("two_stream_cnn", 1, {"test_accuracy": 0.64, "val_accuracy": 0.7}, stage="features")
    hyb = run("hybrid", 1, {"test_accuracy": 0.85, "test_mean_class_accuracy": 0.84},
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
    # Each model's row comes from its own run, the two-stream CNN's (logged by `features`) included.
    assert rep.mean("svm_ef")["accuracy"] == 0.66 and rep.mean("fusion")["accuracy"] == 0.75
    assert rep.mean("two_stream_cnn")["accuracy"] == 0.64


def test_json_has_every_model_with_the_right_values(experiment):
    out = json.loads(report(ReportConfig("exp", experiment["uri"], splits=(1,), format="json")))
    assert set(out) == {"spatial_cnn", "spatial_lstm", "fusion", "fusion_noreg", "svm_ef", "svm_mkl", "hybrid",
                        "spatial_cnn+spatial_lstm", "two_stream_cnn"}
    assert out["spatial_cnn"] == {"accuracy": 0.60, "mean_class_accuracy": 0.55, "map": 0.65, "top5": 0.9,
                                  "accuracy_ci": None, "mean_class_accuracy_ci": None, "map_ci": None,
                                  "top5_ci": None, "n_test_videos": None}  # runs from before intervals
    assert out["svm_mkl"]["accuracy_ci"] == [0.62, 0.78] and out["svm_mkl"]["map_ci"] == [0.65, 0.80]
    assert out["svm_mkl"]["top5"] is None and out["svm_mkl"]["top5_ci"] is None
    assert out["svm_mkl"]["n_test_videos"] == 120
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
    assert "¹" not in md and "66.0" in svm  # from its own run: no footnote of recomputed metrics
    two_stream = next(line for line in lines if line.startswith("| `two_stream_cnn` "))
    assert "64.0" in two_stream
    assert "| `nn_ef` | NN-EF | — | — |" in md  # a model with no run is listed, empty


def test_unknown_experiment_is_named(experiment):
    with pytest.raises(ValueError, match=r"no MLflow experiment 'nope'.*other"):
        collect(ReportConfig("nope", experiment["uri"]))
    with pytest.raises(ValueError, match="unknown format"):
        ReportConfig("x", format="html")


def test_runs_table_shows_params_metrics_and_lineage(experiment):
    rows = list_runs(RunsConfig("exp", experiment["uri"]))
    assert len(rows) == 12 and rows[0]["run"] == "hybrid"  # newest first; nested runs only with --all
    every = list_runs(RunsConfig("exp", experiment["uri"], nested=True))
    assert len(every) == 13 and every[0]["run"] == "spatial_cnn+spatial_lstm"
    cnn = next(r for r in rows if r["run"] == "spatial_cnn" and "acc=0.600" in r["test"])
    assert "mca=0.550" in cnn["test"] and "mAP=0.650" in cnn["test"]
    assert cnn["lineage"] == "/data/store frame_features@v3 videos@v1"
    assert cnn["params"] == "epochs=5 lr=0.0001" and cnn["duration"] == "42.0s" and cnn["split"] == "1"
    hyb = next(r for r in rows if r["run"] == "hybrid")
    assert "weight.fusion=0.3" in hyb["params"] and "component." not in hyb["params"]
    only = list_runs(RunsConfig("exp", experiment["uri"], model="spatial_lstm"))
    assert [r["split"] for r in only] == ["2", "1"]
    text = format_table(every)
    assert text.splitlines()[0].split()[:4] == ["run", "id", "stage", "split"] and "late_fusion" in text
    assert "late_fusion" not in format_table(rows)
    assert [r["run"] for r in list_runs(RunsConfig("exp", experiment["uri"], stage="late_fusion"))] == [
        "spatial_cnn+spatial_lstm"]  # a nested stage asked for by name


def test_runs_table_fits_100_columns_and_json_csv_carry_every_metric(experiment, capsys):
    import csv
    import io

    from hyvid.pipelines.runs import runs

    table = runs(RunsConfig("exp", experiment["uri"], max_params=0))
    assert max(len(line) for line in table.splitlines()) <= 100, table
    cnn = next(i for i, line in enumerate(table.splitlines()) if line.startswith("spatial_cnn ") and "0.600" in line)
    assert table.splitlines()[cnn].split()[-3:] == ["0.600", "0.550", "0.650"]  # acc, mca, mAP columns
    assert table.splitlines()[cnn + 1].startswith("    params: epochs=5")

    records = json.loads(runs(RunsConfig("exp", experiment["uri"], format="json")))
    svm = next(r for r in records if r["model"] == "svm_mkl")
    assert svm["metrics"]["test_accuracy_ci_low"] == 0.62 and svm["split"] == 1 and svm["duration_s"] == 42.0
    lstm = next(r for r in records if r["model"] == "spatial_lstm" and r["params"])
    assert lstm["lineage"] == {"store_uri": "/data/store", "tables": {"frame_features": 3, "videos": 1}}
    assert "lineage.store_uri" not in lstm["params"]

    rows = list(csv.DictReader(io.StringIO(runs(RunsConfig("exp", experiment["uri"], format="csv")))))
    assert len(rows) == len(records) and {"test_accuracy", "test_map", "val_accuracy"} <= set(rows[0])
    two = next(r for r in rows if r["model"] == "two_stream_cnn")
    assert float(two["test_accuracy"]) == 0.64 and two["test_map"] == "" and two["stage"] == "features"

    assert main_cli(["runs", "--experiment", "exp", "--format", "json", "--limit", "2"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 2
    with pytest.raises(ValueError, match="unknown format 'xml'"):
        RunsConfig("exp", format="xml")


def main_cli(argv):
    from hyvid.pipelines.cli import main

    return main(argv)


def test_cli_report_and_runs(experiment, capsys):
    from hyvid.pipelines.cli import main

    assert main(["report", "--experiment", "exp", "--split", "2", "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out == {"spatial_lstm": {"accuracy": 0.8, "accuracy_ci": [0.70, 0.88], "mean_class_accuracy": None,
                                    "mean_class_accuracy_ci": None, "map": None, "map_ci": None, "top5": None,
                                    "top5_ci": None, "n_test_videos": 60}}
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


def test_markdown_lists_every_table_2_row_with_intervals(experiment):
    md = report(ReportConfig("exp", experiment["uri"], splits=(1,)))
    table2 = md.split("## Table 2")[1].split("## Table 3")[0]
    labels = [line.split("|")[2].strip(" ¹") for line in table2.splitlines() if line.startswith("| `")]
    assert labels == ["Spatial SVM", "Motion SVM", "SVM-EF", "SVM-LF", "SVM-MKL", "NN-EF", "NN-LF", "M-DBM",
                      "Two-stream CNN", "RDNN", "Non-regularized fusion network", "Regularized fusion network"]
    mkl = next(line for line in md.splitlines() if line.startswith("| `svm_mkl` "))
    cells = [c.strip() for c in mkl.strip("|").split("|")]
    assert cells[2:] == ["70.0 [62.0–78.0]", "—", "72.0 [65.0–80.0]", "—", "86.8", "75.4"]
    assert "95% bootstrap interval" in md
    two = report(ReportConfig("exp", experiment["uri"], splits=(2,)))
    assert "| 80.0 [70.0–88.0] |" in two and "approximation" not in two
    # Over two splits the interval is the mean of the per-split bounds, said to be approximate, and
    # none is shown when a split's run logged none (split 1 of spatial_lstm).
    both = report(ReportConfig("exp", experiment["uri"], splits=(1, 2)))
    lstm = next(line for line in both.splitlines() if line.startswith("| `spatial_lstm` "))
    assert "| 75.0 |" in lstm and "[" not in lstm and "approximation" in both
    assert "## Findings" not in md  # this experiment's hybrid run logged none


def _scored_store(root, n_test=150, seed=0):
    """A store whose video_scores make the hybrid clearly better than its parts (val and test)."""
    import numpy as np
    import pyarrow as pa

    from hyvid.store.lance_io import append_rows
    from hyvid.store.scores import upsert_video_scores
    from hyvid.store.tables import CLASSES, VIDEOS

    rng = np.random.default_rng(seed)
    c, n = 4, 2 * n_test
    ids = [f"v{i:03d}" for i in range(n)]
    subsets = ["val"] * n_test + ["test"] * n_test
    labels = rng.integers(0, c, n)
    store = str(root / "store")
    append_rows(store, VIDEOS.name, pa.Table.from_pylist(
        [{"video_id": v, "class_name": f"c{lab}", "label": int(lab), "labels": [int(lab)], "group": "g01",
          "status": "ok"} for v, lab in zip(ids, labels, strict=True)], schema=VIDEOS.schema))
    append_rows(store, CLASSES.name, pa.Table.from_pylist(
        [{"label": i, "class_name": f"c{i}"} for i in range(c)], schema=CLASSES.schema))
    t = np.eye(c)[labels]
    # Each component sees the label through its own noise, so their sum is much cleaner than any one.
    for m in ("spatial_lstm", "motion_lstm", "fusion", "spatial_cnn", "motion_cnn", "svm_ef"):
        upsert_video_scores(store, m, 1, f"run_{m}", ids, subsets, t + rng.normal(scale=0.9, size=(n, c)),
                            labels.tolist())
    return store


@pytest.mark.slow
@pytest.mark.integration
def test_report_shows_the_hybrid_runs_intervals_and_findings(tmp_path, tracking_uri):
    from hyvid.pipelines.hybrid import HybridConfig, hybrid

    store = _scored_store(tmp_path)
    res = hybrid(HybridConfig(store_uri=store, experiment="e2e", tracking_uri=tracking_uri, step=0.25))
    out = json.loads(report(ReportConfig("e2e", tracking_uri, format="json")))
    findings = out.pop("findings")
    # Every model with a figure has an interval around it: the hybrid's own run and the late fusions'
    # nested runs. (The components' scores here come from no run, and the report reads each model's own.)
    assert {"hybrid", "spatial_cnn+spatial_lstm"} <= set(out) and "svm_ef" not in out
    for model, row in out.items():
        for m in ("accuracy", "mean_class_accuracy", "map", "top5"):
            lo, hi = row[f"{m}_ci"]
            assert lo <= row[m] <= hi, (model, m)
        assert row["n_test_videos"] == 150
    assert out["hybrid"]["accuracy"] == pytest.approx(res.test_metrics["accuracy"])
    rec = next(f for f in findings if (f["a"], f["b"]) == ("hybrid", "fusion"))
    assert rec["split"] == 1 and rec["metric"] == "accuracy" and rec["n_videos"] == 150
    assert rec["verdict"] == "reproduced" and 0 < rec["lo"] <= rec["diff"] <= rec["hi"]
    assert {f["verdict"] for f in findings} <= {"reproduced", "inconclusive", "contradicted"}
    assert {(f["a"], f["b"]) for f in findings} >= {("fusion", "svm_ef"), ("spatial_cnn+spatial_lstm", "spatial_cnn")}
    md = report(ReportConfig("e2e", tracking_uri))
    assert "## Findings" in md and "`hybrid` over `fusion`: **reproduced**" in md
    hyb = next(line for line in md.splitlines() if line.startswith("| `hybrid` "))
    assert "[" in hyb and "–" in hyb


def test_report_shows_the_spread_across_seeds_beside_each_interval(tmp_path):
    """`hyvid run --seeds N` leaves one run per seed: the report gives their sd beside the latest interval."""
    import numpy as np

    from hyvid.pipelines.report import to_json

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    exp = client.create_experiment("seeds")
    for i, (seed, acc) in enumerate([("0", 0.70), ("1", 0.80), ("2", 0.95), ("2", 0.90)]):  # seed 2 twice: latest
        r = client.create_run(exp, start_time=T0 + i * 60_000, tags={
            tracking.TAG_MODEL: "hybrid", tracking.TAG_STAGE: "hybrid", tracking.TAG_SPLIT: "1",
            tracking.TAG_SEED: seed})
        for k, v in {"test_accuracy": acc, "test_accuracy_ci_low": acc - 0.1, "test_accuracy_ci_high": acc + 0.05,
                     "test_n_videos": 60}.items():
            client.log_metric(r.info.run_id, k, v)
        client.set_terminated(r.info.run_id, "FINISHED", end_time=T0 + i * 60_000 + 1000)
    rep = collect(ReportConfig(experiment="seeds", tracking_uri=uri))
    row = to_json(rep)["hybrid"]
    assert row["accuracy"] == pytest.approx(0.90) and row["n_seeds"] == 3
    assert row["accuracy_seed_sd"] == pytest.approx(np.std([0.70, 0.80, 0.90], ddof=1))
    md = report(ReportConfig(experiment="seeds", tracking_uri=uri))
    assert "90.0 [80.0–95.0] ±10.0" in md and "across the seeds" in md
