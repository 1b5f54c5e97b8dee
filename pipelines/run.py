"""`hyvid run` and `hyvid demo`: the whole chain, stage after stage, resuming what is done.

extract -> train-cnn -> features -> train -> hybrid, per split. Each stage is the same function
its own command calls; this module only decides what still needs doing:
- extract and features are idempotent by construction (they skip committed videos);
- train-cnn and train are skipped for a model whose finished MLflow run, in this experiment and
  split, read the same Lance versions of its input tables (its lineage) as the store has now
  (train-cnn's also fitted with the same crop, flips, schedule and fine-tuning);
- hybrid always runs: it only reads `video_scores` and takes seconds.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from hyvid.cluster.connect import connect
from hyvid.cluster.settings import DEFAULT_EXPERIMENT
from hyvid.models import registry as R
from hyvid.models.cnn import FINETUNE_MODES
from hyvid.pipelines import tracking
from hyvid.pipelines.data.video import DEFAULT_POSITIONS, DEFAULT_STACK, FLOW_METHODS
from hyvid.pipelines.evaluation.findings import findings, per_kind_accuracy, per_kind_markdown
from hyvid.pipelines.extract import ExtractConfig, extract
from hyvid.pipelines.features import FeaturesConfig, extract_features
from hyvid.pipelines.hybrid import DEFAULT_WEIGHTS_FROM, HybridConfig, hybrid
from hyvid.pipelines.inference.cnn import check_test_views
from hyvid.pipelines.train import DEFAULT_MODELS, TrainConfig, expand_models, train
from hyvid.pipelines.train_cnn import PAPER_SIZE, TrainCNNConfig, train_cnn
from hyvid.pipelines.training.folds import DEFAULT_CROSS_FIT, check_cross_fit, cnn_pairs
from hyvid.store.feature_store import FeatureStore
from hyvid.store.tables import CLIPS, FRAME_FEATURES_NAME, VIDEOS

log = logging.getLogger(__name__)

# train-cnn's epochs per stream in a run: cheap for the spatial head (cached backbone); ~15 s per motion
# epoch on the demo.
CNN_EPOCHS = 6
# `paper=True` for the whole chain: each stage's own paper preset (TrainCNNConfig.paper,
# FeaturesConfig.paper, TrainConfig.paper), and extraction as the paper's CNNs need it: TV-L1 flow
# (tvl1-torch: OpenCV's TV-L1 scheme in torch, batched, on the GPUs where the cluster has some) of
# frames PAPER_SIZE px on the short side, for the 224-px training crops.
PAPER_FLOW = "tvl1-torch"
PAPER_EXTRACT_SETTINGS: dict[str, object] = {"flow": PAPER_FLOW, "size": PAPER_SIZE}


@dataclass(frozen=True)
class RunConfig:
    """The whole chain on one dataset. Stage settings not named here keep their own defaults.

    A None setting is the stage's default, or with `paper` the paper's (PAPER_EXTRACT_SETTINGS and the
    stages' presets); a setting given wins over both.
    """

    dataset: str
    store_uri: str
    splits: tuple[int, ...] = (1,)
    experiment: str = DEFAULT_EXPERIMENT
    tracking_uri: str | None = None
    address: str | None = None
    storage_options: dict | None = None
    # extract
    frames: int = DEFAULT_POSITIONS
    stack: int = DEFAULT_STACK
    flow: str | None = None  # None: the extractor's default (paper: PAPER_FLOW)
    size: int | None = None  # None: the extractor's default (paper: PAPER_SIZE)
    # train-cnn
    cnn_epochs: int | None = None  # None: CNN_EPOCHS (paper: the paper's iterations, cnn_loop.PAPER_CNN_ITERS)
    finetune: str | None = None  # None: train-cnn's default (paper: its PAPER_FINETUNE)
    flip: bool = True  # random horizontal flips of training clips (off: classes defined by direction)
    cross_fit: int = DEFAULT_CROSS_FIT  # K >= 2: cross-fitted CNN pairs (training.folds)
    # features: crops averaged per clip (models.cnn.TEST_VIEWS); None: features' default (paper: its PAPER_TEST_VIEWS).
    test_views: int | None = None
    # train
    models: tuple[str, ...] = DEFAULT_MODELS
    lstm_epochs: int | None = None  # None: the train stage's defaults
    video_epochs: int | None = None
    lam2_grid: tuple[float, ...] | None = None  # fusion net's λ2/λ3 cross-validation; None: train's grid
    lam3_grid: tuple[float, ...] | None = None
    paper: bool = False  # every paper setting: extract's, train-cnn's, features' and train's (see the class doc)
    cv_folds: int | None = None  # out-of-fold folds for the hybrid's weights; None: train's default
    refit: bool = False  # refit every chosen model on train + val before it scores test
    seeds: int = 1  # repeat train-cnn, features, train and hybrid with seeds 0..seeds-1 and report mean ± sd
    # hybrid
    hybrid_step: float = 0.05
    weights_from: str = DEFAULT_WEIGHTS_FROM  # the hybrid's weights: out-of-fold training scores, or "val"
    out_dir: str | None = None  # every stage's plots (training curves, hybrid weights); None: ./hyvid_plots
    allow_failures: bool = False  # exit 0 when some videos failed to extract (the rest are used either way)

    def __post_init__(self) -> None:
        object.__setattr__(self, "splits", R.check_splits(self.splits))
        for name in ("lstm_epochs", "video_epochs", "cnn_epochs", "size", "seeds"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        check_cross_fit(self.cross_fit)
        if self.flow is not None and self.flow not in FLOW_METHODS:
            raise ValueError(f"flow must be one of {', '.join(FLOW_METHODS)}, got {self.flow!r}")
        if self.finetune is not None and self.finetune not in FINETUNE_MODES:
            raise ValueError(f"finetune must be one of {', '.join(FINETUNE_MODES)}, got {self.finetune!r}")
        if self.test_views is not None:
            check_test_views(self.test_views)
        if self.seeds > 1 and len(self.splits) > 1:
            raise ValueError(f"--seeds {self.seeds} repeats the fits of one split; got splits {list(self.splits)}")
        if not os.path.exists(self.dataset):
            raise FileNotFoundError(
                f"dataset {self.dataset!r} does not exist; give a UCF-101-layout folder or a manifest "
                "CSV (`hyvid synth OUT` writes a synthetic one)"
            )


@dataclass
class RunResult:
    seconds: dict[str, float] = field(default_factory=dict)  # stage (and split) -> wall seconds
    skipped: list[str] = field(default_factory=list)
    hybrid_run_ids: dict[int, str] = field(default_factory=dict)
    test_metrics: dict[int, dict[str, float]] = field(default_factory=dict)
    # With seeds > 1: seed -> model (the hybrid included) -> its test metrics.
    seed_metrics: dict[int, dict[str, dict[str, float]]] = field(default_factory=dict)
    failed_videos: int = 0  # videos of the dataset that are failed in the store (extract's failures)

    def exit_code(self, allow_failures: bool = False) -> int:
        """1 when a video of the dataset could not be extracted, unless `allow_failures`."""
        return 1 if self.failed_videos and not allow_failures else 0

    def seed_summary(self) -> dict[str, dict[str, tuple[float, float]]]:
        """model -> metric -> (mean, sd) over the seeds (sd with ddof=1; 0 for one seed)."""
        import numpy as np

        out: dict[str, dict[str, tuple[float, float]]] = {}
        models = {m for per in self.seed_metrics.values() for m in per}
        for m in sorted(models):
            metrics = {k for per in self.seed_metrics.values() for k in per.get(m, {})}
            for k in sorted(metrics):
                vals = np.array([per[m][k] for per in self.seed_metrics.values() if k in per.get(m, {})])
                out.setdefault(m, {})[k] = (float(vals.mean()), float(vals.std(ddof=1)) if len(vals) > 1 else 0.0)
        return out


# The tables each fitting stage reads: a fit is current when it read their present versions.
TRAIN_CNN_INPUTS = (VIDEOS.name, CLIPS.name)
TRAIN_INPUTS = (VIDEOS.name, FRAME_FEATURES_NAME)


def _up_to_date(run, versions: dict[str, int], tables: tuple[str, ...]) -> bool:
    return run is not None and tracking.lineage_matches(run, versions, tables)


def run(cfg: RunConfig) -> RunResult:
    """Run every stage for every split, skipping fits that are already current."""
    res = RunResult()
    tracking_uri = tracking.resolve_tracking_uri(cfg.tracking_uri)
    tracking.setup(tracking_uri, cfg.experiment)
    connect(cfg.address)
    fs = FeatureStore(cfg.store_uri, storage_options=cfg.storage_options)

    def timed(name: str, fn, *a, **kw):
        t0 = time.perf_counter()
        print(f"\n== {name} ==", flush=True)
        out = fn(*a, **kw)
        res.seconds[name] = round(time.perf_counter() - t0, 1)
        return out

    ex = timed("extract", extract, extract_config(cfg))
    print(f"extract: {ex.ok} ok, {ex.failed} failed, {ex.skipped} already there", flush=True)
    res.failed_videos = ex.failed + ex.skipped_failed
    if ex.exit_code != 0:
        raise ValueError(f"extract: no video of {cfg.dataset!r} could be extracted: {ex.failures[:5]}")

    for split in cfg.splits:
        for seed in range(cfg.seeds):
            tag = f"split {split}" + (f" seed {seed}" if cfg.seeds > 1 else "")
            # With several seeds each one fits its own CNNs, so the spread covers the CNNs' variance too.
            cnn_seed = seed if cfg.seeds > 1 else None
            cnn_cfg = train_cnn_config(cfg, split, seed, tracking_uri)
            if _current_cnns(cnn_cfg, cnn_seed, fs.versions()):
                res.skipped.append(f"train-cnn {tag}")
                print(f"\n== train-cnn {tag}: current runs found, skipped ==", flush=True)
            else:
                timed(f"train-cnn {tag}", train_cnn, cnn_cfg)

            timed(f"features {tag}", extract_features, features_config(cfg, split, cnn_seed, tracking_uri))

            versions = fs.versions()
            fit_runs = tracking.latest_runs_by_model(cfg.experiment, stage=tracking.STAGE_TRAIN, split=split,
                                                     store_uri=cfg.store_uri)
            todo = tuple(
                m for m in expand_models(cfg.models)
                if not (_up_to_date(fit_runs.get(m), versions, TRAIN_INPUTS)
                        and fit_runs[m].data.params.get("seed") == str(seed))
            )
            if todo:
                timed(f"train {tag}", train, _train_config(cfg, split, seed, todo, tracking_uri))
            else:
                res.skipped.append(f"train {tag}")
                print(f"\n== train {tag}: current runs found, skipped ==", flush=True)

            hy = timed(
                f"hybrid {tag}", hybrid,
                HybridConfig(store_uri=cfg.store_uri, split=split, step=cfg.hybrid_step,
                             weights_from=cfg.weights_from,
                             experiment=cfg.experiment, tracking_uri=tracking_uri,
                             storage_options=cfg.storage_options, out_dir=cfg.out_dir),
            )
            res.hybrid_run_ids[split] = hy.run_id
            if cfg.seeds > 1:  # the report's spread across seeds groups the hybrid runs by it
                from mlflow import MlflowClient

                MlflowClient().set_tag(hy.run_id, tracking.TAG_SEED, str(seed))
            res.test_metrics[split] = dict(hy.test_metrics)
            if cfg.seeds > 1:
                res.seed_metrics[seed] = {**hy.components, R.HYBRID: dict(hy.test_metrics)}
    return res


def _fit_settings(cnn: TrainCNNConfig, stream: str) -> dict[str, str]:
    """The params (as MLflow stores them) that a fit of `stream` by `cnn` logs and a current run must share."""
    iters = cnn.iters_for(stream)
    out = {"crop": str(cnn.crop), "flip": str(cnn.flip),
           **({"iters": str(iters)} if iters else {"epochs": str(cnn.epochs)})}
    if stream == "spatial":
        out["finetune"] = cnn.finetune
    return out


def _current_cnns(cnn: TrainCNNConfig, seed: int | None, versions: dict[str, int]) -> bool:
    """Whether the split has finished CNN runs of this cross-fit (and seed) that read the store's present
    inputs with the fit settings `cnn` would use (crop, flips, schedule, fine-tuning): then train-cnn is skipped."""
    from mlflow import MlflowClient

    try:
        pairs = cnn_pairs(cnn.experiment, cnn.split, cnn.store_uri, cnn.cross_fit, seed)
    except FileNotFoundError:
        return False
    client = MlflowClient()
    runs = [(stream, client.get_run(r)) for pair in pairs.values() for stream, r in zip(R.STREAMS, pair, strict=True)]
    # Runs logged before flip was a param were fitted with flips (the only setting then).
    return all(_up_to_date(r, versions, TRAIN_CNN_INPUTS)
               and all(r.data.params.get(k, "True" if k == "flip" else None) == v
                       for k, v in _fit_settings(cnn, stream).items())
               for stream, r in runs)


def extract_config(cfg: RunConfig) -> ExtractConfig:
    """`extract`'s config: the run's settings on extract's (or, with `paper`, PAPER_EXTRACT_SETTINGS's) defaults."""
    given = {k: v for k, v in (("flow", cfg.flow), ("size", cfg.size)) if v is not None}
    preset = PAPER_EXTRACT_SETTINGS if cfg.paper else {}
    return ExtractConfig(dataset=cfg.dataset, store_uri=cfg.store_uri, address=cfg.address,
                         storage_options=cfg.storage_options, frames=cfg.frames, stack=cfg.stack,
                         **{**preset, **given})


def train_cnn_config(cfg: RunConfig, split: int, seed: int, tracking_uri: str | None) -> TrainCNNConfig:
    """`train-cnn`'s config for one split and seed: both streams, the run's settings on train-cnn's
    defaults (CNN_EPOCHS epochs), or with `paper` on TrainCNNConfig.paper's (a given cnn_epochs wins)."""
    kw = dict(store_uri=cfg.store_uri, stream="both", split=split, flip=cfg.flip, cross_fit=cfg.cross_fit,
              seed=seed, experiment=cfg.experiment, tracking_uri=tracking_uri,
              storage_options=cfg.storage_options, address=cfg.address, plots_dir=cfg.out_dir)
    if cfg.finetune is not None:
        kw["finetune"] = cfg.finetune
    if cfg.paper:
        return TrainCNNConfig.paper(**kw, **({} if cfg.cnn_epochs is None else {"epochs": cfg.cnn_epochs}))
    return TrainCNNConfig(**kw, epochs=CNN_EPOCHS if cfg.cnn_epochs is None else cfg.cnn_epochs)


def features_config(cfg: RunConfig, split: int, cnn_seed: int | None, tracking_uri: str | None) -> FeaturesConfig:
    """`features`' config for one split (and seed's CNNs): with `paper`, FeaturesConfig.paper's views."""
    make = FeaturesConfig.paper if cfg.paper else FeaturesConfig
    return make(store_uri=cfg.store_uri, split=split, experiment=cfg.experiment, tracking_uri=tracking_uri,
                storage_options=cfg.storage_options, address=cfg.address, cross_fit=cfg.cross_fit,
                cnn_seed=cnn_seed, **({} if cfg.test_views is None else {"test_views": cfg.test_views}))


def _train_config(cfg: RunConfig, split: int, seed: int, models: tuple[str, ...], tracking_uri: str) -> TrainConfig:
    """`train`'s config for one split and seed: the run's overrides on train's (or the paper's) defaults."""
    kw = {name: getattr(cfg, name) for name in ("lstm_epochs", "video_epochs", "lam2_grid", "lam3_grid", "cv_folds")
          if getattr(cfg, name) is not None}
    make = TrainConfig.paper if cfg.paper else TrainConfig
    return make(store_uri=cfg.store_uri, split=split, models=models, experiment=cfg.experiment,
                tracking_uri=tracking_uri, storage_options=cfg.storage_options, address=cfg.address,
                refit=cfg.refit, seed=seed, plots_dir=cfg.out_dir, **kw)


@dataclass(frozen=True)
class DemoConfig:
    """`hyvid demo`: synth + run with everything (data, store, MLflow db, plots) under `out`."""

    out: str = "demo_out"
    classes: int | None = None  # None: synth's defaults
    # 20, not synth's 15: the hybrid's weights and the fusion net's λ's are chosen on validation
    # videos, and with 15 per class there are only 2 per class (20 in all) to choose on.
    videos_per_class: int | None = 20
    splits: tuple[int, ...] = (1,)
    experiment: str = "hyvid-demo"

    def __post_init__(self) -> None:
        object.__setattr__(self, "splits", R.check_splits(self.splits))
        for name in ("classes", "videos_per_class"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")

    def paths(self) -> dict[str, str]:
        out = Path(self.out).resolve()
        return {
            "data": str(out / "data"),
            "store": str(out / "store"),
            "tracking_uri": f"sqlite:///{out / 'mlflow.db'}",
            "plots": str(out / "plots"),
        }


def demo(cfg: DemoConfig) -> tuple[RunResult, str]:
    """Generate the synthetic dataset, run the chain on it, and return (result, report markdown)."""
    from hyvid.pipelines.data.synth import SynthConfig, synth
    from hyvid.pipelines.report import ReportConfig, report

    p = cfg.paths()
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    kw = {}
    if cfg.classes is not None:
        kw["classes"] = cfg.classes
    if cfg.videos_per_class is not None:
        kw["videos_per_class"] = cfg.videos_per_class
    t0 = time.perf_counter()
    print("== synth ==", flush=True)
    s = synth(SynthConfig(out=Path(p["data"]), **kw))
    print(f"synth: {len(s.videos)} videos of {len(s.classes)} classes in {p['data']}", flush=True)
    res = run(RunConfig(dataset=p["data"], store_uri=p["store"], splits=cfg.splits,
                        experiment=cfg.experiment, tracking_uri=p["tracking_uri"], out_dir=p["plots"]))
    res.seconds["total"] = round(time.perf_counter() - t0, 1)
    md = report(ReportConfig(experiment=cfg.experiment, tracking_uri=p["tracking_uri"], splits=cfg.splits))
    for split in cfg.splits:
        table = per_kind_accuracy(p["store"], split)
        md += f"\n\nTest accuracy (%) per kind of synthetic class, split {split}:\n\n{per_kind_markdown(table)}\n"
        md += (f"\nThe paper's findings on this run (split {split}; paired bootstrap over test videos):\n\n"
               + "\n".join(findings(p["store"], split)) + "\n")
    (Path(cfg.out) / "report.md").write_text(md)
    return res, md


def next_steps(cfg: DemoConfig, video_id: str | None) -> str:
    """The commands a user runs next on the demo's outputs."""
    p = cfg.paths()
    env = f"MLFLOW_TRACKING_URI={p['tracking_uri']}"
    vid = f"'{video_id}'" if video_id else "VIDEO_ID"
    return "\n".join([
        "Next:",
        f"  hyvid query --store {p['store']} --video {vid} --frames 0:5",
        f"  hyvid similar --store {p['store']} --video {vid} --frame 0 -k 5",
        f"  {env} hyvid runs --experiment {cfg.experiment}",
        f"  {env} hyvid report --experiment {cfg.experiment} --format json",
        f"  {env} hyvid predict {p['data']}/<Class>/<video>.avi --experiment {cfg.experiment}",
        f"  mlflow ui --backend-store-uri {p['tracking_uri']} --host 127.0.0.1 --port 5000",
        f"  plots: {p['plots']}",
    ])
