"""`hyvid runs`: the runs of an experiment side by side, as a terminal table, JSON or CSV.

The table gives each run one line that fits a 100-column terminal (name, id, stage, split, start,
duration or status, and the test accuracy, mean class accuracy and mAP every model run logs),
then its key parameters and its lineage (store URI and the Lance table versions it read), each
on an indented line cut to the same width. `--format json` gives every run in full (all its
val_*/test_* metrics, parameters and lineage) and `--format csv` one row per run with one column
per metric, for a spreadsheet or pandas. The same data is in the MLflow UI
(`mlflow ui --backend-store-uri <tracking URI>`).
"""
from __future__ import annotations

import csv
import datetime as dt
import io
import json
import math
from dataclasses import dataclass

import mlflow
from mlflow.entities import Run

from hyvid.models.registry import METRICS
from hyvid.pipelines import tracking

# Parameters that say where a run came from rather than how it was configured.
_NOT_KEY = (tracking.LINEAGE_PREFIX, tracking.COMPONENT_PREFIX, tracking.CNN_PREFIX, tracking.EXTRACT_PREFIX)
_METRIC_SHORT = {"accuracy": "acc", "mean_class_accuracy": "mca", "map": "mAP", "top5": "top5"}
FORMATS = ("table", "json", "csv")
WIDTH = 100  # the table's width: a terminal of 100 columns shows it unwrapped
# The table's columns: row key -> (header, width); the test metrics every model's run logs close it.
_COLUMNS = {"run": ("run", 20), "id": ("id", 8), "stage": ("stage", 11), "split": ("split", 5),
            "start": ("started", 11), "time": ("time", 8), "acc": ("acc", 5), "mca": ("mca", 5), "mAP": ("mAP", 5)}


@dataclass(frozen=True)
class RunsConfig:
    """Which runs to list."""

    experiment: str
    tracking_uri: str | None = None
    model: str | None = None  # only runs tagged with this hyvid.model
    stage: str | None = None  # only runs tagged with this hyvid.stage
    limit: int = 50
    nested: bool = False  # also the nested runs: search trials, out-of-fold fits, late fusions
    max_params: int = 6  # key parameters shown per run (0: all)
    format: str = "table"  # one of FORMATS

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"unknown format {self.format!r}; choose one of {FORMATS}")
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


def _lineage(params: dict[str, str]) -> dict[str, object]:
    return {"store_uri": params.get(f"{tracking.LINEAGE_PREFIX}store_uri"),
            "tables": {k[len(tracking.LINEAGE_PREFIX):-len(".version")]: int(v) for k, v in sorted(params.items())
                       if k.startswith(tracking.LINEAGE_PREFIX) and k.endswith(".version") and v.isdigit()}}


def run_record(run: Run) -> dict[str, object]:
    """Everything `--format json` gives of a run: ids, tags, status, every metric, every param, lineage."""
    tags, params = run.data.tags, run.data.params
    start, end = run.info.start_time, run.info.end_time
    return {
        "run": run.info.run_name, "run_id": run.info.run_id, "model": tags.get(tracking.TAG_MODEL),
        "stage": tags.get(tracking.TAG_STAGE), "split": int(tags[tracking.TAG_SPLIT])
        if tags.get(tracking.TAG_SPLIT, "").isdigit() else None,
        "status": run.info.status, "start": _fmt_time(start) if start else None,
        "duration_s": round((end - start) / 1000, 3) if start and end else None,
        "metrics": {k: (v if math.isfinite(v) else None) for k, v in sorted(run.data.metrics.items())},
        "params": {k: v for k, v in sorted(params.items()) if not k.startswith(_NOT_KEY)},
        "lineage": _lineage(params),
        "git_commit": tags.get(tracking.TAG_GIT_COMMIT),
        "command": tags.get(tracking.TAG_COMMAND),
        "parent_run_id": tags.get(tracking.TAG_PARENT),
    }


def find_runs(cfg: RunsConfig) -> list[Run]:
    """The experiment's runs that pass the filters, newest first (at most `limit`)."""
    uri = tracking.resolve_tracking_uri(cfg.tracking_uri)
    mlflow.set_tracking_uri(uri)
    exp_id = tracking.experiment_id(cfg.experiment, uri)  # raises with the list of experiments
    runs = mlflow.search_runs(experiment_ids=[exp_id], output_format="list",
                              order_by=["attributes.start_time DESC"])
    if cfg.model:
        runs = [r for r in runs if r.data.tags.get(tracking.TAG_MODEL) == cfg.model]
    if cfg.stage:
        runs = [r for r in runs if r.data.tags.get(tracking.TAG_STAGE) == cfg.stage]
    # The model runs first: a search's trials and folds would push them out of --limit. Asking for a
    # stage whose runs are all nested (train-cv, late_fusion) asks for them.
    if not cfg.nested and cfg.stage not in tracking.NESTED_STAGES:
        runs = [r for r in runs if tracking.TAG_PARENT not in r.data.tags]
    return runs[: cfg.limit]


def list_runs(cfg: RunsConfig) -> list[dict[str, str]]:
    """Rows for the runs of the experiment, newest first."""
    return [run_row(r, cfg.max_params) for r in find_runs(cfg)]


def format_json(runs: list[Run]) -> str:
    """Strict JSON (no NaN): a list of `run_record`s."""
    return json.dumps([run_record(r) for r in runs], indent=2, allow_nan=False)


def format_csv(runs: list[Run]) -> str:
    """One row per run; one column per metric any of them logged, then params and lineage as k=v lists."""
    records = [run_record(r) for r in runs]
    metrics = sorted({k for rec in records for k in rec["metrics"]})
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["run", "run_id", "model", "stage", "split", "status", "start", "duration_s", *metrics, "params",
                "lineage"])
    for rec in records:
        m, lin = rec["metrics"], rec["lineage"]
        w.writerow([rec["run"], rec["run_id"], rec["model"], rec["stage"], rec["split"], rec["status"], rec["start"],
                    rec["duration_s"], *(m.get(k) for k in metrics),
                    " ".join(f"{k}={v}" for k, v in rec["params"].items()),
                    " ".join([str(lin["store_uri"] or "")] + [f"{t}@v{v}" for t, v in lin["tables"].items()]).strip()])
    return out.getvalue()


def runs(cfg: RunsConfig) -> str:
    """The experiment's runs in `cfg.format`."""
    found = find_runs(cfg)
    if cfg.format == "json":
        return format_json(found)
    if cfg.format == "csv":
        return format_csv(found).rstrip("\n")
    return format_table([run_row(r, cfg.max_params) for r in found])


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _table_cells(row: dict[str, str]) -> dict[str, str]:
    test = dict(m.split("=", 1) for m in row["test"].split())
    start = row["start"][5:16] if row["start"] != "—" else "—"  # MM-DD HH:MM: the year is rarely news
    # The name without its start time: the `started` column shows it.
    name = tracking.RUN_NAME_TIME_RE.sub("", row["run"])
    return {"run": name, "id": row["id"], "stage": row["stage"], "split": row["split"], "start": start,
            "time": row["duration"] if row["status"] == "FINISHED" else row["status"].lower(),
            **{k: test.get(k, "—") for k in ("acc", "mca", "mAP")}}


def format_table(rows: list[dict[str, str]], width: int = WIDTH) -> str:
    """An aligned text table no wider than `width`: a line per run, then its params and lineage indented."""
    if not rows:
        return "(no runs)"
    lines = ["  ".join(h.ljust(w) for h, w in _COLUMNS.values()).rstrip()]
    for row in rows:
        cells = _table_cells(row)
        lines.append("  ".join(_clip(cells[c], w).ljust(w) for c, (_, w) in _COLUMNS.items()).rstrip())
        for label in ("params", "lineage"):
            if row[label]:
                lines.append(_clip(f"    {label}: {row[label]}", width))
    return "\n".join(lines)
