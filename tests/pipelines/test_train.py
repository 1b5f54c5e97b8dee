"""`hyvid train`: every model fitted concurrently on a tiny real store, tracked in a real MLflow.

One module-scoped fit of all models (real Ray, real Lance, real MLflow on sqlite) feeds the
assertions below, so the expensive part runs once.
"""
from __future__ import annotations

import numpy as np
import pytest
from helpers.toy_store import CLASS_NAMES, build_toy_store

from hyvid.pipelines import faults


# ------------------------------------------------------------------------------------------------
# Fast checks of the configuration and the pure pieces
# ------------------------------------------------------------------------------------------------
def test_baselines_expand_and_bad_names_are_refused(tmp_path):
    from hyvid.models import registry as R
    from hyvid.pipelines.train import TrainConfig, expand_models

    assert expand_models(["fusion", "baselines"]) == (R.FUSION, *R.BASELINE_MODELS)
    assert expand_models(["nn_ef", "baselines", "nn_ef"]).count("nn_ef") == 1
    with pytest.raises(ValueError, match="unknown model"):
        TrainConfig(store_uri=str(tmp_path), models=("lstm",))
    with pytest.raises(ValueError, match="train-cnn"):
        TrainConfig(store_uri=str(tmp_path), models=("spatial_cnn",))
    with pytest.raises(ValueError, match="lstm_pooling"):
        TrainConfig(store_uri=str(tmp_path), lstm_pooling="max")
    with pytest.raises(ValueError, match="lam2_grid"):
        TrainConfig(store_uri=str(tmp_path), lam2_grid=(-1.0,))
    with pytest.raises(ValueError, match="train.after_epoch names models that are not fitted"):
        TrainConfig(store_uri=str(tmp_path), models=("fusion",),
                    faults=faults.spec(faults.Fault(faults.TRAIN_AFTER_EPOCH, "nn_ef", epoch=1)))
    paper = TrainConfig.paper(str(tmp_path))
    assert paper.lstm_hidden == (1024, 512) and paper.lstm_lr == 1e-4 and paper.lstm_optimizer == "sgd"


def test_pool_plan_gives_each_worker_a_core_and_never_more_workers_than_fits(tmp_path):
    from hyvid.pipelines.train import TrainConfig, pool_plan

    cfg = TrainConfig(store_uri=str(tmp_path))
    assert pool_plan(cfg, 2.0, 14) == (2, 1.0)
    assert pool_plan(cfg, 64.0, 14) == (14, 1.0)  # a big cluster: one worker per fit
    assert pool_plan(TrainConfig(store_uri=str(tmp_path), cpus_per_worker=2), 8.0, 14) == (4, 2.0)
    assert pool_plan(TrainConfig(store_uri=str(tmp_path), concurrent=False), 8.0, 14) == (1, 8.0)
    assert pool_plan(TrainConfig(store_uri=str(tmp_path), cpus_per_worker=4), 2.0, 14) == (1, 4.0)


def test_search_choice_prefers_val_then_loss_then_larger_values():
    from hyvid.pipelines.training.search import choose

    trials = [({"lam2": 0.0}, 0.8, 0.30), ({"lam2": 3e-5}, 0.9, 0.40), ({"lam2": 3e-4}, 0.9, 0.35)]
    assert choose(trials)[0] == {"lam2": 3e-4}  # best val, then lower val loss
    tied = [({"lam2": 0.0, "lam3": 0.0}, 0.9, 0.35), ({"lam2": 3e-5, "lam3": 3e-5}, 0.9, 0.35)]
    assert choose(tied)[0] == {"lam2": 3e-5, "lam3": 3e-5}  # a full tie goes to the sparser net
    with pytest.raises(ValueError, match="no finished"):
        choose([])


def test_every_searched_model_has_a_grid_and_the_paper_switch_sets_every_paper_setting(tmp_path):
    from hyvid.models import registry as R
    from hyvid.models.fusion import PAPER_LAM1, PAPER_LR
    from hyvid.pipelines.train import TRAINABLE, TrainConfig
    from hyvid.pipelines.training.search import SEARCH_KEYS, model_grid

    cfg = TrainConfig(store_uri=str(tmp_path))
    for model in TRAINABLE:
        grid = model_grid(model, cfg.grids())
        if model in R.LSTM_MODELS:
            assert grid == [{}]  # their epoch is chosen on val; no other search
        else:
            assert len(grid) >= 3 and all(set(g) == set(SEARCH_KEYS[model]) for g in grid), model
    paper = TrainConfig.paper(str(tmp_path))
    assert (paper.lstm_hidden, paper.lstm_lr, paper.lstm_optimizer, paper.lstm_momentum, paper.lstm_batch_size,
            paper.lstm_peephole) == ((1024, 512), 1e-4, "sgd", 0.9, 10, True)
    assert paper.fusion_lr == PAPER_LR == 0.7 and paper.lam1 == PAPER_LAM1 == 3e-5
    assert 3e-5 in paper.lam2_grid and 3e-5 in paper.lam3_grid and max(paper.lam2_grid) <= 1e-4
    with pytest.raises(ValueError, match="cv_folds"):
        TrainConfig(store_uri=str(tmp_path), cv_folds=1)
    with pytest.raises(ValueError, match="svm_c_grid"):
        TrainConfig(store_uri=str(tmp_path), svm_c_grid=(float("nan"),))


def test_group_folds_keep_groups_whole_and_balance_videos():
    from hyvid.pipelines.training.data import group_folds

    groups = ["g1"] * 5 + ["g2"] * 4 + ["g3"] * 3 + ["g4"] * 3 + ["g5"] * 1
    folds = group_folds(groups, 3)
    for g in set(groups):
        assert len({f for f, h in zip(folds, groups, strict=True) if h == g}) == 1, g
    sizes = np.bincount(folds, minlength=3)
    assert sizes.max() - sizes.min() <= 2 and set(folds) == {0, 1, 2}
    with pytest.raises(ValueError, match="at least 4 groups"):
        group_folds(["a", "b", "c"], 4)


def test_cli_train_flags_parse(tmp_path):
    from hyvid.pipelines.cli import build_parser

    args = build_parser().parse_args(
        ["train", "--store", str(tmp_path), "--models", "fusion,baselines", "--epochs", "3", "--paper",
         "--lam-grid", "0,1e-4", "--workers-per-model", "2", "--sequential", "--fusion-lr", "0.7"]
    )
    assert args.command == "train" and args.epochs == 3 and args.paper and args.sequential
    assert args.lam_grid == "0,1e-4" and args.workers_per_model == 2 and args.fusion_lr == 0.7


def test_missing_frame_features_names_the_stage(tmp_path):
    from hyvid.pipelines.train import TrainConfig, train

    with pytest.raises(FileNotFoundError, match="frame_features"):
        train(TrainConfig(store_uri=str(tmp_path / "empty"), tracking_uri=f"sqlite:///{tmp_path}/m.db"))


# ------------------------------------------------------------------------------------------------
# One real concurrent fit of every model, shared by the tests below
# ------------------------------------------------------------------------------------------------
EPOCHS_LSTM, EPOCHS_VIDEO, KILL_AT = 12, 30, 3
LAM2_GRID = (0.0, 1.0)
NN_LR_GRID = (0.01, 0.03)
NOREG_LR_GRID = (1e-3, 3e-3)
CV_FOLDS = 2
EXPERIMENT = "train-test"


@pytest.fixture(scope="module")
def trained(ray_session, tmp_path_factory):
    import mlflow

    from hyvid.pipelines.train import TrainConfig, train

    root = tmp_path_factory.mktemp("train")
    store = str(root / "store")
    info = build_toy_store(store)
    uri = f"sqlite:///{root}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    # Artifacts under tmp (MLflow's default would be ./mlruns in the working directory).
    mlflow.create_experiment(EXPERIMENT, artifact_location=str(root / "artifacts"))
    cfg = TrainConfig(
        store_uri=store, tracking_uri=uri, experiment=EXPERIMENT,
        lstm_epochs=EPOCHS_LSTM, lstm_hidden=(32, 16), video_epochs=EPOCHS_VIDEO,
        abstraction=32, fusion_units=32, nn_hidden=32, lam2_grid=LAM2_GRID, lam3_grid=(0.0,),
        nn_lr_grid=NN_LR_GRID, svm_c_grid=(1.0, 10.0), noreg_lr_grid=NOREG_LR_GRID, cv_folds=CV_FOLDS,
        lstm_patience=0, video_patience=0,  # every epoch runs: the history and resume checks count them
        # Its worker dies once; Ray Train must resume it.
        faults=faults.spec(faults.Fault(faults.TRAIN_AFTER_EPOCH, "motion_lstm", epoch=KILL_AT)),
        register_as="toy", register_alias="champion",  # every model: toy-<model>@champion
    )
    result = train(cfg)
    client = mlflow.MlflowClient(uri)
    return {"result": result, "client": client, "store": store, "cfg": cfg, **info}


def _run(trained, model):
    return trained["client"].get_run(trained["result"].models[model].run_id)


def _fit_windows(trained):
    return {m: (_run(trained, m).info.start_time, _run(trained, m).info.end_time) for m in trained["result"].models}


@pytest.mark.slow
def test_every_model_is_one_finished_run_with_test_metrics(trained):
    from hyvid.models import registry as R

    result = trained["result"]
    assert tuple(result.models) == (R.SPATIAL_LSTM, R.MOTION_LSTM, R.FUSION, *R.BASELINE_MODELS)
    for model, r in result.models.items():
        run = _run(trained, model)
        assert run.info.status == "FINISHED", model
        assert run.data.tags["hyvid.model"] == model and run.data.tags["hyvid.stage"] == "train"
        for key in ("val_accuracy", "test_accuracy", "test_mean_class_accuracy", "test_top5", "test_map"):
            assert key in run.data.metrics, (model, key)
            assert r.metrics[key] == pytest.approx(run.data.metrics[key]), (model, key)
        # Static classes are easy for every model: anything below 0.6 means a broken fit.
        assert r.metrics["test_accuracy"] >= 0.6, (model, r.metrics)


@pytest.mark.slow
def test_torch_fits_log_per_epoch_history(trained):
    client = trained["client"]
    for model, epochs in (("spatial_lstm", EPOCHS_LSTM), ("nn_ef", EPOCHS_VIDEO)):
        run_id = trained["result"].models[model].run_id
        for key in ("train_loss", "train_accuracy"):
            steps = [m.step for m in client.get_metric_history(run_id, key)]
            assert sorted(steps) == list(range(epochs)), (model, key, steps)
        val_steps = {m.step for m in client.get_metric_history(run_id, "val_accuracy")}
        assert val_steps == set(range(epochs + 1)), model  # every epoch, plus the selected epoch's at the end


@pytest.mark.slow
def test_logged_models_load_and_reproduce_the_stored_scores(trained):
    import mlflow

    from hyvid.pipelines.training.data import LSTM_STREAM
    from hyvid.store.feature_store import FeatureStore, collate_sequences

    fs = FeatureStore(trained["store"])
    vf = fs.video_features(1, "val")
    xs = [vf.features[s] for s in ("spatial", "motion")]
    for model, r in trained["result"].models.items():
        stored = fs.scores(model, 1, "val")
        assert stored.video_ids == vf.video_ids
        # Each model is logged under its registry name as a standalone pyfunc of its own inputs.
        pyfunc = mlflow.pyfunc.load_model(f"runs:/{r.run_id}/{model}")
        if model in LSTM_STREAM:
            seq = fs.sequences(1, "val", streams=(LSTM_STREAM[model],))
            x, lengths, *_ = collate_sequences([seq[i] for i in range(len(seq))])
            assert bool((lengths == x[LSTM_STREAM[model]].shape[1]).all())  # the toy videos are equally long
            got = pyfunc.predict(x[LSTM_STREAM[model]].numpy())
        else:
            got = pyfunc.predict({s: np.asarray(x, np.float32) for s, x in zip(("spatial", "motion"), xs, strict=True)})
        np.testing.assert_allclose(got, stored.scores, rtol=1e-4, atol=1e-5, err_msg=model)


@pytest.mark.slow
def test_every_logged_model_stands_alone_in_a_venv_without_hyvid(trained, tmp_path):
    """Each model `train` logged (LSTMs, fusion nets, NN and SVM baselines) is a pyfunc with a signature,
    an input example and its code: copied out of MLflow, it predicts in a venv of mlflow, torch and numpy
    alone, and refuses a wrong-shape input naming the expected shape."""
    import mlflow
    from helpers.venvs import bare_venv, predict_examples

    folders = {}
    for model, r in trained["result"].models.items():
        uri = f"runs:/{r.run_id}/{model}"
        folders[model] = mlflow.artifacts.download_artifacts(uri, dst_path=str(tmp_path / model))
        mlmodel = (tmp_path / model / model / "MLmodel").read_text()
        assert "signature:" in mlmodel and "saved_input_example_info" in mlmodel and "code: code" in mlmodel, model
    out = predict_examples(bare_venv(tmp_path / "venv", ["mlflow", "torch", "numpy"]), folders)
    n_classes = len(CLASS_NAMES)
    for model in folders:
        rec = out[model]
        assert rec["shape"][1:] == [n_classes] and rec["finite"], (model, rec)
        assert rec["wrong_shape"] and "does not match expected shape" in rec["wrong_shape"], (model, rec)
    assert not {"lance", "ray", "cv2"} & set(out["modules"])  # hyvid's models alone, from the model folder


def test_runs_are_named_by_model_split_and_time_log_only_used_params_and_no_step_twice(trained):
    import re
    from collections import Counter

    client = trained["client"]
    exp = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    for model in trained["result"].models:
        assert re.fullmatch(rf"{model}-split1-\d{{8}}-\d{{6}}", _run(trained, model).info.run_name), model
    for r in runs:
        model = r.data.tags["hyvid.model"]
        if model.startswith("svm_"):  # an SVM fits in one call: no epochs, no ranks, no seed
            assert not {"epochs", "world_size", "seed"} & set(r.data.params), (r.info.run_name, r.data.params)
        else:
            assert "epochs" in r.data.params, r.info.run_name
        for key in r.data.metrics:  # every metric at most once per step
            steps = Counter(m.step for m in client.get_metric_history(r.info.run_id, key))
            assert max(steps.values()) == 1, (r.info.run_name, key, steps)


def test_registered_models_carry_tags_a_card_and_the_alias(trained, tmp_path):
    import mlflow

    client = trained["client"]
    assert set(trained["result"].registered) == set(trained["result"].models)
    for model, r in trained["result"].models.items():
        assert trained["result"].registered[model] == f"models:/toy-{model}@champion"
        mv = client.get_model_version_by_alias(f"toy-{model}", "champion")
        assert mv.run_id == r.run_id and mv.tags["hyvid.model"] == model and mv.tags["hyvid.split"] == "1"
        assert re_interval(mv.tags["test_accuracy"]), mv.tags  # value [low, high] n=videos
        assert mv.tags["lineage.frame_features.version"] == _run(trained, model).data.params[
            "lineage.frame_features.version"]
        assert f"# toy-{model}" in mv.description and "test_accuracy" in mv.description
    folder = mlflow.artifacts.download_artifacts("models:/toy-fusion@champion", dst_path=str(tmp_path),
                                                 tracking_uri=trained["cfg"].tracking_uri)
    card = open(f"{folder}/README.md").read()
    assert "frame_features" in card and "'spatial' float32 [batch, " in card and "mlflow.pyfunc.load_model" in card


def re_interval(text: str) -> bool:
    import re

    return re.fullmatch(r"\d\.\d{4} \[\d\.\d{4}, \d\.\d{4}\] n=\d+", text) is not None


def test_dataset_inputs_carry_the_lance_tables_schema_and_row_count(trained):
    import json

    from hyvid.store.lance_io import open_table

    fusion = _run(trained, "fusion")
    inputs = {d.dataset.name: d.dataset for d in fusion.inputs.dataset_inputs}
    for table in ("videos", "frame_features"):
        version = int(fusion.data.params[f"lineage.{table}.version"])
        ds = open_table(trained["store"], table, version=version)
        schema = json.loads(inputs[table].schema)["mlflow_colspec"]
        assert [c["name"] for c in schema] == ds.schema.names, table
        assert json.loads(inputs[table].profile) == {"num_rows": ds.count_rows()}
        assert inputs[table].digest == f"v{version}"
    spatial = next(c for c in json.loads(inputs["frame_features"].schema)["mlflow_colspec"] if c["name"] == "spatial")
    assert spatial["type"] == "array" and spatial["items"]["type"] == "float"


def test_fits_overlap_in_time(trained):
    windows = _fit_windows(trained)
    # Sweep line over the MLflow run windows: how many fits were training at once.
    events = sorted([(s, 1) for s, _ in windows.values()] + [(e, -1) for _, e in windows.values()])
    open_now = peak = 0
    for _, step in events:
        open_now += step
        peak = max(peak, open_now)
    assert peak >= 3, windows
    for model in ("spatial_lstm", "motion_lstm", "fusion"):
        s, e = windows[model]
        others = [m for m, (s2, e2) in windows.items() if m != model and s2 < e and s < e2]
        assert others, f"{model} ran alone: {windows}"


@pytest.mark.slow
def test_lineage_points_at_the_lance_versions_read(trained):
    from hyvid.store.feature_store import FeatureStore

    versions = FeatureStore(trained["store"]).versions()
    for model in trained["result"].models:
        params = _run(trained, model).data.params
        for table in ("videos", "frame_features"):
            assert params[f"lineage.{table}.version"] == str(versions[table]), (model, table)
        assert params["lineage.store_uri"].endswith("store")
    import json

    import mlflow

    lineage = mlflow.artifacts.download_artifacts(run_id=trained["result"].models["fusion"].run_id,
                                                  artifact_path="lineage.json",
                                                  tracking_uri=trained["cfg"].tracking_uri)
    with open(lineage) as f:
        assert json.load(f)["tables"] == {"videos": versions["videos"], "frame_features": versions["frame_features"]}


@pytest.mark.slow
def test_video_scores_hold_val_and_test_rows_per_model(trained):
    from hyvid.store.feature_store import FeatureStore

    fs = FeatureStore(trained["store"])
    n = {sub: len(fs.videos(split=1, subset=sub)) for sub in ("val", "test")}
    for model, r in trained["result"].models.items():
        for sub in ("val", "test"):
            s = fs.scores(model, 1, sub)
            assert len(s.video_ids) == n[sub], (model, sub)
            assert s.scores.shape == (n[sub], len(CLASS_NAMES))
            assert s.run_id == r.run_id and set(s.subsets) == {sub}


@pytest.mark.slow
def test_fusion_cv_trials_are_nested_under_the_fusion_run(trained):
    client, parent = trained["client"], trained["result"].models["fusion"].run_id
    exp = client.get_experiment_by_name(EXPERIMENT)
    nested = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("mlflow.parentRunId") == parent]
    trials = [r for r in nested if "fold" not in r.data.params]
    folds = [r for r in nested if "fold" in r.data.params]
    assert len(trials) == len(LAM2_GRID) and len(folds) == CV_FOLDS
    # The out-of-fold fits repeat the chosen λ and never see val or test.
    assert all(f.data.params["lam2"] == client.get_run(parent).data.params["lam2"] for f in folds)
    assert all("test_accuracy" not in f.data.metrics for f in folds)
    assert {float(t.data.params["lam2"]) for t in trials} == set(LAM2_GRID)
    assert all(t.data.tags["hyvid.stage"] == "train-cv" and "val_accuracy" in t.data.metrics for t in trials)
    assert all("test_accuracy" not in t.data.metrics for t in trials)  # selection never sees test
    p = client.get_run(parent).data
    assert float(p.params["lam2"]) in LAM2_GRID and float(p.params["lam3"]) == 0.0
    assert trained["result"].models["fusion"].extra == {"lam2": float(p.params["lam2"]), "lam3": 0.0}
    assert 0.0 <= p.metrics["fusion_zero_row_fraction"] <= 1.0
    assert float(_run(trained, "fusion_noreg").data.params["lam2"]) == 0.0
    from hyvid.pipelines.train import DEFAULT_FUSION_LR

    # The fusion net's trials and final fit take the configured step (the default, not the paper's 0.7);
    # fusion_noreg searched its own.
    for run in (*trials, client.get_run(parent)):
        assert float(run.data.params["fusion_lr"]) == trained["cfg"].fusion_lr == DEFAULT_FUSION_LR != 0.7
    assert float(_run(trained, "fusion_noreg").data.params["fusion_lr"]) in NOREG_LR_GRID


@pytest.mark.slow
def test_baselines_choose_their_main_hyperparameter_on_val_in_nested_trials(trained):
    client = trained["client"]
    exp = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([exp.experiment_id])
    for model, key, grid in (("nn_ef", "nn_lr", NN_LR_GRID), ("svm_lf", "svm_c", (1.0, 10.0)),
                             ("fusion_noreg", "fusion_lr", NOREG_LR_GRID)):
        parent = trained["result"].models[model].run_id
        trials = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent
                  and r.data.tags["hyvid.stage"] == "train-cv" and "fold" not in r.data.params]
        assert sorted(float(t.data.params[key]) for t in trials) == sorted(grid), model
        assert all("test_accuracy" not in t.data.metrics for t in trials), model
        best = max(trials, key=lambda t: t.data.metrics["best_val"])
        chosen = float(client.get_run(parent).data.params[key])
        assert best.data.metrics["best_val"] == max(
            t.data.metrics["best_val"] for t in trials if float(t.data.params[key]) == chosen), model
        assert trained["result"].models[model].extra == {key: chosen}


@pytest.mark.slow
def test_hybrid_components_get_out_of_fold_scores_of_every_training_video(trained):
    from hyvid.models import registry as R
    from hyvid.store.feature_store import FeatureStore

    fs = FeatureStore(trained["store"])
    train_ids = set(fs.videos(split=1, subset="train").column("video_id").to_pylist())
    client = trained["client"]
    for model in R.HYBRID_COMPONENTS:
        s = fs.scores(model, 1, "train")
        assert set(s.video_ids) == train_ids and set(s.subsets) == {"train"}, model
        run = client.get_run(trained["result"].models[model].run_id)
        assert s.run_id == run.info.run_id
        assert run.data.metrics["cv_folds"] == CV_FOLDS and run.data.metrics["oof_videos"] == len(train_ids)
        # Out-of-fold scores are honest held-out scores: well above chance (1/4) on the toy data,
        # and no better than perfect.
        assert 0.4 <= run.data.metrics["oof_accuracy"] <= 1.0, model
    with pytest.raises(FileNotFoundError):
        fs.scores("nn_ef", 1, "train")  # not a hybrid component: no folds fitted


@pytest.mark.slow
def test_killed_fit_resumed_from_its_checkpoint(trained):
    run = _run(trained, "motion_lstm")
    assert run.data.tags.get("hyvid.resumed_from_epoch") == str(KILL_AT)
    steps = [m.step for m in trained["client"].get_metric_history(run.info.run_id, "train_loss")]
    assert sorted(steps) == list(range(EPOCHS_LSTM))  # no epoch redone, none lost
    exp = trained["client"].get_experiment_by_name(EXPERIMENT)
    motion_runs = [r for r in trained["client"].search_runs([exp.experiment_id])
                   if r.data.tags.get("hyvid.model") == "motion_lstm" and r.data.tags["hyvid.stage"] == "train"]
    assert len(motion_runs) == 1  # the restarted worker logged into the same run (its folds are train-cv runs)


@pytest.mark.slow
def test_lstm_beats_fusion_on_the_order_only_classes(trained):
    from hyvid.store.feature_store import FeatureStore

    fs = FeatureStore(trained["store"])

    def order_accuracy(model):
        s = fs.scores(model, 1, "test")
        keep = np.isin(s.labels, trained["order_labels"])
        return float((s.scores[keep].argmax(1) == s.labels[keep]).mean())

    fusion = order_accuracy("fusion")
    for lstm in ("spatial_lstm", "motion_lstm"):
        # Frame averages of the two order classes are identically distributed: the fusion net is at
        # chance (0.5) between them, while the LSTM reads the order.
        assert order_accuracy(lstm) >= 0.9 and order_accuracy(lstm) >= fusion + 0.25, (lstm, fusion)


@pytest.mark.slow
def test_refit_retrains_the_chosen_model_on_train_and_val_and_scores_test(ray_session, tmp_path):
    import mlflow

    from hyvid.pipelines.train import TrainConfig, train
    from hyvid.store.feature_store import FeatureStore

    store = str(tmp_path / "store")
    build_toy_store(store)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    mlflow.create_experiment("refit", artifact_location=str(tmp_path / "artifacts"))
    result = train(TrainConfig(store_uri=store, tracking_uri=uri, experiment="refit", models=("fusion", "svm_lf"),
                               video_epochs=12, abstraction=16, fusion_units=16, lam2_grid=(0.0,), lam3_grid=(0.0,),
                               svm_c_grid=(1.0, 10.0), cv_folds=0, refit=True))
    client = mlflow.MlflowClient(uri)
    fs = FeatureStore(store)
    n_fit = len(fs.videos(split=1, subset="train")) + len(fs.videos(split=1, subset="val"))
    for model in ("fusion", "svm_lf"):
        refit = client.get_run(result.models[model].run_id)
        selected = client.get_run(refit.data.tags["hyvid.refit_of"])
        assert refit.info.run_id != selected.info.run_id and "mlflow.parentRunId" not in refit.data.tags
        assert refit.data.params["refit"] == "True" and "test_accuracy" in refit.data.metrics
        assert "val_accuracy" not in refit.data.metrics  # val is in its training data now
        # The chosen setting and epochs are the selection's: nothing is chosen on the refit.
        if model == "fusion":
            assert int(refit.data.params["epochs"]) == int(selected.data.metrics["best_epoch"]) + 1
        else:
            assert refit.data.params["svm_c"] == selected.data.params["svm_c"]
        assert fs.scores(model, 1, "test").run_id == refit.info.run_id
        assert fs.scores(model, 1, "val").run_id == selected.info.run_id
        assert n_fit > len(fs.videos(split=1, subset="train"))


def test_folds_shrink_to_the_groups_there_are():
    from hyvid.pipelines.training.search import usable_folds

    assert usable_folds(3, 11, 1) == 3 and usable_folds(3, 2, 1) == 2 and usable_folds(3, 1, 1) == 0
    assert usable_folds(0, 5, 1) == 0
