"""`hyvid run` end to end on a tiny synthetic dataset (real videos, Ray, Lance, MLflow), then again:
the second run finds every fit current and redoes nothing but the hybrid."""
from __future__ import annotations

from collections import Counter

import mlflow
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def test_run_chains_every_stage_then_resumes(tmp_path, ray_session):
    from hyvid.pipelines.data.synth import SynthConfig, synth
    from hyvid.pipelines.evaluation.findings import per_kind_accuracy
    from hyvid.pipelines.report import ReportConfig, collect, to_json
    from hyvid.pipelines.run import RunConfig, run
    from hyvid.store.feature_store import FeatureStore

    data = tmp_path / "data"
    s = synth(SynthConfig(out=data, classes=4, videos_per_class=4, frames=40, size=(64, 48), stack=4))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cfg = RunConfig(dataset=str(data), store_uri=str(tmp_path / "store"), experiment="smoke", tracking_uri=uri,
                    frames=6, stack=4, size=48, cnn_epochs=1, lstm_epochs=3, video_epochs=3,
                    models=("spatial_lstm", "motion_lstm", "fusion"), lam2_grid=(0.0,), lam3_grid=(0.0,),
                    out_dir=str(tmp_path / "plots"))
    first = run(cfg)
    assert list(first.seconds) == ["extract", "train-cnn split 1", "features split 1", "train split 1",
                                   "hybrid split 1"]
    assert first.skipped == []
    fs = FeatureStore(cfg.store_uri)
    n_videos = len(s.videos)
    assert fs.videos().num_rows == n_videos
    assert fs.table("frame_features").count_rows() == n_videos * 6
    for model in ("spatial_cnn", "motion_cnn", "spatial_lstm", "motion_lstm", "fusion", "hybrid"):
        assert len(fs.scores(model, 1, "test").video_ids) > 0, model
    acc = first.test_metrics[1]["accuracy"]
    assert 0.0 <= acc <= 1.0

    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name("smoke")
    def stage_counts() -> Counter:
        runs = client.search_runs([exp.experiment_id], max_results=1000)
        return Counter(r.data.tags.get("hyvid.stage") for r in runs)

    before = stage_counts()
    assert before["train-cnn"] == 2 and before["train"] == 3 and before["hybrid"] == 1

    second = run(cfg)
    # Nothing changed in the store, so no CNN or model is refitted; only the hybrid reruns.
    assert second.skipped == ["train-cnn split 1", "train split 1"]
    assert set(second.seconds) == {"extract", "features split 1", "hybrid split 1"}
    assert fs.table("frame_features").count_rows() == n_videos * 6  # no duplicates
    after = stage_counts()
    assert (after["train-cnn"], after["train"], after["hybrid"]) == (2, 3, 2)
    assert second.test_metrics[1]["accuracy"] == pytest.approx(acc)

    table = per_kind_accuracy(cfg.store_uri, 1)
    assert set(table["hybrid"]) == {"appearance", "motion", "order", "all"}
    rep = to_json(collect(ReportConfig(experiment="smoke", tracking_uri=uri, splits=(1,))))
    assert rep["hybrid"]["accuracy"] == pytest.approx(acc)
