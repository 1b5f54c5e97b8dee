"""`hyvid evaluate`: score a labelled set of videos end to end with a logged hybrid.

The videos of a UCF-101-layout folder or a manifest CSV (one split's `train` or `test` list, or
all of them) go through exactly what `predict` runs, which is what the pipeline ran: decode,
sampling and flow as `extract` (frames through the clips table's JPEG codec), both CNNs as
`features`, the LSTMs and fusion net as `train`, the weights as `hybrid` (`inference.hybrid`).
So the accuracy here on a split's test list matches the pipeline's own `video_scores` for the
hybrid run, and a copied model folder can be checked on new data with no tracking server.

Ray batch work: tasks take a list of paths and the model's folder or URI (they load it once per
worker process) and return each video's class scores (C floats) or its error. The metrics
(accuracy, mean class accuracy, mAP...) come with 95% bootstrap intervals over the videos, and
the result is logged as an MLflow run (stage `evaluate`).
"""
from __future__ import annotations

import hashlib
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hyvid.cluster.settings import DEFAULT_EXPERIMENT
from hyvid.models import registry as R
from hyvid.pipelines import logs, tracking
from hyvid.pipelines.data.datasets import OFFICIAL_SUBSETS, Dataset, VideoEntry, load_dataset
from hyvid.pipelines.evaluation import metrics as M
from hyvid.pipelines.evaluation.bootstrap import DEFAULT_N_BOOT, metric_intervals, resampling_units
from hyvid.pipelines.inference import inputs
from hyvid.pipelines.inference.hybrid import LoadedHybrid, classify_videos
from hyvid.pipelines.inference.logged import load_hybrid

log = logging.getLogger(__name__)

SUBSETS = (*OFFICIAL_SUBSETS, "all")
TAG_EVALUATED_RUN = "hyvid.evaluated_run"  # the hybrid run whose model an evaluation scored
PREDICTIONS_ARTIFACT = "evaluation_predictions.json"


@dataclass(frozen=True)
class EvaluateConfig:
    """Which labelled videos to score, with which logged hybrid, and where to log the result."""

    dataset: str  # a UCF-101-layout folder or a manifest CSV (data.datasets)
    split: int = 1
    subset: str = "test"  # a split's "train" or "test" list, or "all" the dataset's videos
    # A hybrid model folder, runs:/<hybrid run id>, runs:/<id>/hybrid, models:/NAME@alias; None: latest hybrid run
    model_uri: str | None = None
    experiment: str = DEFAULT_EXPERIMENT
    tracking_uri: str | None = None
    address: str | None = None
    videos_per_task: int = 8
    batch_size: int = 8  # videos per CNN/LSTM batch inside a task
    workers: int | None = None  # tasks in flight; None: the cluster's CPUs
    n_boot: int = DEFAULT_N_BOOT
    log_run: bool = True
    progress: bool = True
    allow_failures: bool = False  # exit 0 when some videos failed (still 1 when none was scored)

    def __post_init__(self) -> None:
        if not os.path.exists(self.dataset):
            raise FileNotFoundError(f"dataset {self.dataset!r} does not exist; give a UCF-101-layout folder or a "
                                    "manifest CSV with labels")
        R.check_split(self.split)
        if self.subset not in SUBSETS:
            raise ValueError(f"subset must be one of {', '.join(SUBSETS)}, got {self.subset!r}")
        for name in ("videos_per_task", "batch_size", "n_boot"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers!r}")


@dataclass
class EvaluateResult:
    """The metrics of one evaluation, their 95% intervals, and what could not be scored."""

    metrics: dict[str, float]
    intervals: dict[str, tuple[float, float]]
    n_videos: int  # videos the metrics rest on (scored)
    failed: list[dict[str, str]]  # {"video_id", "path", "error"} of videos that could not be scored
    hybrid_run_id: str
    model: str  # what was loaded: the folder or URI given, or runs:/<latest hybrid run>
    subset: str
    split: int
    run_id: str | None = None  # the MLflow evaluation run
    predictions: list[dict[str, Any]] = field(default_factory=list)  # per video: id, label, predicted class

    def to_json(self) -> dict[str, Any]:
        """{"accuracy", "accuracy_ci", "map", "map_ci", "n_videos", "failed", ...}; NaN stays NaN
        here (inputs.dumps makes it null)."""
        out: dict[str, Any] = {}
        for m in R.METRICS:
            if m in self.metrics:
                out[m] = self.metrics[m]
                out[f"{m}_ci"] = list(self.intervals.get(m, (float("nan"), float("nan"))))
        out.update({"n_videos": self.n_videos, "n_failed": len(self.failed), "failed": self.failed,
                    "subset": self.subset, "split": self.split, "model": tracking.redact(self.model),
                    "hybrid_run_id": self.hybrid_run_id, "evaluation_run_id": self.run_id})
        return out

    def exit_code(self, allow_failures: bool = False) -> int:
        """1 when a video failed (with `allow_failures`: only when none was scored), else 0."""
        if not self.n_videos:
            return 1
        return 0 if allow_failures or not self.failed else 1


def select_videos(ds: Dataset, split: int, subset: str) -> list[VideoEntry]:
    """The dataset's videos of one split's subset (every video for "all")."""
    if subset == "all":
        return list(ds.entries)
    chosen = [e for e in ds.entries if (split, subset) in e.splits]
    if not chosen:
        known = sorted({s for e in ds.entries for s in e.splits})
        raise ValueError(
            f"dataset {ds.source!r} has no {subset} videos for split {split} (it has {known or 'no split lists'}); "
            "pass --split/--subset it has, or --subset all")
    return chosen


def _labels(entries: list[VideoEntry], ds: Dataset, class_names: list[str]) -> tuple[np.ndarray, list[list[int]]]:
    """Each video's labels as the model's class indices (matched by class name)."""
    index = {c: i for i, c in enumerate(class_names)}
    unknown = sorted({ds.classes[i] for e in entries for i in e.labels if ds.classes[i] not in index})
    if unknown:
        raise ValueError(f"dataset {ds.source!r} has classes the model does not know: {unknown[:10]} "
                         f"(the model's classes: {class_names[:10]}{'...' if len(class_names) > 10 else ''}); "
                         "evaluate a model trained on these classes")
    multi = [[index[ds.classes[i]] for i in e.labels] for e in entries]
    first = np.array([m[0] if m else -1 for m in multi], dtype=np.int64)
    return first, multi


# -- the Ray side ------------------------------------------------------------------------------
_WORKER_MODEL: dict[tuple[str | None, str], LoadedHybrid] = {}


def _score_task(model: str, tracking_uri: str | None, paths: list[str], batch_size: int, threads: int) -> dict:
    """Score a few videos with the hybrid at `model` (loaded once per worker process)."""
    import torch

    key = (tracking_uri, model)
    if key not in _WORKER_MODEL:
        _WORKER_MODEL.clear()
        _WORKER_MODEL[key] = load_hybrid(tracking_uri, model_uri=model)
    torch.set_num_threads(max(1, threads))
    preds, _ = classify_videos(_WORKER_MODEL[key], paths, top=1, batch_size=batch_size, threads=max(2, threads))
    return {"scores": [None if p.scores is None else p.scores.astype(np.float32) for p in preds],
            "errors": [p.error for p in preds]}


def _score_all(cfg: EvaluateConfig, model: str, tracking_uri: str | None, paths: list[str]
               ) -> tuple[list[np.ndarray | None], list[str | None]]:
    import ray
    from tqdm import tqdm

    from hyvid.cluster.connect import connect
    from hyvid.cluster.resources import task_options

    resources = connect(cfg.address)
    in_flight = cfg.workers or max(1, int(float(resources.get("CPU", 1))))
    opts = task_options("predict", in_flight=in_flight, cluster=resources)
    task = ray.remote(_score_task).options(max_retries=2, **opts)
    step = cfg.videos_per_task
    chunks = [list(range(i, min(i + step, len(paths)))) for i in range(0, len(paths), step)]
    scores: list[np.ndarray | None] = [None] * len(paths)
    errors: list[str | None] = [None] * len(paths)
    pending = list(reversed(chunks))
    running: dict[Any, list[int]] = {}
    show = cfg.progress and sys.stderr.isatty()
    every, n_done, n_failed = logs.Every(), 0, 0  # progress lines when the bar is not shown
    with tqdm(total=len(paths), desc="evaluate", unit="video", disable=not show) as bar:
        while pending or running:
            while pending and len(running) < in_flight:
                idx = pending.pop()
                ref = task.remote(model, tracking_uri, [paths[i] for i in idx], cfg.batch_size, int(opts["num_cpus"]))
                running[ref] = idx
            done, _ = ray.wait(list(running), num_returns=1)
            for ref in done:
                idx = running.pop(ref)
                out = ray.get(ref)
                for i, s, e in zip(idx, out["scores"], out["errors"], strict=True):
                    scores[i], errors[i] = s, e
                bar.update(len(idx))
                n_done, n_failed = n_done + len(idx), n_failed + sum(e is not None for e in out["errors"])
                if cfg.progress and not show and every.due(force=n_done == len(paths)):
                    log.info("evaluate: %d of %d videos done, %d failed", n_done, len(paths), n_failed)
    return scores, errors


# -- the stage ---------------------------------------------------------------------------------
def evaluate(cfg: EvaluateConfig) -> EvaluateResult:
    """Score the chosen videos with the hybrid, compute the metrics with intervals, log the run."""
    ds = load_dataset(cfg.dataset)
    entries = select_videos(ds, cfg.split, cfg.subset)
    tracking_uri = tracking.resolve_tracking_uri(cfg.tracking_uri)
    h = load_hybrid(tracking_uri, cfg.experiment, cfg.model_uri, cfg.split if cfg.model_uri is None else None)
    # Tasks load the very model the driver checked: a folder by its absolute path, else a URI
    # (the latest hybrid run resolved now, so a run finishing meanwhile changes nothing).
    if cfg.model_uri and os.path.exists(cfg.model_uri):
        model = os.path.abspath(cfg.model_uri)
    else:
        model = cfg.model_uri or f"runs:/{h.run_id}"
    first, multi = _labels(entries, ds, h.class_names)
    log.info("evaluate: %d %s videos of split %d with the hybrid %s (%s)", len(entries), cfg.subset, cfg.split,
             h.run_id or "model", tracking.redact(model))

    scores, errors = _score_all(cfg, model, tracking_uri if not os.path.exists(model) else None,
                                [e.path for e in entries])
    ok = [i for i, s in enumerate(scores) if s is not None]
    failed = [{"video_id": entries[i].video_id, "path": entries[i].path, "error": errors[i] or "no scores"}
              for i in range(len(entries)) if scores[i] is None]
    if ok:
        s = np.stack([scores[i] for i in ok]).astype(np.float64)
        labels = first[ok]
        labels_multi = [multi[i] for i in ok]
        values = M.evaluate(s, labels, labels_multi, h.multilabel)
        intervals = metric_intervals(s, labels, labels_multi, h.multilabel, n_boot=cfg.n_boot,
                                     groups=resampling_units([entries[i].group for i in ok], labels_multi))
        predicted = s.argmax(axis=1)
    else:
        values, intervals, predicted = {m: float("nan") for m in ("accuracy", "map")}, {}, np.array([], int)
    predictions = [{"video_id": entries[i].video_id, "label": entries[i].class_name,
                    "predicted": h.class_names[int(p)], "score": float(scores[i][int(p)])}
                   for i, p in zip(ok, predicted, strict=True)]
    res = EvaluateResult(metrics=values, intervals=intervals, n_videos=len(ok), failed=failed,
                         hybrid_run_id=h.run_id, model=model, subset=cfg.subset, split=cfg.split,
                         predictions=predictions)
    if cfg.log_run:
        res.run_id = _log_run(cfg, res, ds, tracking_uri)
    return res


def _log_run(cfg: EvaluateConfig, res: EvaluateResult, ds: Dataset, tracking_uri: str) -> str:
    """The evaluation as an MLflow run of stage `evaluate`: params, <subset>_* metrics and their
    intervals, the evaluated videos as a dataset input, and the per-video predictions."""
    import mlflow
    import pandas as pd

    tracking.setup(tracking_uri, cfg.experiment)
    # No hyvid.split tag: `report` reads a model's test figures from runs tagged with a split, and
    # an evaluation of other videos must not stand in for the hybrid run's own.
    tags = tracking.run_tags(R.HYBRID, tracking.STAGE_EVALUATE,
                             **({TAG_EVALUATED_RUN: res.hybrid_run_id} if res.hybrid_run_id else {}))
    name = tracking.run_name(f"evaluate-{R.HYBRID}-{cfg.subset}", cfg.split)
    with mlflow.start_run(run_name=name, tags=tags) as run:
        tracking.log_params_safe({"dataset": os.path.abspath(cfg.dataset), "split": cfg.split, "subset": cfg.subset,
                                  "model": res.model, "n_videos": res.n_videos, "n_failed": len(res.failed),
                                  "n_boot": cfg.n_boot})
        sub = cfg.subset
        mlflow.log_metrics({tracking.metric_name(sub, k): float(v) for k, v in res.metrics.items() if np.isfinite(v)})
        mlflow.log_metrics({k: v for k, v in tracking.interval_metrics(sub, res.intervals, res.n_videos).items()
                            if np.isfinite(v)})
        _log_dataset(ds, res, sub)
        if res.predictions:
            mlflow.log_table(pd.DataFrame(res.predictions), PREDICTIONS_ARTIFACT)
        if res.failed:
            mlflow.log_dict({"failed": res.failed}, "evaluation_failed.json")
        return run.info.run_id


def _log_dataset(ds: Dataset, res: EvaluateResult, context: str) -> None:
    """The evaluated videos as an MLflow dataset input (name = the dataset folder or CSV, digest
    of the video ids scored), so the UI shows what an evaluation ran on."""
    import warnings

    import mlflow
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    ids = "\n".join(sorted(p["video_id"] for p in res.predictions)).encode()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            source = resolve_dataset_source(ds.source)
        except Exception:  # noqa: BLE001 - a source MLflow has no type for: the params name it
            return
    mlflow.log_input(MetaDataset(source, name=Path(ds.source).name, digest=hashlib.sha256(ids).hexdigest()[:16]),
                     context=f"evaluation-{context}")


def format_text(res: EvaluateResult) -> str:
    """The CLI's readable summary: each metric with its 95% interval, then what failed."""
    failed = f", {len(res.failed)} failed" if res.failed else ""
    lines = [f"evaluated {res.n_videos} {res.subset} video(s) of split {res.split} with the hybrid "
             f"{res.hybrid_run_id or tracking.redact(res.model)}{failed}"]
    for m in R.METRICS:
        if m in res.metrics:
            lo, hi = res.intervals.get(m, (float("nan"), float("nan")))
            lines.append(f"  {m:<20} {res.metrics[m]:.4f}   95% CI [{lo:.4f}, {hi:.4f}]")
    for f in res.failed[:20]:
        lines.append(f"  failed: {f['path']}: {f['error']}")
    if len(res.failed) > 20:
        lines.append(f"  ... and {len(res.failed) - 20} more failed")
    if res.run_id:
        lines.append(f"logged as MLflow run {res.run_id}")
    return "\n".join(lines)


def format_json(res: EvaluateResult) -> str:
    return inputs.dumps(res.to_json(), indent=2)
