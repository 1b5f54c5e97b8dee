"""`hyvid report`, `hyvid runs`, `hyvid predict` and `hyvid evaluate`: read what the stages logged to MLflow,
and put the logged hybrid to work on videos."""
from __future__ import annotations

import argparse
import sys

from hyvid.cluster.settings import Settings
from hyvid.models.registry import SPLITS
from hyvid.pipelines.cli._common import command, common, csv_numbers, defaults, given, tracking_arg, tracking_uri
from hyvid.pipelines.cli._static import constant  # stage defaults read from source: --help imports no stage


def _report_args(p: argparse.ArgumentParser, s: Settings) -> None:
    d = defaults("hyvid.pipelines.report:ReportConfig")
    common(p, s, store=False, split=False, address=False)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--split", type=int, choices=SPLITS, help="report one split")
    g.add_argument("--splits", help="report these splits and their mean, e.g. 1,2,3 (default: every split with runs)")
    p.add_argument("--format", choices=constant("hyvid.pipelines.report:FORMATS"),
                   help="markdown: the paper's Tables 1-3 beside its numbers, with 95%% bootstrap intervals and "
                        "the findings' paired-bootstrap verdicts; json: {model: {metric: value, metric_ci: [lo, hi], "
                        f"n_test_videos: n}}, plus \"findings\" (default {d.format})")


def _report_config(args: argparse.Namespace, s: Settings):
    from hyvid.pipelines.report import ReportConfig

    splits = (args.split,) if args.split is not None else csv_numbers(args.splits, "--splits", int, "1,2,3")
    return ReportConfig(experiment=args.experiment, tracking_uri=tracking_uri(args, s),
                        **given(splits=splits, format=args.format))


def _report_run(args: argparse.Namespace, s: Settings) -> int:
    from hyvid.pipelines.report import report

    print(report(_report_config(args, s)))
    return 0


command("report", "the paper's Tables 1-3 from the experiment's MLflow runs, beside the paper's numbers",
        ("hyvid report --experiment hyvid", "hyvid report --experiment hyvid --splits 1,2,3",
         "hyvid report --experiment hyvid --format json > results.json"), _report_args, _report_run, _report_config)


def _runs_args(p: argparse.ArgumentParser, s: Settings) -> None:
    d = defaults("hyvid.pipelines.runs:RunsConfig")
    common(p, s, store=False, split=False, address=False)
    p.add_argument("--model", help="only runs of this model (e.g. fusion, spatial_cnn+spatial_lstm)")
    p.add_argument("--stage", help="only runs of this stage (e.g. train-cnn, train, hybrid, late_fusion)")
    p.add_argument("--limit", type=int, help=f"newest N runs (default {d.limit})")
    p.add_argument("--all", dest="nested", action="store_true", default=None,
                   help="also list nested runs: search trials, out-of-fold fits, late fusions (default: top-level "
                        "runs only)")
    p.add_argument("--all-params", action="store_true", help=f"show every parameter, not the first {d.max_params}")
    p.add_argument("--format", choices=constant("hyvid.pipelines.runs:FORMATS"),
                   help=f"table: fits a 100-column terminal; json: every run in full (all val_*/test_* metrics, "
                        f"params, lineage); csv: a row per run, a column per metric (default {d.format})")


def _runs_config(args: argparse.Namespace, s: Settings):
    from hyvid.pipelines.runs import RunsConfig

    return RunsConfig(experiment=args.experiment, tracking_uri=tracking_uri(args, s), **given(
        model=args.model, stage=args.stage, limit=args.limit, nested=args.nested,
        max_params=0 if args.all_params else None,
        format=args.format))


def _runs_run(args: argparse.Namespace, s: Settings) -> int:
    from hyvid.pipelines import tracking
    from hyvid.pipelines.runs import runs

    cfg = _runs_config(args, s)
    print(runs(cfg))
    if cfg.format == "table":
        print(f"\nBrowse them: mlflow ui --backend-store-uri {tracking.redact(cfg.tracking_uri)}")
    return 0


command("runs", "compare an experiment's runs: parameters, test metrics, lineage",
        ("hyvid runs --experiment hyvid", "hyvid runs --experiment hyvid --model fusion --all-params",
         "hyvid runs --stage hybrid --limit 5", "hyvid runs --all --model fusion",
         "hyvid runs --experiment hyvid --format csv > runs.csv"),
        _runs_args, _runs_run, _runs_config)


def _predict_args(p: argparse.ArgumentParser, s: Settings) -> None:
    d = defaults("hyvid.pipelines.predict:PredictConfig")
    p.add_argument("videos", nargs="+", metavar="VIDEO",
                   help="video files, folders of them (walked), manifest .csv files or .txt lists of paths")
    _model_args(p, s)
    p.add_argument("--split", type=int, choices=SPLITS, help="the latest hybrid run of this split (default: any)")
    p.add_argument("--top", type=int, help=f"classes to print per video (default {d.top})")
    p.add_argument("--batch-size", type=int, help=f"videos per CNN/LSTM batch (default {d.batch_size})")
    p.add_argument("--threads", type=int, help="frames+flow threads (default: one per CPU core)")
    p.add_argument("--json", action="store_true", help="print strict JSON (predictions and timing) instead of text")
    allow_failures_arg(p, "video")


def allow_failures_arg(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--allow-failures", action="store_true", default=None,
                   help=f"exit 0 when some {what}s fail (default: exit 1 if any {what} failed; always 1 when "
                        f"no {what} succeeded)")


_MODEL_HELP = ("a hybrid model folder (copied out of MLflow: no tracking server needed), a hybrid run runs:/<run id> "
               "(see `hyvid runs --stage hybrid`), its model runs:/<run id>/hybrid, or a registered one, "
               "models:/<name>/<version> or models:/<name>@<alias>")


def _model_args(p: argparse.ArgumentParser, s: Settings) -> None:
    tracking_arg(p)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--experiment", default=s.experiment,
                   help=f"use the latest hybrid run of this MLflow experiment (default: {s.experiment})")
    g.add_argument("--model", help=_MODEL_HELP)


def _predict_config(args: argparse.Namespace, s: Settings):
    from hyvid.pipelines.predict import PredictConfig

    return PredictConfig(videos=tuple(args.videos), experiment=args.experiment, tracking_uri=tracking_uri(args, s),
                         **given(model_uri=args.model, split=args.split, top=args.top, batch_size=args.batch_size,
                                 threads=args.threads, allow_failures=args.allow_failures))


def _predict_run(args: argparse.Namespace, s: Settings) -> int:
    from hyvid.pipelines.predict import format_json, format_text, predict

    cfg = _predict_config(args, s)
    res = predict(cfg)
    print(format_json(res) if args.json else format_text(res))
    if args.json:  # the text output lists failures inline already
        for p in res.predictions:
            if not p.ok:
                print(f"hyvid predict: error: {p.error}", file=sys.stderr)
    code = res.exit_code(cfg.allow_failures)
    if code and res.n_ok:
        print(f"hyvid predict: {len(res.predictions) - res.n_ok} of {len(res.predictions)} video(s) failed; "
              "--allow-failures exits 0 when some are classified", file=sys.stderr)
    return code


command("predict",
        "classify new video files with the latest hybrid (decode, flow, CNNs, LSTMs, fusion) and time each step",
        "  hyvid predict clip.avi\n"
        "  hyvid predict a.avi b.mp4 --top 3 --json\n"
        "  hyvid predict videos/ --model path/to/hybrid\n"
        "  hyvid predict clip.avi --model runs:/0123456789abcdef0123456789abcdef\n",
        _predict_args, _predict_run, _predict_config)


def _evaluate_args(p: argparse.ArgumentParser, s: Settings) -> None:
    d = defaults("hyvid.pipelines.evaluate:EvaluateConfig")
    p.add_argument("dataset", metavar="DATASET", help="a UCF-101-layout folder or a manifest CSV, with labels")
    p.add_argument("--split", type=int, choices=SPLITS, help=f"official split whose list to score (default {d.split})")
    p.add_argument("--subset", choices=constant("hyvid.pipelines.evaluate:SUBSETS"),
                   help=f"the split's train or test list, or all videos (default {d.subset})")
    tracking_arg(p)
    p.add_argument("--experiment", default=s.experiment,
                   help=f"the MLflow experiment the evaluation run is logged to, and whose latest hybrid run is "
                        f"scored when --model is not given (default: {s.experiment})")
    p.add_argument("--model", help=_MODEL_HELP + " (default: the latest hybrid run of --experiment)")
    p.add_argument("--address", default=s.ray_address,
                   help=f"Ray cluster address (default: {s.ray_address or 'start a local Ray'})")
    p.add_argument("--workers", type=int, help="tasks in flight (default: the cluster's CPUs)")
    p.add_argument("--videos-per-task", type=int, help=f"videos per Ray task (default {d.videos_per_task})")
    p.add_argument("--batch-size", type=int, help=f"videos per CNN/LSTM batch (default {d.batch_size})")
    p.add_argument("--no-log", action="store_true", help="do not log an MLflow evaluation run")
    p.add_argument("--format", choices=("text", "json"), default="text",
                   help='text, or strict JSON: {"accuracy", "accuracy_ci", "map", "map_ci", "n_videos", "failed", ...}')
    allow_failures_arg(p, "video")


def _evaluate_config(args: argparse.Namespace, s: Settings):
    from hyvid.pipelines.evaluate import EvaluateConfig

    return EvaluateConfig(dataset=args.dataset, experiment=args.experiment, tracking_uri=tracking_uri(args, s),
                          address=args.address, log_run=not args.no_log, **given(
                              split=args.split, subset=args.subset, model_uri=args.model, workers=args.workers,
                              videos_per_task=args.videos_per_task, batch_size=args.batch_size,
                              allow_failures=args.allow_failures))


def _evaluate_run(args: argparse.Namespace, s: Settings) -> int:
    from hyvid.pipelines.evaluate import evaluate, format_json, format_text

    cfg = _evaluate_config(args, s)
    res = evaluate(cfg)
    print(format_json(res) if args.format == "json" else format_text(res))
    code = res.exit_code(cfg.allow_failures)
    if code and res.n_videos:
        print(f"hyvid evaluate: {len(res.failed)} of {res.n_videos + len(res.failed)} video(s) failed; "
              "--allow-failures exits 0 when some are scored", file=sys.stderr)
    return code


command("evaluate",
        "score a labelled video set end to end with a logged hybrid: accuracy, mean class accuracy and mAP with "
        "bootstrap intervals, logged as an MLflow run",
        "  hyvid evaluate data/ucf101 --split 1 --subset test\n"
        "  hyvid evaluate data/ucf101 --model runs:/0123456789abcdef0123456789abcdef --format json\n"
        "  MLFLOW_TRACKING_URI=sqlite:///eval.db hyvid evaluate manifest.csv --subset all --model path/to/hybrid\n",
        _evaluate_args, _evaluate_run, _evaluate_config)
