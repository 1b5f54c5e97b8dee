"""`hyvid train`: fit the temporal LSTMs, the regularized fusion network and the baselines, concurrently.

Every fit (``spatial_lstm``, ``motion_lstm``, the fusion net's λ2/λ3 cross-validation trials and its
final fit, ``fusion_noreg``, ``nn_ef``, ``nn_lf``, ``svm_ef``, ``svm_lf``) is a job for a pool of
long-lived Ray actors (:mod:`hyvid.pipelines.training.pool`): one per CPU share, spread over the
cluster's nodes, each importing torch and MLflow once and keeping the features it read. The driver
queues the fits longest first and queues the fusion net's final fit once its trials are in. With
``workers_per_model > 1`` each torch fit is instead a Ray Train ``TorchTrainer`` of that many
data-parallel workers (for data too large for one).

Every fit is one MLflow run (params, per-epoch train/val metrics, final val/test metrics, the
model, lineage, and where its time went: ``time_load_s``, ``time_compute_s``, ``time_log_s``) and
writes its per-video val and test scores to the store's ``video_scores`` table, which the hybrid
stage combines without re-running any model.
"""
from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from hyvid.cluster.settings import DEFAULT_EXPERIMENT
from hyvid.models import registry as R
from hyvid.models.fusion import CROSS_ENTROPY, FUSION_LOSSES, PAPER_LAM1, PAPER_LR, SQUARED
from hyvid.models.lstm import TEMPORAL_INPUTS
from hyvid.pipelines import faults, logs, tracking
from hyvid.pipelines.inference.registration import check_register, register_runs
from hyvid.pipelines.training.data import LSTM_STREAM
from hyvid.pipelines.training.families import ADAM, OPTIMIZERS, SGD
from hyvid.pipelines.training.search import (
    DEFAULT_LAM2_GRID,
    DEFAULT_LAM3_GRID,
    DEFAULT_MDBM_LR_GRID,
    DEFAULT_NN_LR_GRID,
    DEFAULT_NOREG_LR_GRID,
    DEFAULT_RDNN_LAM_GRID,
    DEFAULT_SVM_C_GRID,
    PAPER_LAM_GRID,
    PAPER_NN_LR_GRID,
    PAPER_NOREG_LR_GRID,
    SEARCH_KEYS,
    Setting,
    is_trial,
)
from hyvid.store.lance_io import canonical_store_uri, is_local_uri

log = logging.getLogger(__name__)

BASELINES = "baselines"  # CLI shorthand for the Table 2 baselines fitted by default (R.BASELINE_MODELS)
ALL = "all"  # CLI shorthand for every model `train` fits: the LSTMs, the fusion net and every Table 2 row
DEFAULT_MODELS = (R.SPATIAL_LSTM, R.MOTION_LSTM, R.FUSION, BASELINES)
TRAINABLE = (*R.LSTM_MODELS, *R.FUSION_MODELS, R.NN_EF, R.NN_LF, R.SVM_EF, R.SVM_LF, *R.EXTRA_BASELINE_MODELS)
_SHORTHANDS = {BASELINES: R.BASELINE_MODELS, ALL: TRAINABLE}

# The paper's LSTM (Sec. 3.2): 1024/512 units, SGD lr 1e-4, momentum 0.9, mini-batch 10, 150K
# iterations. With a few epochs on a small store lr 1e-4 barely moves the weights, so the demo
# default is Adam (lr 1e-3) on a smaller net; `TrainConfig.paper()` / `--paper` restores the paper's.
# Chosen on validation: on the demo's features Adam reached a motion LSTM val accuracy of 88%
# against 50% for SGD (lr 0.05), in the same 30 epochs.
PAPER_LSTM_HIDDEN = (1024, 512)
PAPER_LSTM_LR = 1e-4
DEMO_LSTM_HIDDEN = (256, 128)
DEMO_LSTM_LR = 1e-3
DEMO_LSTM_OPTIMIZER = "adam"
# The LSTMs' inputs and loss, chosen on validation only. Two criteria, both on val:
# 1. What an LSTM adds to a blend with a logistic regression on the time averages (benchmarks/video_nets.py,
#    benchmarks/results/video_nets.json). On dense101 (motion LSTM, 482 val videos) the paper's inputs add
#    nothing (blend 0.751 = the regression's 0.751); the deviation from the video's mean 0.853 (0.865 with the
#    step loss, 0.836 with input dropout 0.5), "both" 0.782 (measured with dropout 0.5 only). On sparse10 (31 val
#    videos, 3 seeds) and the tests' toy store every input blends to 0.98-1.0; the step loss costs the
#    standalone toy LSTM 15-19 points (0.85/0.81 against 1.0/0.98).
# 2. The LSTM on its own, a Table 2 row that must learn: dense101 standalone 0.141 (features), 0.216-0.218
#    (deviation), 0.234 (both); sparse10 0.99-1.0 / 0.26-0.34 / 1.0. On stores of real CNN features
#    (benchmarks/lstm_input.py, benchmarks/results/lstm_input.json; the demo's set, 30 val videos, and the
#    multi-label set, 48): spatial LSTM val 0.43 / 0.30 / 0.47 and 0.529 / 0.489 / 0.486 mAP, motion LSTM
#    0.67 / 0.63 / 0.77 and 0.536 / 0.530 / 0.542, and the hybrid's val 0.733 / 0.867 / 0.867 and
#    0.576 / 0.597 / 0.587 mAP (features / deviation / both).
# Deviation alone left the spatial LSTM at chance end to end at 101 classes (2.5% test). "both" learns on its
# own everywhere (never below deviation by more than 0.004), with the hybrid's val level with deviation's on
# the demo set and 0.010 mAP below on the multi-label set; its price is dense101's blend (0.782 against 0.836
# at the same dropout). So: "both", the last step's loss, no input dropout. `--lstm-input deviation` keeps
# the blend-only choice, `features` the paper's inputs.
DEFAULT_LSTM_STEP_LOSS = False
DEFAULT_LSTM_INPUT_DROPOUT = 0.0
DEFAULT_LSTM_TEMPORAL_INPUT = "both"
DEFAULT_LSTM_PATIENCE = 5
# The fusion net, on dense101's 482 val videos (benchmarks/results/video_nets.json; 60 epochs, the epoch
# chosen on val): the paper's squared loss stays at chance (1-2%) with plain SGD (lr 0.3, 0.7) and with
# Adam (3e-4 to 3e-3), with or without input dropout; cross-entropy reaches 0.61 with plain SGD (lr 0.3),
# 0.71 with SGD and input dropout 0.2, 0.71 with Adam, and 0.7635 with Adam at lr 1e-3 and input dropout
# 0.2 (against 0.75 for a logistic regression on the same averages); on sparse10 (31 val videos) every
# cross-entropy setting lies within one video (0.90-0.94). Early stopping after 10 epochs without a val
# gain kept the same epoch there (46 of 60); with the squared loss it would stop during its slow start
# on sparse10 (0.37-0.68 against 0.90-0.94 run to the end), so --paper runs every epoch.
DEFAULT_FUSION_LOSS = CROSS_ENTROPY
DEFAULT_VIDEO_OPTIMIZER = ADAM
DEFAULT_FUSION_LR = 1e-3
DEFAULT_INPUT_DROPOUT = 0.2
DEFAULT_VIDEO_BATCH_SIZE = 32
DEFAULT_VIDEO_EPOCHS = 100
DEFAULT_VIDEO_PATIENCE = 10
# NN-EF on dense101's val videos: SGD (momentum 0.9, batch 10) at lr 0.01 0.72 with or without input dropout,
# 0.45 at 0.03 and 0.06 at 0.1 (diverging); Adam 0.64-0.71 (0.66-0.69 with dropout). So the NN baselines keep
# SGD with momentum, searching lr over DEFAULT_NN_LR_GRID, without input dropout.
DEFAULT_NN_OPTIMIZER = SGD
DEFAULT_NN_BATCH_SIZE = 10
DEFAULT_NN_INPUT_DROPOUT = 0.0


def expand_models(names: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """Registry names to fit, with ``baselines`` expanded, duplicates dropped, order kept."""
    out: list[str] = []
    for n in names:
        for m in _SHORTHANDS.get(n, (n,)):
            if m not in out:
                out.append(m)
    R.check_model_names(out)
    bad = [m for m in out if m not in TRAINABLE]
    if bad:
        raise ValueError(
            f"`hyvid train` does not fit {bad}: CNNs are fitted by `hyvid train-cnn`, the hybrid by "
            f"`hyvid hybrid`; choose from {list(TRAINABLE) + list(_SHORTHANDS)}"
        )
    return tuple(out)


@dataclass(frozen=True)
class TrainConfig:
    """Everything `hyvid train` needs; defaults are the demo's, `TrainConfig.paper()` the paper's."""

    store_uri: str
    split: int = 1
    models: tuple[str, ...] = DEFAULT_MODELS
    workers_per_model: int = 1  # Ray Train workers (data-parallel ranks) per torch model
    # CPUs per fit worker (and Ray Train worker). None: one each (see pool_plan).
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
    lstm_step_loss: bool = DEFAULT_LSTM_STEP_LOSS  # the loss on every step's softmax (the paper's), else the last's
    lstm_input_dropout: float = DEFAULT_LSTM_INPUT_DROPOUT
    # What each LSTM step reads: "features" (the paper's), "deviation" (from the video's mean over time) or "both".
    lstm_temporal_input: str = DEFAULT_LSTM_TEMPORAL_INPUT
    lstm_patience: int = DEFAULT_LSTM_PATIENCE  # early stopping: epochs without a better val epoch (0: never)
    # Video-level nets: the fusion network (Sec. 3.3) and the NN baselines.
    video_epochs: int = DEFAULT_VIDEO_EPOCHS  # at most: early stopping ends most fits sooner
    video_patience: int = DEFAULT_VIDEO_PATIENCE
    fusion_loss: str = DEFAULT_FUSION_LOSS  # the paper's is "squared"
    fusion_optimizer: str = DEFAULT_VIDEO_OPTIMIZER  # the paper's is plain "sgd"
    fusion_lr: float = DEFAULT_FUSION_LR  # the paper's is models.fusion.PAPER_LR (0.7, with sgd)
    fusion_input_dropout: float = DEFAULT_INPUT_DROPOUT  # the paper's net has none
    lam1: float = PAPER_LAM1
    lam2_grid: tuple[float, ...] = DEFAULT_LAM2_GRID
    lam3_grid: tuple[float, ...] = DEFAULT_LAM3_GRID
    abstraction: int = 200
    fusion_units: int = 200
    fusion_batch_size: int = DEFAULT_VIDEO_BATCH_SIZE
    nn_hidden: int = 200
    nn_batch_size: int = DEFAULT_NN_BATCH_SIZE
    nn_optimizer: str = DEFAULT_NN_OPTIMIZER
    nn_input_dropout: float = DEFAULT_NN_INPUT_DROPOUT
    # Each baseline's main hyperparameter, chosen on val from its grid (training.search; one value:
    # no search). The torch nets also choose their epoch on val.
    nn_lr_grid: tuple[float, ...] = DEFAULT_NN_LR_GRID
    noreg_lr_grid: tuple[float, ...] = DEFAULT_NOREG_LR_GRID
    svm_c_grid: tuple[float, ...] = DEFAULT_SVM_C_GRID
    rdnn_lam_grid: tuple[float, ...] = DEFAULT_RDNN_LAM_GRID
    mdbm_lr_grid: tuple[float, ...] = DEFAULT_MDBM_LR_GRID
    # The protocol (training.search): out-of-fold scores of these models over the training videos,
    # by group, for the hybrid's weights (0: none, and the hybrid falls back to val scores); and a
    # refit of every chosen model on train + val before it scores test.
    cv_folds: int = 3
    oof_models: tuple[str, ...] = R.HYBRID_COMPONENTS
    refit: bool = False
    # The SVM baselines' χ² kernel: "exact" (precomputed, N x N per stream), "approx" (scikit-learn's
    # additive-χ² feature map and linear SVMs, linear in N), or "auto": exact up to svm_exact_max
    # training videos. The bound is a cost bound, not a tuned one: at UCF-101's 7.4K training videos
    # the exact kernels hold 2 x 440 MB and 101 one-vs-rest SVCs on them take hours on 2 cores.
    svm_kernel: str = "auto"
    svm_exact_max: int = 2000
    # Tracking and infrastructure.
    experiment: str = DEFAULT_EXPERIMENT
    tracking_uri: str | None = None  # None: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db
    storage_options: dict[str, str] | None = None
    storage_path: str | None = None  # fit checkpoints (shared storage on a cluster); None: <store>/_train (local)
    keep_checkpoints: bool = False  # the model lives in MLflow; drop a finished fit's checkpoints
    max_failures: int = 2  # times a fit whose worker died is started again (from its checkpoint)
    # Checkpoint (and flush per-epoch metrics) at most this often, and after the last epoch; see
    # pipelines.training.checkpoint.report_due for why not after every epoch of a small model.
    checkpoint_every_s: float = 5.0
    address: str | None = None
    plots_dir: str | None = None  # the training curves' PNG goes to <plots_dir>/split<N>/; None: MLflow artifacts only
    seed: int = 0
    # Fault injection (hyvid.pipelines.faults): a JSON spec; None: the HYVID_FAULTS variable, if set.
    faults: str | None = None
    # Register each fitted model in MLflow's registry: as NAME (one model) or NAME-<model> (several).
    register_as: str | None = None
    register_alias: str | None = None  # with register_as: point this alias of each registered model at it

    def __post_init__(self) -> None:
        object.__setattr__(self, "models", expand_models(tuple(self.models)))
        R.check_split(self.split)
        for name in ("workers_per_model", "lstm_epochs", "video_epochs", "lstm_batch_size", "fusion_batch_size",
                     "nn_batch_size", "abstraction", "fusion_units", "nn_hidden"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_failures < 0:
            raise ValueError(f"max_failures must be >= 0, got {self.max_failures}")
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
        for name, choices in (("fusion_loss", FUSION_LOSSES), ("fusion_optimizer", OPTIMIZERS),
                              ("nn_optimizer", OPTIMIZERS), ("lstm_temporal_input", TEMPORAL_INPUTS)):
            if getattr(self, name) not in choices:
                raise ValueError(f"{name} must be one of {choices}, got {getattr(self, name)!r}")
        for name in ("fusion_input_dropout", "nn_input_dropout", "lstm_input_dropout"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        for name in ("lstm_patience", "video_patience"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"{name} must be >= 0 (0: no early stopping), got {getattr(self, name)}")
        if self.svm_kernel not in ("auto", "exact", "approx"):
            raise ValueError(f"svm_kernel must be 'auto', 'exact' or 'approx', got {self.svm_kernel!r}")
        if self.svm_exact_max < 1:
            raise ValueError(f"svm_exact_max must be >= 1, got {self.svm_exact_max}")
        for name in ("lstm_lr", "fusion_lr"):
            if not 0 < getattr(self, name) < math.inf:
                raise ValueError(f"{name} must be a finite number > 0, got {getattr(self, name)}")
        if not 0 <= self.lam1 < math.inf:
            raise ValueError(f"lam1 must be a finite number >= 0, got {self.lam1}")
        for name, low in (("lam2_grid", 0.0), ("lam3_grid", 0.0), ("rdnn_lam_grid", 0.0), ("nn_lr_grid", None),
                          ("noreg_lr_grid", None), ("svm_c_grid", None), ("mdbm_lr_grid", None)):
            grid = tuple(float(v) for v in getattr(self, name))
            ok = all(math.isfinite(v) and (v >= 0 if low is not None else v > 0) for v in grid)
            if not grid or not ok:
                raise ValueError(f"{name} must be a non-empty list of finite values "
                                 f"{'>= 0' if low is not None else '> 0'}, got {getattr(self, name)}")
            object.__setattr__(self, name, grid)
        if self.cv_folds < 0 or self.cv_folds == 1:
            raise ValueError(f"cv_folds must be 0 (no out-of-fold scores) or >= 2, got {self.cv_folds}")
        object.__setattr__(self, "oof_models", tuple(self.oof_models))
        R.check_model_names(list(self.oof_models))
        check_register(self.register_as, self.register_alias)
        bad = sorted(faults.targets(self.faults, faults.TRAIN_AFTER_EPOCH) - set(self.models))
        if bad:
            raise ValueError(f"faults: {faults.TRAIN_AFTER_EPOCH} names models that are not fitted: {bad}")

    @classmethod
    def paper(cls, store_uri: str, **overrides: Any) -> "TrainConfig":
        """Every setting the paper gives (Sec. 3.2, 3.3, 4.1.2): the LSTM (1024/512 units with
        peepholes, a softmax loss on every step, SGD lr 1e-4, momentum 0.9, batch 10), the fusion
        net (squared loss, plain SGD at lr 0.7, λ1 = 3e-5, λ2/λ3 searched around 3e-5), no dropout
        and no early stopping; `overrides` win."""
        return cls(store_uri=store_uri, **{**PAPER_SETTINGS, **overrides})

    def grids(self) -> dict[str, tuple[float, ...]]:
        """Config key -> the values its model's search tries (training.search.SEARCH_KEYS)."""
        return {"lam2": self.lam2_grid, "lam3": self.lam3_grid, "nn_lr": self.nn_lr_grid,
                "fusion_lr": self.noreg_lr_grid, "svm_c": self.svm_c_grid, "rdnn_lam": self.rdnn_lam_grid,
                "mdbm_lr": self.mdbm_lr_grid}


PAPER_SETTINGS: dict[str, Any] = {
    "lstm_hidden": PAPER_LSTM_HIDDEN, "lstm_lr": PAPER_LSTM_LR, "lstm_optimizer": SGD, "lstm_momentum": 0.9,
    "lstm_batch_size": 10, "lstm_peephole": True, "lstm_step_loss": True, "lstm_input_dropout": 0.0,
    "lstm_temporal_input": "features",
    "lstm_patience": 0, "video_patience": 0, "video_epochs": 60,
    "fusion_loss": SQUARED, "fusion_optimizer": SGD, "fusion_lr": PAPER_LR, "fusion_input_dropout": 0.0,
    "fusion_batch_size": 10, "lam1": PAPER_LAM1, "lam2_grid": PAPER_LAM_GRID, "lam3_grid": PAPER_LAM_GRID,
    "noreg_lr_grid": PAPER_NOREG_LR_GRID,
    # The NN baselines' own settings are not in the paper; --paper gives them the same SGD as the fusion net.
    "nn_optimizer": SGD, "nn_input_dropout": 0.0, "nn_batch_size": 10, "nn_lr_grid": PAPER_NN_LR_GRID,
}


@dataclass(frozen=True)
class ModelResult:
    """One fit: its MLflow run, its final metrics (val_*, test_*), and when it ran (driver clock)."""

    model: str
    run_id: str
    metrics: dict[str, float]
    start: float
    end: float
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. the fusion net's chosen lam2/lam3
    seconds: dict[str, float] = field(default_factory=dict)  # startup, load, compute, log (training.pool)
    peak_rss_gb: float = float("nan")  # the resident memory of the worker that ran it, at its highest

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
    registered: dict[str, str] = field(default_factory=dict)  # model -> models:/NAME/VERSION (register_as)
    curves_png: str | None = None  # the stage's training curves (also an artifact of each torch model's run)

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


def pool_plan(cfg: TrainConfig, total_cpus: float, n_fits: int) -> tuple[int, float]:
    """(workers, CPUs per worker) of the fit pool.

    Concurrent: one worker per CPU (or per `cpus_per_worker`), no more than there are fits.
    Sequential (the benchmark's baseline): one worker with every CPU. Each worker runs torch with
    floor(its CPUs) threads.
    """
    if not cfg.concurrent:
        return 1, float(cfg.cpus_per_worker or max(1.0, total_cpus))
    cpus = float(cfg.cpus_per_worker or 1.0)
    return max(1, min(n_fits, int(total_cpus // cpus) or 1)), cpus


def fit_config(cfg: TrainConfig, model: str, *, store_uri: str, tracking_uri: str, experiment_id: str,
               fit_id: str, num_classes: int, multilabel: bool, storage_path: str) -> dict:
    """The JSON-able dict a fit receives (URIs and numbers only; each worker reads its own data)."""
    lstm = model in LSTM_STREAM
    return {
        "model": model, "store_uri": store_uri, "storage_options": cfg.storage_options, "split": cfg.split,
        "tracking_uri": tracking_uri, "experiment_id": experiment_id, "fit_id": fit_id,
        "num_classes": num_classes, "multilabel": multilabel, "seed": cfg.seed,
        "epochs": cfg.lstm_epochs if lstm else cfg.video_epochs,
        "lstm_hidden": list(cfg.lstm_hidden), "lstm_pooling": cfg.lstm_pooling, "lstm_peephole": cfg.lstm_peephole,
        "lstm_optimizer": cfg.lstm_optimizer, "lstm_lr": cfg.lstm_lr, "lstm_momentum": cfg.lstm_momentum,
        "lstm_batch_size": cfg.lstm_batch_size, "lstm_step_loss": cfg.lstm_step_loss,
        "lstm_input_dropout": cfg.lstm_input_dropout, "lstm_temporal_input": cfg.lstm_temporal_input,
        "patience": cfg.lstm_patience if lstm else cfg.video_patience,
        "fusion_loss": cfg.fusion_loss, "fusion_optimizer": cfg.fusion_optimizer,
        "fusion_input_dropout": cfg.fusion_input_dropout,
        "fusion_lr": cfg.fusion_lr, "lam1": cfg.lam1, "lam2": 0.0, "lam3": 0.0, "abstraction": cfg.abstraction,
        "fusion_units": cfg.fusion_units, "fusion_batch_size": cfg.fusion_batch_size,
        "nn_hidden": cfg.nn_hidden, "nn_batch_size": cfg.nn_batch_size, "nn_optimizer": cfg.nn_optimizer,
        "nn_input_dropout": cfg.nn_input_dropout,
        # Searched keys start at their grid's first value; every fit of a searched model overrides them.
        **{k: grid[0] for k, grid in cfg.grids().items() if k in SEARCH_KEYS.get(model, ())},
        "svm_kernel": cfg.svm_kernel, "svm_exact_max": cfg.svm_exact_max,
        "faults": faults.resolve(cfg.faults), "report_every_s": cfg.checkpoint_every_s,
        "storage_path": storage_path, "keep_checkpoints": cfg.keep_checkpoints,
        "command": tracking.command_line(),  # the runs' hyvid.command tag, on any node
        "owner": tracking.run_owner(),  # the runs' hyvid.owner tag, on any node (pipelines.ownership)
    }


# Relative cost of each kind of fit on the demo's store, for "longest first" (measured: an LSTM
# epoch ~0.5 s, a fusion/NN epoch ~0.05 s, an SVM fit ~1 s at 140 training videos; M-DBM ~2 s,
# exact SVM-MKL ~1 s, RDNN ~3x the fusion net on a demo-sized store).
_COST = {R.SPATIAL_LSTM: 30.0, R.MOTION_LSTM: 30.0, R.SVM_EF: 2.0, R.SVM_LF: 2.0, R.SPATIAL_SVM: 1.0,
         R.MOTION_SVM: 1.0, R.SVM_MKL: 2.0, R.M_DBM: 2.0, R.RDNN: 9.0}


def _cost(config: dict) -> float:
    return _COST.get(config["model"], 3.0)


class _Stage:
    """One `train` call: every model's search, final fit, refit and out-of-fold fits (training.search)."""

    def __init__(self, cfg: TrainConfig, store_uri: str, tracking_uri: str, experiment_id: str,
                 num_classes: int, multilabel: bool, cpus: float, folds: int) -> None:
        self.cfg, self.store_uri, self.tracking_uri, self.experiment_id = cfg, store_uri, tracking_uri, experiment_id
        self.num_classes, self.multilabel = num_classes, multilabel
        self.storage_path = _storage_path(cfg, store_uri)
        self.batch_id = uuid.uuid4().hex[:8]
        self.cpus = cpus  # of each fit worker
        # model -> its parent run, grid, finished trials (setting, val, val loss) and trials ended either way
        self.searches: dict[str, dict[str, Any]] = {}
        self.chosen: dict[str, Setting] = {}
        self.n_folds = folds  # cfg.cv_folds, or fewer when the training videos have fewer groups
        self.folds: dict[str, dict[str, Any]] = {}  # model -> its final run and finished held-out folds
        self.failed_searches: dict[str, BaseException] = {}  # model -> the error of its last trial, all failed

    def config(self, model: str) -> dict:
        config = fit_config(self.cfg, model, store_uri=self.store_uri, tracking_uri=self.tracking_uri,
                            experiment_id=self.experiment_id, fit_id=f"{model}-{self.batch_id}",
                            num_classes=self.num_classes, multilabel=self.multilabel, storage_path=self.storage_path)
        config["cpus_per_worker"] = self.cpus
        config["torch_threads"] = max(1, int(self.cpus))
        return config

    def first_fits(self) -> list[dict]:
        """Every fit that can start now: each model's search trials, or its final fit if it has no search."""
        from mlflow import MlflowClient

        from hyvid.pipelines.training.search import model_grid, trial_config

        out = []
        for model in self.cfg.models:
            grid = model_grid(model, self.cfg.grids())
            if len(grid) == 1:
                out.append(self._final(model, grid[0], None))
                continue
            base = self.config(model)
            parent = MlflowClient(self.tracking_uri).create_run(
                self.experiment_id, run_name=tracking.run_name(model, self.cfg.split),
                tags=tracking.run_tags(model, tracking.STAGE_TRAIN, self.cfg.split, self.store_uri,
                                       **{tracking.TAG_FIT_ID: base["fit_id"]}),
            ).info.run_id
            self.searches[model] = {"parent": parent, "grid": grid, "trials": [], "done": 0}
            out += [trial_config(base, setting, parent) for setting in grid]
        return out

    def _final(self, model: str, setting: Setting, parent: str | None) -> dict:
        if parent is not None:
            from mlflow import MlflowClient

            client = MlflowClient(self.tracking_uri)
            for key, value in setting.items():
                client.log_param(parent, key, value)
        self.chosen[model] = dict(setting)
        return {**self.config(model), **setting, "run_id": parent}

    def on_result(self, out) -> list[dict]:
        """A finished fit queues what depends on it: a search's last trial the final fit; a final fit
        its refit and out-of-fold fits; the last fold the out-of-fold scores' commit."""
        from hyvid.pipelines.training.search import fold_configs, log_choice, refit_config

        config, model = out.config, out.config["model"]
        if is_trial(config):
            # A trial that failed (a diverging lr, say) is the worst candidate, not the model's failure;
            # the search fails only when every trial did (`choose` has nothing left).
            search = self.searches[model]
            search["done"] += 1
            if out.error is None:
                m = out.result["metrics"]
                val = float(m.get("best_val", -math.inf))
                search["trials"].append(({k: float(config[k]) for k in SEARCH_KEYS[model]},
                                         val if math.isfinite(val) else -math.inf,
                                         float(m.get("best_val_loss", math.inf))))
            if search["done"] < len(search["grid"]):
                return []
            if not search["trials"]:
                self.failed_searches[model] = out.error or RuntimeError("no trial finished")
                return []
            setting, _ = log_choice(model, search["trials"], search["grid"], self.tracking_uri, search["parent"])
            return [self._final(model, setting, search["parent"])]
        if out.error is not None:
            return []
        if config.get("fold") is not None:
            self._held_out(model, out.result)
            return []
        if config.get("refit"):
            return []
        run_id, metrics = out.result["run_id"], out.result["metrics"]
        queued = [refit_config(config, metrics, run_id)] if self.cfg.refit else []
        if self.n_folds >= 2 and model in self.cfg.oof_models:
            self.folds[model] = {"run_id": run_id, "parts": []}
            queued += fold_configs(config, metrics, run_id, self.n_folds)
        return queued

    def _held_out(self, model: str, result: dict) -> None:
        """Collect a fold's held-out scores; once all K are in, store them as the model's training scores."""
        import numpy as np
        from mlflow import MlflowClient

        from hyvid.pipelines.evaluation.metrics import evaluate
        from hyvid.pipelines.training.runs import metric_batch
        from hyvid.store.scores import upsert_video_scores

        entry = self.folds[model]
        entry["parts"].append(result["held_out"])
        if len(entry["parts"]) < self.n_folds:
            return
        parts = entry["parts"]
        ids = [v for p in parts for v in p["video_ids"]]
        scores = np.concatenate([np.asarray(p["scores"], dtype=np.float32) for p in parts])
        labels = np.concatenate([np.asarray(p["labels"], dtype=np.int64) for p in parts])
        multi = [m for p in parts for m in p["labels_multi"]]
        # One commit for all folds: the hybrid reads a model's training scores whole or not at all.
        upsert_video_scores(self.store_uri, model, self.cfg.split, entry["run_id"], ids, ["train"] * len(ids),
                            scores, labels.tolist(), multi, storage_options=self.cfg.storage_options)
        oof = evaluate(scores, labels, multi, multilabel=self.multilabel)
        MlflowClient(self.tracking_uri).log_batch(entry["run_id"], metrics=metric_batch(
            {f"oof_{k}": v for k, v in oof.items()} | {"oof_videos": float(len(ids)),
                                                       "cv_folds": float(self.n_folds)}, step=0))
        log.info("%s: out-of-fold scores of %d training videos (%d folds) stored, accuracy %.3f",
                 model, len(ids), self.n_folds, oof.get("accuracy", float("nan")))

    def mark_failed(self, fit_id: str) -> None:
        """A fit that gave up leaves a FAILED run, not one RUNNING forever."""
        from mlflow import MlflowClient

        client = MlflowClient(self.tracking_uri)
        try:
            # The fit id is a uuid made here, not a user value, so it is safe in a filter string.
            for run in client.search_runs([self.experiment_id],
                                          filter_string=f"tags.`{tracking.TAG_FIT_ID}` = '{fit_id}'"):
                if run.info.status == "RUNNING":
                    client.set_terminated(run.info.run_id, "FAILED")
        except Exception as e:  # noqa: BLE001 - the fit's own error is the one to report
            log.warning("could not mark the MLflow run of %s as failed: %s", fit_id, e)


def _trainer_fit(cfg: TrainConfig, config: dict, storage_path: str) -> dict:
    """One torch fit as a Ray Train TorchTrainer of `cfg.workers_per_model` data-parallel workers."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig
    from ray.train.torch import TorchTrainer

    from hyvid.cluster.resources import scaling_config
    from hyvid.pipelines.training.loops import torch_train_loop

    scaling = scaling_config(cfg.workers_per_model, kind="train", cpus_per_worker=config["cpus_per_worker"],
                             use_gpu=cfg.use_gpu)
    trainer = TorchTrainer(
        torch_train_loop,
        train_loop_config={**config, "use_gpu": bool(scaling.use_gpu)},
        scaling_config=scaling,
        run_config=RunConfig(
            # A fresh name per fit: Ray Train resumes a run whose name it finds in storage_path.
            name=config["fit_id"], storage_path=storage_path,
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=1),
            logging_config=logs.ray_train_logging(),
        ),
    )
    result = trainer.fit()
    if not cfg.keep_checkpoints and is_local_uri(storage_path) and result.path:
        shutil.rmtree(result.path, ignore_errors=True)
    if not result.return_value:
        raise RuntimeError(f"{config['model']}: training finished without a result from rank 0 (see worker logs)")
    return result.return_value


def train(cfg: TrainConfig) -> TrainResult:
    """Fit every model of ``cfg.models`` (concurrently unless ``cfg.concurrent`` is False)."""
    from hyvid.cluster.connect import connect
    from hyvid.cluster.resources import task_options
    from hyvid.pipelines.training.pool import FitOutcome, run_fits
    from hyvid.pipelines.training.search import model_grid, usable_folds
    from hyvid.store.feature_store import FeatureStore
    from hyvid.store.lance_io import open_table
    from hyvid.store.tables import FRAME_FEATURES_NAME

    t0 = time.time()
    store_uri = canonical_store_uri(cfg.store_uri)  # absolute: Ray workers run in their own directory
    fs = FeatureStore(store_uri, cfg.storage_options)
    open_table(store_uri, FRAME_FEATURES_NAME, cfg.storage_options)  # fail early: names the stage that makes it
    num_classes, multilabel = len(fs.class_names()), fs.is_multilabel()
    if num_classes < 2:
        raise ValueError(f"store {store_uri!r} has {num_classes} class(es) in its `classes` table; need >= 2")
    tracking_uri = tracking.resolve_tracking_uri(cfg.tracking_uri)  # absolute, for the same reason
    experiment_id = tracking.setup(tracking_uri, cfg.experiment)
    resources = connect(cfg.address)
    n_first = sum(len(model_grid(m, cfg.grids())) for m in cfg.models)
    size, cpus = pool_plan(cfg, float(resources.get("CPU", 1)), n_first)
    folds = 0
    if cfg.cv_folds >= 2 and set(cfg.oof_models) & set(cfg.models):  # only then are the groups needed
        groups = set(fs.videos(split=cfg.split, subset="train").column("group").to_pylist())
        folds = usable_folds(cfg.cv_folds, len(groups), cfg.split)
    stage = _Stage(cfg, store_uri, tracking_uri, experiment_id, num_classes, multilabel, cpus, folds)
    first = stage.first_fits()
    log.info("fitting %s on split %d of %s: %d fit(s) to start on %d worker(s) x %g CPU(s)%s", ", ".join(cfg.models),
             cfg.split, tracking.redact(store_uri), len(first), size, cpus,
             "" if cfg.concurrent else " (one after another)")

    results: dict[str, ModelResult] = {}
    errors: dict[str, BaseException] = {}
    bar = tqdm(total=0, desc="train", unit="fit")  # dispatch counts every fit it is handed
    fits_line, fits_done = logs.Every(), [0]
    trainer_futures: dict[Any, FitOutcome] = {}
    pool = ThreadPoolExecutor(max_workers=max(1, len(cfg.models)), thread_name_prefix="trainer")

    def record(out: FitOutcome) -> None:
        config, model = out.config, out.config["model"]
        bar.update(1)
        fits_done[0] += 1  # the bar counts nothing when disabled (no terminal)
        if out.error is not None:
            stage.mark_failed(config["fit_id"])
            if is_trial(config) and model not in stage.failed_searches:
                log.warning("search trial %s failed, counted as the worst candidate: %s", config["fit_id"], out.error)
                return
            log.error("fit %s failed: %s", config["fit_id"], out.error)
            errors.setdefault(model, out.error)  # a failed fold or refit, or every trial, fails its model
            return
        if config.get("cv_only"):  # a search trial or fold: a line at most every logs.PROGRESS_EVERY_S
            if fits_line.due():
                log.info("train: %d of %d fits done (last: %s)", fits_done[0], bar.total, config["fit_id"])
            return
        split = out.time_split()
        results[model] = ModelResult(model, out.result["run_id"], out.result["metrics"], out.submitted,
                                     out.finished, dict(stage.chosen.get(model, {})), seconds=split,
                                     peak_rss_gb=float(out.result.get("peak_rss_gb", float("nan"))))
        if out.result.get("peak_rss_gb") is not None:
            from mlflow import MlflowClient

            MlflowClient(tracking_uri).log_metric(out.result["run_id"], "peak_rss_gb", float(out.result["peak_rss_gb"]))
        log.info("%s%s done in %.1f s (%s): %s", model, " (refit on train + val)" if config.get("refit") else "",
                 out.wall_s, " + ".join(f"{v:.1f} {k}" for k, v in split.items()),
                 ", ".join(f"{k}={v:.3f}" for k, v in sorted(out.result["metrics"].items())
                           if k.startswith(("val_acc", "test_acc"))))

    def dispatch(configs: list[dict]) -> list[dict]:
        """Send torch fits other than search trials to TorchTrainers (with workers_per_model > 1);
        return the rest, for the pool."""
        from hyvid.pipelines.training.families import TORCH_MODELS

        bar.total += len(configs)
        bar.refresh()
        if cfg.workers_per_model == 1:
            return configs
        to_pool = []
        for c in configs:
            if c["model"] in TORCH_MODELS and not is_trial(c):
                trainer_futures[pool.submit(_trainer_fit, cfg, c, stage.storage_path)] = FitOutcome(
                    c, submitted=time.time())
            else:
                to_pool.append(c)
        return to_pool

    def on_result(out: FitOutcome) -> list[dict]:
        return dispatch(stage.on_result(out))

    pending = dispatch(first)
    try:
        while pending or trainer_futures:
            if pending:
                run_fits(pending, size=size, threads=max(1, int(cpus)), max_failures=cfg.max_failures, cost=_cost,
                         actor_options={**task_options("train", in_flight=size, num_cpus=cpus, use_gpu=cfg.use_gpu,
                                                       cluster=resources), "scheduling_strategy": "SPREAD"},
                         on_result=on_result, on_done=record)
                pending = []
            while trainer_futures and not pending:
                fut = next(iter(as_completed(list(trainer_futures))))
                out = trainer_futures.pop(fut)
                try:
                    out.result = fut.result()
                except Exception as e:  # noqa: BLE001 - reported with the model's name below
                    out.error = e
                out.finished = time.time()
                pending = on_result(out)  # follow-ups of a TorchTrainer fit; any for the pool run next
                record(out)
    finally:
        pool.shutdown(wait=True)
        bar.close()
    if errors:
        detail = "; ".join(f"{m}: {type(e).__name__}: {e}" for m, e in errors.items())
        raise RuntimeError(f"{len(errors)} of {len(cfg.models)} models failed ({detail}); "
                           f"finished: {sorted(results)}") from next(iter(errors.values()))
    ordered = {m: results[m] for m in cfg.models}
    curves = _log_curves(cfg, tracking_uri, ordered)
    registered = register_runs({m: r.run_id for m, r in ordered.items()}, cfg.register_as,
                               cfg.register_alias) if cfg.register_as else {}
    return TrainResult(ordered, time.time() - t0, experiment_id, tracking_uri, cfg.concurrent,
                       {m: r.uri for m, r in registered.items()}, curves)


def _log_curves(cfg: TrainConfig, tracking_uri: str, results: dict[str, ModelResult]) -> str | None:
    """The stage's per-epoch train/val curves as one PNG, logged to each torch model's run and
    written to `cfg.plots_dir` (its path, or None when no model had epochs)."""
    from mlflow import MlflowClient

    from hyvid.pipelines.evaluation import plots
    from hyvid.pipelines.training.runs import log_training_curves

    client = MlflowClient(tracking_uri)
    histories, selected = {}, {}
    for model, r in results.items():
        curves = {m: [(h.step, h.value) for h in client.get_metric_history(r.run_id, m)]
                  for pair in plots.CURVE_PAIRS for m in pair}
        if curves["train_loss"]:
            # The last val_* step is the selected epoch's value logged once more after the fit: not an epoch.
            last = max(step for step, _ in curves["train_loss"])
            histories[model] = {m: [(s, v) for s, v in h if s <= last] for m, h in curves.items()}
            selected[model] = int(r.metrics.get("best_epoch", -1))
    if not histories:
        return None
    path = log_training_curves(
        tracking_uri, histories, {m: r.run_id for m, r in results.items()},
        str(Path(cfg.plots_dir) / f"split{cfg.split}") if cfg.plots_dir else None, "train_curves.png",
        f"hyvid train, split {cfg.split}: per-epoch train and val curves (dotted: the epoch kept)", selected)
    if path:
        log.info("training curves: %s", path)
    return path
