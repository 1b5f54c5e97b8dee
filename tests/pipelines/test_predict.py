"""`hyvid predict` on generated videos, with tiny models logged to MLflow the way the stages log them;
every logged model predicting in a venv without hyvid, and the hybrid served over HTTP.

The CNNs, LSTMs and fusion net are built directly (untrained, seeded) and logged as runs with the
stages' tags; a tiny store holds their val/test scores and one frame_features row naming the
CNN runs; the real `hybrid` stage then makes the hybrid run that predict starts from. So the
test covers the whole contract between the stages and predict without the slow training.
"""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
import torch
from helpers.videos import moving_square_frames, write_video

from hyvid.models import registry as R
from hyvid.pipelines import tracking

pytestmark = pytest.mark.integration  # five models logged to MLflow, the real hybrid stage, real videos

CLASSES = ["left", "right", "still"]
EXTRACT = {"frames": 6, "stack": 2, "flow": "dis", "size": 32}
DS, DM = 16, 8  # feature dims


def _log_model(model: torch.nn.Module, name: str, stage: str, experiment_id: str) -> str:
    """Log a model as its stage does: a standalone pyfunc of its inputs (`inference.packaging`)."""
    from hyvid.pipelines.inference import packaging

    with tracking.start_run(name, stage, 1, "store") as run:
        if name in R.CNN_MODELS:
            packaging.log_cnn(model, name, "spatial" if name == R.SPATIAL_CNN else "motion", EXTRACT["stack"],
                              CLASSES, False)
        else:
            rng = np.random.default_rng(0)
            if name in R.LSTM_MODELS:
                dim = DS if name == R.SPATIAL_LSTM else DM
                config = packaging.component_config(name, "sequence", {"": [-1, -1, dim]}, CLASSES, False)
                example = rng.random((1, EXTRACT["frames"], dim), dtype=np.float32)
            else:
                config = packaging.component_config(name, "streams", {"spatial": [-1, DS], "motion": [-1, DM]},
                                                    CLASSES, False)
                example = {"spatial": rng.random((2, DS), dtype=np.float32),
                           "motion": rng.random((2, DM), dtype=np.float32)}
            packaging.log_component(model, config, example)
        return run.info.run_id


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    from hyvid.models.cnn import MotionCNN, SpatialCNN
    from hyvid.models.fusion import RegularizedFusionNet
    from hyvid.models.lstm import StreamLSTM
    from hyvid.pipelines.hybrid import HybridConfig, hybrid
    from hyvid.store.lance_io import append_rows
    from hyvid.store.scores import upsert_video_scores
    from hyvid.store.tables import CLASSES as CLASSES_T
    from hyvid.store.tables import FRAME_FEATURES_NAME, VIDEOS, frame_features_schema

    root = tmp_path_factory.mktemp("predict")
    uri = f"sqlite:///{root}/mlflow.db"
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", uri)
    exp_id = tracking.setup(uri, "exp")
    torch.manual_seed(0)
    c = len(CLASSES)
    models = {
        R.SPATIAL_CNN: SpatialCNN(c, feature_dim=DS, pretrained=False),
        R.MOTION_CNN: MotionCNN(c, stack=EXTRACT["stack"], feature_dim=DM, widths=(4, 4, 4, 4, 4)),
        R.SPATIAL_LSTM: StreamLSTM(DS, c, hidden=(8,)),
        R.MOTION_LSTM: StreamLSTM(DM, c, hidden=(8, 6)),
        R.FUSION: RegularizedFusionNet([DS, DM], c, abstraction=4, fusion=4),
    }
    run_ids = {m: _log_model(mod, m, "train-cnn" if m in R.CNN_MODELS else "train", exp_id)
               for m, mod in models.items()}

    store = str(root / "store")
    ids = [f"{s}_{i}" for s in ("val", "test") for i in range(12)]
    subsets = [v.split("_")[0] for v in ids]
    labels = np.arange(len(ids)) % c
    meta = {b"hyvid.extract_settings": json.dumps(EXTRACT).encode()}
    append_rows(store, VIDEOS.name, pa.Table.from_pylist(
        [{"video_id": v, "class_name": CLASSES[lab], "label": int(lab), "labels": [int(lab)], "status": "ok"}
         for v, lab in zip(ids, labels, strict=True)], schema=VIDEOS.schema.with_metadata(meta)))
    append_rows(store, CLASSES_T.name, pa.Table.from_pylist(
        [{"label": i, "class_name": n} for i, n in enumerate(CLASSES)], schema=CLASSES_T.schema))
    append_rows(store, FRAME_FEATURES_NAME, pa.Table.from_pylist(
        [{"video_id": ids[0], "position": 0, "split": 1, "fold": -1,
          "frame_index": 0, "timestamp": 0.0, "spatial": [0.0] * DS,
          "motion": [0.0] * DM, "spatial_run_id": run_ids[R.SPATIAL_CNN], "motion_run_id": run_ids[R.MOTION_CNN]}],
        schema=frame_features_schema(DS, DM)))
    # Val scores where only 0.6 * spatial_lstm + 0.4 * fusion is right: distinctive weights to find.
    rng = np.random.default_rng(0)
    onehot = np.eye(c)[labels]
    noise = rng.normal(0, 5, (len(ids), c))
    scores = {R.SPATIAL_LSTM: onehot + noise, R.FUSION: onehot - 1.5 * noise,
              R.MOTION_LSTM: rng.normal(0, 5, (len(ids), c))}
    for m, s in scores.items():
        upsert_video_scores(store, m, 1, run_ids[m], ids, subsets, s, labels.tolist())
    res = hybrid(HybridConfig(store_uri=store, experiment="exp", tracking_uri=uri, late_fusion=False))

    videos = root / "videos"
    good = [write_video(videos / "a.avi", moving_square_frames(30, dx=2, seed=1)),
            write_video(videos / "b.avi", moving_square_frames(24, dx=-2, seed=2))]
    bad = videos / "bad.avi"
    bad.write_text("not a video\n" * 10)
    yield {"uri": uri, "hybrid": res, "run_ids": run_ids, "models": models, "good": [str(p) for p in good],
           "bad": str(bad), "store": store}
    mp.undo()


def test_hybrid_run_names_everything_predict_needs(logged):
    from hyvid.pipelines.predict import load_hybrid

    w = logged["hybrid"].weights
    assert sum(w.values()) == pytest.approx(1.0) and w[R.FUSION] > 0.2 and w[R.MOTION_LSTM] <= 0.1
    h = load_hybrid(logged["uri"], "exp")
    assert h.run_id == logged["hybrid"].run_id
    assert h.extract == EXTRACT
    assert h.cnn_run_ids == {R.SPATIAL_CNN: logged["run_ids"][R.SPATIAL_CNN],
                             R.MOTION_CNN: logged["run_ids"][R.MOTION_CNN]}
    assert set(h.components) == {R.SPATIAL_LSTM, R.MOTION_LSTM, R.FUSION}
    assert h.class_names == CLASSES and not h.multilabel


def test_predict_matches_the_models_and_isolates_a_bad_file(logged):
    from hyvid.pipelines.inference.cnn import cnn_forward
    from hyvid.pipelines.inference.hybrid import prepare_video
    from hyvid.pipelines.predict import PredictConfig, load_hybrid, predict

    h = load_hybrid(logged["uri"], "exp")
    paths = [logged["good"][0], logged["bad"], logged["good"][1]]
    res = predict(PredictConfig(tuple(paths), "exp", top=2, batch_size=2), loaded=h)
    a, bad, b = res.predictions
    assert a.ok and b.ok and not bad.ok
    assert "bad.avi" in bad.error and "cannot be opened" in bad.error
    assert res.exit_code() == 1 and res.exit_code(allow_failures=True) == 0 and res.timing["n_failed"] == 1
    assert len(a.top) == 2 and {c for c, _ in a.top} <= set(CLASSES)

    # The same numbers, computed by hand from the logged models and the hybrid weights.
    m, w = logged["models"], logged["hybrid"].weights
    for pred, path in ((a, paths[0]), (b, paths[2])):
        clip, frames = prepare_video(path, EXTRACT)  # extract's sampling and flow, frames as stored (JPEG)
        sf, mf, _, _ = cnn_forward(m[R.SPATIAL_CNN], m[R.MOTION_CNN], frames, clip.flow_stacks)
        with torch.no_grad():
            sl = m[R.SPATIAL_LSTM].video_logits(torch.from_numpy(sf)[None]).softmax(1)[0].numpy()
            ml = m[R.MOTION_LSTM].video_logits(torch.from_numpy(mf)[None]).softmax(1)[0].numpy()
            fu = m[R.FUSION]([torch.from_numpy(sf.mean(0))[None], torch.from_numpy(mf.mean(0))[None]])[0].numpy()
        expected = w[R.SPATIAL_LSTM] * sl + w[R.MOTION_LSTM] * ml + w[R.FUSION] * fu
        np.testing.assert_allclose(pred.scores, expected, rtol=1e-4, atol=1e-5)
        assert pred.top[0][0] == CLASSES[int(expected.argmax())]
    for key in ("frames_flow_s", "cnn_s", "lstm_fusion_s", "total_s", "load_s"):
        assert res.timing[key] >= 0


def test_cli_json_and_exit_codes(logged, capsys):
    from hyvid.pipelines.cli import main

    # One failed input: exit 1 (a script sees it), 0 with --allow-failures; counts are integers.
    assert main(["predict", *logged["good"], logged["bad"], "--json", "--experiment", "exp"]) == 1
    captured = capsys.readouterr()
    assert "1 of 3 video(s) failed" in captured.err and "bad.avi" in captured.err
    out = json.loads(captured.out)
    assert (out["n_videos"], out["n_failed"]) == (3, 1) and isinstance(out["timing"]["n_videos"], int)
    assert main(["predict", *logged["good"], logged["bad"], "--json", "--experiment", "exp", "--allow-failures"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [v["ok"] for v in out["videos"]] == [True, True, False]
    assert out["hybrid_run_id"] == logged["hybrid"].run_id and len(out["videos"][0]["top"]) == 3
    assert set(out["timing"]) >= {"frames_flow_s", "cnn_s", "lstm_fusion_s", "total_s", "load_s"}

    # Every file failed: exit code 1, the reason in the text output.
    assert main(["predict", logged["bad"], "--model", f"runs:/{logged['hybrid'].run_id}"]) == 1
    out = capsys.readouterr().out
    assert "bad.avi: error:" in out and "0 of 1 video(s) classified" in out
    # A run that is not a hybrid is refused with a pointer to the right runs.
    assert main(["predict", logged["good"][0], "--model", f"runs:/{logged['run_ids'][R.FUSION]}"]) == 2
    assert "not a hybrid run" in capsys.readouterr().err


def test_registered_hybrid_predicts_through_predict_and_pyfunc(logged, capsys):
    """The hybrid run logs a pyfunc; registered, it is found by version and alias, by `predict
    --model models:/...` and by `mlflow.pyfunc.load_model`, with the same scores as the run."""
    import mlflow
    import pandas as pd
    from mlflow import MlflowClient

    from hyvid.pipelines.cli import main
    from hyvid.pipelines.predict import PredictConfig, load_hybrid, predict

    run_id = logged["hybrid"].run_id
    mlflow.set_tracking_uri(logged["uri"])
    assert logged["hybrid"].model_uri and logged["hybrid"].registered_version is None
    mv = mlflow.register_model(logged["hybrid"].model_uri, "hyvid-hybrid")
    client = MlflowClient(logged["uri"])
    client.set_registered_model_alias("hyvid-hybrid", "champion", mv.version)

    by_run = predict(PredictConfig((logged["good"][0],), model_uri=f"runs:/{run_id}"))
    for uri in (f"models:/hyvid-hybrid/{mv.version}", "models:/hyvid-hybrid@champion"):
        h = load_hybrid(logged["uri"], model_uri=uri)
        assert h.run_id == run_id
    assert main(["predict", logged["good"][0], "--model", "models:/hyvid-hybrid@champion", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["hybrid_run_id"] == run_id
    assert out["videos"][0]["top"][0]["class"] == by_run.predictions[0].top[0][0]

    # Unknown versions name what to do.
    assert main(["predict", logged["good"][0], "--model", "models:/hyvid-hybrid/99"]) == 2
    assert "hyvid hybrid --register" in capsys.readouterr().err

    pyfunc = mlflow.pyfunc.load_model("models:/hyvid-hybrid@champion")
    df = pyfunc.predict([logged["good"][0], logged["bad"]])
    assert list(df["path"]) == [logged["good"][0], logged["bad"]]
    assert df["class"][0] == by_run.predictions[0].top[0][0]
    assert df["score"][0] == pytest.approx(by_run.predictions[0].top[0][1], rel=1e-5)
    assert pd.isna(df["error"][0]) and "cannot be opened" in df["error"][1]
    assert df["top"][0][0]["class"] == df["class"][0] and len(df["scores"][0]) == len(CLASSES)  # lists, not JSON text

    # The files themselves, base64 in a `video` column (what JSON carries), classify the same; a value
    # that is not base64 is that row's error.
    import base64

    b64 = base64.b64encode(open(logged["good"][0], "rb").read()).decode()
    df = pyfunc.predict(pd.DataFrame({"video": [b64, "not base64!"]}), params={"top": 2})
    assert df["class"][0] == by_run.predictions[0].top[0][0] and pd.isna(df["path"][0]) and len(df["top"][0]) == 2
    assert df["score"][0] == pytest.approx(by_run.predictions[0].top[0][1], rel=1e-5)
    assert "not base64" in df["error"][1]


@pytest.fixture(scope="module")
def bare_python(tmp_path_factory):
    """A venv of mlflow, torch, numpy and OpenCV (the hybrid decodes videos) without hyvid (helpers.venvs)."""
    from helpers.venvs import bare_venv

    return bare_venv(tmp_path_factory.mktemp("venv") / "bare", ["mlflow", "torch", "numpy",
                                                               "opencv-contrib-python-headless"])


def _download(uri: str, dst) -> str:
    import mlflow

    return mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst))


def test_every_logged_model_predicts_its_input_example_without_hyvid(logged, bare_python, tmp_path):
    """The CNNs, LSTMs, fusion net and the hybrid, copied out of MLflow, load and predict on their own
    input examples in a venv that has no hyvid; a wrong-shape input is refused naming the expected shape."""
    import mlflow
    from helpers.venvs import predict_examples

    mlflow.set_tracking_uri(logged["uri"])
    folders = {m: _download(f"runs:/{rid}/{m}", tmp_path / m) for m, rid in logged["run_ids"].items()}
    folders[R.HYBRID] = _download(logged["hybrid"].model_uri, tmp_path / "hybrid")
    out = predict_examples(bare_python, folders)
    for m in logged["run_ids"]:
        rows = 1 if m in R.CNN_MODELS + R.LSTM_MODELS else 2
        assert out[m]["shape"] == [rows, len(CLASSES)] and out[m]["finite"], (m, out[m])
        assert "does not match expected shape" in out[m]["wrong_shape"], (m, out[m])
    hyb = out[R.HYBRID]
    assert hyb["example"] == "DataFrame" and hyb["columns"] == ["path", "class", "score", "top", "scores", "error"]
    row = hyb["rows"][0]
    assert row["error"] is None and row["class"] in CLASSES and row["top"][0]["class"] == row["class"]
    assert len(row["scores"]) == len(CLASSES)
    assert not {"lance", "ray"} & set(out["modules"])


def test_a_served_hybrid_answers_a_base64_video_with_plain_json(logged, bare_python, tmp_path):
    """`mlflow models serve` of the hybrid's folder, from the venv without hyvid, on 127.0.0.1: a
    base64 video in `dataframe_records` comes back classified, `top` a JSON list (not a string)."""
    import base64

    import mlflow
    import requests
    from helpers.servers import free_port, serve
    from helpers.venvs import bare_env

    mlflow.set_tracking_uri(logged["uri"])
    folder = _download(logged["hybrid"].model_uri, tmp_path / "hybrid")
    port = free_port()
    cmd = [str(bare_python.parent / "mlflow"), "models", "serve", "-m", folder, "--env-manager", "local",
           "-h", "127.0.0.1", "-p", str(port)]
    video = base64.b64encode(open(logged["good"][0], "rb").read()).decode()
    with serve(cmd, f"http://127.0.0.1:{port}/ping", env=bare_env(bare_python), log=tmp_path / "serve.log",
               timeout=180):
        r = requests.post(f"http://127.0.0.1:{port}/invocations", timeout=120,
                          json={"dataframe_records": [{"video": video}, {"video": "%%%"}], "params": {"top": 2}})
        assert r.status_code == 200, r.text[:2000]
        good, bad = r.json()["predictions"]
        assert good["error"] is None and good["class"] in CLASSES and good["path"] is None
        assert isinstance(good["top"], list) and len(good["top"]) == 2 and good["top"][0]["class"] == good["class"]
        assert bad["class"] is None and "not base64" in bad["error"]
        by_path = requests.post(f"http://127.0.0.1:{port}/invocations", json={"inputs": [logged["good"][0]]},
                                timeout=120).json()["predictions"][0]
        assert by_path["class"] == good["class"] and by_path["score"] == pytest.approx(good["score"], rel=1e-5)


def test_cli_hybrid_registers_a_version_with_alias_tags_card_and_its_command_line(logged, tmp_path, capsys):
    import re

    import mlflow
    from mlflow import MlflowClient

    from hyvid.pipelines.cli import main

    base = ["hybrid", "--store", logged["store"], "--experiment", "exp", "--no-late-fusion", "--out", str(tmp_path)]
    assert main([*base, "--alias", "prod"]) == 2  # an alias needs a name
    assert "--alias A goes with --register NAME" in capsys.readouterr().err
    assert main([*base, "--register", "cli-hybrid", "--alias", "prod"]) == 0
    assert "registered as models:/cli-hybrid/1 (models:/cli-hybrid@prod)" in capsys.readouterr().out
    client = MlflowClient(logged["uri"])
    mv = client.get_model_version_by_alias("cli-hybrid", "prod")
    run = client.get_run(mv.run_id)
    assert re.fullmatch(r"hybrid-split1-\d{8}-\d{6}", run.info.run_name)
    assert run.data.tags["hyvid.command"] == "hyvid " + " ".join([*base, "--register", "cli-hybrid", "--alias", "prod"])
    assert mv.tags["hyvid.model"] == "hybrid" and mv.tags["hyvid.command"] == run.data.tags["hyvid.command"]
    assert re.fullmatch(r"\d\.\d{4} \[\d\.\d{4}, \d\.\d{4}\] n=12", mv.tags["test_accuracy"])
    assert {"lineage.videos.version", "lineage.video_scores.version"} <= set(mv.tags)
    folder = mlflow.artifacts.download_artifacts("models:/cli-hybrid@prod", dst_path=str(tmp_path / "m"),
                                                 tracking_uri=logged["uri"])
    card = open(f"{folder}/README.md").read()
    assert card == mv.description and "# cli-hybrid" in card and "base64" in card and "test_accuracy" in card
