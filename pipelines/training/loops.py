"""The per-model training loops that Ray runs: one function of a config dict per kind of fit.

* :func:`torch_train_loop` is the ``train_loop_per_worker`` of every ``TorchTrainer`` (the LSTMs,
  the fusion network, its non-regularized twin and the NN baselines). It reads its data through
  :class:`store.feature_store.FeatureStore` inside the worker, trains with per-epoch validation,
  keeps the best-validation epoch's weights, checkpoints after an epoch at most every few seconds
  and after the last (so a killed worker resumes from its last checkpointed epoch, in the same
  MLflow run), and on rank 0 logs everything to one MLflow run and writes the per-video val/test
  scores to ``video_scores``. Several workers split each epoch and average their gradients.
* :func:`cv_trial` is the Ray Tune trainable of the fusion net's λ2/λ3 search: the same loop on
  one process, validation only, logged as an MLflow run nested under the ``fusion`` parent.
* :func:`sklearn_fit` fits the SVM baselines (run as a Ray task).

Configs are plain dicts of JSON-able values (URIs, names, numbers), never arrays: each fit reads
what it needs where it runs. The keys are documented in :func:`pipelines.train.fit_config`.
"""
from __future__ import annotations

import logging
import os
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F

from hyvid.models import registry as R

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "state.pt"
TAG_FIT_ID = "hyvid.fit_id"  # one uuid per fit: a restarted worker finds its MLflow run by it
TAG_PARENT = "mlflow.parentRunId"  # MLflow's own tag for nested runs
# Ray node ids that rank 0 of this fit ran on, one per attempt (a resumed fit appends its new node).
TAG_NODES = "hyvid.nodes"
STAGE = "train"
CV_STAGE = "train-cv"  # fusion λ2/λ3 trials: nested runs, never mistaken for the final fit
LINEAGE_TABLES = ["videos", "frame_features"]  # what a fit reads in its worker
VIDEO_LEVEL_MODELS = (R.FUSION, R.FUSION_NOREG, R.NN_EF, R.NN_LF)
SKLEARN_MODELS = (R.SVM_EF, R.SVM_LF)
LSTM_STREAM = {R.SPATIAL_LSTM: "spatial", R.MOTION_LSTM: "motion"}
FUSION_NETS = (R.FUSION, R.FUSION_NOREG)
CPU = torch.device("cpu")


# --------------------------------------------------------------------------------------------
# Data: what one fit reads, per subset
# --------------------------------------------------------------------------------------------
@dataclass
class Subset:
    """One subset's inputs, labels and ids, ready for a model (tensors in memory)."""

    video_ids: list[str]
    inputs: Any  # list of [N, D] tensors (video-level) or a SequenceDataset (LSTM)
    labels: np.ndarray  # int64 [N]
    labels_multi: list[list[int]]

    def __len__(self) -> int:
        return len(self.video_ids)


def target_matrix(labels: np.ndarray, labels_multi: list[list[int]], num_classes: int, multilabel: bool) -> torch.Tensor:
    """One-hot (single-label) or multi-hot (multi-label) float targets [N, C]."""
    y = torch.zeros(len(labels), num_classes)
    if multilabel:
        for i, ls in enumerate(labels_multi):
            y[i, list(ls)] = 1.0
    else:
        y[torch.arange(len(labels)), torch.as_tensor(labels, dtype=torch.long)] = 1.0
    return y


def load_subsets(config: dict) -> tuple[dict[str, Subset], dict[str, int]]:
    """Read train/val/test (or train/val for CV trials) for one fit through the FeatureStore.

    Returns the subsets and the Lance version of each table read (the fit's lineage): the store
    is pinned at first use, so every subset comes from the same versions even if a writer commits
    meanwhile.
    """
    from hyvid.store.feature_store import FeatureStore

    fs = FeatureStore(config["store_uri"], config.get("storage_options"), follow_latest=False)
    split, model = int(config["split"]), config["model"]
    subsets = ("train", "val") if config.get("cv_only") else ("train", "val", "test")
    out = {}
    for sub in subsets:
        if model in LSTM_STREAM:
            ds = fs.sequences(split, sub, streams=(LSTM_STREAM[model],))
            out[sub] = Subset(ds.video_ids, ds, np.asarray(ds.labels, dtype=np.int64), ds.labels_multi)
        else:
            vf = fs.video_features(split, sub, streams=R.STREAMS)
            xs = [torch.from_numpy(np.ascontiguousarray(vf.features[s])) for s in R.STREAMS]
            out[sub] = Subset(vf.video_ids, xs, vf.labels, vf.labels_multi)
    versions = {t: v for t, v in fs.versions().items() if t in LINEAGE_TABLES}
    return out, versions


# --------------------------------------------------------------------------------------------
# Models: how each family is built, stepped and scored
# --------------------------------------------------------------------------------------------
def build_model(config: dict, data: dict[str, Subset]) -> torch.nn.Module:
    """The untrained model of ``config["model"]``, sized from the data."""
    model, c, multilabel = config["model"], int(config["num_classes"]), bool(config["multilabel"])
    if model in LSTM_STREAM:
        from hyvid.models.lstm import StreamLSTM

        stream = LSTM_STREAM[model]
        dim = data["train"].inputs.dims()[stream]
        net = StreamLSTM(dim, c, hidden=tuple(config["lstm_hidden"]), pooling=config["lstm_pooling"],
                         peephole=bool(config["lstm_peephole"]))
        net.fit_input_stats(torch.from_numpy(np.concatenate(data["train"].inputs.features[stream])))
        return net
    dims = [x.shape[1] for x in data["train"].inputs]
    if model in FUSION_NETS:
        from hyvid.models.fusion import RegularizedFusionNet

        net = RegularizedFusionNet(dims, c, abstraction=int(config["abstraction"]), fusion=int(config["fusion_units"]))
        net.fit_input_stats(data["train"].inputs)
        return net
    from hyvid.models.baselines import EarlyFusionMLP, LateFusionMLP

    if model == R.NN_EF:
        return EarlyFusionMLP(dims, c, hidden=(int(config["nn_hidden"]),), multilabel=multilabel)
    if model == R.NN_LF:
        return LateFusionMLP(dims, c, hidden=(int(config["nn_hidden"]),), multilabel=multilabel)
    raise ValueError(f"{model!r} is not a torch model; torch fits are {list(LSTM_STREAM) + list(VIDEO_LEVEL_MODELS)}")


def build_optimizer(config: dict, model: torch.nn.Module) -> torch.optim.Optimizer:
    name = config["model"]
    if name in LSTM_STREAM:
        from hyvid.models.lstm import make_optimizer

        return make_optimizer(model.parameters(), name=config["lstm_optimizer"], lr=float(config["lstm_lr"]),
                              momentum=float(config["lstm_momentum"]))
    if name in FUSION_NETS:
        # Algorithm 1: plain gradient steps W <- W - ηG (no momentum).
        return torch.optim.SGD(model.parameters(), lr=float(config["fusion_lr"]))
    return torch.optim.SGD(model.parameters(), lr=float(config["nn_lr"]), momentum=0.9)


@torch.no_grad()
def predict(config: dict, model: torch.nn.Module, subset: Subset, device: torch.device = CPU) -> np.ndarray:
    """Per-video class scores [N, C] of a subset, in the subset's video order.

    Softmax probabilities (sigmoid for multi-label data) for the LSTMs and NN baselines; the
    fusion nets' per-class logistic outputs (Sec. 3.3), which are in [0, 1] already.
    """
    model.eval()
    multilabel = bool(config["multilabel"])
    name = config["model"]
    if name in LSTM_STREAM:
        from torch.utils.data import DataLoader

        from hyvid.store.feature_store import collate_sequences

        stream = LSTM_STREAM[name]
        out = []
        for xs, lengths, *_ in DataLoader(subset.inputs, batch_size=64, shuffle=False, collate_fn=collate_sequences):
            logits = model.video_logits(xs[stream].to(device), lengths)
            out.append((torch.sigmoid(logits) if multilabel else torch.softmax(logits, dim=1)).cpu())
        return torch.cat(out).numpy()
    # RegularizedFusionNet and the NN baselines return scores from forward().
    return model([x.to(device) for x in subset.inputs]).cpu().numpy()


def _shard(n: int, epoch: int, seed: int, rank: int, world: int) -> np.ndarray:
    """This rank's indices of a per-epoch shuffle; every rank gets the same count.

    Equal counts matter: every rank must take part in every gradient all-reduce.
    """
    perm = np.random.default_rng(seed + epoch).permutation(n)
    per = -(-n // world)
    perm = np.resize(perm, per * world)  # wrap around so the shards are equal
    return perm[rank::world]


def average_gradients(model: torch.nn.Module | Iterable[torch.nn.Parameter], world: int) -> None:
    """Data parallelism across Ray Train workers: average the gradients of all ranks in one all-reduce.

    Done by hand rather than with DistributedDataParallel because the models' own loss helpers
    (``sequence_loss``-style pooling, ``mlp_loss``'s heads, ``fusion_objective``) call the module's
    methods, which a DDP wrapper would bypass.
    """
    if world <= 1:
        return
    import torch.distributed as dist

    params = model.parameters() if isinstance(model, torch.nn.Module) else model
    grads = [p.grad for p in params if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def _broadcast_parameters(model: torch.nn.Module, world: int) -> None:
    """Start every rank from rank 0's weights (after init or a checkpoint restore)."""
    if world <= 1:
        return
    import torch.distributed as dist

    with torch.no_grad():
        for t in [*model.parameters(), *model.buffers()]:
            dist.broadcast(t.data, src=0)


def train_epoch(config: dict, model: torch.nn.Module, opt: torch.optim.Optimizer, subset: Subset,
                epoch: int, rank: int = 0, world: int = 1, device: torch.device = CPU) -> tuple[float, float]:
    """One pass over this rank's share of the training subset; returns (mean loss, accuracy)."""
    model.train()
    name, multilabel, c = config["model"], bool(config["multilabel"]), int(config["num_classes"])
    idx = _shard(len(subset), epoch, int(config["seed"]), rank, world)
    losses, hits, seen = [], 0, 0
    if name in LSTM_STREAM:
        from hyvid.store.feature_store import collate_sequences

        stream, bs = LSTM_STREAM[name], int(config["lstm_batch_size"])
        for b in range(0, len(idx), bs):
            xs, lengths, labels, labels_multi, _ = collate_sequences([subset.inputs[i] for i in idx[b:b + bs]])
            opt.zero_grad(set_to_none=True)
            # models.lstm.sequence_loss's default (the loss on the pooled video prediction, Sec. 3.2),
            # computed here from one forward so the same logits also give the training accuracy.
            video = model.pool(model(xs[stream].to(device), lengths), lengths)
            if multilabel:
                loss = F.binary_cross_entropy_with_logits(video, target_matrix(labels.numpy(), labels_multi, c, True).to(device))
            else:
                loss = F.cross_entropy(video, labels.to(device))
            loss.backward()
            average_gradients(model, world)
            opt.step()
            losses.append(float(loss.detach()))
            hits += int((video.detach().argmax(1).cpu() == labels).sum())
            seen += len(labels)
        return float(np.mean(losses)), hits / max(seen, 1)

    bs = int(config["fusion_batch_size"] if name in FUSION_NETS else config["nn_batch_size"])
    y_all = target_matrix(subset.labels, subset.labels_multi, c, multilabel).to(device)
    labels_all = torch.as_tensor(subset.labels)
    inputs = [x.to(device) for x in subset.inputs]
    for b in range(0, len(idx), bs):
        i = torch.as_tensor(idx[b:b + bs])
        xs = [x[i.to(device)] for x in inputs]
        opt.zero_grad(set_to_none=True)
        if name in FUSION_NETS:
            from hyvid.models.fusion import fusion_objective, proximal_step

            # Algorithm 1: a gradient step on the smooth part of Eq. 3 for every layer, then
            # Eq. 4's prox on W_E (thresholds scaled by the learning rate inside proximal_step).
            loss = fusion_objective(model, xs, y_all[i], float(config["lam1"]))
            loss.backward()
            average_gradients(model, world)
            opt.step()
            proximal_step(model, opt.param_groups[0]["lr"], float(config["lam2"]), float(config["lam3"]))
        else:
            from hyvid.models.baselines import mlp_loss

            loss = mlp_loss(model, xs, y_all[i] if multilabel else labels_all[i])
            loss.backward()
            average_gradients(model, world)
            opt.step()
        with torch.no_grad():
            out = model(xs)
        losses.append(float(loss.detach()))
        hits += int((out.argmax(1).cpu() == labels_all[i]).sum())
        seen += len(i)
    return float(np.mean(losses)), hits / max(seen, 1)


def _val_loss(config: dict, scores: np.ndarray, subset: Subset) -> float:
    """Squared distance of the val scores to the targets: a tie-breaker between equal accuracies."""
    y = target_matrix(subset.labels, subset.labels_multi, int(config["num_classes"]), bool(config["multilabel"]))
    return float(((torch.from_numpy(scores) - y) ** 2).sum(dim=1).mean())


def evaluate(config: dict, scores: np.ndarray, subset: Subset) -> dict[str, float]:
    """The paper's metrics of one subset (accuracy, mean class accuracy, top-5, mAP)."""
    from hyvid.pipelines.evaluation.metrics import evaluate as _evaluate

    return _evaluate(scores, subset.labels, subset.labels_multi, multilabel=bool(config["multilabel"]))


def primary(config: dict) -> str:
    """The metric models are selected on: mAP for multi-label data, accuracy otherwise."""
    return "map" if config["multilabel"] else "accuracy"


# --------------------------------------------------------------------------------------------
# MLflow: one run per fit, found again after a restart
# --------------------------------------------------------------------------------------------
def _mlflow_setup(config: dict):
    import mlflow

    mlflow.set_tracking_uri(config["tracking_uri"])
    return mlflow.MlflowClient(config["tracking_uri"])


def open_run(config: dict, stage: str = STAGE, extra_tags: dict | None = None) -> str:
    """The MLflow run of this fit: the given ``run_id``, else the one tagged with this fit's id, else new.

    A worker restarted by Ray Train's FailureConfig finds the run its first attempt created, so a
    resumed fit stays one run with one metric history.
    """
    from hyvid.pipelines.tracking import TAG_MODEL, TAG_SPLIT, TAG_STAGE, TAG_STORE, store_tag

    client = _mlflow_setup(config)
    if config.get("run_id"):
        return config["run_id"]
    # The fit id is a uuid made by pipelines.train, not a user value, so it is safe in a filter.
    found = client.search_runs([config["experiment_id"]], filter_string=f"tags.`{TAG_FIT_ID}` = '{config['fit_id']}'")
    if found:
        return found[0].info.run_id
    tags = {TAG_MODEL: config["model"], TAG_STAGE: stage, TAG_SPLIT: str(config["split"]),
            TAG_STORE: store_tag(config["store_uri"]), TAG_FIT_ID: config["fit_id"], **(extra_tags or {})}
    run = client.create_run(config["experiment_id"], run_name=config.get("run_name") or config["model"], tags=tags)
    return run.info.run_id


def _log_fit_params(client, run_id: str, config: dict) -> None:
    """The hyper-parameters of this fit (only those that apply to its model family)."""
    name = config["model"]
    keys = ["model", "split", "epochs", "seed", "num_classes", "multilabel", "world_size"]
    if name in LSTM_STREAM:
        keys += ["lstm_hidden", "lstm_pooling", "lstm_peephole", "lstm_optimizer", "lstm_lr", "lstm_momentum",
                 "lstm_batch_size"]
    elif name in FUSION_NETS:
        keys += ["fusion_lr", "lam1", "lam2", "lam3", "abstraction", "fusion_units", "fusion_batch_size"]
    elif name in (R.NN_EF, R.NN_LF):
        keys += ["nn_lr", "nn_hidden", "nn_batch_size"]
    else:
        keys += ["svm_c"]
    keys += ["cpus_per_worker"]
    existing = client.get_run(run_id).data.params
    params = {k: str(config[k]) for k in keys if k in config and k not in existing}
    for k, v in params.items():
        client.log_param(run_id, k, v)


# --------------------------------------------------------------------------------------------
# The loops
# --------------------------------------------------------------------------------------------
def _save_checkpoint(state: dict) -> tuple[Any, tempfile.TemporaryDirectory]:
    from ray.train import Checkpoint

    tmp = tempfile.TemporaryDirectory(prefix="hyvid-ckpt-")
    torch.save(state, os.path.join(tmp.name, CHECKPOINT_FILE))
    return Checkpoint.from_directory(tmp.name), tmp


def _load_checkpoint(checkpoint) -> dict | None:
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as d:
        return torch.load(os.path.join(d, CHECKPOINT_FILE), weights_only=False)


def fit_loop(config: dict, report: Callable, get_checkpoint: Callable, rank: int = 0, world: int = 1,
             device: torch.device = CPU) -> dict:
    """Train one torch model for ``config["epochs"]`` epochs, selecting the best-val epoch.

    ``report(metrics, checkpoint)`` and ``get_checkpoint()`` are Ray Train's (or Tune's).
    Returns (on rank 0) ``{"run_id", "metrics"}`` with the final val_*/test_* metrics.
    """
    # floor(this worker's CPU share) threads: concurrent fits share the machine's cores.
    torch.set_num_threads(int(config.get("torch_threads", 1)))
    torch.manual_seed(int(config["seed"]))  # the same init on every rank (then broadcast, to be sure)
    data, versions = load_subsets(config)
    model = build_model(config, data).to(device)
    opt = build_optimizer(config, model)
    state = _load_checkpoint(get_checkpoint())
    start_epoch, best = 0, {"value": -np.inf, "loss": np.inf, "epoch": -1, "state": None}
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start_epoch, best = state["epoch"] + 1, state["best"]
        log.info("%s: resuming from the checkpoint of epoch %d", config["model"], state["epoch"])
    _broadcast_parameters(model, world)
    lead = rank == 0
    run_id = client = None
    if lead:
        client = _mlflow_setup(config)
        run_id = open_run(config, config.get("stage", STAGE), config.get("extra_tags"))
        client.update_run(run_id, status="RUNNING")
        _log_fit_params(client, run_id, {**config, "world_size": world})
        _record_node(client, run_id)
        if state is not None:
            client.set_tag(run_id, "hyvid.resumed_from_epoch", str(state["epoch"]))
    key = primary(config)
    epochs = int(config["epochs"])
    last_report = time.monotonic()
    for epoch in range(start_epoch, epochs):
        loss, acc = train_epoch(config, model, opt, data["train"], epoch, rank, world, device)
        val_scores = predict(config, model, data["val"], device)
        val = evaluate(config, val_scores, data["val"])
        val_loss = _val_loss(config, val_scores, data["val"])
        if (val[key], -val_loss) > (best["value"], -best["loss"]):
            best = {"value": val[key], "loss": val_loss, "epoch": epoch,
                    "state": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}}
        metrics = {"epoch": epoch, "train_loss": loss, "train_accuracy": acc, f"val_{key}": val[key],
                   "val_loss": val_loss, "best_val": best["value"], "best_val_loss": best["loss"],
                   "best_epoch": best["epoch"], "run_id": run_id or ""}
        if lead:
            client.log_batch(run_id, metrics=_metrics(
                {"train_loss": loss, "train_accuracy": acc, "val_accuracy": val["accuracy"], "val_loss": val_loss,
                 **({"val_map": val["map"]} if config["multilabel"] else {})}, step=epoch))
        kill = state is None and config.get("kill_after_epoch") == epoch
        if _report_due(config, epoch, epochs, last_report, world, kill):
            last_report = time.monotonic()
            if config.get("checkpoint", True):
                ckpt, tmp = _save_checkpoint({"model": model.state_dict(), "optimizer": opt.state_dict(),
                                              "epoch": epoch, "best": best}) if lead else (None, None)
                report(metrics, checkpoint=ckpt)
                if tmp is not None:
                    tmp.cleanup()
            else:
                report(metrics)
        if kill:
            # Fault injection for tests and demos: die like a preempted node, right after a checkpoint
            # (once Ray Train has committed it: a report is only taken at the controller's next poll).
            import ray.train
            from ray.train import CheckpointConsistencyMode

            ray.train.get_all_reported_checkpoints(consistency_mode=CheckpointConsistencyMode.COMMITTED, timeout_s=120)
            log.warning("%s: simulating a killed worker after epoch %d", config["model"], epoch)
            os._exit(1)
    if not lead:
        return {}
    return _finish(config, client, run_id, model.cpu(), best, data, versions)


def _record_node(client, run_id: str) -> None:
    """Append the Ray node this attempt runs on to the run's `hyvid.nodes` tag (the spread record)."""
    try:
        import ray

        node = ray.get_runtime_context().get_node_id() if ray.is_initialized() else "local"
    except Exception:  # noqa: BLE001 - outside Ray (unit tests call fit_loop directly)
        node = "local"
    prev = client.get_run(run_id).data.tags.get(TAG_NODES)
    client.set_tag(run_id, TAG_NODES, f"{prev},{node}" if prev else node)


def _report_due(config: dict, epoch: int, epochs: int, last_report: float, world: int, force: bool) -> bool:
    """Whether to report (and checkpoint) after this epoch: the last one, or ``report_every_s`` later.

    Ray Train's controller takes one report per poll (about every 2 s), and a report waits for
    the previous one to be taken, so reporting every epoch of a small model would spend most of
    its time waiting. Per-epoch metrics go to MLflow directly, so reports only carry checkpoints:
    a killed worker loses at most ``report_every_s`` of work. Rank 0's clock decides for all
    ranks, since every rank must report equally often.
    """
    due = force or epoch == epochs - 1 or time.monotonic() - last_report >= float(config.get("report_every_s", 5.0))
    if world > 1:
        from ray.train.collective import broadcast_from_rank_zero

        due = broadcast_from_rank_zero(due)
    return bool(due)


def _metrics(values: dict[str, float], step: int):
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    return [Metric(k, float(v), now, step) for k, v in values.items() if v is not None and np.isfinite(v)]


def _finish(config: dict, client, run_id: str, model: torch.nn.Module, best: dict, data: dict[str, Subset],
            versions: dict[str, int]) -> dict:
    """Rank 0, after the last epoch: best weights -> final metrics, model, scores, lineage."""
    if best["state"] is not None:
        model.load_state_dict(best["state"])
    scores, metrics = _score_subsets(config, data, lambda subset: predict(config, model, subset))
    final = {"best_epoch": best["epoch"], **metrics}
    if config["model"] in FUSION_NETS:
        from hyvid.models.fusion import zero_row_fraction, zero_weight_fraction

        # The ℓ2,1 term at work: fusion neurons (rows of W_E) that no feature uses any more.
        final["fusion_zero_row_fraction"] = zero_row_fraction(model)
        final["fusion_zero_weight_fraction"] = zero_weight_fraction(model)
    # Final metrics sit one step after the last epoch, so "latest" val_accuracy is the selected epoch's.
    client.log_batch(run_id, metrics=_metrics(final, step=int(config["epochs"])))
    if config.get("cv_only"):
        client.set_terminated(run_id, "FINISHED")
        return {"run_id": run_id, "metrics": final}
    _complete_run(config, client, run_id, versions, data, scores, lambda: _log_torch_model(model))
    return {"run_id": run_id, "metrics": final}


def _score_subsets(config: dict, data: dict[str, Subset], score: Callable[[Subset], np.ndarray]
                   ) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Scores of the val and test subsets present, and their metrics named val_* / test_*."""
    from hyvid.pipelines.tracking import metric_name

    scores, metrics = {}, {}
    for sub in ("val", "test"):
        if sub not in data:
            continue
        scores[sub] = score(data[sub])
        for k, v in evaluate(config, scores[sub], data[sub]).items():
            metrics[metric_name(sub, k)] = v
    return scores, metrics


def _complete_run(config: dict, client, run_id: str, versions: dict[str, int], data: dict[str, Subset],
                  scores: dict[str, np.ndarray], log_model: Callable[[], None]) -> None:
    """A final fit's last steps: lineage and model into its run, scores into the store, run finished."""
    import mlflow

    from hyvid.pipelines.tracking import log_lineage

    with mlflow.start_run(run_id=run_id):
        log_lineage(config["store_uri"], LINEAGE_TABLES, config.get("storage_options"), versions=versions)
        log_model()
    _write_scores(config, run_id, data, scores)
    client.set_terminated(run_id, "FINISHED")


def _log_torch_model(model: torch.nn.Module) -> None:
    import mlflow.pytorch

    # Pickle, not MLflow's default pt2 export: torch.export cannot trace the LSTM's variable-length
    # packing nor the fusion net's list-of-streams input. Explicit requirements: inferring them
    # re-imports the model in a subprocess (slow on a shared core).
    mlflow.pytorch.log_model(model.eval(), name="model", serialization_format="pickle",
                             pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"])


def _log_sklearn_model(est) -> None:
    """Log an SVM baseline in MLflow's skops format, trusting only hyvid's own baseline classes."""
    import mlflow.sklearn
    import sklearn
    import skops.io

    untrusted = skops.io.get_untrusted_types(data=skops.io.dumps(est))
    foreign = [t for t in untrusted if not t.startswith("hyvid.models.baselines.")]
    if foreign:
        raise TypeError(f"{type(est).__name__} holds types outside hyvid.models.baselines that skops cannot vouch for: {foreign}")
    mlflow.sklearn.log_model(est, name="model", skops_trusted_types=untrusted,
                             pip_requirements=[f"scikit-learn=={sklearn.__version__}"])


def _write_scores(config: dict, run_id: str, data: dict[str, Subset], scores: dict[str, np.ndarray]) -> None:
    from hyvid.store.scores import upsert_video_scores

    subs = [s for s in ("val", "test") if s in scores]
    ids = [v for s in subs for v in data[s].video_ids]
    upsert_video_scores(
        config["store_uri"], config["model"], int(config["split"]), run_id, ids,
        [s for s in subs for _ in data[s].video_ids], np.concatenate([scores[s] for s in subs]),
        np.concatenate([data[s].labels for s in subs]).tolist(), [m for s in subs for m in data[s].labels_multi],
        storage_options=config.get("storage_options"),
    )


def torch_train_loop(config: dict) -> dict:
    """``train_loop_per_worker`` of every TorchTrainer: resume, train, report, finish on rank 0."""
    import ray.train
    import ray.train.torch

    ctx = ray.train.get_context()
    device = ray.train.torch.get_device() if config.get("use_gpu") else CPU
    return fit_loop(config, ray.train.report, ray.train.get_checkpoint, ctx.get_world_rank(), ctx.get_world_size(),
                    device)


def cv_trial(config: dict, storage_options: dict | None = None) -> None:
    """Ray Tune trainable of the fusion λ2/λ3 search: train on train, select on val, no test."""
    from ray import tune

    # Each trial is its own fit (own id, so its own nested MLflow run).
    fit_id = f"{config['fit_id']}-cv-{config['lam2']:g}-{config['lam3']:g}"
    fit_loop({**config, "storage_options": storage_options, "fit_id": fit_id, "cv_only": True, "checkpoint": False, "stage": CV_STAGE,
              "report_every_s": float("inf"),  # one report, at the end: Tune needs only the best val
              "run_name": f"{config['model']}-lam2={config['lam2']:g}-lam3={config['lam3']:g}",
              "extra_tags": {TAG_PARENT: config["parent_run_id"]}},
             lambda metrics, checkpoint=None: tune.report(metrics), lambda: None)


# --------------------------------------------------------------------------------------------
# scikit-learn baselines (a Ray task each)
# --------------------------------------------------------------------------------------------
def sklearn_fit(config: dict) -> dict:
    """Fit SVM-EF or SVM-LF on the video-level features; same logging and scores as the torch fits."""
    from hyvid.models.baselines import SVMEarlyFusion, SVMLateFusion

    data, versions = load_subsets(config)
    client = _mlflow_setup(config)
    run_id = open_run(config)
    _log_fit_params(client, run_id, {**config, "world_size": 1})
    cls = SVMEarlyFusion if config["model"] == R.SVM_EF else SVMLateFusion
    est = cls(C=float(config["svm_c"]))
    y = data["train"].labels_multi if config["multilabel"] else data["train"].labels
    est.fit([x.numpy() for x in data["train"].inputs], y, num_classes=int(config["num_classes"]))
    # SVM decision values (signed margins), the SVMs' native scores; not probabilities.
    scores, final = _score_subsets(
        config, data, lambda subset: np.asarray(est.predict_scores([x.numpy() for x in subset.inputs]), dtype=np.float32))
    client.log_batch(run_id, metrics=_metrics(final, step=0))
    _complete_run(config, client, run_id, versions, data, scores, lambda: _log_sklearn_model(est))
    return {"run_id": run_id, "metrics": final}
