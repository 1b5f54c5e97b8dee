"""The SVM baselines (SVM-EF, SVM-LF of Table 2) as one fit: same data, logging and scores as the
torch fits, run as a Ray task."""
from __future__ import annotations

import numpy as np

from hyvid.models import registry as R
from hyvid.pipelines.training.data import load_subsets
from hyvid.pipelines.training.runs import (
    FitClock,
    complete_run,
    finish_run,
    log_fit_params,
    log_sklearn_model,
    metric_batch,
    mlflow_client,
    open_run,
    score_subsets,
)

SVM_KERNEL_NAMES = {"exact": "exact chi2 (precomputed)", "approx": "additive chi2 feature map + linear SVM"}


def svm_kernel(config: dict, n_train: int) -> str:
    """The kernel an SVM fit uses: the configured one, or with "auto" exact up to `svm_exact_max`."""
    kernel = config.get("svm_kernel", "auto")
    if kernel == "auto":
        return "exact" if n_train <= int(config.get("svm_exact_max", 2000)) else "approx"
    return str(kernel)


def sklearn_fit(config: dict) -> dict:
    """Fit SVM-EF or SVM-LF on the video-level features; same logging and scores as the torch fits."""
    from hyvid.models.baselines import SVMEarlyFusion, SVMLateFusion

    clock = FitClock()
    data, versions = load_subsets(config)
    clock.lap("load")
    client = mlflow_client(config)
    run_id = open_run(config)
    log_fit_params(client, run_id, {**config, "world_size": 1})
    kernel = svm_kernel(config, len(data["train"]))
    client.log_param(run_id, "svm_kernel_used", SVM_KERNEL_NAMES[kernel])
    clock.lap("log")
    cls = SVMEarlyFusion if config["model"] == R.SVM_EF else SVMLateFusion
    est = cls(C=float(config["svm_c"]), kernel=kernel)
    y = data["train"].labels_multi if config["multilabel"] else data["train"].labels
    est.fit([x.numpy() for x in data["train"].inputs], y, num_classes=int(config["num_classes"]))
    # SVM decision values (signed margins), the SVMs' native scores; not probabilities.
    def score(subset):
        return np.asarray(est.predict_scores([x.numpy() for x in subset.inputs]), dtype=np.float32)

    scores, final = score_subsets(config, data, score)
    clock.lap("compute")
    client.log_batch(run_id, metrics=metric_batch(final, step=0))
    complete_run(config, run_id, versions, data, scores, lambda: log_sklearn_model(est))
    seconds = finish_run(client, run_id, clock)
    return {"run_id": run_id, "metrics": final, "seconds": seconds}
