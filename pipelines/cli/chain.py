"""`hyvid run` and `hyvid demo`: the whole chain of stages on a dataset, or on a synthetic one."""
from __future__ import annotations

import argparse
import sys

from hyvid.cluster.settings import Settings
from hyvid.pipelines.cli._common import command, common, csv, csv_numbers, defaults, given, shown, tracking_uri
from hyvid.pipelines.cli._static import constant
from hyvid.pipelines.cli.cnn import test_views_arg

# Read from source by `_static` (see there): importing `run` imports every stage.
_RUN, _SYNTH = "hyvid.pipelines.run", "hyvid.pipelines.data.synth"


def _run_args(p: argparse.ArgumentParser, s: Settings) -> None:
    d, train = defaults(f"{_RUN}:RunConfig"), defaults("hyvid.pipelines.train:TrainConfig")
    extract = defaults("hyvid.pipelines.extract:ExtractConfig")
    cnn = defaults("hyvid.pipelines.train_cnn:TrainCNNConfig")
    paper_extract = constant(f"{_RUN}:PAPER_EXTRACT_SETTINGS")
    paper_cnn = constant("hyvid.pipelines.train_cnn:PAPER_CNN_SETTINGS")
    paper_iters = constant("hyvid.pipelines.training.cnn_loop:PAPER_CNN_ITERS")
    paper_views = constant("hyvid.pipelines.features:PAPER_FEATURES_SETTINGS")["test_views"]
    p.add_argument("dataset", help="UCF-101-layout folder or manifest CSV")
    common(p, s, f"{_RUN}:RunConfig")
    p.add_argument("--splits", help="comma-separated splits, e.g. 1,2,3 (the UCF-101 protocol); overrides --split")
    p.add_argument("--frames", type=int, help=f"sampled positions per video (default {d.frames})")
    p.add_argument("--stack", type=int, help=f"L flows per stack (default {d.stack})")
    p.add_argument("--flow", choices=constant("hyvid.pipelines.data.video:FLOW_METHODS"),
                   help=f"optical flow (default: extract's, {extract.flow}; --paper: {paper_extract['flow']})")
    p.add_argument("--size", type=int, help=f"stored short side in pixels (default: extract's, {extract.size}; "
                                            f"--paper: {paper_extract['size']})")
    p.add_argument("--cnn-epochs", type=int,
                   help=f"train-cnn epochs of both streams (default {constant(f'{_RUN}:CNN_EPOCHS')}; --paper: "
                        "the paper's iterations, unless given)")
    p.add_argument("--finetune", choices=constant("hyvid.models.cnn:FINETUNE_MODES"),
                   help=f"spatial CNN fine-tuning (default: train-cnn's, {cnn.finetune}; --paper: "
                        f"{paper_cnn['finetune']})")
    p.add_argument("--cross-fit", type=int, metavar="K",
                   help=constant("hyvid.pipelines.training.folds:CROSS_FIT_HELP") + f" (default {d.cross_fit})")
    p.add_argument("--no-flip", dest="flip", action="store_false", default=None,
                   help="train-cnn without random horizontal flips (classes defined by direction); default: flips")
    p.add_argument("--models", help=f"models for `train` (default: {shown(d.models)}; 'all': every Table 2 row)")
    test_views_arg(p, f"default: features', {defaults('hyvid.pipelines.features:FeaturesConfig').test_views}; "
                      f"--paper: {paper_views}")
    p.add_argument("--paper", action="store_true", default=None,
                   help=f"every paper setting of every stage: extract with --flow {paper_extract['flow']} "
                        f"(TV-L1) at --size {paper_extract['size']}; train-cnn --paper (--crop {paper_cnn['crop']}, "
                        f"--finetune {paper_cnn['finetune']}, {paper_iters['spatial']}/{paper_iters['motion']} "
                        f"spatial/motion SGD iterations); features --test-views {paper_views}; train --paper (see "
                        "`hyvid train --help`); each of these flags given as well wins")
    p.add_argument("--cv-folds", type=int, help=f"out-of-fold folds for the hybrid's weights (default: train's, "
                                                f"{train.cv_folds}; 0: weights from val)")
    p.add_argument("--refit", action="store_true", default=None,
                   help="refit every chosen model on train + val before it scores test")
    p.add_argument("--seeds", type=int, help=f"repeat train-cnn, features, train and hybrid with seeds 0..N-1 "
                                             f"and report mean ± sd (default {d.seeds})")
    p.add_argument("--lstm-epochs", type=int, help=f"epochs of the LSTMs (default: train's, {train.lstm_epochs})")
    p.add_argument("--video-epochs", type=int,
                   help=f"epochs of the fusion net and NN baselines (default: train's, {train.video_epochs})")
    p.add_argument("--lam-grid", help=f"λ2 and λ3 values searched on val for the fusion net (default: train's, "
                                      f"λ2 {shown(train.lam2_grid)} and λ3 {shown(train.lam3_grid)})")
    p.add_argument("--weights-from", choices=constant("hyvid.pipelines.hybrid:WEIGHT_SOURCES"),
                   help="the hybrid's weights: out-of-fold training scores (oof) or validation scores "
                        f"(default {d.weights_from})")
    p.add_argument("--hybrid-step", type=float, help=f"hybrid weight grid step (default {shown(d.hybrid_step)})")
    p.add_argument("--plots", help="folder for the hybrid's PNG plots (default: none, MLflow artifacts only)")
    p.add_argument("--allow-failures", action="store_true", default=None,
                   help="exit 0 when some videos failed to extract (default: 1, after every stage ran on the rest)")


def _splits(args: argparse.Namespace) -> tuple[int, ...] | None:
    """--splits wins over --split; None when neither was given (the config's default)."""
    if args.splits is not None:
        return csv_numbers(args.splits, "--splits", int, "1,2,3")
    return None if getattr(args, "split", None) is None else (args.split,)


def _run_config(args: argparse.Namespace, s: Settings):
    from hyvid.pipelines.run import RunConfig, extract_config, train_cnn_config
    from hyvid.pipelines.train import TrainConfig

    lam_grid = csv_numbers(args.lam_grid, "--lam-grid", float, "0,1e-3,3e-3")
    cfg = RunConfig(
        dataset=args.dataset, store_uri=args.store, experiment=args.experiment, tracking_uri=tracking_uri(args, s),
        address=args.address, storage_options=s.resolved_storage_options(), **given(
            splits=_splits(args), frames=args.frames, stack=args.stack, flow=args.flow, size=args.size,
            cnn_epochs=args.cnn_epochs, finetune=args.finetune, cross_fit=args.cross_fit, flip=args.flip,
            test_views=args.test_views,
            models=csv(args.models, "--models"),
            lstm_epochs=args.lstm_epochs, video_epochs=args.video_epochs, lam2_grid=lam_grid, lam3_grid=lam_grid,
            paper=args.paper, cv_folds=args.cv_folds, refit=args.refit, seeds=args.seeds,
            weights_from=args.weights_from,
            hybrid_step=args.hybrid_step, out_dir=args.plots, allow_failures=args.allow_failures))
    # run() forwards these three only when truthy, so a 0 would quietly become the stage's default;
    # the stage configs that receive them check them now, before any extraction or training.
    TrainConfig(store_uri=cfg.store_uri, models=cfg.models, **given(
        lstm_epochs=cfg.lstm_epochs, video_epochs=cfg.video_epochs, cv_folds=cfg.cv_folds))
    extract_config(cfg)  # the stages' own checks, --paper's settings included
    train_cnn_config(cfg, cfg.splits[0], 0, None)
    return cfg


def _run_run(args: argparse.Namespace, s: Settings) -> int:
    from hyvid.pipelines.run import run

    cfg = _run_config(args, s)
    res = run(cfg)
    print("\nstage seconds:", ", ".join(f"{k}: {v}" for k, v in res.seconds.items()))
    for split, m in res.test_metrics.items():
        print(f"hybrid split {split}: " + ", ".join(f"{k}={v:.3f}" for k, v in m.items()))
    if res.seed_metrics:
        print(f"\ntest metrics over {len(res.seed_metrics)} seeds (mean ± sd; every seed fits its own CNNs):")
        for model, per in res.seed_summary().items():
            print(f"  {model:<16}" + ", ".join(f"{k} {mu:.3f} ± {sd:.3f}" for k, (mu, sd) in per.items()
                                               if not k.endswith(("_ci_low", "_ci_high"))))
    code = res.exit_code(cfg.allow_failures)
    if code:
        print(f"hyvid run: {res.failed_videos} video(s) of {cfg.dataset} failed to extract (`hyvid videos --store "
              f"{cfg.store_uri} --status failed`); --allow-failures exits 0", file=sys.stderr)
    return code


command("run", "run extract, train-cnn, features, train and hybrid in order, resuming what is done",
        "  hyvid run data/synth --store store --experiment exp1\n"
        "  hyvid run /data/UCF-101 --store s3://bucket/ucf --splits 1,2,3\n"
        "  hyvid run ccv.csv --store store --models all --refit --seeds 3\n",
        _run_args, _run_run, _run_config)


def _demo_args(p: argparse.ArgumentParser, s: Settings) -> None:
    d = defaults(f"{_RUN}:DemoConfig")
    p.add_argument("--out", help=f"folder for the data, store, MLflow db and plots (default {d.out})")
    p.add_argument("--classes", type=int,
                   help=f"synthetic classes (default: synth's, {defaults(f'{_SYNTH}:SynthConfig').classes})")
    p.add_argument("--videos-per-class", type=int, help=f"synthetic videos per class (default {d.videos_per_class})")
    p.add_argument("--splits", help=f"comma-separated splits (default {shown(d.splits)})")
    p.add_argument("--experiment", help=f"MLflow experiment (default {d.experiment})")


def _demo_config(args: argparse.Namespace, s: Settings):
    from hyvid.pipelines.data.synth import SynthConfig

    # SynthConfig, which receives the counts, checks them first: a bad count is refused before the
    # whole pipeline (torch, Ray, MLflow) is imported for DemoConfig.
    SynthConfig(out=args.out or ".", **given(classes=args.classes, videos_per_class=args.videos_per_class))
    from hyvid.pipelines.run import DemoConfig

    return DemoConfig(**given(out=args.out, classes=args.classes, videos_per_class=args.videos_per_class,
                              splits=_splits(args), experiment=args.experiment))


def _demo_run(args: argparse.Namespace, s: Settings) -> int:
    cfg = _demo_config(args, s)  # first: a bad count is refused before the pipeline is imported
    from hyvid.pipelines.run import demo, next_steps
    from hyvid.store.feature_store import FeatureStore

    res, md = demo(cfg)
    print("\n" + md)
    print("stage seconds:", ", ".join(f"{k}: {v}" for k, v in res.seconds.items()))
    ids = FeatureStore(cfg.paths()["store"]).videos(split=cfg.splits[0], subset="test")["video_id"].to_pylist()
    print("\n" + next_steps(cfg, ids[0] if ids else None))
    return 0


command("demo", "generate a synthetic dataset and run the whole pipeline on it, locally",
        "  hyvid demo --out demo_out\n  hyvid demo --out /tmp/d --classes 6 --videos-per-class 8\n",
        _demo_args, _demo_run, _demo_config)
