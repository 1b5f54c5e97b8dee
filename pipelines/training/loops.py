"""The training loop of every temporal and video-level torch fit, as Ray runs it.

* :func:`fit_loop` trains one of them (the LSTMs, the fusion network, its non-regularized twin
  and the NN baselines) under a :class:`~hyvid.pipelines.training.checkpoint.FitSession`: run by
  a long-lived pool worker (`training.pool`, the default) or, as :func:`torch_train_loop`, by every
  rank of a Ray Train ``TorchTrainer`` (several workers per model). It reads its data through
  :class:`hyvid.store.feature_store.FeatureStore` inside the worker, trains with per-epoch
  validation, keeps the best-validation epoch's weights, checkpoints after an epoch at most every
  few seconds and after the last (so a killed worker resumes from its last checkpointed epoch, in
  the same MLflow run), and on rank 0 logs everything to one MLflow run and writes the per-video
  val/test scores to ``video_scores``. Several workers split each epoch and average their gradients.
* A search trial or an out-of-fold fit (`training.search`) is the same loop with ``cv_only``:
  it never looks at test and is logged as an MLflow run nested under its model's run; a refit
  trains on train + val. Both of the latter keep their last epoch (``select`` False, or no val).

Configs are plain dicts of JSON-able values (URIs, names, numbers), never arrays: each fit reads
what it needs where it runs. The keys are documented in :func:`hyvid.pipelines.train.fit_config`.
"""
from __future__ import annotations

import logging
import time

import numpy as np
import torch

from hyvid.models import registry as R
from hyvid.pipelines import faults, logs, tracking
from hyvid.pipelines.training.checkpoint import FitSession, RayTrainSession, report_due
from hyvid.pipelines.training.data import Subset, load_subsets
from hyvid.pipelines.training.distributed import broadcast_parameters
from hyvid.pipelines.training.families import (
    CPU,
    build_model,
    build_optimizer,
    evaluate,
    fit_extras,
    predict,
    train_epoch,
    val_loss,
)
from hyvid.pipelines.training.runs import (
    FitClock,
    complete_run,
    finish_run,
    held_out_scores,
    log_fit_params,
    metric_batch,
    mlflow_client,
    open_run,
    record_node,
    score_subsets,
)

log = logging.getLogger(__name__)


def fit_loop(config: dict, session: FitSession, rank: int = 0, world: int = 1, device: torch.device = CPU) -> dict:
    """Train one torch model for ``config["epochs"]`` epochs, selecting the best-val epoch.

    Returns (on rank 0) ``{"run_id", "metrics", "seconds"}``: the final val_*/test_* metrics and
    the seconds spent loading, computing and logging. Per-epoch metrics go to MLflow with each
    checkpoint (every ``report_every_s`` and after the last epoch), so a resumed fit logs every
    epoch exactly once.
    """
    clock = FitClock()
    # floor(this worker's CPU share) threads: concurrent fits share the machine's cores.
    torch.set_num_threads(int(config.get("torch_threads", 1)))
    torch.manual_seed(int(config["seed"]))  # the same init on every rank (then broadcast, to be sure)
    data, versions = load_subsets(config)
    model = build_model(config, data).to(device)
    opt = build_optimizer(config, model)
    state = session.restore()
    start_epoch, best = 0, {"value": -np.inf, "loss": np.inf, "epoch": -1, "state": None}
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start_epoch, best = state["epoch"] + 1, state["best"]
        log.info("%s: resuming from the checkpoint of epoch %d", config["model"], state["epoch"])
    broadcast_parameters(model, world)
    clock.lap("load")
    lead = rank == 0
    run_id = client = None
    if lead:
        client = mlflow_client(config)
        run_id = open_run(config, config.get("stage", tracking.STAGE_TRAIN), config.get("extra_tags"))
        client.update_run(run_id, status="RUNNING")
        log_fit_params(client, run_id, {**config, "world_size": world})
        record_node(client, run_id)
        if state is not None:
            client.set_tag(run_id, tracking.TAG_RESUMED_FROM, str(state["epoch"]))
        clock.lap("log")
    key = R.primary_metric(bool(config["multilabel"]))
    epochs = int(config["epochs"])
    last_report = time.monotonic()
    unlogged: list = []  # per-epoch MLflow metrics not yet written
    # A refit (train + val) and an out-of-fold fit train for the epochs a final fit chose on val:
    # they keep their last epoch, and an out-of-fold fit must not look at its held-out fold early.
    select = "val" in data and config.get("select", True)
    epochs_run = start_epoch
    gained = best["epoch"]  # the last epoch that raised the best val metric
    for epoch in range(start_epoch, epochs):
        epochs_run = epoch + 1
        loss, acc = train_epoch(config, model, opt, data["train"], epoch, rank, world, device)
        epoch_metrics = {"train_loss": loss, "train_accuracy": acc}
        if not np.isfinite(loss):
            # A step size too large for this model (a search's high lr, say): its weights are gone, and
            # what it learned up to here is the best-val epoch kept so far, if there is one.
            if best["state"] is None or not select:
                raise FloatingPointError(f"{config['model']}: the training loss became {loss} at epoch {epoch} "
                                         f"with these settings; lower its learning rate (or its penalty)")
            log.warning("%s: training loss %s at epoch %d; stopping and keeping epoch %d, the best on val",
                        config["model"], loss, epoch, best["epoch"])
            break
        if select:
            val_scores = predict(config, model, data["val"], device)
            val = evaluate(config, val_scores, data["val"])
            v_loss = val_loss(config, model, val_scores, data["val"], device)
            if val[key] > best["value"]:
                gained = epoch  # early stopping waits for the primary metric, not for ties broken by the loss
            if (val[key], -v_loss) > (best["value"], -best["loss"]):
                best = {"value": val[key], "loss": v_loss, "epoch": epoch,
                        "state": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}}
            epoch_metrics.update(val_accuracy=val["accuracy"], val_loss=v_loss,
                                 **({"val_map": val["map"]} if config["multilabel"] else {}))
            stop = early_stop(epoch, gained, config.get("patience"))
        else:
            best = {**best, "epoch": epoch, "state": None}  # the model as it is after the last epoch
        clock.lap("compute")
        metrics = {"epoch": epoch, "best_val": best["value"], "best_val_loss": best["loss"],
                   "best_epoch": best["epoch"], "run_id": run_id or "", **epoch_metrics}
        if lead:
            unlogged += metric_batch(epoch_metrics, step=epoch)
            if not config.get("cv_only"):  # trials and folds: one line each from the driver
                logs.epoch_line(log, config.get("run_name") or config["model"], epoch, epochs, epoch_metrics)
        kill = state is None and faults.due_after_epoch(config["model"], epoch, config.get("faults"))
        if report_due(float(config.get("report_every_s", 5.0)), epoch, epochs, last_report, world, kill):
            last_report = time.monotonic()
            if lead and unlogged:
                client.log_batch(run_id, metrics=unlogged)
                unlogged = []
            checkpoint = config.get("checkpoint", True) and lead
            session.report(metrics, {"model": model.state_dict(), "optimizer": opt.state_dict(),
                                     "epoch": epoch, "best": best} if checkpoint else None)
            clock.lap("log")
        if kill:
            session.wait_committed()
            faults.after_epoch(config["model"], epoch)
        if select and stop:
            log.info("%s: no val %s gain for %d epochs, stopping after epoch %d (kept: epoch %d)",
                     config["model"], key, int(config["patience"]), epoch, best["epoch"])
            break
    if not lead:
        return {}
    if unlogged:  # the epochs since the last report, when early stopping ended the fit between reports
        client.log_batch(run_id, metrics=unlogged)
    out = _finish(config, client, run_id, model.cpu(), best, data, versions, clock, epochs_run)
    return {**out, "seconds": clock.seconds}


def early_stop(epoch: int, best_epoch: int, patience: int | None) -> bool:
    """Whether a fit stops after `epoch`: `patience` epochs have passed without a better val epoch.

    None or 0: never (the fit runs all its epochs).
    """
    return bool(patience) and epoch - best_epoch >= int(patience)


def _finish(config: dict, client, run_id: str, model: torch.nn.Module, best: dict, data: dict[str, Subset],
            versions: dict[str, int], clock: FitClock, epochs_run: int) -> dict:
    """Rank 0, after the last epoch: best weights -> final metrics, model, scores, lineage."""
    if best["state"] is not None:
        model.load_state_dict(best["state"])
    scores, metrics = score_subsets(config, data, lambda subset: predict(config, model, subset))
    # val_* are the selected epoch's (the weights kept); epochs_run < epochs when early stopping ended the fit.
    final = {"best_epoch": best["epoch"], "epochs_run": epochs_run, **metrics}
    if config.get("cv_only"):  # what a search compares (training.search.choose)
        final.update(best_val=best["value"], best_val_loss=best["loss"])
    final.update(fit_extras(config, model))
    clock.lap("compute")
    # Final metrics sit one step after the last epoch, so "latest" val_accuracy is the selected epoch's.
    client.log_batch(run_id, metrics=metric_batch(final, step=int(config["epochs"])))
    if not config.get("cv_only"):
        complete_run(config, run_id, versions, data, scores, model)
    finish_run(client, run_id, clock)
    return {"run_id": run_id, "metrics": final, **held_out_scores(config, data, scores)}


def torch_train_loop(config: dict) -> dict:
    """``train_loop_per_worker`` of every TorchTrainer: resume, train, report, finish on rank 0."""
    import ray.train
    import ray.train.torch

    ctx = ray.train.get_context()
    device = ray.train.torch.get_device() if config.get("use_gpu") else CPU
    return fit_loop(config, RayTrainSession(), ctx.get_world_rank(), ctx.get_world_size(), device)
