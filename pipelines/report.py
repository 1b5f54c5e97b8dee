"""`hyvid report`: the paper's Tables 1-3 rebuilt from the MLflow runs of an experiment.

Every stage tags its runs with `hyvid.model` / `hyvid.split` and logs `test_<metric>` (see
pipelines.tracking), so the report needs no knowledge of the stages: for each (model, split) it
takes the latest finished run that has a test metric, and averages over the splits when there
are several (the UCF-101 protocol). Every model's own run carries its test metrics (the CNNs'
and two_stream_cnn's are logged by `hyvid features`), so a model without them has no row. The
paper's UCF-101 accuracy and CCV mAP (models.registry.PAPER_RESULTS) stand beside each row.

Each test figure comes with its 95% bootstrap interval over test videos, logged beside it as
`test_<metric>_ci_low` / `_ci_high` (with `test_n_videos`) by the stage that scored the test set.
Over several splits the interval reported is the mean of the per-split bounds: an approximation
(roughly right when the splits' intervals have similar widths, and wider than an interval of the
mean of independent splits would be). The latest hybrid run of each split also carries the
paired-bootstrap tests of the paper's findings (findings.json), which the report lists last.
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field, replace

import numpy as np
from mlflow.entities import Run

from hyvid.models import registry as R
from hyvid.pipelines import tracking
from hyvid.pipelines.evaluation.findings import findings_markdown

log = logging.getLogger(__name__)

FORMATS = ("markdown", "json")
REPORT_METRICS = R.METRICS
_ALL_FOUR = f"{R.SPATIAL_CNN}+{R.MOTION_CNN}+{R.SPATIAL_LSTM}+{R.MOTION_LSTM}"

# (title, [(model name, the paper's row label)]) in the paper's order.
TABLES: list[tuple[str, list[tuple[str, str]]]] = [
    ("Table 1: CNNs, LSTMs and their late average fusion", [
        (R.SPATIAL_CNN, "Spatial CNN"),
        (R.SPATIAL_LSTM, "Spatial LSTM"),
        (R.MOTION_CNN, "Motion CNN"),
        (R.MOTION_LSTM, "Motion LSTM"),
        (f"{R.SPATIAL_CNN}+{R.SPATIAL_LSTM}", "CNN + LSTM (spatial)"),
        (f"{R.MOTION_CNN}+{R.MOTION_LSTM}", "CNN + LSTM (motion)"),
        (_ALL_FOUR, "CNN + LSTM (both streams)"),
    ]),
    ("Table 2: fusion of the two streams", [
        (R.SPATIAL_SVM, "Spatial SVM"),
        (R.MOTION_SVM, "Motion SVM"),
        (R.SVM_EF, "SVM-EF"),
        (R.SVM_LF, "SVM-LF"),
        (R.SVM_MKL, "SVM-MKL"),
        (R.NN_EF, "NN-EF"),
        (R.NN_LF, "NN-LF"),
        (R.M_DBM, "M-DBM"),
        (R.TWO_STREAM_CNN, "Two-stream CNN"),
        (R.RDNN, "RDNN"),
        (R.FUSION_NOREG, "Non-regularized fusion network"),
        (R.FUSION, "Regularized fusion network"),
    ]),
    ("Table 3: the hybrid framework", [
        (R.HYBRID, "Hybrid (LSTMs + fusion network)"),
    ]),
]
assert set(R.LATE_FUSIONS) <= {m for _, rows in TABLES for m, _ in rows}
# The columns whose cells also show the interval: each dataset's paper metric (UCF-101, CCV).
CI_COLUMNS = (R.ACCURACY, R.MAP)


@dataclass(frozen=True)
class ReportConfig:
    """Which experiment (and splits) to report, and how."""

    experiment: str
    tracking_uri: str | None = None
    splits: tuple[int, ...] | None = None  # None: every split that has runs
    format: str = "markdown"

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"unknown format {self.format!r}; choose from {list(FORMATS)}")
        if self.splits is not None:
            object.__setattr__(self, "splits", R.check_splits(self.splits))


@dataclass(frozen=True)
class Entry:
    """One model's test metrics on one split, and where they came from."""

    metrics: dict[str, float]
    run_id: str
    source: str  # "run": the model's own run
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)  # metric -> 95% (lo, hi)
    n_videos: int | None = None  # test videos the metrics rest on
    # Over the latest run of each seed (`hyvid run --seeds N`, which refits the CNNs too): the sd of each
    # test metric (ddof=1) and how many seeds; empty with fewer than two seeds.
    seed_sd: dict[str, float] = field(default_factory=dict)
    n_seeds: int = 1


@dataclass(frozen=True)
class Report:
    """Per model: split -> Entry, and the mean over the chosen splits."""

    experiment: str
    splits: tuple[int, ...]
    entries: dict[str, dict[int, Entry]] = field(default_factory=dict)
    findings: dict[int, list[dict]] = field(default_factory=dict)  # split -> the latest hybrid's findings.json

    def mean(self, model: str) -> dict[str, float | None]:
        """Mean of each metric over the splits that have it (None when no split has it)."""
        out: dict[str, float | None] = {}
        per = self.entries.get(model, {})
        for m in REPORT_METRICS:
            vals = [e.metrics[m] for s, e in per.items() if s in self.splits and m in e.metrics]
            out[m] = sum(vals) / len(vals) if vals else None
        return out

    def interval(self, model: str, metric: str) -> tuple[float, float] | None:
        """The 95% interval of a metric: the mean of the per-split bounds (None unless every split has one)."""
        used = [e for s, e in self.entries.get(model, {}).items() if s in self.splits and metric in e.metrics]
        if not used or any(metric not in e.intervals for e in used):
            return None
        return (sum(e.intervals[metric][0] for e in used) / len(used),
                sum(e.intervals[metric][1] for e in used) / len(used))

    def seed_spread(self, model: str, metric: str) -> tuple[float, int] | None:
        """(sd across seeds, seeds) of a metric, the sd averaged over the splits (None unless every split has one)."""
        used = [e for s, e in self.entries.get(model, {}).items() if s in self.splits and metric in e.metrics]
        if not used or any(metric not in e.seed_sd for e in used):
            return None
        return sum(e.seed_sd[metric] for e in used) / len(used), min(e.n_seeds for e in used)

    def n_videos(self, model: str) -> int | None:
        """Test videos behind the model's figures, summed over the splits (None when a split did not log it)."""
        used = [e for s, e in self.entries.get(model, {}).items() if s in self.splits]
        if not used or any(e.n_videos is None for e in used):
            return None
        return sum(e.n_videos for e in used if e.n_videos is not None)

    def models(self) -> list[str]:
        ordered = [m for _, rows in TABLES for m, _ in rows]
        present = [m for m in self.entries if any(s in self.splits for s in self.entries[m])]
        return [m for m in ordered if m in present] + sorted(set(present) - set(ordered))


def _test_metrics(run: Run, prefix: str = "") -> dict[str, float]:
    out = {}
    for m in REPORT_METRICS:
        v = run.data.metrics.get(prefix + tracking.metric_name("test", m))
        if v is not None and not math.isnan(v):
            out[m] = float(v)
    return out


def _entry(run: Run, source: str, prefix: str = "") -> Entry | None:
    """A run's test metrics, their intervals and video count (None when it logged no test metric)."""
    metrics = _test_metrics(run, prefix)
    if not metrics:
        return None
    logged = run.data.metrics
    intervals = {}
    for m in metrics:
        lo, hi = (logged.get(prefix + k) for k in tracking.ci_metric_names("test", m))
        if lo is not None and hi is not None:
            intervals[m] = (float(lo), float(hi))
    n = logged.get(prefix + tracking.metric_name("test", tracking.N_VIDEOS_METRIC))
    return Entry(metrics, run.info.run_id, source, intervals, None if n is None else int(n))


def _findings(run_id: str) -> list[dict]:
    """The findings.json a hybrid run logged ([] for runs from before it existed)."""
    import mlflow

    names = {a.path for a in mlflow.MlflowClient().list_artifacts(run_id)}
    if tracking.FINDINGS_ARTIFACT not in names:
        return []
    return list(mlflow.artifacts.load_dict(f"runs:/{run_id}/{tracking.FINDINGS_ARTIFACT}"))


def _split_of(run: Run) -> int | None:
    try:
        return int(run.data.tags.get(tracking.TAG_SPLIT, ""))
    except ValueError:
        return None


def fetch_runs(experiment: str, tracking_uri: str | None = None) -> list[Run]:
    """Every finished run of the experiment, newest first; ValueError names unknown experiments."""
    uri = tracking.resolve_tracking_uri(tracking_uri)
    tracking.experiment_id(experiment, uri)  # raises with the list of experiments
    return tracking.finished_runs(experiment, tracking_uri=uri)


def collect(cfg: ReportConfig) -> Report:
    """The latest test metrics per (model, split) from the experiment's runs."""
    runs = fetch_runs(cfg.experiment, cfg.tracking_uri)
    entries: dict[str, dict[int, Entry]] = {}
    by_seed: dict[tuple[str, int], dict[str, Entry]] = {}  # (model, split) -> seed -> its latest entry
    for run in runs:  # newest first: the first entry kept per (model, split) is the latest
        model, split = run.data.tags.get(tracking.TAG_MODEL), _split_of(run)
        if not model or split is None:
            continue
        entry = _entry(run, "run")
        if entry is not None:
            entries.setdefault(model, {}).setdefault(split, entry)
            seed = tracking.seed_of(run)
            if seed is not None:
                by_seed.setdefault((model, split), {}).setdefault(seed, entry)
    for (model, split), seeds in by_seed.items():
        if len(seeds) > 1:
            latest = entries[model][split]
            sd = {m: float(np.std([e.metrics[m] for e in seeds.values()], ddof=1))
                  for m in latest.metrics if all(m in e.metrics for e in seeds.values())}
            entries[model][split] = replace(latest, seed_sd=sd, n_seeds=len(seeds))
    found = sorted({s for per in entries.values() for s in per})
    splits = cfg.splits or tuple(found)
    if not entries:
        raise ValueError(f"experiment {cfg.experiment!r} has no finished run with test metrics and "
                         f"{tracking.TAG_MODEL}/{tracking.TAG_SPLIT} tags; run the training stages first")
    missing = [s for s in splits if s not in found]
    if missing:
        log.warning("no run of experiment %r is tagged with split(s) %s (found %s)", cfg.experiment, missing, found)
    hybrid = entries.get(R.HYBRID, {})
    found_findings = {s: _findings(hybrid[s].run_id) for s in splits if s in hybrid and hybrid[s].source == "run"}
    return Report(cfg.experiment, tuple(splits), entries, {s: f for s, f in found_findings.items() if f})


def to_json(rep: Report) -> dict[str, dict[str, float | list[float] | int | None]]:
    """{model: {metric: value, "<metric>_ci": [lo, hi], ..., "n_test_videos": n}}: means over the splits, as fractions.

    A `_ci` or `n_test_videos` is None when a run behind the figure did not log it.
    """
    out: dict[str, dict[str, float | list[float] | int | None]] = {}
    for model in rep.models():
        mean = rep.mean(model)
        row: dict[str, float | list[float] | int | None] = {}
        for m in REPORT_METRICS:
            ci = rep.interval(model, m) if mean[m] is not None else None
            row[m], row[f"{m}_ci"] = mean[m], None if ci is None else [ci[0], ci[1]]
            spread = rep.seed_spread(model, m) if mean[m] is not None else None
            if spread is not None:
                row[f"{m}_seed_sd"], row["n_seeds"] = spread
        row["n_test_videos"] = rep.n_videos(model)
        out[model] = row
    return out


def findings_json(rep: Report) -> list[dict]:
    """Every reported split's findings (from its latest hybrid run), each record with its split."""
    return [{"split": s, **f} for s in rep.splits for f in rep.findings.get(s, [])]


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:.1f}"


def _pct_ci(v: float | None, ci: tuple[float, float] | None, spread: tuple[float, int] | None = None) -> str:
    text = _pct(v) if v is None or ci is None else f"{100 * v:.1f} [{100 * ci[0]:.1f}–{100 * ci[1]:.1f}]"
    return text if v is None or spread is None else f"{text} ±{100 * spread[0]:.1f}"


def _paper(model: str) -> tuple[str, str]:
    p = R.PAPER_RESULTS.get(model)
    return ("—", "—") if p is None else (f"{p[0]:.1f}", f"{p[1]:.1f}")


def to_markdown(rep: Report) -> str:
    """The three tables as markdown, our numbers (percent) beside the paper's."""
    several = len(rep.splits) > 1
    mean_note = f" (mean over splits {', '.join(map(str, rep.splits))})" if several else ""
    lines = [
        f"# hyvid report: experiment `{rep.experiment}`, split{'s' if several else ''} "
        f"{', '.join(map(str, rep.splits))}",
        "",
        f"Test metrics in percent{mean_note}, from the latest finished run per (model, split). "
        "Paper columns: Wu et al. 2015, UCF-101 accuracy and CCV mAP. — means no run. "
        "[lo–hi] after an accuracy or mAP: its 95% bootstrap interval over the test videos"
        + (" (the mean of the per-split bounds, an approximation)" if several else "")
        + "; the other metrics' intervals are in `--format json`.",
        "",
    ]
    split_cols = [f"acc. split {s}" for s in rep.splits] if several else []
    header = ["model", "row", *split_cols, "accuracy", "mean class acc.", "mAP", "top-5",
              "paper UCF-101", "paper CCV"]
    partial = seeded = False
    for title, rows in TABLES:
        lines += [f"## {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for model, label in rows:
            mean = rep.mean(model)
            per = rep.entries.get(model, {})
            cells = [f"`{model}`", label]
            cells += [_pct(per[s].metrics.get("accuracy")) if s in per else "—" for s in rep.splits] if several else []
            metric_cells = [_pct_ci(mean[k], rep.interval(model, k) if k in CI_COLUMNS else None,
                                    rep.seed_spread(model, k) if k in CI_COLUMNS else None)
                            for k in REPORT_METRICS]
            seeds = [e.n_seeds for e in per.values() if e.n_seeds > 1]
            seeded = seeded or bool(seeds)
            if several and per and any(s not in per for s in rep.splits):
                metric_cells = [c if c == "—" else c + " ²" for c in metric_cells]
                partial = True
            cells += metric_cells + list(_paper(model))
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    if partial:
        lines += ["² mean over only the splits that have a run of this model.", ""]
    if seeded:
        lines += ["±sd after an interval: the standard deviation of that figure across the seeds of "
                  "`hyvid run --seeds N` (each seed refits the CNNs and every model; the latest run of each seed).", ""]
    extra = [m for m in rep.models() if m not in {m for _, rows in TABLES for m, _ in rows}]
    if extra:
        lines += ["Other runs: " + ", ".join(f"`{m}` {_pct(rep.mean(m)['accuracy'])}" for m in extra), ""]
    lines += _findings_markdown(rep)
    return "\n".join(lines)


def _findings_markdown(rep: Report) -> list[str]:
    if not rep.findings:
        return []
    lines = ["## Findings", "",
             "The paper's findings, each \"A beats B\" tested by a paired bootstrap over the test videos both "
             "models scored: the difference A − B in points, its 95% interval, and the verdict (reproduced: the "
             "interval lies above 0; contradicted: below 0; else inconclusive). From the latest hybrid run.", ""]
    for split in rep.splits:
        if split in rep.findings:
            lines += [f"Split {split}:", "", *findings_markdown(rep.findings[split]), ""]
    return lines


def report(cfg: ReportConfig) -> str:
    """The report text in the configured format."""
    rep = collect(cfg)
    if cfg.format == "json":
        out: dict = to_json(rep)
        if rep.findings:
            out["findings"] = findings_json(rep)
        return json.dumps(out, indent=2)
    return to_markdown(rep)
