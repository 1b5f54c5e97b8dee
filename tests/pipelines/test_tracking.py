"""Where tracking files go: experiments keep artifacts beside their sqlite database, read-only
commands create no database, runs carry the git commit, and fits log their Lance tables as MLflow
dataset inputs."""
from __future__ import annotations

import os

import mlflow
import pytest

from hyvid.pipelines import tracking


def test_artifact_location_is_beside_a_sqlite_database(tmp_path, monkeypatch):
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    db = tmp_path / "db" / "mlflow.db"
    db.parent.mkdir()
    uri = f"sqlite:///{db}"
    assert tracking.sqlite_path(uri) == str(db)
    assert tracking.sqlite_path("sqlite:///rel.db") == str(work / "rel.db")
    assert tracking.sqlite_path("http://host:5000") is None
    assert tracking.artifact_location(uri) == str(tmp_path / "db" / "mlartifacts")
    assert tracking.artifact_location("http://host:5000") is None

    exp_id = tracking.setup(uri, "exp")
    location = mlflow.get_experiment(exp_id).artifact_location
    assert location.removeprefix("file://") == str(tmp_path / "db" / "mlartifacts")
    with tracking.start_run("fusion", tracking.STAGE_TRAIN, 1) as run:
        mlflow.log_dict({"a": 1}, "a.json")
        # The lineage of a fit: params, lineage.json, and each table as a dataset input.
        tracking.log_lineage(str(tmp_path / "store"), ["videos", "frame_features"], versions={"videos": 3,
                                                                                             "frame_features": 7})
    got = mlflow.get_run(run.info.run_id)
    assert os.path.isfile(tmp_path / "db" / "mlartifacts" / run.info.run_id / "artifacts" / "a.json")
    assert os.listdir(work) == []  # nothing in the working directory: no mlruns/, no mlflow.db
    inputs = {d.dataset.name: d for d in got.inputs.dataset_inputs}
    assert set(inputs) == {"videos", "frame_features"}
    assert inputs["videos"].dataset.digest == "v3" and inputs["frame_features"].dataset.digest == "v7"
    assert str(tmp_path / "store" / "videos.lance") in inputs["videos"].dataset.source
    assert {t.key: t.value for t in inputs["videos"].tags}["mlflow.data.context"] == "training"
    assert got.data.params["lineage.videos.version"] == "3"
    # This checkout is a git repository: the run names the commit it ran.
    commit = got.data.tags.get(tracking.TAG_GIT_COMMIT)
    assert commit and len(commit) == 40 and commit == tracking.git_commit()


def test_read_only_commands_leave_no_database(tmp_path, monkeypatch, capsys):
    from hyvid.pipelines.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("HYVID_CONFIG", str(tmp_path / "none.yaml"))  # the defaults: sqlite:///mlflow.db here
    assert main(["runs"]) == 2
    assert "no MLflow database at" in capsys.readouterr().err
    assert main(["report"]) == 2
    capsys.readouterr()
    assert main(["predict", "clip.avi"]) == 2
    assert "no MLflow database at" in capsys.readouterr().err
    assert tracking.finished_runs("hyvid", tracking_uri=f"sqlite:///{tmp_path}/mlflow.db") == []
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("uri", ["sqlite:///x.db", "sqlite:////abs/x.db"])
def test_missing_database_is_named_in_one_line(uri, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"no MLflow database at .*x\.db; run a stage first"):
        tracking.check_store_exists(uri)
    assert not os.path.exists(tmp_path / "x.db")
