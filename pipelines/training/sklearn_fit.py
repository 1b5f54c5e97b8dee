"""The estimator baselines of Table 2 as one fit: SVM-EF, SVM-LF, Spatial SVM, Motion SVM, SVM-MKL and
M-DBM, each fitted in one call (no epochs) on the video-level features, with the same data, logging and
scores as the torch fits, run by a fit worker.

A search trial (``cv_only``) fits on train, scores val only and logs its val metrics and ``best_val``;
it writes no scores and logs no model. An out-of-fold fit (``fold``) is a
trial whose "val" is the held-out fold.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from hyvid.models import registry as R
from hyvid.pipelines import tracking
from hyvid.pipelines.training.data import load_subsets
from hyvid.pipelines.training.families import ESTIMATOR_MODELS, ESTIMATOR_STREAMS
from hyvid.pipelines.training.runs import (
    FitClock,
    complete_run,
    finish_run,
    held_out_scores,
    log_fit_params,
    metric_batch,
    mlflow_client,
    open_run,
    score_subsets,
)

SVM_KERNEL_NAMES = {"exact": "exact chi2 (precomputed)", "approx": "additive chi2 feature map + linear SVM"}
SVM_MODELS = (R.SVM_EF, R.SVM_LF, R.SPATIAL_SVM, R.MOTION_SVM, R.SVM_MKL)


def svm_kernel(config: dict, n_train: int) -> str:
    """The kernel an SVM fit uses: the configured one, or with "auto" exact up to `svm_exact_max`."""
    kernel = config.get("svm_kernel", "auto")
    if kernel == "auto":
        return "exact" if n_train <= int(config.get("svm_exact_max", 2000)) else "approx"
    return str(kernel)


def build_estimator(config: dict, n_train: int) -> Any:
    """The unfitted estimator of ``config["model"]``: ``fit(xs, y, num_classes)``, ``predict_scores(xs)``,
    where ``xs`` is every stream's features in ``registry.STREAMS`` order (each estimator reads its own)."""
    name = config["model"]
    if name == R.M_DBM:
        from hyvid.models import mdbm

        get = config.get
        return mdbm.MultimodalDBM(
            hidden=tuple(get("mdbm_hidden", mdbm.DEFAULT_HIDDEN)), joint=int(get("mdbm_joint", mdbm.DEFAULT_JOINT)),
            lr=float(get("mdbm_lr", mdbm.DEFAULT_LR)), epochs=int(get("mdbm_epochs", mdbm.DEFAULT_EPOCHS)),
            mean_field_steps=int(get("mdbm_mean_field_steps", mdbm.DEFAULT_MEAN_FIELD_STEPS)),
            seed=int(get("seed", 0)))
    if name not in SVM_MODELS:
        raise ValueError(f"{name!r} is not an estimator model; estimator fits are {list(ESTIMATOR_MODELS)}")
    from hyvid.models.baselines import SingleStreamSVM, SVMEarlyFusion, SVMLateFusion
    from hyvid.models.mkl import P_NORM, LpNormMKL

    C, kernel = float(config.get("svm_c", 1.0)), svm_kernel(config, n_train)
    if name == R.SVM_EF:
        return SVMEarlyFusion(C=C, kernel=kernel)
    if name == R.SVM_LF:
        return SVMLateFusion(C=C, kernel=kernel)
    if name == R.SVM_MKL:
        return LpNormMKL(C=C, kernel=kernel, p=float(config.get("mkl_p", P_NORM)))
    (stream,) = ESTIMATOR_STREAMS[name]
    return SingleStreamSVM(R.STREAMS.index(stream), C=C, kernel=kernel)


def _extras(config: dict, est: Any) -> dict[str, float]:
    """What an estimator learned beyond its scores: SVM-MKL's kernel weights, one per stream."""
    if config["model"] != R.SVM_MKL:
        return {}
    weights = {f"mkl_weight_{s}": float(w) for s, w in zip(R.STREAMS, est.kernel_weights_, strict=True)}
    return {**weights, "mkl_iterations": float(est.n_iter_), "mkl_converged": float(est.converged_)}


def sklearn_fit(config: dict) -> dict:
    """Fit one estimator baseline on the video-level features; same logging and scores as the torch fits.

    Returns ``{"run_id", "metrics", "seconds"}``; an out-of-fold fit adds ``held_out`` (its held-out
    videos' ids, scores and labels).
    """
    import torch

    clock = FitClock()
    # M-DBM is torch: the worker's CPU share, and its own generator (seeded in the model) for every draw.
    torch.set_num_threads(int(config.get("torch_threads", 1)))
    data, versions = load_subsets(config)
    clock.lap("load")
    client = mlflow_client(config)
    run_id = open_run(config, config.get("stage", tracking.STAGE_TRAIN), config.get("extra_tags"))
    log_fit_params(client, run_id, {**config, "world_size": 1})
    name, n_train = config["model"], len(data["train"])
    client.log_param(run_id, "streams", ",".join(ESTIMATOR_STREAMS[name]))
    if name in SVM_MODELS:
        client.log_param(run_id, "svm_kernel_used", SVM_KERNEL_NAMES[svm_kernel(config, n_train)])
    if name == R.SVM_MKL:
        from hyvid.models.mkl import P_NORM

        client.log_param(run_id, "mkl_p", float(config.get("mkl_p", P_NORM)))
    clock.lap("log")
    est = build_estimator(config, n_train)
    y = data["train"].labels_multi if config["multilabel"] else data["train"].labels
    est.fit([x.numpy() for x in data["train"].inputs], y, num_classes=int(config["num_classes"]))

    # Probabilities: the SVMs' softmax of their margins (models.baselines.margins_to_probabilities), M-DBM's own.
    def score(subset):
        return np.asarray(est.predict_scores([x.numpy() for x in subset.inputs]), dtype=np.float32)

    scores, final = score_subsets(config, data, score)
    final.update(_extras(config, est))
    cv_only = bool(config.get("cv_only"))
    if cv_only:  # what a search compares (training.search.choose); no epochs, so no val loss to break ties
        final["best_val"] = final[tracking.metric_name("val", R.primary_metric(bool(config["multilabel"])))]
    clock.lap("compute")
    client.log_batch(run_id, metrics=metric_batch(final, step=0))
    if not cv_only:
        complete_run(config, run_id, versions, data, scores, est)
    seconds = finish_run(client, run_id, clock)
    return {"run_id": run_id, "metrics": final, "seconds": seconds, **held_out_scores(config, data, scores)}
