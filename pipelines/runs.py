"""`hyvid runs`: the runs of an experiment side by side in a terminal table.

One row per run: name, stage, split, start time, duration, status, the key parameters, the
test metrics and the lineage (store URI and the Lance table versions the run read). The same
data is in the MLflow UI (`mlflow ui --backend-store-uri <tracking URI>`).
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import mlflow
from mlflow.entities import Run

from hyvid.models.registry import METRICS
from hyvid.pipelines import tracking

# Parameters that say where a run came from rather than how it was configured.
_NOT_KEY = (tracking.LINEAGE_PREFIX, tracking.COMPONENT_PREFIX, tracking.CNN_PREFIX, tracking.EXTRACT_PREFIX)
_METRIC_SHORT = {"accuracy": "acc", "mean_class_accuracy": "mca", "map": "mAP", "top5": "top5"}


@dataclass(frozen=True)
class RunsConfig:
    """Which runs to list."""

    experiment: str
    tracking_uri: str | None = None
    model: str | None = None  # only runs tagged with this hyvid.model
    stage: str | None = None  # only runs tagged with this hyvid.stage
    limit: int = 50
    max_params: int = 6  # key parameters shown per run (0: all)

    def __post_init__(self) -> None:
        if self.limit < 1:
            raise ValueError(f"limit must be >= 1, got {self.limit}")
        if self.max_params < 0:
            raise ValueError(f"max_params must be >= 0, got {self.max_params}")


def _fmt_time(ms: int | None) -> str:
    return "—" if not ms else dt.datetime.fromtimestamp(ms / 1000).strftime("%Y-%m-%d %H:%M:%S")


def _duration(run: Run) -> str:
    if not run.info.start_time or not run.info.end_time:
        return "running" if run.info.status == "RUNNING" else "—"
    s = (run.info.end_time - run.info.start_time) / 1000
    return f"{s:.1f}s" if s < 120 else f"{s / 60:.1f}m"


def _short(v: str, n: int = 24) -> str:
    return v if len(v) <= n else v[: n - 1] + "…"


def run_row(run: Run, max_params: int = 6) -> dict[str, str]:
    """The table cells of one run."""
    tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
    key = sorted((k, v) for k, v in params.items() if not k.startswith(_NOT_KEY))
    shown = key if max_params == 0 else key[:max_params]
    more = len(key) - len(shown)
    test = [f"{_METRIC_SHORT[m]}={metrics[tracking.metric_name('test', m)]:.3f}"
            for m in METRICS if tracking.metric_name("test", m) in metrics]
    versions = sorted((k[len(tracking.LINEAGE_PREFIX):-len(".version")], v) for k, v in params.items()
                      if k.startswith(tracking.LINEAGE_PREFIX) and k.endswith(".version"))
    store = params.get(f"{tracking.LINEAGE_PREFIX}store_uri") or tags.get(tracking.TAG_STORE, "")
    lineage = " ".join([_short(store, 30)] * bool(store) + [f"{t}@v{v}" for t, v in versions])
    return {
        "run": run.info.run_name or run.info.run_id[:8],
        "id": run.info.run_id[:8],
        "stage": tags.get(tracking.TAG_STAGE, ""),
        "split": tags.get(tracking.TAG_SPLIT, ""),
        "start": _fmt_time(run.info.start_time),
        "duration": _duration(run),
        "status": run.info.status,
        "test": " ".join(test),
        "params": " ".join(f"{k}={_short(str(v), 16)}" for k, v in shown) + (f" (+{more})" if more > 0 else ""),
        "lineage": lineage,
    }


def list_runs(cfg: RunsConfig) -> list[dict[str, str]]:
    """Rows for the runs of the experiment, newest first."""
    uri = tracking.resolve_tracking_uri(cfg.tracking_uri)
    mlflow.set_tracking_uri(uri)
    exp_id = tracking.experiment_id(cfg.experiment, uri)  # raises with the list of experiments
    runs = mlflow.search_runs(experiment_ids=[exp_id], output_format="list",
                              order_by=["attributes.start_time DESC"])
    if cfg.model:
        runs = [r for r in runs if r.data.tags.get(tracking.TAG_MODEL) == cfg.model]
    if cfg.stage:
        runs = [r for r in runs if r.data.tags.get(tracking.TAG_STAGE) == cfg.stage]
    return [run_row(r, cfg.max_params) for r in runs[: cfg.limit]]


def format_table(rows: list[dict[str, str]]) -> str:
    """A plain aligned text table (one line per run; wide terminals show it best)."""
    if not rows:
        return "(no runs)"
    cols = list(rows[0])
    widths = {c: max(len(c), *(len(r[c]) for r in rows)) for c in cols}
    lines = []
    for cells in [{c: c for c in cols}, {c: "-" * widths[c] for c in cols}, *rows]:
        lines.append("  ".join(cells[c].ljust(widths[c]) for c in cols).rstrip())
    return "\n".join(lines)
