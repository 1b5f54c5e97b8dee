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

On multi-label data (a store where some video has several labels or none, CCV) each CNN is a
sigmoid classifier trained with binary cross-entropy against its video's multi-hot labels,
videos with no positive label train as negatives of every class, and the epoch with the best
validation mAP (`models.registry.primary_metric(True)`) is the one logged; see
`training.cnn_loop`. The logged model's `scores` are then sigmoids, so `hyvid features` stores
sigmoid frame and video scores for it.
"""
from __future__ import annotations

import concurrent.futures as cf
import json
import logging
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from hyvid.cluster.settings import DEFAULT_EXPERIMENT
from hyvid.models.cnn import FINETUNE_MODES, build_stream_cnn
from hyvid.models.registry import MOTION_CNN, SPATIAL_CNN, STREAMS, check_split, primary_metric
from hyvid.pipelines import logs, tracking
from hyvid.pipelines.inference import packaging
from hyvid.pipelines.inference.registration import check_register, register_runs
from hyvid.pipelines.precision import DEFAULT_AMP, check_amp
from hyvid.pipelines.training.checkpoint import load_checkpoint
from hyvid.pipelines.training.cnn_loop import (
    PAPER_CNN_ITERS,
    iteration_milestones,
    lr_milestones,
    train_loop_per_worker,
)
from hyvid.pipelines.training.folds import DEFAULT_CROSS_FIT, check_cross_fit, fold_tags, video_folds
from hyvid.store.lance_io import canonical_store_uri
from hyvid.store.tables import CLIPS, FOLD_ALL, VIDEOS

log = logging.getLogger(__name__)

STREAM_CHOICES = (*STREAMS, "both")
MODEL_OF_STREAM = {"spatial": SPATIAL_CNN, "motion": MOTION_CNN}
LINEAGE_TABLES = [VIDEOS.name, CLIPS.name]
# The TrainCNNConfig fields a fit's MLflow run records as params (the rest say where it runs and logs).
_FIT_PARAMS = ("split", "epochs", "iters", "batch_size", "momentum", "weight_decay", "feature_dim", "dropout", "crop",
               "flip", "workers", "seed", "max_failures", "cross_fit", "amp")


# The learning rate used when none is given (see the module doc): spatial by --finetune mode, motion.
SPATIAL_LR = {"head": 1e-2, "all": 1e-3}
MOTION_LR = 1e-2


# Training crops: a random 112-px square of the ~128-px stored frames (the paper crops 224 of 256),
# single- and multi-label alike; `--crop 0` trains on whole frames (flipped at random). Whole frames
# were tried for multi-label data, where a crop can cut a labelled panel out and keep its label: on
# a 300-video `hyvid synth --multilabel` store (48 val videos) the best validation mAP was 0.597
# against 0.601 with crops (motion CNN) and 0.554 against 0.560 (spatial head), so no gain on
# validation, and crops stay the default.
DEFAULT_CROP = 112
WHOLE_FRAME = 0
MAX_CROP = 4096
MAX_ITERS = 10_000_000

# `--paper` for the CNN stage (Sec. 4.1.2 and two-stream practice): 224-px crops (of 256-px frames:
# `hyvid run --paper` extracts at PAPER_SIZE), the whole spatial net fine-tuned at the paper's 1e-3,
# and two-stream's iteration schedules (cnn_loop.PAPER_CNN_ITERS, lr steps PAPER_LR_STEPS).
PAPER_CROP = 224
PAPER_SIZE = 256
PAPER_FINETUNE = "all"


def default_lr(stream: str, finetune: str) -> float:
    """The learning rate used when none is given (see the module doc)."""
    return SPATIAL_LR[finetune] if stream == "spatial" else MOTION_LR


@dataclass(frozen=True)
class TrainCNNConfig:
    """What `train_cnn` fits and where it reads and logs."""

    store_uri: str
    stream: str = "both"  # spatial | motion | both
    split: int = 1
    epochs: int = 3
    # SGD steps per stream instead of epochs: two-stream's schedule, the lr dropping 10x at the paper's
    # steps scaled to this length (cnn_loop.iteration_milestones); None: `epochs`. With --paper, by stream.
    iters: int | None = None
    batch_size: int = 32
    lr: float | None = None  # None: default_lr(stream, finetune)
    momentum: float = 0.9
    weight_decay: float = 5e-4
    finetune: str = "head"  # spatial CNN: head (frozen backbone) | all
    feature_dim: int = 1024
    dropout: float = 0.5
    crop: int = DEFAULT_CROP  # training crop side (random crop + flip); 0 (WHOLE_FRAME): whole frames, flip only
    head_views: int = 1  # finetune="head": augmented views cached per training clip (epoch e uses view e % n)
    # Random horizontal flips of training clips; off for classes defined by direction (left against right).
    flip: bool = True
    cross_fit: int = DEFAULT_CROSS_FIT  # K >= 2: K CNN pairs, pair k fitted outside fold k (training.folds)
    workers: int = 1  # Ray Train workers per stream
    cpus_per_worker: int | None = None  # None: the cluster's CPUs shared among all workers
    use_gpu: bool | None = None  # None: use GPUs when the cluster has them
    experiment: str = DEFAULT_EXPERIMENT
    tracking_uri: str | None = None
    storage_options: dict[str, str] | None = None
    checkpoint_path: str | None = None  # Ray Train storage; default <store>/_checkpoints
    resume: bool = False  # continue the last interrupted fit of this stream/split from its checkpoint
    max_failures: int = 2  # worker-group restarts from the latest checkpoint before giving up
    seed: int = 0
    amp: str = DEFAULT_AMP  # mixed precision (pipelines.precision): bf16/fp16 autocast on CUDA, off on the CPU
    paper_iters: bool = False  # iters per stream as the paper's (PAPER_CNN_ITERS); set by `paper()`
    address: str | None = None  # Ray address; None: the connected/local Ray
    plots_dir: str | None = None  # the training curves' PNG goes to <plots_dir>/split<N>/; None: MLflow artifacts only
    # Register each fitted CNN in MLflow's registry: as NAME (one stream) or NAME-<model> (both).
    register_as: str | None = None
    register_alias: str | None = None  # with register_as: point this alias of each registered model at it

    def __post_init__(self) -> None:
        if self.stream not in STREAM_CHOICES:
            raise ValueError(f"stream must be one of {STREAM_CHOICES}, got {self.stream!r}")
        check_split(self.split)
        if self.finetune not in FINETUNE_MODES:
            raise ValueError(f"finetune must be one of {FINETUNE_MODES}, got {self.finetune!r}")
        for name in ("epochs", "batch_size", "workers", "feature_dim", "head_views"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if not 0 <= self.crop <= MAX_CROP:
            raise ValueError(f"crop must be 0 (whole frames) or a side of 1..{MAX_CROP} pixels, got {self.crop!r}")
        if self.iters is not None and not 1 <= self.iters <= MAX_ITERS:
            raise ValueError(f"iters must be in 1..{MAX_ITERS} SGD steps (or None: epochs), got {self.iters!r}")
        if self.iters is not None and self.paper_iters:
            raise ValueError("paper_iters sets the iterations per stream; drop iters (--cnn-iters) or paper_iters")
        check_amp(self.amp)
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if self.cpus_per_worker is not None and self.cpus_per_worker < 1:
            raise ValueError(f"cpus_per_worker must be >= 1, got {self.cpus_per_worker!r}")
        if self.max_failures < 0:
            raise ValueError(f"max_failures must be >= 0, got {self.max_failures!r}")
        check_register(self.register_as, self.register_alias)
        check_cross_fit(self.cross_fit)
        if self.cross_fit and self.register_as:
            raise ValueError("--register names one CNN per stream; a cross-fit makes K of each: drop --register")

    @property
    def streams(self) -> tuple[str, ...]:
        return STREAMS if self.stream == "both" else (self.stream,)

    def lr_for(self, stream: str) -> float:
        return self.lr if self.lr is not None else default_lr(stream, self.finetune)

    def iters_for(self, stream: str) -> int | None:
        """SGD steps of `stream`'s fit (None: epoch-based)."""
        return PAPER_CNN_ITERS[stream] if self.paper_iters else self.iters

    @classmethod
    def paper(cls, store_uri: str, **overrides: Any) -> "TrainCNNConfig":
        """The paper's CNN stage (see PAPER_CROP): 224 crops, whole-network spatial fine-tuning and the
        two-stream iteration schedules; `overrides` win (an explicit `iters` or `epochs` replaces the
        paper's iteration counts)."""
        settings: dict[str, Any] = {**PAPER_CNN_SETTINGS, **overrides}
        if settings.get("iters") is not None or overrides.get("epochs") is not None:
            settings["paper_iters"] = False
        return cls(store_uri=store_uri, **settings)


PAPER_CNN_SETTINGS: dict[str, Any] = {"crop": PAPER_CROP, "finetune": PAPER_FINETUNE, "paper_iters": True}


@dataclass(frozen=True)
class TrainCNNResult:
    """Per stream: the MLflow run id, the final epoch's metrics, the per-epoch history."""

    run_ids: dict[str, str]  # stream (cross-fitted: "<stream>-fold<k>") -> run id
    metrics: dict[str, dict[str, float]]
    history: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    checkpoints: dict[str, str] = field(default_factory=dict)
    registered: dict[str, str] = field(default_factory=dict)  # stream -> models:/NAME/VERSION (register_as)
    fold_runs: dict[int, dict[str, str]] = field(default_factory=dict)  # fold (FOLD_ALL: none) -> stream -> run id
    curves_png: str | None = None  # the stage's training curves (also an artifact of each CNN's run)


# ---------------------------------------------------------------------------------------------
# The driver.


@dataclass
class _StreamJob:
    stream: str
    run_id: str
    loop_config: dict[str, Any]
    fold: int = FOLD_ALL  # cross-fitted: fitted on the training videos outside this fold
    state: dict | None = None  # the final checkpoint's state (model, history; best epoch when multi-label)
    checkpoint: str = ""  # where that checkpoint lives
    error: BaseException | None = None


@dataclass(frozen=True)
class _SplitData:
    """What a fit reads about its split's videos (the clips themselves are read by the loop)."""

    train_labels: dict[str, int]  # video -> first label (-1: a multi-label video with none)
    val_labels: dict[str, int]
    class_names: list[str]
    stack: int
    multilabel: bool
    train_targets: dict[str, list[int]]  # video -> every label (multi-label data; else empty)
    val_targets: dict[str, list[int]]
    fold_of: dict[str, int]  # training video -> its cross-fitting fold (FOLD_ALL without)


def _split_data(store_uri: str, split: int, storage_options: dict | None, cross_fit: int = 0) -> _SplitData:
    from hyvid.store.feature_store import FeatureStore

    fs = FeatureStore(store_uri, storage_options)
    multilabel = fs.is_multilabel()
    videos = fs.videos(split=split)
    ids = videos.column("video_id").to_pylist()
    labels = videos.column("label").to_pylist()
    multi = videos.column("labels").to_pylist()
    subsets = videos.column("subset").to_pylist()
    by_subset: dict[str, dict[str, int]] = {"train": {}, "val": {}}
    targets: dict[str, dict[str, list[int]]] = {"train": {}, "val": {}}
    for v, lab, labs, s in zip(ids, labels, multi, subsets, strict=True):
        if s not in by_subset:
            continue
        if multilabel:  # a video with no positive label is a negative of every class
            by_subset[s][v] = int(lab) if lab is not None else -1
            targets[s][v] = [int(c) for c in labs or ()]
        elif lab is not None and lab >= 0:
            by_subset[s][v] = int(lab)
    if not by_subset["train"]:
        raise ValueError(f"no labelled ok training video in split {split} of store {store_uri!r}; "
                         "run `hyvid extract` with a dataset that has this split")
    class_names = fs.class_names()
    clips = fs.table("clips")
    first = clips.to_table(columns=["stack"], limit=1)
    if first.num_rows == 0:
        raise ValueError(f"the clips table of store {store_uri!r} is empty; run `hyvid extract` first")
    # The folds of every training video of the split, failed ones too: `features` deals the same folds.
    everything = fs.videos(split=split, status=None)
    fold_of = video_folds(everything.column("video_id").to_pylist(), everything.column("subset").to_pylist(),
                          everything.column("group").to_pylist(), cross_fit)
    return _SplitData(by_subset["train"], by_subset["val"], class_names, int(first.column("stack")[0].as_py()),
                      multilabel, targets["train"], targets["val"], fold_of)


def _log_results(job: _StreamJob, cfg: TrainCNNConfig, store_uri: str, class_names: list[str], stack: int,
                 multilabel: bool = False):
    """Driver side: per-epoch metrics and the final model into the stream's MLflow run."""
    import mlflow

    model_name = MODEL_OF_STREAM[job.stream]
    num_classes = len(class_names)
    with tracking.start_run(model_name, tracking.STAGE_TRAIN_CNN, cfg.split, store_uri, run_id=job.run_id):
        if job.error is None and job.state is None:
            job.error = RuntimeError(f"the {job.stream} fit reported no checkpoint")
        if job.error is not None:
            mlflow.set_tag(tracking.TAG_ERROR, str(job.error)[:5000])
            mlflow.end_run(status="FAILED")
            return None, []
        state = job.state
        history = list(state["history"])
        for m in history:
            step = int(m["epoch"])
            mlflow.log_metrics({k: float(v) for k, v in m.items() if k != "epoch"}, step=step)
        # The training crop goes with the model: inference takes its test views at that size.
        model = build_stream_cnn(job.stream, num_classes, stack, cfg.feature_dim, cfg.dropout, cfg.finetune,
                                 pretrained=False, multilabel=multilabel, crop=cfg.crop)
        # Multi-label fits log their best val-mAP epoch; single-label ones their last (see cnn_loop).
        best = state.get("best") or {}
        model.load_state_dict(best["model"] if best.get("model") is not None else state["model"])
        model.eval()
        if best.get("model") is not None:
            mlflow.log_metrics({"best_epoch": float(best["epoch"]), f"best_val_{primary_metric(True)}":
                                float(best["value"])})
        mlflow.log_dict(
            {"stream": job.stream, "num_classes": num_classes, "class_names": class_names, "stack": stack,
             "feature_dim": cfg.feature_dim, "finetune": cfg.finetune, "crop": cfg.crop,
             "checkpoint": job.checkpoint,
             "multilabel": multilabel},
            tracking.CNN_CONFIG_ARTIFACT,
        )
        # A standalone pyfunc holding the whole pickled module, so `features()` is there on load.
        packaging.log_cnn(model, model_name, job.stream, stack, class_names, multilabel)
        # The run was created (and ended) before the fit; `features` only picks runs with a model.
        mlflow.set_tag(tracking.TAG_MODEL_LOGGED, "true")
        return job.checkpoint, history


def train_cnn(cfg: TrainCNNConfig) -> TrainCNNResult:
    """Fit the chosen stream CNN(s) and log each as an MLflow run.

    With one worker per stream (the default) each stream is a fit of the long-lived worker pool
    (`training.pool`: no Ray Train controller or worker group to start); with `workers > 1` it is
    a Ray Train fit of that many data-parallel workers. Either way it checkpoints every epoch
    under the checkpoint path and resumes from there.
    """
    import mlflow
    from ray.train import CheckpointConfig, FailureConfig, RunConfig
    from ray.train.torch import TorchTrainer

    from hyvid.cluster.connect import connect
    from hyvid.cluster.resources import scaling_config

    store_uri = canonical_store_uri(cfg.store_uri)
    data = _split_data(store_uri, cfg.split, cfg.storage_options, cfg.cross_fit)
    train_labels, val_labels, class_names, stack = data.train_labels, data.val_labels, data.class_names, data.stack
    num_classes = len(class_names)
    if num_classes < 2:
        raise ValueError(f"store {store_uri!r} has {num_classes} class(es); a classifier needs at least 2")
    resources = connect(cfg.address)
    n_workers = cfg.workers * len(cfg.streams)
    cpus = cfg.cpus_per_worker or max(1, int(float(resources.get("CPU", 1)) // n_workers))
    # All workers of both streams share the GPUs (when there are any) rather than wait for each other.
    scaling = scaling_config(cfg.workers, kind="train-cnn", cpus_per_worker=cpus, use_gpu=cfg.use_gpu,
                             cluster=resources, sharing=n_workers)
    use_gpu = bool(scaling.use_gpu)
    storage = canonical_store_uri(cfg.checkpoint_path or f"{store_uri.rstrip('/')}/_checkpoints")

    tracking.setup(tracking.resolve_tracking_uri(cfg.tracking_uri), cfg.experiment)
    jobs: list[_StreamJob] = []
    folds = range(cfg.cross_fit) if cfg.cross_fit else (FOLD_ALL,)
    for stream, fold in ((st, f) for f in folds for st in cfg.streams):
        lr = cfg.lr_for(stream)
        iters = cfg.iters_for(stream)
        milestones = iteration_milestones(stream, iters) if iters else lr_milestones(cfg.epochs)
        fold_train = {v: y for v, y in train_labels.items() if fold == FOLD_ALL or data.fold_of[v] != fold}
        with tracking.start_run(MODEL_OF_STREAM[stream], tracking.STAGE_TRAIN_CNN, cfg.split, store_uri,
                                tags=fold_tags(fold, cfg.cross_fit)) as run:
            lineage = tracking.log_lineage(store_uri, LINEAGE_TABLES, cfg.storage_options)
            # Only what this fit used: no unset options (address, checkpoint_path), no spatial-only ones on motion.
            params = {k: v for k, v in asdict(cfg).items() if k in _FIT_PARAMS and v is not None}
            if iters:
                params.update(iters=iters, schedule="iterations")
                params.pop("epochs", None)
            if stream == "spatial":
                params.update(finetune=cfg.finetune)
                if cfg.finetune == "head":
                    params.update(head_views=cfg.head_views)
            params.update(stream=stream, lr=lr, num_classes=num_classes, stack=stack, use_gpu=use_gpu,
                          cpus_per_worker=cpus, n_train_videos=len(fold_train), n_val_videos=len(val_labels),
                          optimizer="sgd", lr_milestones=json.dumps(milestones),
                          multilabel=data.multilabel, loss="bce_with_logits" if data.multilabel else "cross_entropy",
                          selected_by=f"val_{primary_metric(True)} (best epoch)" if data.multilabel else "last epoch")
            if cfg.cross_fit:
                params.update(fold=fold)
            tracking.log_params_safe(params)
            run_id = run.info.run_id
        # Leaving the `with` ended the run FINISHED, before any fit: it is RUNNING until `_log_results`
        # ends it with its model (or FAILED), so an interrupt or a kill never leaves a FINISHED run without one.
        mlflow.MlflowClient().update_run(run_id, status="RUNNING")
        loop_config = {
            "stream": stream, "store_uri": store_uri, "storage_options": cfg.storage_options,
            "clips_version": lineage["tables"]["clips"], "train_labels": fold_train, "val_labels": val_labels,
            "num_classes": num_classes, "stack": stack, "epochs": cfg.epochs, "iters": iters,
            "amp": cfg.amp, "batch_size": cfg.batch_size,
            "lr": lr, "momentum": cfg.momentum, "weight_decay": cfg.weight_decay, "finetune": cfg.finetune,
            "feature_dim": cfg.feature_dim, "dropout": cfg.dropout, "crop": cfg.crop, "seed": cfg.seed,
            "cpus_per_worker": cpus, "head_views": cfg.head_views, "multilabel": data.multilabel, "flip": cfg.flip,
            "train_targets": data.train_targets, "val_targets": data.val_targets,
        }
        jobs.append(_StreamJob(stream, run_id, loop_config, fold))

    def fit_name(job: _StreamJob) -> str:
        # A fixed name resumes from that directory's checkpoints; a fresh fit gets a new one.
        name = f"{MODEL_OF_STREAM[job.stream]}-split{cfg.split}" + (f"-fold{job.fold}" if cfg.cross_fit else "")
        if not cfg.resume:
            name += f"-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        return name

    def fit(job: _StreamJob) -> None:
        name = fit_name(job)
        trainer = TorchTrainer(
            train_loop_per_worker,
            train_loop_config=job.loop_config,
            scaling_config=scaling,
            run_config=RunConfig(
                name=name,
                storage_path=storage,
                failure_config=FailureConfig(max_failures=cfg.max_failures),
                checkpoint_config=CheckpointConfig(num_to_keep=2),
                logging_config=logs.ray_train_logging(),
            ),
        )
        log.info("fitting %s (Ray Train run %s, %d worker(s) x %s)", job.stream, name, cfg.workers,
                 scaling.resources_per_worker)
        t0 = time.perf_counter()
        try:
            result = trainer.fit()
            job.checkpoint = result.checkpoint.path if result.checkpoint else ""
            job.state = load_checkpoint(result.checkpoint, map_location="cpu", weights_only=True)
        except BaseException as e:  # noqa: BLE001 - recorded in its MLflow run, re-raised after the other stream ends
            job.error = e
        log.info("%s fit %s in %.1f s", job.stream, "failed" if job.error else "done", time.perf_counter() - t0)

    if cfg.workers == 1:
        _fit_on_pool(cfg, jobs, fit_name, storage, cpus, resources)
    elif len(jobs) == 1:
        fit(jobs[0])
    else:
        with cf.ThreadPoolExecutor(max_workers=len(jobs)) as pool:
            list(pool.map(fit, jobs))

    run_ids, metrics, history, checkpoints = {}, {}, {}, {}
    fold_runs: dict[int, dict[str, str]] = {}
    for job in jobs:
        path, hist = _log_results(job, cfg, store_uri, class_names, stack, data.multilabel)
        key = job.stream if job.fold == FOLD_ALL else f"{job.stream}-fold{job.fold}"
        run_ids[key] = job.run_id
        fold_runs.setdefault(job.fold, {})[job.stream] = job.run_id
        if path is not None:
            checkpoints[key] = path
            history[key] = hist
            metrics[key] = {k: float(v) for k, v in hist[-1].items()} if hist else {}
    errors = [j for j in jobs if j.error is not None]
    if errors:
        raise RuntimeError(
            "; ".join(f"{j.stream} CNN fit failed (MLflow run {j.run_id}): {j.error}" for j in errors)
        ) from errors[0].error
    curves = None
    if history and not cfg.cross_fit:  # one figure of one fit per stream (cross-fitted: each fold's run has its own)
        from hyvid.pipelines.evaluation import plots
        from hyvid.pipelines.training.runs import log_training_curves

        models = {MODEL_OF_STREAM[st]: st for st in history}
        curves = log_training_curves(
            tracking.resolve_tracking_uri(cfg.tracking_uri),
            {m: {k: [(int(h["epoch"]), float(h[k])) for h in history[st] if k in h]
                 for pair in plots.CURVE_PAIRS for k in pair} for m, st in models.items()},
            {m: run_ids[st] for m, st in models.items()},
            str(Path(cfg.plots_dir) / f"split{cfg.split}") if cfg.plots_dir else None, "train_cnn_curves.png",
            f"hyvid train-cnn, split {cfg.split}: per-epoch train and val curves (val: video-level)")
    registered = {}
    if cfg.register_as:
        done = register_runs({MODEL_OF_STREAM[st]: r for st, r in run_ids.items()}, cfg.register_as, cfg.register_alias)
        registered = {st: done[MODEL_OF_STREAM[st]].uri for st in run_ids}
    return TrainCNNResult(run_ids, metrics, history, checkpoints, registered, fold_runs=fold_runs, curves_png=curves)


def _fit_on_pool(cfg: TrainCNNConfig, jobs: list[_StreamJob], fit_name: Callable[[_StreamJob], str], storage: str,
                 cpus: float, resources: dict) -> None:
    """One stream per long-lived pool worker (training.pool), checkpointing to `storage`."""
    from hyvid.cluster.resources import task_options
    from hyvid.pipelines.training.checkpoint import FileSession
    from hyvid.pipelines.training.pool import run_fits

    by_id = {}
    for job in jobs:
        name = fit_name(job)
        job.loop_config = {**job.loop_config, "kind": "cnn", "model": MODEL_OF_STREAM[job.stream], "fit_id": name,
                           "storage_path": storage}
        by_id[name] = job
        log.info("fitting %s (fit %s on a pool worker x %g CPU(s))", job.stream, name, cpus)
    options = task_options("train-cnn", in_flight=len(jobs), num_cpus=cpus, use_gpu=cfg.use_gpu, cluster=resources)
    outcomes = run_fits([j.loop_config for j in jobs], size=len(jobs), threads=max(1, int(cpus)),
                        max_failures=cfg.max_failures, actor_options={**options, "scheduling_strategy": "SPREAD"})
    for name, out in outcomes.items():
        job = by_id[name]
        if out.error is not None:
            job.error = out.error
            continue
        session = FileSession(storage, name, cfg.storage_options)
        job.state, job.checkpoint = session.restore(), session.path
        log.info("%s fit done in %.1f s", job.stream, out.wall_s)
