"""The MLflow side of a temporal or video-level fit: one run per fit, found again after a restart,
its parameters, per-epoch metrics, final model, lineage and the per-video scores it stores.

Written from rank 0 of a fit only (or the single process of a CV trial or an SVM task).
"""
from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np
import torch

from hyvid.models import registry as R
from hyvid.pipelines import tracking
from hyvid.pipelines.evaluation.bootstrap import metric_intervals, resampling_units
from hyvid.pipelines.training.data import LINEAGE_TABLES, LSTM_STREAM, Subset
from hyvid.pipelines.training.families import ESTIMATOR_MODELS, ESTIMATOR_STREAMS, FUSION_NETS, evaluate


def mlflow_client(config: dict):
    """An MlflowClient on the fit's tracking URI (also made the process's current one)."""
    import mlflow

    mlflow.set_tracking_uri(config["tracking_uri"])
    return mlflow.MlflowClient(config["tracking_uri"])


def open_run(config: dict, stage: str = tracking.STAGE_TRAIN, extra_tags: dict | None = None) -> str:
    """The MLflow run of this fit: the given ``run_id``, else the one tagged with this fit's id, else new.

    A worker restarted by Ray Train's FailureConfig finds the run its first attempt created, so a
    resumed fit stays one run with one metric history.
    """
    client = mlflow_client(config)
    if config.get("run_id"):
        return config["run_id"]
    # The fit id is a uuid made by pipelines.train, not a user value, so it is safe in a filter.
    found = client.search_runs([config["experiment_id"]],
                               filter_string=f"tags.`{tracking.TAG_FIT_ID}` = '{config['fit_id']}'")
    if found:
        return found[0].info.run_id
    tags = tracking.run_tags(config["model"], stage, config["split"], config["store_uri"],
                             **{tracking.TAG_FIT_ID: config["fit_id"]}, **(extra_tags or {}))
    # A worker on a node of its own (or in a Ray started before the command) has not the driver's environment.
    if config.get("command") and tracking.TAG_COMMAND not in tags:
        tags[tracking.TAG_COMMAND] = config["command"]
    if config.get("owner"):  # the driver's word over whatever environment the worker's Ray was started with
        tags[tracking.TAG_OWNER] = config["owner"]
    # Trials and folds keep the names the protocol gives them; final fits and refits tell apart by split and time.
    name = config.get("run_name") if config.get("cv_only") else tracking.run_name(
        config["model"] + ("-refit" if config.get("refit") else ""), config["split"])
    run = client.create_run(config["experiment_id"], run_name=name or config["model"], tags=tags)
    return run.info.run_id


def log_fit_params(client, run_id: str, config: dict) -> None:
    """The hyper-parameters of this fit (only those that apply to its model family)."""
    name = config["model"]
    # An estimator fits in one call on one process: no epochs, no ranks, and only M-DBM draws at random.
    keys = ["model", "split", "num_classes", "multilabel"]
    if name not in ESTIMATOR_MODELS:
        keys += ["epochs", "seed", "world_size"]
    elif name == R.M_DBM:
        keys.append("seed")
    if name in LSTM_STREAM:
        keys += ["lstm_hidden", "lstm_pooling", "lstm_peephole", "lstm_optimizer", "lstm_lr", "lstm_batch_size",
                 "lstm_step_loss", "lstm_input_dropout", "lstm_temporal_input", "patience"]
        if config.get("lstm_optimizer") == "sgd":  # Adam has no momentum parameter: not a param of its fits
            keys.append("lstm_momentum")
    elif name in (*FUSION_NETS, R.RDNN):
        keys += ["fusion_loss", "fusion_optimizer", "fusion_lr", "fusion_input_dropout", "lam1", "abstraction",
                 "fusion_units", "fusion_batch_size", "patience"]
        keys += ["rdnn_lam", "rdnn_omega_every"] if name == R.RDNN else ["lam2", "lam3"]
    elif name in (R.NN_EF, R.NN_LF):
        keys += ["nn_optimizer", "nn_lr", "nn_input_dropout", "nn_hidden", "nn_batch_size", "patience"]
    elif name == R.M_DBM:
        keys += sorted(k for k in config if k.startswith("mdbm_"))
    else:
        keys += ["svm_c", "svm_kernel"] + (["svm_exact_max"] if config.get("svm_kernel", "auto") == "auto" else [])
    keys += ["cpus_per_worker", "refit", "fold"]
    existing = client.get_run(run_id).data.params
    params = {k: str(config[k]) for k in keys if config.get(k) is not None and k not in existing}  # unset: unused
    for k, v in params.items():
        client.log_param(run_id, k, v)

def record_node(client, run_id: str) -> None:
    """Append the Ray node this attempt runs on to the run's `hyvid.nodes` tag (the spread record)."""
    try:
        import ray

        node = ray.get_runtime_context().get_node_id() if ray.is_initialized() else "local"
    except Exception:  # noqa: BLE001 - outside Ray (unit tests call fit_loop directly)
        node = "local"
    prev = client.get_run(run_id).data.tags.get(tracking.TAG_NODES)
    client.set_tag(run_id, tracking.TAG_NODES, f"{prev},{node}" if prev else node)


def metric_batch(values: dict[str, float], step: int) -> list:
    """MLflow Metric entities for `log_batch` (None and non-finite values left out)."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    return [Metric(k, float(v), now, step) for k, v in values.items() if v is not None and np.isfinite(v)]


def score_subsets(config: dict, data: dict[str, Subset], score: Callable[[Subset], np.ndarray]
                  ) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Scores of the val and test subsets present, and their metrics named val_* / test_*.

    The test metrics also get their 95% bootstrap interval over test videos (test_<metric>_ci_low
    / _ci_high) and the count they rest on (test_n_videos), which `hyvid report` prints.
    """
    scores, metrics = {}, {}
    for sub in ("val", "test"):
        if sub not in data:
            continue
        scores[sub] = score(data[sub])
        for k, v in evaluate(config, scores[sub], data[sub]).items():
            metrics[tracking.metric_name(sub, k)] = v
        if sub == "test" and len(data[sub]):
            ci = metric_intervals(scores[sub], data[sub].labels, data[sub].labels_multi, bool(config["multilabel"]),
                                  groups=resampling_units(data[sub].groups, data[sub].labels_multi))
            metrics.update(tracking.interval_metrics(sub, ci, len(data[sub])))
    return scores, metrics


def held_out_scores(config: dict, data: dict[str, Subset], scores: dict[str, np.ndarray]) -> dict:
    """What an out-of-fold fit hands back to the driver: its held-out videos' ids and scores.

    The driver stores the K folds' scores in one commit as the model's training-video scores, on
    which the hybrid's weights are fitted (small: one row of C floats per training video).
    """
    if config.get("fold") is None or "val" not in scores:
        return {}
    held = data["val"]
    return {"held_out": {"video_ids": list(held.video_ids), "scores": np.asarray(scores["val"]).tolist(),
                         "labels": np.asarray(held.labels).tolist(), "labels_multi": held.labels_multi}}


class FitClock:
    """Seconds a fit spends loading data, computing and logging: its time split (start-up is the caller's)."""

    def __init__(self) -> None:
        self.seconds = {"load": 0.0, "compute": 0.0, "log": 0.0}
        self._t = time.perf_counter()

    def lap(self, what: str) -> None:
        """Charge the time since the last lap to `what`."""
        now = time.perf_counter()
        self.seconds[what] += now - self._t
        self._t = now


def complete_run(config: dict, run_id: str, versions: dict[str, int], data: dict[str, Subset],
                 scores: dict[str, np.ndarray], fitted: Any) -> None:
    """A final fit's last steps: lineage and the fitted model (`log_fit_model`) into its run, scores into the store."""
    import mlflow

    # Resuming a run by id refuses while another experiment is the process's active one (a notebook's, or
    # an earlier fit's in this process): the run's own experiment is made active first.
    mlflow.set_experiment(experiment_id=config["experiment_id"])
    with mlflow.start_run(run_id=run_id):
        tracking.log_lineage(config["store_uri"], LINEAGE_TABLES, config.get("storage_options"), versions=versions)
        log_fit_model(config, data, fitted)
    write_scores(config, run_id, data, scores)


def finish_run(client, run_id: str, clock: FitClock) -> dict[str, float]:
    """Log the fit's time split (time_load_s, time_compute_s, time_log_s), end its run; returns the split."""
    clock.lap("log")
    client.log_batch(run_id, metrics=metric_batch({f"time_{k}_s": v for k, v in clock.seconds.items()}, step=0))
    client.set_terminated(run_id, "FINISHED")
    return clock.seconds


def log_fit_model(config: dict, data: dict[str, Subset], fitted: Any) -> None:
    """Log a fitted temporal or video-level model in the active run under its registry name, as a
    standalone pyfunc (`inference.components`): an LSTM takes one stream's per-frame features
    [B, T, D]; every other model the frame-averaged features of the streams it reads, [B, D]."""
    from hyvid.pipelines.inference import packaging
    from hyvid.store.feature_store import FeatureStore

    name, train = config["model"], data["train"]
    class_names = FeatureStore(config["store_uri"], config.get("storage_options")).class_names()
    if name in LSTM_STREAM:
        dim = train.inputs.dims()[LSTM_STREAM[name]]
        first = train.inputs.features[LSTM_STREAM[name]][0]
        spec = packaging.component_config(name, "sequence", {"": [-1, -1, dim]}, class_names, config["multilabel"])
        example: Any = np.asarray(first, dtype=np.float32)[None]  # one training video's sequence
    else:
        streams = ESTIMATOR_STREAMS.get(name, R.STREAMS)
        dims = {s: int(x.shape[1]) for s, x in zip(R.STREAMS, train.inputs, strict=True)}
        fmt, trusted = (packaging.C.TORCH_FORMAT, ()) if isinstance(fitted, torch.nn.Module) else (
            packaging.C.SKOPS_FORMAT, _trusted_types(fitted))
        spec = packaging.component_config(name, "streams", {s: [-1, dims[s]] for s in streams}, class_names,
                                          config["multilabel"], fmt, trusted)
        example = {s: np.asarray(x[:2], dtype=np.float32) for s, x in zip(R.STREAMS, train.inputs, strict=True)
                   if s in streams}  # two training videos
    packaging.log_component(fitted, spec, example)


def _trusted_types(est: Any) -> list[str]:
    """The types skops must be told to trust to load an SVM baseline: hyvid's own baseline classes only."""
    import skops.io

    untrusted = skops.io.get_untrusted_types(data=skops.io.dumps(est))
    foreign = [t for t in untrusted if not t.startswith(("hyvid.models.baselines.", "hyvid.models.mkl."))]
    if foreign:
        raise TypeError(f"{type(est).__name__} holds types outside hyvid.models.baselines/mkl that skops cannot "
                        f"vouch for: {foreign}")
    return list(untrusted)


def write_scores(config: dict, run_id: str, data: dict[str, Subset], scores: dict[str, np.ndarray]) -> None:
    from hyvid.store.scores import upsert_video_scores

    subs = [s for s in ("val", "test") if s in scores]
    ids = [v for s in subs for v in data[s].video_ids]
    upsert_video_scores(
        config["store_uri"], config["model"], int(config["split"]), run_id, ids,
        [s for s in subs for _ in data[s].video_ids], np.concatenate([scores[s] for s in subs]),
        np.concatenate([data[s].labels for s in subs]).tolist(), [m for s in subs for m in data[s].labels_multi],
        storage_options=config.get("storage_options"),
    )



def log_training_curves(tracking_uri: str, histories: dict[str, dict[str, list[tuple[int, float]]]],
                        run_ids: dict[str, str], plots_dir: str | None, name: str, title: str,
                        selected: dict[str, int] | None = None) -> str | None:
    """One stage's per-epoch train/val curves (`histories[model][metric] = [(epoch, value)]`) as one PNG
    `name`, logged as an artifact of each model's run and kept under `plots_dir` (its path); with
    `plots_dir` None it is drawn in a temporary folder and kept as MLflow artifacts only (None returned)."""
    import tempfile
    from pathlib import Path

    from mlflow import MlflowClient

    from hyvid.pipelines.evaluation import plots

    with tempfile.TemporaryDirectory() as tmp:
        out = plots.training_curves(histories, Path(plots_dir or tmp) / name, title, selected)
        client = MlflowClient(tracking_uri)
        for model in histories:
            client.log_artifact(run_ids[model], out)
    return out if plots_dir else None
