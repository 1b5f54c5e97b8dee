"""`hyvid evaluate` and the portable hybrid model, on a tiny synthetic dataset run through the
whole pipeline (real videos, Ray, Lance, MLflow sqlite), started from an empty working directory.

- evaluate's scores of the test list are the pipeline's own `video_scores` of the hybrid run;
- the hybrid model folder, copied out of MLflow, evaluates with MLFLOW_TRACKING_URI pointed at
  an empty database, and loads in a Python where hyvid is not installed (plain MLflow);
- the pipeline leaves nothing in the working directory, and its runs carry model names, the
  git commit and their Lance inputs.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig

import mlflow
import numpy as np
import pytest

from hyvid.pipelines.inference.packaging import load_fitted

pytestmark = [pytest.mark.slow, pytest.mark.integration]

EXPERIMENT = "evaluate"


def _strict_loads(text: str):
    def refuse(name: str):
        raise ValueError(f"not strict JSON: {name}")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, ray_session):
    from hyvid.pipelines.data.synth import SynthConfig, synth
    from hyvid.pipelines.run import RunConfig, run

    root = tmp_path_factory.mktemp("evaluate")
    cwd = root / "cwd"
    cwd.mkdir()
    mp = pytest.MonkeyPatch()
    mp.chdir(cwd)
    data = root / "data"
    synth(SynthConfig(out=data, classes=4, videos_per_class=4, frames=40, size=(64, 48), stack=4))
    uri = f"sqlite:///{root}/db/mlflow.db"
    (root / "db").mkdir()
    cfg = RunConfig(dataset=str(data), store_uri=str(root / "store"), experiment=EXPERIMENT, tracking_uri=uri,
                    frames=6, stack=4, size=48, cnn_epochs=1, lstm_epochs=3, video_epochs=3,
                    models=("spatial_lstm", "motion_lstm", "fusion"), lam2_grid=(0.0,), lam3_grid=(0.0,),
                    cv_folds=0, out_dir=str(root / "plots"))  # 2 training groups: too few for folds
    res = run(cfg)
    yield {"root": root, "cwd": cwd, "data": data, "uri": uri, "store": cfg.store_uri,
           "hybrid_run_id": res.hybrid_run_ids[1], "test_accuracy": res.test_metrics[1]["accuracy"]}
    mp.undo()


def test_pipeline_leaves_the_working_directory_empty_and_names_its_models(pipeline):
    assert os.listdir(pipeline["cwd"]) == []  # no mlruns/, no mlflow.db: artifacts are beside the database
    assert (pipeline["root"] / "db" / "mlartifacts").is_dir()
    client = mlflow.MlflowClient(pipeline["uri"])
    exp = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([exp.experiment_id], max_results=100)
    assert all(r.data.tags.get("mlflow.source.git.commit") for r in runs if r.data.tags.get("hyvid.stage"))
    fits = {r.data.tags["hyvid.model"]: r for r in runs if r.data.tags.get("hyvid.stage") == "train"}
    assert set(fits) >= {"spatial_lstm", "motion_lstm", "fusion"}
    mlflow.set_tracking_uri(pipeline["uri"])
    net = load_fitted(f"runs:/{fits['fusion'].info.run_id}/fusion")  # logged under its name
    assert type(net).__name__ == "RegularizedFusionNet"
    inputs = {d.dataset.name: d.dataset.digest for d in fits["fusion"].inputs.dataset_inputs}
    assert set(inputs) == {"videos", "frame_features"}
    assert inputs["frame_features"] == f"v{fits['fusion'].data.params['lineage.frame_features.version']}"


def test_evaluate_scores_the_test_list_as_the_pipeline_did(pipeline):
    from hyvid.pipelines.evaluate import EvaluateConfig, evaluate
    from hyvid.store.feature_store import FeatureStore

    res = evaluate(EvaluateConfig(dataset=str(pipeline["data"]), split=1, subset="test", experiment=EXPERIMENT,
                                  tracking_uri=pipeline["uri"], progress=False))
    stored = FeatureStore(pipeline["store"]).scores("hybrid", 1, "test")
    assert res.hybrid_run_id == pipeline["hybrid_run_id"] == stored.run_id
    assert res.failed == [] and res.n_videos == len(stored.video_ids) > 0
    assert res.metrics["accuracy"] == pytest.approx(pipeline["test_accuracy"], abs=0.05)
    # Video by video: the same class and score as the pipeline stored (no train/serve skew).
    names = FeatureStore(pipeline["store"]).class_names()
    by_id = {p["video_id"]: p for p in res.predictions}
    assert set(by_id) == set(stored.video_ids)
    for vid, s in zip(stored.video_ids, np.asarray(stored.scores), strict=True):
        assert by_id[vid]["predicted"] == names[int(s.argmax())], vid
        assert by_id[vid]["score"] == pytest.approx(float(s.max()), abs=2e-3), vid
    lo, hi = res.intervals["accuracy"]
    assert lo <= res.metrics["accuracy"] <= hi
    run = mlflow.MlflowClient(pipeline["uri"]).get_run(res.run_id)
    assert run.data.tags["hyvid.stage"] == "evaluate" and "hyvid.split" not in run.data.tags
    assert run.data.metrics["test_accuracy"] == pytest.approx(res.metrics["accuracy"])
    assert "test_accuracy_ci_low" in run.data.metrics and run.data.metrics["test_n_videos"] == res.n_videos
    assert [d.dataset.name for d in run.inputs.dataset_inputs] == ["data"]


@pytest.fixture(scope="module")
def model_folder(pipeline, tmp_path_factory):
    """The hybrid model, copied out of MLflow into a plain folder."""
    mlflow.set_tracking_uri(pipeline["uri"])
    dst = tmp_path_factory.mktemp("copied")
    path = mlflow.artifacts.download_artifacts(f"runs:/{pipeline['hybrid_run_id']}/hybrid", dst_path=str(dst))
    folder = dst / "hybrid_model"
    shutil.move(path, folder)
    return folder


def test_copied_model_evaluates_against_an_empty_tracking_database(pipeline, model_folder, tmp_path, monkeypatch,
                                                                   capsys):
    from hyvid.pipelines.cli import main

    (tmp_path / "db").mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/db/empty.db")
    monkeypatch.chdir(tmp_path)
    code = main(["evaluate", str(pipeline["data"]), "--split", "1", "--subset", "test", "--model",
                 str(model_folder), "--format", "json"])
    out = _strict_loads(capsys.readouterr().out)
    assert code == 0
    assert {"accuracy", "accuracy_ci", "map", "map_ci", "n_videos", "failed"} <= set(out)
    assert out["accuracy"] == pytest.approx(pipeline["test_accuracy"], abs=0.05)
    assert out["hybrid_run_id"] == pipeline["hybrid_run_id"] and out["failed"] == []
    # The evaluation run went to the empty database; its artifacts beside it, none in the cwd.
    runs = mlflow.MlflowClient(f"sqlite:///{tmp_path}/db/empty.db").search_runs(
        [mlflow.MlflowClient(f"sqlite:///{tmp_path}/db/empty.db").get_experiment_by_name("hyvid").experiment_id])
    assert [r.info.run_id for r in runs] == [out["evaluation_run_id"]]
    assert sorted(os.listdir(tmp_path)) == ["db"]


def test_predict_walks_folders_and_lists_and_prints_strict_json(pipeline, model_folder, tmp_path, capsys):
    from hyvid.pipelines.cli import main

    videos = sorted(p for p in pipeline["data"].rglob("*.avi"))[:2]
    folder = tmp_path / "clips"
    folder.mkdir()
    for v in videos:
        shutil.copy(v, folder / v.name)
    listing = tmp_path / "list.txt"
    listing.write_text(f"{videos[0]}\n{videos[1]} 3\n")
    assert main(["predict", str(folder), str(listing), "--model", str(model_folder), "--json"]) == 0
    out = _strict_loads(capsys.readouterr().out)
    assert [os.path.basename(v["path"]) for v in out["videos"]] == [v.name for v in videos] * 2
    assert all(v["ok"] for v in out["videos"])

    broken = tmp_path / "broken.avi"
    broken.write_bytes(b"\x00" * 100)
    assert main(["predict", str(broken), "--model", str(model_folder), "--json"]) == 1
    out = _strict_loads(capsys.readouterr().out)  # NaN per-video time is null, not NaN
    assert out["videos"][0]["ok"] is False and out["timing"]["per_video_s"] is None

    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["predict", str(empty), "--model", str(model_folder)]) == 2
    assert "holds no video files" in capsys.readouterr().err


def test_plain_mlflow_loads_the_copied_model_without_hyvid(pipeline, model_folder):
    """A Python whose site-packages lack hyvid's editable install (no .pth files processed) loads
    the folder with mlflow.pyfunc alone: the model carries hyvid's code and pins its requirements."""
    video = sorted(pipeline["data"].rglob("*.avi"))[0]
    script = f"""
import sys
sys.path.append({sysconfig.get_paths()["purelib"]!r})
import importlib.util, json
assert importlib.util.find_spec("hyvid") is None, "hyvid must not be importable here"
import mlflow
m = mlflow.pyfunc.load_model({str(model_folder)!r})
df = m.predict([{str(video)!r}], params={{"top": 2}})
import hyvid.models
mods = sorted({{n.split(".")[0] for n in sys.modules}})
print(json.dumps({{"class": df["class"][0], "top": df["top"][0], "error": df["error"][0],
                  "hyvid": hyvid.models.__file__, "mods": mods}}))
"""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MLFLOW_TRACKING_URI")}
    env["MLFLOW_TRACKING_URI"] = "sqlite:////nonexistent/dir/mlflow.db"  # never opened
    proc = subprocess.run([sys.executable, "-S", "-c", script], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["error"] is None and len(out["top"]) == 2 and out["class"] == out["top"][0]["class"]
    assert out["hyvid"].startswith(str(model_folder))  # hyvid's code came from the model folder
    assert "lance" not in out["mods"] and "ray" not in out["mods"]

    from hyvid.pipelines.inference.pyfunc import REQUIREMENTS

    reqs = (model_folder / "requirements.txt").read_text().split()
    pinned = {r.split("==")[0].lower(): r for r in reqs if "==" in r}
    assert {d.lower() for d in REQUIREMENTS} <= set(pinned) and all("+" not in r for r in pinned.values())
    mlmodel = (model_folder / "MLmodel").read_text()
    assert "signature:" in mlmodel and "artifacts:" in mlmodel
