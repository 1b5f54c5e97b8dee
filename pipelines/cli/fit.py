"""`hyvid train` and `hyvid hybrid`: fit the LSTMs, fusion net and baselines, then fuse their scores."""
from __future__ import annotations

import argparse
import dataclasses
from types import SimpleNamespace

from hyvid.cluster.settings import Settings
from hyvid.pipelines.cli._common import (
    command,
    common,
    csv,
    csv_numbers,
    defaults,
    given,
    next_command,
    print_registered,
    register_args,
    settings_workers,
    shown,
    tracking_uri,
)
from hyvid.pipelines.cli._static import constant

# Read from source by `_static` (see there): importing these stages would load torch and MLflow.
_TRAIN, _HYBRID = "hyvid.pipelines.train", "hyvid.pipelines.hybrid"


def _units(widths: tuple[int, ...]) -> str:
    return "/".join(map(str, widths))


def _train_args(p: argparse.ArgumentParser, s: Settings) -> None:
    from hyvid.models.registry import BASELINE_MODELS, EXTRA_BASELINE_MODELS

    d = defaults(f"{_TRAIN}:TrainConfig")
    # The --paper preset (TrainConfig.paper), to say what it changes.
    paper = SimpleNamespace(**{**vars(d), **constant(f"{_TRAIN}:PAPER_SETTINGS")})
    paper_lr = constant("hyvid.models.fusion:PAPER_LR")
    common(p, s, f"{_TRAIN}:TrainConfig")
    p.add_argument("--models", help=f"comma-separated registry names; 'baselines' = {shown(BASELINE_MODELS)}; "
                                    f"'all' = every Table 2 row too, {shown(EXTRA_BASELINE_MODELS)} "
                                    f"(default: {shown(d.models)})")
    p.add_argument("--workers-per-model", type=int, default=settings_workers(s, "train"),
                   help="data-parallel workers per torch fit; above 1 each is a Ray Train TorchTrainer "
                        f"(default: settings workers.train, else {d.workers_per_model}: one pool worker per fit)")
    p.add_argument("--cpus-per-worker", type=float,
                   help="CPUs of each fit worker (default: 1, one worker per CPU; all of them with --sequential)")
    p.add_argument("--epochs", type=int, help="epochs of every model (sets --lstm-epochs and --video-epochs)")
    p.add_argument("--lstm-epochs", type=int, help=f"epochs of the LSTMs (default {d.lstm_epochs})")
    p.add_argument("--video-epochs", type=int,
                   help=f"epochs of the fusion net and NN baselines (default {d.video_epochs})")
    p.add_argument("--paper", "--paper-lstm", dest="paper", action="store_true",
                   help=f"every paper setting: LSTM {_units(paper.lstm_hidden)} units with peepholes, a softmax "
                        f"loss on every step, {paper.lstm_optimizer.upper()} lr {shown(paper.lstm_lr)}, "
                        f"momentum {shown(paper.lstm_momentum)}, batch {paper.lstm_batch_size}; the fusion net's "
                        f"{paper.fusion_loss} loss with plain {paper.fusion_optimizer.upper()} at lr "
                        f"{shown(paper.fusion_lr)}, batch {paper.fusion_batch_size}, λ1 {shown(paper.lam1)}, λ2/λ3 "
                        f"grid {shown(paper.lam2_grid)}; no input dropout, no early stopping "
                        f"({paper.video_epochs} video-level epochs) (the defaults: {_units(d.lstm_hidden)} units with "
                        f"{d.lstm_optimizer} at lr {shown(d.lstm_lr)}; the fusion net's {d.fusion_loss} with "
                        f"{d.fusion_optimizer} at lr {shown(d.fusion_lr)}, chosen on validation; other flags "
                        "override either)")
    p.add_argument("--lstm-hidden", help=f"LSTM layer widths bottom first (default {shown(d.lstm_hidden)})")
    p.add_argument("--lstm-lr", type=float, help=f"LSTM learning rate (default {shown(d.lstm_lr)})")
    p.add_argument("--lstm-optimizer", choices=("sgd", "adam"),
                   help=f"LSTM optimizer (default {d.lstm_optimizer}; sgd is the paper's)")
    p.add_argument("--pooling", choices=("last", "mean"),
                   help=f"LSTM video prediction: last step (paper) or mean (default {d.lstm_pooling})")
    p.add_argument("--peephole", action="store_true", default=None, help="LSTM cells with the paper's peephole terms")
    p.add_argument("--lstm-step-loss", action=argparse.BooleanOptionalAction, default=None,
                   help=f"LSTM loss on every step's softmax (the paper's) or the last step's only "
                        f"(default {'every step' if d.lstm_step_loss else 'last step'}, chosen on validation)")
    p.add_argument("--lstm-input-dropout", type=float,
                   help=f"dropout on the LSTMs' standardized inputs (default {shown(d.lstm_input_dropout)})")
    p.add_argument("--lstm-input", choices=constant("hyvid.models.lstm:TEMPORAL_INPUTS"),
                   help="what each LSTM step reads: the standardized features (the paper's), their deviation "
                        f"from the video's mean over time, or both (default {d.lstm_temporal_input})")
    p.add_argument("--fusion-loss", choices=("squared", "cross_entropy"),
                   help=f"the fusion nets' data loss (default {d.fusion_loss}; squared is the paper's Eq. 1)")
    p.add_argument("--fusion-optimizer", choices=("sgd", "adam"),
                   help=f"the fusion nets' optimizer, the prox step after each update either way "
                        f"(default {d.fusion_optimizer}; plain sgd is the paper's Algorithm 1)")
    p.add_argument("--fusion-lr", type=float,
                   help=f"learning rate of the fusion net (default {shown(d.fusion_lr)}, chosen on validation: "
                        f"benchmarks/results/video_nets.json; the paper's is {shown(paper_lr)} with sgd; fusion_noreg "
                        "searches its own)")
    p.add_argument("--input-dropout", type=float,
                   help=f"dropout on the fusion nets' and NN baselines' standardized inputs "
                        f"(default {shown(d.fusion_input_dropout)}; the paper's nets have none)")
    p.add_argument("--patience", type=int,
                   help=f"early stopping: epochs without a better val accuracy before a fit stops (default: LSTMs "
                        f"{d.lstm_patience}, video-level nets {d.video_patience}; 0: every epoch runs)")
    p.add_argument("--plots", default=constant(f"{_HYBRID}:DEFAULT_OUT_DIR"),
                   help="folder for the training curves' PNG, also an MLflow artifact of each run "
                        "(default %(default)s; split<N>/ inside)")
    p.add_argument("--lam-grid", help=f"λ2 and λ3 values searched on val for the fusion net (default: λ2 "
                                      f"{shown(d.lam2_grid)} and λ3 {shown(d.lam3_grid)}; with --paper "
                                      f"{shown(paper.lam2_grid)} for both)")
    p.add_argument("--svm-c-grid", help=f"C values searched on val for every SVM (default {shown(d.svm_c_grid)})")
    p.add_argument("--nn-lr-grid", help=f"learning rates searched on val for NN-EF/NN-LF (default "
                                        f"{shown(d.nn_lr_grid)})")
    p.add_argument("--cv-folds", type=int,
                   help=f"folds (by group) of the out-of-fold training scores the hybrid's weights are fitted on, "
                        f"for {shown(d.oof_models)} (default {d.cv_folds}; 0: none, the hybrid then uses val)")
    p.add_argument("--refit", action="store_true", default=None,
                   help="retrain each chosen model on train + val for its chosen epochs before it scores test")
    p.add_argument("--sequential", action="store_true", help="fit the models one after another (for comparison)")
    p.add_argument("--storage-path", help="where fits keep checkpoints (default: <store>/_train; "
                                          "shared storage on a multi-node cluster)")
    p.add_argument("--max-failures", type=int,
                   help=f"restarts of a fit whose worker died, from its checkpoint (default {d.max_failures})")
    p.add_argument("--svm-kernel", choices=("auto", "exact", "approx"),
                   help=f"SVM baselines: exact chi2 kernel, or the additive-chi2 feature map with linear SVMs "
                        f"(default {d.svm_kernel}: exact up to --svm-exact-max training videos)")
    p.add_argument("--svm-exact-max", type=int, help=f"see --svm-kernel (default {d.svm_exact_max})")
    register_args(p, "each fitted model (a pyfunc of its features)")


def _train_config(args: argparse.Namespace, s: Settings):
    from hyvid.pipelines.train import TrainConfig

    lam_grid = csv_numbers(args.lam_grid, "--lam-grid", float, "0,1e-3,3e-3")
    values = given(
        split=args.split, models=csv(args.models, "--models"), workers_per_model=args.workers_per_model,
        cpus_per_worker=args.cpus_per_worker, concurrent=False if args.sequential else None,
        lstm_epochs=args.epochs, video_epochs=args.epochs,
        lstm_hidden=csv_numbers(args.lstm_hidden, "--lstm-hidden", int, "1024,512"),
        lstm_lr=args.lstm_lr, lstm_optimizer=args.lstm_optimizer, lstm_pooling=args.pooling,
        lstm_peephole=args.peephole, lstm_step_loss=args.lstm_step_loss, lstm_input_dropout=args.lstm_input_dropout,
        lstm_temporal_input=args.lstm_input, fusion_loss=args.fusion_loss,
        fusion_optimizer=args.fusion_optimizer, fusion_input_dropout=args.input_dropout,
        nn_input_dropout=args.input_dropout, lstm_patience=args.patience, video_patience=args.patience,
        plots_dir=args.plots, fusion_lr=args.fusion_lr, lam2_grid=lam_grid, lam3_grid=lam_grid,
        svm_c_grid=csv_numbers(args.svm_c_grid, "--svm-c-grid", float, "0.1,1,10"),
        nn_lr_grid=csv_numbers(args.nn_lr_grid, "--nn-lr-grid", float, "0.01,0.03"),
        cv_folds=args.cv_folds, refit=args.refit,
        storage_path=args.storage_path, max_failures=args.max_failures, svm_kernel=args.svm_kernel,
        svm_exact_max=args.svm_exact_max, register_as=args.register, register_alias=args.alias)
    # --lstm-epochs / --video-epochs are the finer flags: they win over --epochs.
    values.update(given(lstm_epochs=args.lstm_epochs, video_epochs=args.video_epochs))
    make = TrainConfig.paper if args.paper else TrainConfig
    return make(store_uri=args.store, experiment=args.experiment, address=args.address,
                tracking_uri=tracking_uri(args, s), storage_options=s.resolved_storage_options(), **values)


def format_train_table(result) -> str:
    """`hyvid train`'s output: the models' val/test metrics and time split as a plain-text table."""
    cols = ["val_accuracy", "test_accuracy", "test_mean_class_accuracy", "test_top5", "test_map"]
    head = (f"{'model':<14}" + "".join(f"{c:>26}" for c in cols) + f"{'wall_s':>9}{'start-up':>9}{'load':>7}"
            f"{'compute':>9}{'log':>7}  run_id")
    lines = [head, "-" * len(head)]
    for m, r in result.models.items():
        vals = "".join(f"{r.metrics[c]:>26.4f}" if c in r.metrics else f"{'-':>26}" for c in cols)
        s = r.seconds
        split = "".join(f"{s.get(k, float('nan')):>{w}.1f}" for k, w in (("startup", 9), ("load", 7),
                                                                          ("compute", 9), ("log", 7)))
        lines.append(f"{m:<14}{vals}{r.wall_s:>9.1f}{split}  {r.run_id}")
    lines.append(f"total wall time {result.wall_s:.1f} s ({'concurrent' if result.concurrent else 'sequential'})")
    return "\n".join(lines)


def _train_run(args: argparse.Namespace, s: Settings) -> int:
    from hyvid.pipelines.train import train

    cfg = _train_config(args, s)
    res = train(cfg)
    print(format_train_table(res))
    print_registered(res.registered)
    print(next_command(args, s, "hybrid", store=args.store, split=cfg.split))
    return 0


command("train", "fit the LSTMs, the regularized fusion net and the baselines concurrently (Ray actors + MLflow)",
        "  hyvid train --store store\n"
        "  hyvid train --store store --models spatial_lstm,motion_lstm --epochs 20 --workers-per-model 2\n"
        "  hyvid train --store store --models fusion --lam-grid 0,3e-5,3e-4,3e-3\n"
        "  hyvid train --store store --models all --refit --cv-folds 3\n"
        "  hyvid train --store store --paper --split 2 --experiment paper\n",
        _train_args, _train_run, _train_config)


def _hybrid_args(p: argparse.ArgumentParser, s: Settings) -> None:
    from hyvid.models.registry import MOTION_CNN, SPATIAL_CNN, TWO_STREAM_CNN

    d = defaults(f"{_HYBRID}:HybridConfig")
    common(p, s, f"{_HYBRID}:HybridConfig", address=False)
    p.add_argument("--splits", help="several splits, e.g. 1,2,3 (overrides --split)")
    p.add_argument("--models", help=f"score sets to fuse (default {shown(d.models)}; CNN scores may be added: "
                                    f"{shown((SPATIAL_CNN, MOTION_CNN, TWO_STREAM_CNN)).replace(',', ', ')})")
    p.add_argument("--step", type=float, help=f"weight grid step on the simplex (default {shown(d.step)})")
    p.add_argument("--weights-from", choices=constant(f"{_HYBRID}:WEIGHT_SOURCES"),
                   help="fit the weights on the components' out-of-fold training scores (oof, the paper's "
                        "cross-validation; val when a component has none) or on the validation scores "
                        f"(default {d.weights_from})")
    p.add_argument("--refine", action="store_true", default=None,
                   help="then search a 4x finer grid around the best weights")
    p.add_argument("--metric", choices=constant(f"{_HYBRID}:SEARCH_METRICS"),
                   help="validation metric to maximise (default: accuracy, or map for multi-label data)")
    p.add_argument("--out", default=constant(f"{_HYBRID}:DEFAULT_OUT_DIR"),
                   help="folder for the PNG/CSV files (default %(default)s; split<N>/ inside)")
    p.add_argument("--no-late-fusion", dest="late_fusion", action="store_false", default=None,
                   help="skip Table 1's late average fusions")
    register_args(p, "the hybrid (a pyfunc that classifies video files; then `hyvid predict --model "
                     "models:/NAME@A`)", several=False)


def _hybrid_config(args: argparse.Namespace, s: Settings) -> list:
    """One HybridConfig per split, all built (so all checked) before any split runs."""
    from hyvid.pipelines.hybrid import HybridConfig

    splits = csv_numbers(args.splits, "--splits", int, "1,2,3") if args.splits is not None else (args.split,)
    if not splits:
        raise ValueError(f"--splits {args.splits!r}: expected comma-separated split numbers such as 1,2,3")
    out = args.out.rstrip("/")
    uri = tracking_uri(args, s)
    cfgs = []
    for split in splits:
        cfg = HybridConfig(
            store_uri=args.store, experiment=args.experiment, tracking_uri=uri,
            storage_options=s.resolved_storage_options(), **given(
                split=split, models=csv(args.models, "--models"), step=args.step, refine=args.refine,
                metric=args.metric, late_fusion=args.late_fusion, register_as=args.register, register_alias=args.alias,
                weights_from=args.weights_from))
        cfgs.append(dataclasses.replace(cfg, out_dir=f"{out}/split{cfg.split}"))  # the split may be the default
    return cfgs


def _hybrid_run(args: argparse.Namespace, s: Settings) -> int:
    from hyvid.pipelines.hybrid import hybrid

    for cfg in _hybrid_config(args, s):
        res = hybrid(cfg)
        print(f"split {cfg.split}: hybrid weights " + ", ".join(f"{m}={w:.3f}" for m, w in res.weights.items()))
        print(f"  val {res.metric} {res.val_metric:.4f}; test " +
              ", ".join(f"{k} {v:.4f}" for k, v in res.test_metrics.items()))
        for row, vals in res.late_fusion.items():
            print(f"  late fusion {row}: test " + ", ".join(f"{k} {v:.4f}" for k, v in vals.items()))
        print(f"  MLflow run {res.run_id}; files in {cfg.out_dir}/")
        if res.registered_version:
            print(f"  registered as models:/{args.register}/{res.registered_version}"
                  + (f" (models:/{args.register}@{args.alias})" if args.alias else ""))
    print(next_command(args, s, "report"))
    return 0


command("hybrid", "fuse the models' scores linearly, weights cross-validated on training videos (Sec. 4.2.3)",
        "  hyvid hybrid --store store\n"
        "  hyvid hybrid --store store --splits 1,2,3 --models spatial_lstm,motion_lstm,fusion,spatial_cnn --step 0.1\n"
        "  hyvid hybrid --store store --refine --experiment hyvid\n",
        _hybrid_args, _hybrid_run, _hybrid_config)
