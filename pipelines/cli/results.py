"""`hyvid report`, `hyvid runs` and `hyvid predict`: read what the stages logged to MLflow."""
from __future__ import annotations

import argparse
import sys

from hyvid.cluster.settings import Settings
from hyvid.models.registry import SPLITS
from hyvid.pipelines.cli._common import command, common, csv_numbers, defaults, given, tracking_arg, tracking_uri


def _report_args(p: argparse.ArgumentParser, s: Settings) -> None:
    from hyvid.pipelines.report import FORMATS, ReportConfig

    d = defaults(ReportConfig)
    common(p, s, store=False, split=False, address=False)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--split", type=int, choices=SPLITS, help="report one split")
    g.add_argument("--splits", help="report these splits and their mean, e.g. 1,2,3 (default: every split with runs)")
    p.add_argument("--format", choices=FORMATS,
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
    from hyvid.pipelines.runs import RunsConfig

    d = defaults(RunsConfig)
    common(p, s, store=False, split=False, address=False)
    p.add_argument("--model", help="only runs of this model (e.g. fusion, spatial_cnn+spatial_lstm)")
    p.add_argument("--stage", help="only runs of this stage (e.g. train-cnn, train, hybrid, late_fusion)")
    p.add_argument("--limit", type=int, help=f"newest N runs (default {d.limit})")
    p.add_argument("--all-params", action="store_true", help=f"show every parameter, not the first {d.max_params}")


def _runs_config(args: argparse.Namespace, s: Settings):
    from hyvid.pipelines.runs import RunsConfig

    return RunsConfig(experiment=args.experiment, tracking_uri=tracking_uri(args, s), **given(
        model=args.model, stage=args.stage, limit=args.limit, max_params=0 if args.all_params else None))


def _runs_run(args: argparse.Namespace, s: Settings) -> int:
    from hyvid.pipelines import tracking
    from hyvid.pipelines.runs import format_table, list_runs

    cfg = _runs_config(args, s)
    rows = list_runs(cfg)
    print(format_table(rows))
    print(f"\n{len(rows)} run(s). Browse them: mlflow ui --backend-store-uri {tracking.redact(cfg.tracking_uri)}")
    return 0


command("runs", "compare an experiment's runs: parameters, test metrics, lineage",
        ("hyvid runs --experiment hyvid", "hyvid runs --experiment hyvid --model fusion --all-params",
         "hyvid runs --stage hybrid --limit 5"), _runs_args, _runs_run, _runs_config)


def _predict_args(p: argparse.ArgumentParser, s: Settings) -> None:
    from hyvid.pipelines.predict import PredictConfig

    d = defaults(PredictConfig)
    p.add_argument("videos", nargs="+", metavar="VIDEO", help="video files to classify")
    tracking_arg(p)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--experiment", default=s.experiment,
                   help=f"use the latest hybrid run of this MLflow experiment (default: {s.experiment})")
    g.add_argument("--model", help="a hybrid run, runs:/<run id> (see `hyvid runs --stage hybrid`), or a registered "
                                   "hybrid, models:/<name>/<version> or models:/<name>@<alias>")
    p.add_argument("--split", type=int, choices=SPLITS, help="the latest hybrid run of this split (default: any)")
    p.add_argument("--top", type=int, help=f"classes to print per video (default {d.top})")
    p.add_argument("--batch-size", type=int, help=f"videos per CNN/LSTM batch (default {d.batch_size})")
    p.add_argument("--threads", type=int, help="frames+flow threads (default: one per CPU core)")
    p.add_argument("--json", action="store_true", help="print JSON (predictions and timing) instead of text")


def _predict_config(args: argparse.Namespace, s: Settings):
    from hyvid.pipelines.predict import PredictConfig

    return PredictConfig(videos=tuple(args.videos), experiment=args.experiment, tracking_uri=tracking_uri(args, s),
                         **given(model_uri=args.model, split=args.split, top=args.top, batch_size=args.batch_size,
                                 threads=args.threads))


def _predict_run(args: argparse.Namespace, s: Settings) -> int:
    from hyvid.pipelines.predict import format_json, format_text, predict

    res = predict(_predict_config(args, s))
    print(format_json(res) if args.json else format_text(res))
    if args.json:  # the text output lists failures inline already
        for p in res.predictions:
            if not p.ok:
                print(f"hyvid predict: error: {p.error}", file=sys.stderr)
    return res.exit_code()


command("predict",
        "classify new video files with the latest hybrid (decode, flow, CNNs, LSTMs, fusion) and time each step",
        "  hyvid predict clip.avi\n"
        "  hyvid predict a.avi b.mp4 --top 3 --json\n"
        "  hyvid predict clip.avi --model runs:/0123456789abcdef0123456789abcdef\n",
        _predict_args, _predict_run, _predict_config)
