"""`--test-views` and `--paper` from the shell to the stage configs, and a features re-run with another
view count on a real store: it recomputes what the stored rows made with the other count."""
from __future__ import annotations

import json

import numpy as np
import pytest

from hyvid.cluster.settings import Settings
from hyvid.pipelines.cli import COMMANDS, build_parser, main

S = Settings()


def _config(argv: list[str]):
    return COMMANDS[argv[0]].config(build_parser(S).parse_args(argv), S)


# ---------------------------------------------------------------------------------------------
# The flags reach the configs.


def test_test_views_flag_reaches_features_and_run(tmp_path):
    from hyvid.pipelines.run import features_config

    assert _config(["features"]).test_views == 1
    assert _config(["features", "--test-views", "5"]).test_views == 5
    run = _config(["run", str(tmp_path), "--test-views", "10"])
    assert run.test_views == 10
    assert features_config(run, 1, None, None).test_views == 10
    assert features_config(_config(["run", str(tmp_path)]), 1, None, None).test_views == 1


@pytest.mark.parametrize("argv", [["features", "--test-views", "3"], ["run", "{tmp}", "--test-views", "3"]])
def test_a_bad_view_count_is_one_error_line(argv, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the default sqlite MLflow db lands here
    assert main([a.format(tmp=tmp_path) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"hyvid {argv[0]}: error: ") and "\n" not in err, err
    assert "test_views must be one of 1, 5, 10, got 3" in err


def test_train_cnn_paper_sets_the_papers_cnn_stage_and_flags_win():
    from hyvid.pipelines.train_cnn import PAPER_CROP, PAPER_FINETUNE

    plain = _config(["train-cnn"])
    assert (plain.crop, plain.finetune, plain.paper_iters, plain.iters_for("motion")) == (112, "head", False, None)
    paper = _config(["train-cnn", "--paper"])
    assert (paper.crop, paper.finetune, paper.paper_iters) == (PAPER_CROP, PAPER_FINETUNE, True)
    assert (paper.iters_for("spatial"), paper.iters_for("motion")) == (26_000, 300_000)
    mine = _config(["train-cnn", "--paper", "--crop", "96", "--finetune", "head"])
    assert (mine.crop, mine.finetune, mine.paper_iters) == (96, "head", True)
    assert _config(["train-cnn", "--paper", "--iters", "50"]).iters_for("motion") == 50
    by_epochs = _config(["train-cnn", "--paper", "--epochs", "2"])
    assert (by_epochs.epochs, by_epochs.iters_for("spatial"), by_epochs.crop) == (2, None, PAPER_CROP)


def test_features_paper_tests_on_ten_views_unless_given():
    assert _config(["features", "--paper"]).test_views == 10
    assert _config(["features", "--paper", "--test-views", "5"]).test_views == 5


def test_run_paper_sets_every_stage_and_given_flags_win(tmp_path):
    from hyvid.pipelines.extract import ExtractConfig
    from hyvid.pipelines.run import _train_config, extract_config, train_cnn_config
    from hyvid.pipelines.train import PAPER_SETTINGS, TrainConfig
    from hyvid.pipelines.train_cnn import PAPER_SIZE

    default = ExtractConfig(dataset="d", store_uri="s")
    plain = _config(["run", str(tmp_path)])
    ex, cnn = extract_config(plain), train_cnn_config(plain, 1, 0, None)
    assert (ex.flow, ex.size) == (default.flow, default.size)
    assert (cnn.crop, cnn.finetune, cnn.epochs, cnn.iters_for("motion")) == (112, "head", 6, None)
    assert _train_config(plain, 1, 0, plain.models, "x").lstm_hidden == TrainConfig(store_uri="s").lstm_hidden

    paper = _config(["run", str(tmp_path), "--paper", "--split", "2"])
    ex, cnn = extract_config(paper), train_cnn_config(paper, 2, 0, None)
    assert (ex.flow, ex.size) == ("tvl1-torch", PAPER_SIZE)
    assert (cnn.crop, cnn.finetune, cnn.split, cnn.stream) == (224, "all", 2, "both")
    assert (cnn.iters_for("spatial"), cnn.iters_for("motion")) == (26_000, 300_000)
    assert _train_config(paper, 2, 0, paper.models, "x").lstm_hidden == PAPER_SETTINGS["lstm_hidden"]

    mine = _config(["run", str(tmp_path), "--paper", "--flow", "dis", "--size", "200", "--finetune", "head",
                    "--cnn-epochs", "2", "--test-views", "5"])
    ex, cnn = extract_config(mine), train_cnn_config(mine, 1, 0, None)
    assert (ex.flow, ex.size) == ("dis", 200)
    assert (cnn.finetune, cnn.epochs, cnn.iters_for("motion"), cnn.crop) == ("head", 2, None, 224)


def test_run_refuses_a_bad_flow_or_finetune_in_python(tmp_path):
    from hyvid.pipelines.run import RunConfig

    with pytest.raises(ValueError, match="flow must be one of .* got 'raft'"):
        RunConfig(dataset=str(tmp_path), store_uri="s", flow="raft")
    with pytest.raises(ValueError, match="finetune must be one of .* got 'some'"):
        RunConfig(dataset=str(tmp_path), store_uri="s", finetune="some")


# ---------------------------------------------------------------------------------------------
# A re-run with another view count recomputes, on a real store with logged (untrained) CNNs.


@pytest.fixture
def store_and_cnns(tmp_path, monkeypatch, ray_session):
    """6 tiny videos in a Lance store and two logged, untrained CNNs (helpers.tiny_cnns)."""
    from helpers.tiny_cnns import build_store_and_cnns

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    store, runs = build_store_and_cnns(tmp_path, uri, "views")
    return store, uri, runs


@pytest.mark.integration
def test_features_rerun_with_other_views_recomputes_and_records_them(store_and_cnns):
    from mlflow import MlflowClient

    from hyvid.pipelines.features import TAG_TEST_VIEWS, FeaturesConfig, extract_features, stored_test_views
    from hyvid.store.lance_io import canonical_store_uri, open_table

    store, uri, runs = store_and_cnns

    def features(views: int):
        return extract_features(FeaturesConfig(store_uri=store, spatial_run_id=runs["spatial"],
                                               motion_run_id=runs["motion"], tracking_uri=uri, experiment="views",
                                               test_views=views, workers=2, progress=False))

    def stored() -> np.ndarray:
        t = open_table(store, "frame_features").to_table(columns=["video_id", "position", "motion"])
        t = t.sort_by([("video_id", "ascending"), ("position", "ascending")])
        return np.stack(t.column("motion").to_numpy(zero_copy_only=False))

    first = features(1)
    assert first.n_features_written == 6 and first.n_skipped == 0
    one = stored()
    assert features(1).n_skipped == 6  # same views: nothing redone

    ten = features(10)
    assert (ten.n_features_written, ten.n_scored, ten.n_skipped) == (6, 6, 0)
    rows = stored()
    assert rows.shape == one.shape  # replaced, not added: one set of rows per video
    assert not np.allclose(rows, one)  # the mean over 10 crops, not the centre crop
    canonical = canonical_store_uri(store)
    assert stored_test_views(canonical, runs["spatial"], runs["motion"]) == 10
    record = json.loads(MlflowClient(uri).get_run(runs["spatial"]).data.tags[TAG_TEST_VIEWS])
    assert record == {"views": 10, "store": canonical, "motion_run_id": runs["motion"]}
    assert features(10).n_skipped == 6

    # Back to one view: the centre crop's features again, exactly.
    back = features(1)
    assert back.n_features_written == 6
    np.testing.assert_allclose(stored(), one, rtol=1e-5, atol=1e-6)
    # Another store's record (or a rewrite cut short: views null) says nothing of these rows: redone.
    assert stored_test_views("elsewhere", runs["spatial"], runs["motion"]) is None
