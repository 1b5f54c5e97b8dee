"""`hyvid train-cnn`: fit the spatial and/or motion CNN on the stored clips with Ray Train.

Each stream is one Ray Train `TorchTrainer` fit (CPU workers, or GPUs when the cluster has
them) reading the Lance `clips` table in place, and one MLflow run named after the model
(`spatial_cnn` / `motion_cnn`) with its parameters, per-epoch metrics, lineage (store URI and
table versions) and the final model as an MLflow PyTorch model. `--stream both` runs the two
fits concurrently. Checkpoints (one per epoch) let a fit resume: Ray retries failed workers
from the latest one, and `resume=True` continues an interrupted fit of the same stream/split.

With `--finetune head` (the default) the spatial backbone is frozen, so its pooled output for a
given input never changes: the loop runs the backbone once per training clip (on one random
crop and flip per clip and view, `head_views`) and once per val clip, keeps those 1280-d vectors
in memory, and trains fc1 and the classifier on them for every epoch. That is one backbone pass
instead of one per epoch, and more epochs cost almost nothing.

Optimisation (the paper's schedules are for 100K+ iterations of VGG-19 / CNN-M on GPUs; we
train a few epochs on CPU): SGD with momentum 0.9 and weight decay 5e-4, the learning rate
divided by 10 for the last ~30% of the epochs (when there are at least 3). Default learning
rates: 1e-2 for the spatial head on the frozen backbone (fc1 and the classifier start from
scratch), 1e-3 when the whole spatial net is fine-tuned (the paper's fine-tuning rate), and
1e-2 for the motion CNN from scratch (the paper's starting rate).
"""
from __future__ import annotations

import concurrent.futures as cf
import json
import logging
import os
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hyvid.models.cnn import FINETUNE_MODES, MotionCNN, SpatialCNN, motion_input, random_crop_flip, spatial_input
from hyvid.models.registry import MOTION_CNN, SPATIAL_CNN, STREAMS
from hyvid.store.lance_io import canonical_store_uri

log = logging.getLogger(__name__)

STAGE = "train-cnn"
STREAM_CHOICES = (*STREAMS, "both")
MODEL_OF_STREAM = {"spatial": SPATIAL_CNN, "motion": MOTION_CNN}
STATE_FILE = "state.pt"
LINEAGE_TABLES = ["videos", "clips"]
TAG_MODEL_LOGGED = "hyvid.model_logged"  # "true" once the run's model artifact is complete


def default_lr(stream: str, finetune: str) -> float:
    """The learning rate used when none is given (see the module doc)."""
    if stream == "spatial":
        return 1e-2 if finetune == "head" else 1e-3
    return 1e-2


@dataclass(frozen=True)
class TrainCNNConfig:
    """What `train_cnn` fits and where it reads and logs."""

    store_uri: str
    stream: str = "both"  # spatial | motion | both
    split: int = 1
    epochs: int = 3
    batch_size: int = 32
    lr: float | None = None  # None: default_lr(stream, finetune)
    momentum: float = 0.9
    weight_decay: float = 5e-4
    finetune: str = "head"  # spatial CNN: head (frozen backbone) | all
    feature_dim: int = 1024
    dropout: float = 0.5
    crop: int = 112  # random crop side for training (stored frames are ~128 px); inference sees whole frames
    head_views: int = 1  # finetune="head": augmented views cached per training clip (epoch e uses view e % n)
    workers: int = 1  # Ray Train workers per stream
    cpus_per_worker: int | None = None  # None: the cluster's CPUs shared among all workers
    use_gpu: bool | None = None  # None: use GPUs when the cluster has them
    experiment: str = "hyvid"
    tracking_uri: str | None = None
    storage_options: dict[str, str] | None = None
    checkpoint_path: str | None = None  # Ray Train storage; default <store>/_checkpoints
    resume: bool = False  # continue the last interrupted fit of this stream/split from its checkpoint
    max_failures: int = 2  # worker-group restarts from the latest checkpoint before giving up
    seed: int = 0
    address: str | None = None  # Ray address; None: the connected/local Ray

    def __post_init__(self) -> None:
        if self.stream not in STREAM_CHOICES:
            raise ValueError(f"stream must be one of {STREAM_CHOICES}, got {self.stream!r}")
        if self.split not in (1, 2, 3):
            raise ValueError(f"split must be 1, 2 or 3, got {self.split!r}")
        if self.finetune not in FINETUNE_MODES:
            raise ValueError(f"finetune must be one of {FINETUNE_MODES}, got {self.finetune!r}")
        for name in ("epochs", "batch_size", "workers", "feature_dim", "crop", "head_views"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if self.cpus_per_worker is not None and self.cpus_per_worker < 1:
            raise ValueError(f"cpus_per_worker must be >= 1, got {self.cpus_per_worker!r}")
        if self.max_failures < 0:
            raise ValueError(f"max_failures must be >= 0, got {self.max_failures!r}")

    @property
    def streams(self) -> tuple[str, ...]:
        return STREAMS if self.stream == "both" else (self.stream,)

    def lr_for(self, stream: str) -> float:
        return self.lr if self.lr is not None else default_lr(stream, self.finetune)


@dataclass(frozen=True)
class TrainCNNResult:
    """Per stream: the MLflow run id, the final epoch's metrics, the per-epoch history."""

    run_ids: dict[str, str]
    metrics: dict[str, dict[str, float]]
    history: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    checkpoints: dict[str, str] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# Model construction, shared by the workers, the driver and `features`.


def build_model(stream: str, num_classes: int, stack: int, feature_dim: int = 1024, dropout: float = 0.5,
                finetune: str = "head", pretrained: bool = True) -> nn.Module:
    """The CNN of one stream, with the architecture arguments train_cnn records."""
    if stream == "spatial":
        return SpatialCNN(num_classes, feature_dim=feature_dim, dropout=dropout, pretrained=pretrained,
                          finetune=finetune)
    if stream == "motion":
        return MotionCNN(num_classes, stack=stack, feature_dim=feature_dim, dropout=dropout)
    raise ValueError(f"unknown stream {stream!r}; choose from {list(STREAMS)}")


def to_input(stream: str, batch: np.ndarray) -> torch.Tensor:
    """uint8 clips of one stream -> the float tensor its CNN takes."""
    return spatial_input(batch) if stream == "spatial" else motion_input(batch)


# ---------------------------------------------------------------------------------------------
# The Ray Train loop (runs on every worker).


def _allreduce(values: list[float], device: torch.device) -> list[float]:
    """Sum per-worker counters over the worker group (a no-op with one worker)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return values
    if torch.distributed.get_world_size() == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t)
    return t.tolist()


def _lr_milestones(epochs: int) -> list[int]:
    return [max(1, int(round(0.7 * epochs)))] if epochs >= 3 else []


def _evaluate(model: nn.Module, stream: str, data, video_order: list[np.ndarray], batch_size: int,
              num_classes: int, device: torch.device) -> tuple[float, float, float]:
    """(video-level correct, clip-level correct, n videos) on this worker's share of val videos.

    A video's score is the mean of its clips' softmax scores, as at test time.
    """
    model.eval()
    if not video_order:
        return 0.0, 0.0, 0.0
    idx = np.concatenate(video_order)
    probs = np.zeros((len(idx), num_classes), np.float32)
    labels = np.zeros(len(idx), np.int64)
    from hyvid.pipelines.data.clips import iter_batches

    pos = 0
    with torch.no_grad():
        for x, y, _ in iter_batches(data, idx, batch_size):
            p = model(to_input(stream, x).to(device)).softmax(1).cpu().numpy()
            probs[pos:pos + len(p)] = p
            labels[pos:pos + len(p)] = y
            pos += len(p)
    return _video_hits(probs, labels, video_order)


def _video_hits(probs: np.ndarray, labels: np.ndarray, video_order: list[np.ndarray]) -> tuple[float, float, float]:
    clip_correct = float((probs.argmax(1) == labels).sum())
    video_correct, start = 0.0, 0
    for rows in video_order:
        sl = slice(start, start + len(rows))
        video_correct += float(probs[sl].mean(0).argmax() == labels[sl][0])
        start += len(rows)
    return video_correct, clip_correct, float(len(video_order))


@torch.no_grad()
def _evaluate_pooled(core: nn.Module, pooled: torch.Tensor | None, data, video_order: list[np.ndarray],
                     num_classes: int, device: torch.device) -> tuple[float, float, float]:
    """`_evaluate` on cached backbone outputs (rows in `video_order`'s concatenated order)."""
    if pooled is None or not video_order:
        return 0.0, 0.0, 0.0
    core.eval()
    probs = core._head(pooled.to(device))[1].softmax(1).cpu().numpy()
    labels = data.labels[np.concatenate(video_order)]
    return _video_hits(probs, labels, video_order)


@torch.no_grad()
def _cache_pooled(core: nn.Module, data, indices: np.ndarray, batch_size: int, device: torch.device,
                  crop: tuple[int, int] | None = None, rng: np.random.Generator | None = None) -> torch.Tensor:
    """The frozen backbone's pooled output [len(indices), 1280] for clips `indices`, in that order.

    With `crop`, each clip is randomly cropped and flipped first (training views); without, the
    whole frame is used, as inference does.
    """
    from hyvid.pipelines.data.clips import iter_batches

    core.eval()
    out = []
    for x, _, _ in iter_batches(data, indices, batch_size):
        if crop is not None:
            x = random_crop_flip(x, crop, rng, "frames")
        out.append(core.pooled(to_input("spatial", x).to(device)).cpu())
    return torch.cat(out) if out else torch.zeros((0, 0))


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train worker: fit one stream's CNN for `epochs`, reporting and checkpointing each epoch."""
    import ray.train
    import ray.train.torch

    from hyvid.pipelines.data.clips import ClipsDataset, iter_batches
    from hyvid.pipelines.training.loops import average_gradients

    stream = config["stream"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(max(1, int(config["cpus_per_worker"])))
    torch.manual_seed(config["seed"] + rank)
    device = ray.train.torch.get_device()

    train_data = ClipsDataset(config["store_uri"], config["train_labels"], stream,
                              version=config["clips_version"], storage_options=config["storage_options"])
    val_data = (ClipsDataset(config["store_uri"], config["val_labels"], stream,
                             version=config["clips_version"], storage_options=config["storage_options"])
                if config["val_labels"] else None)
    if len(train_data) == 0:
        raise ValueError(f"no clips of the training videos in {config['store_uri']} (clips version "
                         f"{config['clips_version']}); run `hyvid extract` first")

    model = build_model(stream, config["num_classes"], config["stack"], config["feature_dim"],
                        config["dropout"], config["finetune"], pretrained=True)
    model = ray.train.torch.prepare_model(model)
    core = model.module if hasattr(model, "module") else model
    params = [p for p in core.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=config["lr"], momentum=config["momentum"],
                          weight_decay=config["weight_decay"])
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, _lr_milestones(config["epochs"]), gamma=0.1)
    history: list[dict[str, float]] = []
    start_epoch = 0

    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            state = torch.load(os.path.join(d, STATE_FILE), map_location=device, weights_only=True)
        core.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        history = list(state["history"])
        start_epoch = int(state["epoch"]) + 1
        log.info("%s: resuming from the checkpoint of epoch %d", stream, start_epoch - 1)

    # Val videos are split among workers whole, so each can average its videos' clip scores.
    val_videos: list[np.ndarray] = []
    if val_data is not None and len(val_data):
        rows_of: dict[str, list[int]] = {}
        for i, v in enumerate(val_data.video_ids.tolist()):
            rows_of.setdefault(v, []).append(i)
        val_videos = [np.asarray(r, dtype=np.int64) for r in rows_of.values()][rank::world]

    crop = (config["crop"], config["crop"])
    loss_fn = nn.CrossEntropyLoss()
    cached = stream == "spatial" and config["finetune"] == "head"
    if cached and start_epoch < config["epochs"]:
        t0 = time.perf_counter()
        n_views = int(config.get("head_views", 1))
        views = [_cache_pooled(core, train_data, np.arange(len(train_data)), config["batch_size"], device, crop,
                               np.random.default_rng(config["seed"] * 7919 + v))
                 for v in range(n_views)]
        val_rows = np.concatenate(val_videos) if val_videos else np.zeros(0, np.int64)
        val_pooled = _cache_pooled(core, val_data, val_rows, config["batch_size"], device) if len(val_rows) else None
        train_y = torch.from_numpy(train_data.labels)
        log.info("spatial: cached the frozen backbone's output of %d train clip(s) x %d view(s) and %d val "
                 "clip(s) in %.1f s", len(train_data), n_views, len(val_rows), time.perf_counter() - t0)
    for epoch in range(start_epoch, config["epochs"]):
        t0 = time.perf_counter()
        rng = np.random.default_rng(config["seed"] * 1000 + epoch)
        perm = rng.permutation(len(train_data))
        # Every worker gets the same number of batches (DDP steps in lock-step).
        share = perm[: len(perm) // world * world][rank::world] if len(perm) >= world else perm
        aug_rng = np.random.default_rng(config["seed"] * 1000 + epoch * 97 + rank)
        model.train()
        loss_sum = correct = seen = 0.0
        bs = config["batch_size"]
        if cached:
            pooled = views[epoch % len(views)]
            batches = ((pooled[i], train_y[i]) for i in (torch.from_numpy(share[b:b + bs])
                                                           for b in range(0, len(share), bs)))
            forward = lambda x: core._head(x)[1]  # noqa: E731
        else:
            kind = "frames" if stream == "spatial" else "flow"
            batches = ((to_input(stream, random_crop_flip(x, crop, aug_rng, kind)), torch.from_numpy(y))
                       for x, y, _ in iter_batches(train_data, share, bs))
            forward = model
        for xb, yb in batches:
            xt, yt = xb.to(device, non_blocking=True), yb.to(device)
            logits = forward(xt)
            loss = loss_fn(logits, yt)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cached:  # the head is called directly, past DDP's hooks: average its gradients by hand
                average_gradients(params, world)
            opt.step()
            loss_sum += float(loss.detach()) * len(yb)
            correct += float((logits.argmax(1) == yt).sum())
            seen += len(yb)
        lr = opt.param_groups[0]["lr"]
        sched.step()
        if cached:
            v_correct, v_clip_correct, v_videos = _evaluate_pooled(
                core, val_pooled, val_data, val_videos, config["num_classes"], device)
        else:
            v_correct, v_clip_correct, v_videos = _evaluate(
                core, stream, val_data, val_videos, config["batch_size"], config["num_classes"], device)
        n_val_clips = float(sum(len(v) for v in val_videos))
        loss_sum, correct, seen, v_correct, v_clip_correct, v_videos, n_val_clips = _allreduce(
            [loss_sum, correct, seen, v_correct, v_clip_correct, v_videos, n_val_clips], device)
        seconds = time.perf_counter() - t0
        metrics = {
            "epoch": epoch,
            "train_loss": loss_sum / max(seen, 1.0),
            "train_accuracy": correct / max(seen, 1.0),
            "lr": lr,
            "epoch_seconds": seconds,
            "train_clips_per_s": seen / max(seconds, 1e-9),
        }
        if v_videos:
            metrics["val_accuracy"] = v_correct / v_videos
            metrics["val_clip_accuracy"] = v_clip_correct / max(n_val_clips, 1.0)
        history.append(metrics)
        log.info("%s epoch %d: %s", stream, epoch, {k: round(v, 4) for k, v in metrics.items()})
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = None
            if rank == 0:
                torch.save({"model": core.state_dict(), "optimizer": opt.state_dict(),
                            "scheduler": sched.state_dict(), "epoch": epoch, "history": history},
                           os.path.join(tmp, STATE_FILE))
                checkpoint = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(metrics, checkpoint=checkpoint)


# ---------------------------------------------------------------------------------------------
# The driver.


@dataclass
class _StreamJob:
    stream: str
    run_id: str
    loop_config: dict[str, Any]
    result: Any = None
    error: BaseException | None = None


def _split_data(store_uri: str, split: int, storage_options: dict | None):
    from hyvid.store.feature_store import FeatureStore

    fs = FeatureStore(store_uri, storage_options)
    videos = fs.videos(split=split)
    ids = videos.column("video_id").to_pylist()
    labels = videos.column("label").to_pylist()
    subsets = videos.column("subset").to_pylist()
    by_subset: dict[str, dict[str, int]] = {"train": {}, "val": {}}
    for v, lab, s in zip(ids, labels, subsets):
        if s in by_subset and lab is not None and lab >= 0:
            by_subset[s][v] = int(lab)
    if not by_subset["train"]:
        raise ValueError(f"no labelled ok training video in split {split} of store {store_uri!r}; "
                         "run `hyvid extract` with a dataset that has this split")
    class_names = fs.class_names()
    clips = fs.table("clips")
    first = clips.to_table(columns=["stack"], limit=1)
    if first.num_rows == 0:
        raise ValueError(f"the clips table of store {store_uri!r} is empty; run `hyvid extract` first")
    return by_subset["train"], by_subset["val"], class_names, int(first.column("stack")[0].as_py())


def _log_results(job: _StreamJob, cfg: TrainCNNConfig, store_uri: str, class_names: list[str], stack: int):
    """Driver side: per-epoch metrics and the final model into the stream's MLflow run."""
    import mlflow

    from hyvid.pipelines import tracking

    model_name = MODEL_OF_STREAM[job.stream]
    num_classes = len(class_names)
    with tracking.start_run(model_name, STAGE, cfg.split, store_uri, run_id=job.run_id):
        ckpt = job.result.checkpoint if job.error is None else None
        if job.error is None and ckpt is None:
            job.error = RuntimeError(f"the {job.stream} fit reported no checkpoint")
        if job.error is not None:
            mlflow.set_tag("hyvid.error", str(job.error)[:5000])
            mlflow.end_run(status="FAILED")
            return None, []
        with ckpt.as_directory() as d:
            state = torch.load(os.path.join(d, STATE_FILE), map_location="cpu", weights_only=True)
        history = list(state["history"])
        for m in history:
            step = int(m["epoch"])
            mlflow.log_metrics({k: float(v) for k, v in m.items() if k != "epoch"}, step=step)
        model = build_model(job.stream, num_classes, stack, cfg.feature_dim, cfg.dropout, cfg.finetune,
                            pretrained=False)
        model.load_state_dict(state["model"])
        model.eval()
        mlflow.log_dict(
            {"stream": job.stream, "num_classes": num_classes, "class_names": class_names, "stack": stack,
             "feature_dim": cfg.feature_dim, "finetune": cfg.finetune, "checkpoint": ckpt.path},
            "cnn_config.json",
        )
        # Pickle (not pt2/torch.export) keeps the whole module, so `features()` is there on load.
        mlflow.pytorch.log_model(model, name="model", serialization_format="pickle",
                                 pip_requirements=mlflow.pytorch.get_default_pip_requirements())
        # The run was created (and ended) before the fit; `features` only picks runs with a model.
        mlflow.set_tag(TAG_MODEL_LOGGED, "true")
        return ckpt.path, history


def train_cnn(cfg: TrainCNNConfig) -> TrainCNNResult:
    """Fit the chosen stream CNN(s) with Ray Train and log each as an MLflow run."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from hyvid.cluster.connect import connect
    from hyvid.pipelines import tracking

    store_uri = canonical_store_uri(cfg.store_uri)
    train_labels, val_labels, class_names, stack = _split_data(store_uri, cfg.split, cfg.storage_options)
    num_classes = len(class_names)
    if num_classes < 2:
        raise ValueError(f"store {store_uri!r} has {num_classes} class(es); a classifier needs at least 2")
    resources = connect(cfg.address)
    n_gpus = float(resources.get("GPU", 0) or 0)
    use_gpu = (n_gpus > 0) if cfg.use_gpu is None else bool(cfg.use_gpu)
    if use_gpu and n_gpus == 0:
        raise ValueError("use_gpu=True but the Ray cluster has no GPU; leave use_gpu unset (auto)")
    n_workers = cfg.workers * len(cfg.streams)
    cpus = cfg.cpus_per_worker or max(1, int(float(resources.get("CPU", 1)) // n_workers))
    per_worker: dict[str, float] = {"CPU": cpus}
    if use_gpu:
        # Concurrent streams share the GPUs rather than wait for each other.
        per_worker["GPU"] = min(1.0, n_gpus / n_workers)
    storage = canonical_store_uri(cfg.checkpoint_path or f"{store_uri.rstrip('/')}/_checkpoints")

    tracking.setup(tracking.resolve_tracking_uri(cfg.tracking_uri), cfg.experiment)
    jobs: list[_StreamJob] = []
    for stream in cfg.streams:
        lr = cfg.lr_for(stream)
        with tracking.start_run(MODEL_OF_STREAM[stream], STAGE, cfg.split, store_uri) as run:
            lineage = tracking.log_lineage(store_uri, LINEAGE_TABLES, cfg.storage_options)
            params = {k: v for k, v in asdict(cfg).items() if k not in ("storage_options", "stream", "lr")}
            params.update(stream=stream, lr=lr, num_classes=num_classes, stack=stack, use_gpu=use_gpu,
                          cpus_per_worker=cpus, n_train_videos=len(train_labels), n_val_videos=len(val_labels),
                          optimizer="sgd", lr_milestones=json.dumps(_lr_milestones(cfg.epochs)))
            tracking.log_params_safe(params)
            run_id = run.info.run_id
        loop_config = {
            "stream": stream, "store_uri": store_uri, "storage_options": cfg.storage_options,
            "clips_version": lineage["tables"]["clips"], "train_labels": train_labels, "val_labels": val_labels,
            "num_classes": num_classes, "stack": stack, "epochs": cfg.epochs, "batch_size": cfg.batch_size,
            "lr": lr, "momentum": cfg.momentum, "weight_decay": cfg.weight_decay, "finetune": cfg.finetune,
            "feature_dim": cfg.feature_dim, "dropout": cfg.dropout, "crop": cfg.crop, "seed": cfg.seed,
            "cpus_per_worker": cpus, "head_views": cfg.head_views,
        }
        jobs.append(_StreamJob(stream, run_id, loop_config))

    def fit(job: _StreamJob) -> None:
        # A fixed name resumes from that directory's checkpoints; a fresh fit gets a new one.
        name = f"{MODEL_OF_STREAM[job.stream]}-split{cfg.split}"
        if not cfg.resume:
            name += f"-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        trainer = TorchTrainer(
            train_loop_per_worker,
            train_loop_config=job.loop_config,
            scaling_config=ScalingConfig(num_workers=cfg.workers, use_gpu=use_gpu, resources_per_worker=per_worker),
            run_config=RunConfig(
                name=name,
                storage_path=storage,
                failure_config=FailureConfig(max_failures=cfg.max_failures),
                checkpoint_config=CheckpointConfig(num_to_keep=2),
            ),
        )
        log.info("fitting %s (Ray Train run %s, %d worker(s) x %s)", job.stream, name, cfg.workers, per_worker)
        t0 = time.perf_counter()
        try:
            job.result = trainer.fit()
        except BaseException as e:  # recorded in its MLflow run, re-raised after the other stream ends
            job.error = e
        log.info("%s fit %s in %.1f s", job.stream, "failed" if job.error else "done", time.perf_counter() - t0)

    if len(jobs) == 1:
        fit(jobs[0])
    else:
        with cf.ThreadPoolExecutor(max_workers=len(jobs)) as pool:
            list(pool.map(fit, jobs))

    run_ids, metrics, history, checkpoints = {}, {}, {}, {}
    for job in jobs:
        path, hist = _log_results(job, cfg, store_uri, class_names, stack)
        run_ids[job.stream] = job.run_id
        if path is not None:
            checkpoints[job.stream] = path
            history[job.stream] = hist
            metrics[job.stream] = {k: float(v) for k, v in hist[-1].items()} if hist else {}
    errors = [j for j in jobs if j.error is not None]
    if errors:
        raise RuntimeError(
            "; ".join(f"{j.stream} CNN fit failed (MLflow run {j.run_id}): {j.error}" for j in errors)
        ) from errors[0].error
    return TrainCNNResult(run_ids, metrics, history, checkpoints)
