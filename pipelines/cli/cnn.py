"""`hyvid train-cnn` and `hyvid features`: fit the stream CNNs, then run them over every stored clip."""
from __future__ import annotations

import argparse

from hyvid.cluster.settings import Settings
from hyvid.pipelines.cli._common import (
    command,
    common,
    defaults,
    given,
    next_command,
    per_node,
    print_registered,
    register_args,
    settings_workers,
    shown,
    tracking_uri,
)
from hyvid.pipelines.cli._static import constant

# Read from source by `_static` (see there): importing these stages would load torch and MLflow.
_TRAIN_CNN, _FEATURES = "hyvid.pipelines.train_cnn", "hyvid.pipelines.features"
_PRECISION = "hyvid.pipelines.precision"
_CROSS_FIT_HELP = "hyvid.pipelines.training.folds:CROSS_FIT_HELP"

_TRAIN_CNN_EXAMPLES = """  hyvid train-cnn --store store                          # both streams at once, local Ray
  hyvid train-cnn --store store --stream spatial --finetune all --epochs 5 --lr 1e-3
  hyvid train-cnn --store s3://bucket/ucf --address auto --workers 4 --split 2
  hyvid train-cnn --store store --stream motion --epochs 10 --resume   # continue an interrupted fit
each stream is one Ray Train fit (GPUs when the cluster has them) and one MLflow run named
spatial_cnn / motion_cnn with per-epoch metrics, lineage and the model; then run `hyvid features`."""


def _train_cnn_args(p: argparse.ArgumentParser, s: Settings) -> None:
    d = defaults(f"{_TRAIN_CNN}:TrainCNNConfig")
    finetune_modes = constant("hyvid.models.cnn:FINETUNE_MODES")
    common(p, s, f"{_TRAIN_CNN}:TrainCNNConfig")
    p.add_argument("--stream", choices=constant(f"{_TRAIN_CNN}:STREAM_CHOICES"),
                   help=f"which CNN(s) (default {d.stream})")
    p.add_argument("--epochs", type=int, help=f"default {d.epochs}")
    p.add_argument("--batch-size", type=int, help=f"clips per step (default {d.batch_size})")
    p.add_argument("--iters", type=int, help="SGD steps per stream instead of --epochs, the lr dropping 10x at the "
                                             "paper's steps scaled to this length (default: epochs)")
    p.add_argument("--amp", choices=constant(f"{_PRECISION}:AMP_MODES"),
                   help=constant(f"{_PRECISION}:AMP_HELP") + f" (default {d.amp})")
    lrs: dict[str, list[str]] = {}  # lr -> the fits that use it when --lr is not given (train_cnn.default_lr)
    spatial_lr = constant(f"{_TRAIN_CNN}:SPATIAL_LR")
    for fit, lr in (("motion", constant(f"{_TRAIN_CNN}:MOTION_LR")), ("spatial head", spatial_lr["head"]),
                    ("spatial --finetune all", spatial_lr["all"])):
        lrs.setdefault(shown(lr), []).append(fit)
    p.add_argument("--lr", type=float, help="SGD learning rate (default: " +
                   ", ".join(f"{lr} {' and '.join(fits)}" for lr, fits in lrs.items()) + ")")
    p.add_argument("--finetune", choices=finetune_modes,
                   help="spatial CNN: train fc1+classifier on the frozen ImageNet backbone, or all "
                        f"(default {d.finetune})")
    p.add_argument("--head-views", type=int,
                   help=f"--finetune head: augmented views cached per training clip (default {d.head_views})")
    p.add_argument("--crop", type=int,
                   help=f"training crop side in pixels (random crop + flip); 0: whole frames (default {d.crop})")
    p.add_argument("--feature-dim", type=int, help=f"fc1 width = feature size (default {d.feature_dim})")
    p.add_argument("--no-flip", dest="flip", action="store_false", default=None,
                   help="no random horizontal flips of training clips: for classes defined by direction "
                        "(left against right); default: flips")
    p.add_argument("--cross-fit", type=int, metavar="K",
                   help=constant(_CROSS_FIT_HELP) + f" (default {d.cross_fit})")
    p.add_argument("--workers", type=int, default=settings_workers(s, "train-cnn"),
                   help=f"Ray Train workers per stream (default: settings workers.train-cnn, else {d.workers})")
    p.add_argument("--cpus-per-worker", type=int, help="default: the cluster's CPUs shared among all workers")
    p.add_argument("--gpu", dest="use_gpu", action="store_true", default=None,
                   help="require GPUs (default: GPUs when the cluster has them)")
    p.add_argument("--no-gpu", dest="use_gpu", action="store_false", help="train on CPUs even if GPUs exist")
    p.add_argument("--checkpoint-path", help="Ray Train storage (default: STORE/_checkpoints)")
    p.add_argument("--resume", action="store_true", default=None,
                   help="continue the last fit of this stream/split from its checkpoint")
    paper_iters = constant("hyvid.pipelines.training.cnn_loop:PAPER_CNN_ITERS")
    p.add_argument("--paper", action="store_true", default=None,
                   help=f"the paper's CNN stage (TrainCNNConfig.paper): --crop {constant(f'{_TRAIN_CNN}:PAPER_CROP')} "
                        f"(of frames extracted with --size {constant(f'{_TRAIN_CNN}:PAPER_SIZE')}), --finetune "
                        f"{constant(f'{_TRAIN_CNN}:PAPER_FINETUNE')}, and two-stream's schedules: "
                        f"{paper_iters['spatial']} spatial and {paper_iters['motion']} motion SGD iterations, the "
                        "lr dropping 10x at the paper's steps; any flag given as well wins (--iters or --epochs "
                        "replaces the iteration counts)")
    register_args(p, "each fitted CNN (a pyfunc of uint8 frames or flow stacks)")


def _train_cnn_config(args: argparse.Namespace, s: Settings):
    from hyvid.pipelines.train_cnn import TrainCNNConfig

    make = TrainCNNConfig.paper if args.paper else TrainCNNConfig
    return make(
        store_uri=args.store, experiment=args.experiment, tracking_uri=tracking_uri(args, s),
        storage_options=s.resolved_storage_options(), address=args.address, **given(
            stream=args.stream, split=args.split, epochs=args.epochs, iters=args.iters, amp=args.amp,
            batch_size=args.batch_size, lr=args.lr,
            finetune=args.finetune, head_views=args.head_views, crop=args.crop, feature_dim=args.feature_dim,
            flip=args.flip, cross_fit=args.cross_fit,
            workers=args.workers, cpus_per_worker=args.cpus_per_worker, use_gpu=args.use_gpu,
            checkpoint_path=args.checkpoint_path, resume=args.resume, register_as=args.register,
            register_alias=args.alias))


def _train_cnn_run(args: argparse.Namespace, s: Settings) -> int:
    from hyvid.pipelines.train_cnn import train_cnn

    cfg = _train_cnn_config(args, s)
    r = train_cnn(cfg)
    for stream, run_id in r.run_ids.items():
        m = r.metrics.get(stream, {})
        val = f", val accuracy {m['val_accuracy']:.3f}" if "val_accuracy" in m else ""
        nan = float("nan")
        print(f"{stream} CNN: MLflow run {run_id}; epoch {int(m.get('epoch', -1)) + 1}: train loss "
              f"{m.get('train_loss', nan):.3f}, train accuracy {m.get('train_accuracy', nan):.3f}{val}")
    print_registered(r.registered)
    print(next_command(args, s, "features", store=args.store, split=cfg.split))
    return 0


command("train-cnn", "fine-tune the spatial CNN and train the motion CNN on stored clips (Ray Train + MLflow)",
        _TRAIN_CNN_EXAMPLES, _train_cnn_args, _train_cnn_run, _train_cnn_config)

_FEATURES_EXAMPLES = """  hyvid features --store store                 # the latest train-cnn runs of the split
  hyvid features --store store --run SPATIAL_RUN_ID,MOTION_RUN_ID
  hyvid features --store s3://bucket/ucf --address auto --workers 32 --split 2
writes frame_features (one row per video and sampled position: fc1 features of both CNNs) and the
spatial_cnn / motion_cnn / two_stream_cnn rows of video_scores. Re-running skips finished videos."""


def _features_args(p: argparse.ArgumentParser, s: Settings) -> None:
    d = defaults(f"{_FEATURES}:FeaturesConfig")
    common(p, s, f"{_FEATURES}:FeaturesConfig")
    p.add_argument("--run", metavar="SPATIAL_RUN,MOTION_RUN",
                   help="MLflow run ids of the two CNNs (default: the latest finished train-cnn runs of the split)")
    p.add_argument("--spatial-run", help="spatial CNN run id (overrides --run)")
    p.add_argument("--motion-run", help="motion CNN run id (overrides --run)")
    p.add_argument("--workers", type=int, default=settings_workers(s, "features"),
                   help="tasks in flight (default: settings workers.features, else the cluster's CPUs)")
    p.add_argument("--cross-fit", type=int, metavar="K",
                   help="use the split's K cross-fitted CNN pairs (`train-cnn --cross-fit K`): " +
                        constant(_CROSS_FIT_HELP) + f" (default {d.cross_fit})")
    p.add_argument("--cnn-seed", type=int, help="only CNN runs fitted with this --seed (default: the newest)")
    p.add_argument("--videos-per-task", type=int, help=f"default {d.videos_per_task}")
    p.add_argument("--batch-size", type=int, help=f"clips per forward pass (default {d.batch_size})")
    p.add_argument("--amp", choices=constant(f"{_PRECISION}:AMP_MODES"),
                   help=constant(f"{_PRECISION}:AMP_HELP") + f" (default {d.amp})")
    paper_views = constant(f"{_FEATURES}:PAPER_TEST_VIEWS")
    test_views_arg(p, f"default {d.test_views}; --paper: {paper_views}")
    p.add_argument("--paper", action="store_true", default=None,
                   help=f"two-stream testing as the paper's CNNs are tested (FeaturesConfig.paper): --test-views "
                        f"{paper_views}; --test-views given as well wins")


def test_views_arg(p: argparse.ArgumentParser, default: str) -> None:
    """--test-views: checked by the config (check_test_views), so a bad count is one error line."""
    views = ", ".join(map(str, constant("hyvid.models.cnn:TEST_VIEWS")))
    p.add_argument("--test-views", type=int, metavar="N",
                   help=f"crops per clip whose CNN features and scores are averaged, one of {views}: the centre "
                        f"crop at the training size, + the four corners, + the flips of all five; a re-run "
                        f"with another count recomputes every video ({default})")


def _features_config(args: argparse.Namespace, s: Settings):
    from hyvid.pipelines.features import FeaturesConfig

    spatial_run = motion_run = None
    if args.run is not None:
        parts = [x.strip() for x in args.run.split(",")]
        if len(parts) != 2 or not all(parts):
            raise ValueError(f"--run {args.run!r}: expected SPATIAL_RUN_ID,MOTION_RUN_ID")
        spatial_run, motion_run = parts
    make = FeaturesConfig.paper if args.paper else FeaturesConfig
    return make(
        store_uri=args.store, experiment=args.experiment, tracking_uri=tracking_uri(args, s),
        storage_options=s.resolved_storage_options(), address=args.address, **given(
            split=args.split, spatial_run_id=args.spatial_run if args.spatial_run is not None else spatial_run,
            motion_run_id=args.motion_run if args.motion_run is not None else motion_run, workers=args.workers,
            videos_per_task=args.videos_per_task, batch_size=args.batch_size, cross_fit=args.cross_fit,
            cnn_seed=args.cnn_seed, amp=args.amp, test_views=args.test_views))


def _features_run(args: argparse.Namespace, s: Settings) -> int:
    from hyvid.pipelines.features import extract_features

    cfg = _features_config(args, s)
    r = extract_features(cfg)
    print(f"features of {r.n_features_written} videos written ({r.n_rows_written} frame rows, dims "
          f"{r.spatial_dim}/{r.motion_dim}), {r.n_skipped} already there, CNN scores of {r.n_scored} videos "
          f"stored [{r.seconds:.1f} s]")
    print(f"CNN runs: spatial {r.spatial_run_id}, motion {r.motion_run_id}")
    if r.node_tasks:
        print("tasks per node: " + per_node(r.node_tasks))
    print(next_command(args, s, "train", store=args.store, split=cfg.split))
    return 0


command("features", "run both CNNs over every stored clip: frame_features + CNN video_scores (Ray tasks)",
        _FEATURES_EXAMPLES, _features_args, _features_run, _features_config)
