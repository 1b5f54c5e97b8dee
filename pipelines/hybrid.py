"""The hybrid framework (Sec. 4.2.3): a linear fusion of the models' prediction scores.

The paper fuses the scores of the spatial LSTM, the motion LSTM and the regularized fusion
network linearly, with weights "estimated by cross-validation". Here the weights are searched
over a grid on the simplex on the components' out-of-fold scores of the training videos (K folds
by group, written by `hyvid train --cv-folds K`), then the chosen combination is evaluated once
on test. Without out-of-fold scores the search falls back to the validation subset. The stage
also computes the simple late average fusions of Table 1 (CNN+LSTM per stream and all four).

Scores are read from the store's `video_scores` (written by `hyvid features` for the CNNs and
`hyvid train` for the rest), so no model is re-run here.
"""
from __future__ import annotations

import json
import logging
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import mlflow
import numpy as np
import pandas as pd

from hyvid.cluster.settings import DEFAULT_EXPERIMENT
from hyvid.models.registry import (
    CNN_MODELS,
    FUSION,
    HYBRID,
    LATE_FUSIONS,
    MODEL_NAMES,
    MOTION_CNN,
    MOTION_LSTM,
    SPATIAL_CNN,
    SPATIAL_LSTM,
    check_model_names,
    check_split,
    primary_metric,
)
from hyvid.pipelines import tracking
from hyvid.pipelines.evaluation import metrics as M
from hyvid.pipelines.evaluation import plots
from hyvid.pipelines.evaluation.bootstrap import metric_intervals, resampling_units
from hyvid.pipelines.evaluation.findings import Scores, paper_findings
from hyvid.pipelines.evaluation.weights import SEARCH_METRICS, combine, grid_steps, search_weights
from hyvid.pipelines.inference.registration import check_register, register_runs
from hyvid.store.tables import EXTRACT_SETTINGS_METADATA_KEY, VIDEO_SCORES, VIDEOS

log = logging.getLogger(__name__)

DEFAULT_MODELS = (SPATIAL_LSTM, MOTION_LSTM, FUSION)
WEIGHT_SOURCES = ("oof", "val")
DEFAULT_WEIGHTS_FROM = "oof"
WEIGHTS_FROM_OOF = "out-of-fold training videos"
WEIGHTS_FROM_VAL = "validation videos"
DEFAULT_OUT_DIR = plots.DEFAULT_PLOTS_DIR  # `hyvid hybrid --out` default: PNG/CSV files, split<N>/ inside


# -- the stage ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class HybridConfig:
    """Settings of `hyvid hybrid`: which score sets to fuse, for which split, and where to log."""

    store_uri: str
    split: int = 1
    models: tuple[str, ...] = DEFAULT_MODELS
    step: float = 0.05
    refine: bool = False
    # What the weights are fitted on: "oof", the components' out-of-fold scores of the training videos
    # (the paper's cross-validation; falls back to val when a component has none), or "val".
    weights_from: str = DEFAULT_WEIGHTS_FROM
    metric: str | None = None  # None: accuracy (single-label) or map (multi-label), the paper's
    experiment: str = DEFAULT_EXPERIMENT
    tracking_uri: str | None = None
    storage_options: dict | None = field(default=None, hash=False)
    out_dir: str | None = None  # PNG/CSV files go here too; None: MLflow artifacts only
    late_fusion: bool = True
    register_as: str | None = None  # also register the hybrid's pyfunc under this MLflow model name
    register_alias: str | None = None  # with register_as: point this alias of the registered model at it

    def __post_init__(self) -> None:
        object.__setattr__(self, "models", tuple(self.models))
        check_model_names(self.models)
        if HYBRID in self.models:
            raise ValueError(f"models must not include {HYBRID!r} itself, got {list(self.models)}")
        if len(self.models) < 2 or len(set(self.models)) != len(self.models):
            raise ValueError(f"the hybrid needs at least 2 distinct models, got {list(self.models)}")
        check_split(self.split)
        grid_steps(self.step)
        n_cands = math.comb(round(1 / self.step) + len(self.models) - 1, len(self.models) - 1)
        if n_cands > 200_000:
            raise ValueError(
                f"{len(self.models)} models at step {self.step} make {n_cands} weight candidates; "
                "use a coarser --step (e.g. 0.1) or fewer models")
        if self.weights_from not in WEIGHT_SOURCES:
            raise ValueError(f"weights_from must be one of {list(WEIGHT_SOURCES)}, got {self.weights_from!r}")
        if self.metric is not None and self.metric not in SEARCH_METRICS:
            raise ValueError(f"unknown metric {self.metric!r}; choose from {list(SEARCH_METRICS)}")
        check_register(self.register_as, self.register_alias)


@dataclass(frozen=True)
class HybridResult:
    """What `hybrid` chose and measured; `files` maps a plot/table name to its path on disk."""

    run_id: str
    split: int
    models: tuple[str, ...]
    weights: dict[str, float]
    metric: str
    val_metric: float
    test_metrics: dict[str, float]
    val_metrics: dict[str, float]
    late_fusion: dict[str, dict[str, float]]  # Table 1 row -> test metrics
    components: dict[str, dict[str, float]]  # each model in video_scores -> test metrics
    candidates: pd.DataFrame
    files: dict[str, str]
    multilabel: bool
    model_uri: str | None = None  # the hybrid's pyfunc (pipelines.inference.pyfunc), models:/m-...
    registered_version: str | None = None  # with register_as: its version in the model registry


@dataclass(frozen=True)
class _Aligned:
    video_ids: list[str]
    scores: dict[str, np.ndarray]
    labels: np.ndarray
    labels_multi: list[list[int]]
    run_ids: dict[str, str]
    units: list[str] | None = None  # each video's bootstrap resampling unit (bootstrap.resampling_units)


def _producer(model: str) -> str:
    """The command that writes a model's scores, for error messages."""
    if model in CNN_MODELS:
        return "hyvid features"
    return f"hyvid train --models {model}"


def _load_aligned(fs, models: Sequence[str], split: int, subset: str) -> _Aligned:
    """Scores of `models` for one subset, restricted to the videos they all have, in one order."""
    sets, missing = {}, []
    for m in models:
        try:
            sets[m] = fs.scores(m, split, subset)
        except FileNotFoundError:
            missing.append(m)
    if missing:
        raise FileNotFoundError(
            f"no {subset} scores for split {split} in store {fs.uri!r} for model(s) {missing}; "
            "produce them first with " + "; ".join(f"`{_producer(m)}` ({m})" for m in missing))
    common = set.intersection(*(set(s.video_ids) for s in sets.values()))
    if not common:
        raise ValueError(f"models {list(models)} share no {subset} video in split {split}; "
                         "were they fitted on the same store and split?")
    for m, s in sets.items():
        if len(s.video_ids) != len(common):
            log.warning("%s: %d of %d %s videos lack scores of the other models; using the %d in common",
                        m, len(s.video_ids) - len(common), len(s.video_ids), subset, len(common))
    ids = sorted(common)
    scores, run_ids = {}, {}
    ref = None
    for m, s in sets.items():
        pos = {v: i for i, v in enumerate(s.video_ids)}
        idx = np.array([pos[v] for v in ids])
        scores[m] = np.asarray(s.scores, dtype=np.float64)[idx]
        run_ids[m] = s.run_id
        if ref is None:
            ref = (s.labels[idx], [s.labels_multi[i] for i in idx])
        elif not np.array_equal(ref[0], s.labels[idx]):
            raise ValueError(f"labels of {m} disagree with {models[0]} on split {split} {subset}; "
                             "the score sets come from different stores or extractions")
    n_cls = {v.shape[1] for v in scores.values()}
    if len(n_cls) != 1:
        raise ValueError(f"models {list(models)} have different class counts {sorted(n_cls)}")
    return _Aligned(ids, scores, ref[0], ref[1], run_ids, resampling_units(fs.groups(ids), ref[1]))


def _weight_scores(fs, models: Sequence[str], split: int, val: _Aligned,
                   weights_from: str = DEFAULT_WEIGHTS_FROM) -> tuple[_Aligned, str]:
    """The scores the weights are fitted on, and which they are.

    The paper estimates the weights by cross-validation: `hyvid train --cv-folds K` stores each
    component's out-of-fold scores of the training videos (subset "train"), which no choice of
    epoch or hyperparameter has seen. Without them (CNN components, or `--cv-folds 0`) the weights
    fall back to the val scores, which also chose the components' epochs, so they are optimistic.
    Out-of-fold scores are optimistic too, in another way: the CNNs whose features the components
    read were fine-tuned on those same training videos (on the demo the spatial LSTM scored 0.81
    out of fold, 0.47 on val and 0.30 on test), so `weights_from="val"` is offered beside them.
    """
    if weights_from == "val":
        return val, WEIGHTS_FROM_VAL
    try:
        return _load_aligned(fs, models, split, "train"), WEIGHTS_FROM_OOF
    except FileNotFoundError as e:
        log.warning("hybrid weights from the validation scores, which also chose the models' epochs (%s); "
                    "`hyvid train --cv-folds 3` gives every component out-of-fold training scores", e)
        return val, WEIGHTS_FROM_VAL


def _models_in_store(fs, split: int) -> list[str]:
    t = fs.table(VIDEO_SCORES.name).to_table(columns=["model", "split"])
    present = {m for m, s in zip(t.column("model").to_pylist(), t.column("split").to_pylist(), strict=True)
               if s == split}
    return [m for m in MODEL_NAMES if m in present and m != HYBRID]


def _class_names(fs, n: int) -> list[str]:
    try:
        names = fs.class_names()
    except FileNotFoundError:
        names = []
    return names if len(names) == n else [str(i) for i in range(n)]


def _provenance(fs, split: int) -> tuple[dict, dict[str, str]]:
    """The store's extraction settings and the CNN runs behind its frame features.

    `hyvid predict` starts from the hybrid run and must prepare a new video exactly as the
    training videos were (frames, L, flow method, size) and run the same CNNs, so both are
    recorded on the hybrid run rather than looked up in a store that may be gone by then.
    """
    settings: dict = {}
    meta = fs.table(VIDEOS.name).schema.metadata or {}
    if meta.get(EXTRACT_SETTINGS_METADATA_KEY):
        settings = json.loads(meta[EXTRACT_SETTINGS_METADATA_KEY])
    cnn_runs: dict[str, str] = {}
    try:
        pairs = fs.cnn_runs(split)
    except FileNotFoundError:
        return settings, cnn_runs
    except ValueError as e:  # an old-layout table, or a split whose features mix CNN pairs
        log.warning("no CNN runs recorded for predict: %s", e)
        return settings, cnn_runs
    if pairs:
        # Cross-fitted features come from K pairs (one per fold, training.folds); a new video goes through
        # the first, as each test video went through one pair.
        if len(pairs) > 1:
            log.warning("the features of split %d come from %d cross-fitted CNN pairs; predict will use the first",
                        split, len(pairs))
        cnn_runs = {SPATIAL_CNN: pairs[0][0], MOTION_CNN: pairs[0][1]}
    return settings, cnn_runs


def _log_metrics(prefix: str, subset: str, values: dict[str, float]) -> None:
    mlflow.log_metrics({prefix + tracking.metric_name(subset, k): float(v)
                        for k, v in values.items() if v is not None and not math.isnan(v)})


def _log_intervals(prefix: str, scores: np.ndarray, a: _Aligned, multilabel: bool) -> None:
    """The 95% bootstrap interval over test groups (videos where there are none) of each test metric, and
    the video count."""
    ci = metric_intervals(scores, a.labels, a.labels_multi, multilabel, groups=a.units)
    mlflow.log_metrics({prefix + k: v for k, v in tracking.interval_metrics("test", ci, len(a.video_ids)).items()
                        if not math.isnan(v)})


def _findings(comp_test: dict[str, _Aligned], test_hyb: np.ndarray, test: _Aligned, multilabel: bool) -> list[dict]:
    """The paper's findings, paired-bootstrapped on the test scores of every model and the hybrid."""
    sets = {m: Scores(a.video_ids, a.scores[m], a.labels, a.labels_multi) for m, a in comp_test.items()}
    sets[HYBRID] = Scores(test.video_ids, test_hyb, test.labels, test.labels_multi)
    units = {v: u for a in (*comp_test.values(), test) if a.units for v, u in zip(a.video_ids, a.units, strict=True)}
    return paper_findings(sets, multilabel, units=units or None)


def hybrid(cfg: HybridConfig) -> HybridResult:
    """Search the hybrid weights on out-of-fold training scores (else val), evaluate on test, log it
    all to MLflow, store the scores."""
    from hyvid.store.feature_store import FeatureStore
    from hyvid.store.scores import upsert_video_scores

    fs = FeatureStore(cfg.store_uri, cfg.storage_options)
    models = list(cfg.models)
    val = _load_aligned(fs, models, cfg.split, "val")
    test = _load_aligned(fs, models, cfg.split, "test")
    fit_on, weight_source = _weight_scores(fs, models, cfg.split, val, cfg.weights_from)
    multilabel = fs.is_multilabel()
    metric = cfg.metric or primary_metric(multilabel)
    n_classes = next(iter(test.scores.values())).shape[1]
    class_names = _class_names(fs, n_classes)
    log.info("hybrid split %d: searching weights of %s on %d %s (%s, step %g)",
             cfg.split, models, len(fit_on.video_ids), weight_source, metric, cfg.step)

    weights, table = search_weights(
        # Multi-label data is searched on labels_multi; its first labels hold -1 for label-less videos.
        [fit_on.scores[m] for m in models], None if multilabel else fit_on.labels, cfg.step, metric,
        labels_multi=fit_on.labels_multi if multilabel else None, refine=cfg.refine, names=models)
    # The candidates' column says what they were scored on: out-of-fold training scores or val.
    fitted_column = f"{'oof' if weight_source == WEIGHTS_FROM_OOF else 'val'}_{metric}"
    table = table.rename(columns={f"val_{metric}": fitted_column})
    wdict = {m: float(w) for m, w in zip(models, weights, strict=True)}
    val_hyb = combine([val.scores[m] for m in models], weights)
    test_hyb = combine([test.scores[m] for m in models], weights)

    def ev(s: np.ndarray, a: _Aligned) -> dict[str, float]:
        return M.evaluate(s, a.labels, a.labels_multi, multilabel)

    val_metrics, test_metrics = ev(val_hyb, val), ev(test_hyb, test)

    # Every model in the store, evaluated on the same test videos: the late fusions need the
    # CNNs too, and `report` falls back to these for models whose own run logged no test metric.
    present = _models_in_store(fs, cfg.split)
    comp_test = {m: _load_aligned(fs, [m], cfg.split, "test") for m in present}
    components = {m: ev(a.scores[m], a) for m, a in comp_test.items()}
    late: dict[str, dict[str, float]] = {}
    if cfg.late_fusion:
        for row, members in LATE_FUSIONS.items():
            if all(m in present for m in members):
                a = _load_aligned(fs, list(members), cfg.split, "test")
                late[row] = ev(combine([a.scores[m] for m in members], [1 / len(members)] * len(members)), a)
            else:
                log.info("late fusion %s skipped: no scores for %s", row, [m for m in members if m not in present])

    tracking_uri = tracking.resolve_tracking_uri(cfg.tracking_uri)
    tracking.setup(tracking_uri, cfg.experiment)
    tmp = tempfile.TemporaryDirectory(prefix="hyvid_hybrid_")
    out_dir = Path(cfg.out_dir) if cfg.out_dir else Path(tmp.name)
    out_dir.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    try:
        with tracking.start_run(HYBRID, tracking.STAGE_HYBRID, cfg.split, cfg.store_uri) as run:
            run_id = run.info.run_id
            tracking.log_params_safe({
                "models": ",".join(models), "step": cfg.step, "refine": cfg.refine, "metric": metric,
                "multilabel": multilabel, "n_val": len(val.video_ids), "n_test": len(test.video_ids),
                "weights_fitted_on": weight_source, "n_weight_videos": len(fit_on.video_ids),
                "n_candidates": len(table),
                **{f"{tracking.WEIGHT_PREFIX}{m}": round(w, 6) for m, w in wdict.items()},
                **{f"{tracking.COMPONENT_PREFIX}{m}.run_id": val.run_ids[m] or test.run_ids[m] for m in models},
            })
            tracking.log_lineage(cfg.store_uri, [VIDEOS.name, VIDEO_SCORES.name], cfg.storage_options)
            settings, cnn_runs = _provenance(fs, cfg.split)
            tracking.log_params_safe({**{f"{tracking.EXTRACT_PREFIX}{k}": v for k, v in settings.items()},
                                      **{f"{tracking.CNN_PREFIX}{m}.run_id": r for m, r in cnn_runs.items()}})
            mlflow.log_dict(settings, tracking.EXTRACT_ARTIFACT)
            mlflow.log_dict({"class_names": class_names}, tracking.CLASSES_ARTIFACT)
            _log_metrics("", "val", val_metrics)
            _log_metrics("", "test", test_metrics)
            _log_intervals("", test_hyb, test, multilabel)
            # Its own metrics only: each component's are on its own run (`hyvid runs`, `hyvid report`).
            mlflow.log_dict(_findings(comp_test, test_hyb, test, multilabel), tracking.FINDINGS_ARTIFACT)

            files["candidates"] = str(out_dir / f"hybrid_candidates_split{cfg.split}.csv")
            table.to_csv(files["candidates"], index=False)
            mlflow.log_artifact(files["candidates"])
            mlflow.log_table(table, tracking.HYBRID_CANDIDATES_ARTIFACT)
            mlflow.log_dict({"weights": wdict, "metric": metric, "val": val_metrics, "test": test_metrics,
                             "late_fusion": late, "components": components}, tracking.HYBRID_SUMMARY_ARTIFACT)

            files["weights"] = plots.weight_surface(
                table, models, fitted_column, out_dir / f"hybrid_weights_split{cfg.split}.png", best=weights,
                scored_on=weight_source)
            # Fig. 4: per-class accuracy (UCF-101) or AP (CCV) of the LSTMs, fusion and hybrid.
            fig4_models = [m for m in (SPATIAL_LSTM, MOTION_LSTM, FUSION) if m in comp_test]
            per_class = {}
            for m in fig4_models:
                a = comp_test[m]
                per_class[m] = _per_class(a.scores[m], a, multilabel)
            per_class[HYBRID] = _per_class(test_hyb, test, multilabel)
            files["per_class"] = plots.per_class_bars(
                per_class, class_names, "AP" if multilabel else "accuracy",
                out_dir / f"hybrid_per_class_split{cfg.split}.png",
                title=f"per-class {'AP' if multilabel else 'accuracy'} on test, split {cfg.split}")
            first = test.labels >= 0  # multi-label videos without a label have no first label to plot
            cm = M.confusion_matrix(test_hyb[first], test.labels[first], n_classes)
            files["confusion"] = plots.confusion_matrix_plot(
                cm, class_names, out_dir / f"hybrid_confusion_split{cfg.split}.png",
                title=f"hybrid, test split {cfg.split}" + (" (first label)" if multilabel else ""))
            for key in ("weights", "per_class", "confusion"):
                mlflow.log_artifact(files[key], "plots")

            for row, vals in late.items():
                with tracking.start_run(row, tracking.STAGE_LATE_FUSION, cfg.split, cfg.store_uri, nested=True):
                    mlflow.log_params({"members": ",".join(LATE_FUSIONS[row]), "fusion": "average"})
                    _log_metrics("", "test", vals)
                    a = _load_aligned(fs, list(LATE_FUSIONS[row]), cfg.split, "test")
                    _log_intervals("", combine([a.scores[m] for m in LATE_FUSIONS[row]],
                                               [1 / len(LATE_FUSIONS[row])] * len(LATE_FUSIONS[row])), a, multilabel)

            ids = val.video_ids + test.video_ids
            upsert_video_scores(
                cfg.store_uri, HYBRID, cfg.split, run_id, ids,
                ["val"] * len(val.video_ids) + ["test"] * len(test.video_ids),
                np.vstack([val_hyb, test_hyb]).astype(np.float32),
                np.concatenate([val.labels, test.labels]),
                val.labels_multi + test.labels_multi,
                storage_options=cfg.storage_options,
            )
            from hyvid.pipelines.inference.logged import log_hybrid_model

            model_version = None
            try:
                model_uri = log_hybrid_model(run_id)
            except FileNotFoundError as e:
                # Scores whose runs are gone (another tracking server, a deleted run): the weights and
                # metrics stand; only the portable model, which needs the components' weights, is missing.
                log.warning("the hybrid model was not logged (%s); `hyvid predict`/`evaluate` need the component "
                            "runs on this tracking server", e)
                mlflow.set_tag(tracking.TAG_ERROR, f"hybrid model not logged: {e}")
                model_uri, model_version = None, None
        if cfg.register_as and model_uri:  # after the run ended: the card reads its final metrics
            model_version = register_runs({HYBRID: run_id}, cfg.register_as, cfg.register_alias)[HYBRID].version
    finally:
        if not cfg.out_dir:
            files = {}  # the temp files are gone; they live on as MLflow artifacts
        tmp.cleanup()
    log.info("hybrid split %d: weights %s, val %s %.4f, test %s", cfg.split, wdict, metric,
             val_metrics[metric], {k: round(v, 4) for k, v in test_metrics.items()})
    return HybridResult(
        run_id=run_id, split=cfg.split, models=tuple(models), weights=wdict, metric=metric,
        val_metric=float(val_metrics[metric]), test_metrics=test_metrics, val_metrics=val_metrics,
        late_fusion=late, components=components, candidates=table, files=files, multilabel=multilabel,
        model_uri=model_uri, registered_version=model_version)


def _per_class(scores: np.ndarray, a: _Aligned, multilabel: bool) -> np.ndarray:
    if multilabel:
        return M.per_class_ap(scores, M.label_matrix(a.labels_multi, scores.shape[1]))
    return M.per_class_accuracy(scores, a.labels)
