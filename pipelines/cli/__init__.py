"""The `hyvid` command line: argparse subcommands only.

Each subcommand parses its flags into a stage's config dataclass and calls the stage function;
no logic lives here. Defaults come from `cluster.settings` (ray_config.yaml's `metadata.hyvid`
block and the environment); flags override them.

Each command has a section below, delimited by `# === <command> ===` markers.
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable

from hyvid.cluster.settings import Settings, load_settings

EPILOG = """examples:
  hyvid demo --out demo_out
  hyvid synth data/synth --classes 6 --videos-per-class 8
  hyvid extract data/synth --store store --flow dis --frames 25 --stack 10
  hyvid train-cnn --store store --stream both --epochs 2
  hyvid features --store store
  hyvid train --store store --models spatial_lstm,motion_lstm,fusion,baselines
  hyvid hybrid --store store
  hyvid report --experiment hyvid
  hyvid query --store store --video 'ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01' --frames 0:5
"""

# name -> (help, examples, add_arguments(parser, settings), run(args, settings) -> exit code).
# Each section below registers its command as:
#   COMMANDS["extract"] = ("help line", "examples", _extract_args, _extract_run)
COMMANDS: dict[str, tuple[str, str, Callable, Callable]] = {}


def _common(p: argparse.ArgumentParser, s: Settings, *, store: bool = True, split: bool = True,
            experiment: bool = True, address: bool = True) -> None:
    if store:
        p.add_argument("--store", default=s.store_uri, help=f"store URI (default: {s.store_uri})")
    if split:
        p.add_argument("--split", type=int, default=1, choices=(1, 2, 3), help="official split (default 1)")
    if experiment:
        p.add_argument("--experiment", default=s.experiment, help=f"MLflow experiment (default: {s.experiment})")
        p.add_argument("--tracking-uri", default=None,
                       help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else ray_config.yaml, else sqlite:///mlflow.db)")
    if address:
        p.add_argument("--address", default=s.ray_address, help="Ray cluster address (default: start a local Ray)")


# === synth ===
_SYNTH_EXAMPLES = """  hyvid synth data/synth                      # the demo's dataset: 10 classes x 15 videos
  hyvid synth data/tiny --classes 4 --videos-per-class 2 --frames 40
  hyvid synth data/big --classes 19 --videos-per-class 25 --size 320x240 --seed 7
  hyvid synth data/synth --overwrite --seed 1   # replace a dataset made with other settings
classes are named after the clue that separates them: Appearance* (static appearance),
Motion* (short-term motion), Order* (order of two sub-actions; pairs). See docs/synth.md."""


def _synth_args(p: argparse.ArgumentParser, s: Settings) -> None:
    from hyvid.pipelines.data.synth import MAX_CLASSES, MIN_CLASSES, config_defaults

    d = config_defaults()
    p.add_argument("out", help="output directory (UCF-101 layout: OUT/<Class>/*.avi + OUT/ucfTrainTestlist/)")
    p.add_argument("--classes", type=int, default=d["classes"],
                   help=f"number of classes, {MIN_CLASSES}..{MAX_CLASSES} (default {d['classes']})")
    p.add_argument("--videos-per-class", type=int, default=d["videos_per_class"],
                   help=f"videos per class, spread over groups g01..g25 (default {d['videos_per_class']})")
    p.add_argument("--frames", type=int, default=d["frames"],
                   help=f"mean frames per video; each varies by ±20%% (default {d['frames']})")
    p.add_argument("--size", default="x".join(map(str, d["size"])), help="WxH (default %(default)s)")
    p.add_argument("--seed", type=int, default=d["seed"], help="random seed (default %(default)s)")
    p.add_argument("--stack", type=int, default=d["stack"],
                   help="flow stack length L the order classes' pause must exceed (default %(default)s)")
    p.add_argument("--workers", type=int, default=d["workers"], help="writer threads (default %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="replace a synth dataset made with other settings")


def _synth_run(args: argparse.Namespace, s: Settings) -> int:
    from collections import Counter

    from hyvid.pipelines.data.synth import SynthConfig, parse_size, synth

    cfg = SynthConfig(out=args.out, classes=args.classes, videos_per_class=args.videos_per_class,
                      frames=args.frames, size=parse_size(args.size), seed=args.seed, stack=args.stack,
                      workers=args.workers, overwrite=args.overwrite)
    res = synth(cfg)
    kinds = Counter(c.kind for c in res.classes)
    verb = "reused" if res.reused else "wrote"
    print(f"{verb} {len(res.videos)} videos of {len(res.classes)} classes "
          f"({', '.join(f'{n} {k}' for k, n in kinds.items())}) in {res.root} [{res.seconds:.1f} s]")
    for c in res.classes:
        print(f"  {c.label + 1:2d} {c.name:22s} {c.kind:10s} {c.description}")
    print(f"next: hyvid extract {res.root} --store STORE")
    return 0


COMMANDS["synth"] = ("write a synthetic UCF-101-layout dataset whose classes need appearance, motion or order",
                     _SYNTH_EXAMPLES, _synth_args, _synth_run)
# === extract ===
_EXTRACT_EXAMPLES = """  hyvid extract data/synth --store store                 # local Ray, all cores, 25 frames, L=10, DIS
  hyvid extract /data/UCF-101 --store s3://bucket/ucf --address auto --workers 32
  hyvid extract data/ccv/manifest.csv --store ccv_store --flow farneback --size 160
  hyvid extract data/synth --store store --frames 25 --stack 10 --overwrite   # changed settings
a dataset is a UCF-101 layout (ROOT/<Class>/*.avi + ROOT/ucfTrainTestlist/) or a manifest CSV
`path,labels[,subset][,group]` (labels 'A|B' for multi-label). Re-running skips extracted videos."""


def _extract_args(p: argparse.ArgumentParser, s: Settings) -> None:
    import os

    from hyvid.pipelines.data.video import DEFAULT_POSITIONS, DEFAULT_SIZE, DEFAULT_STACK, FLOW_METHODS

    p.add_argument("dataset", help="UCF-101-layout directory or manifest .csv")
    _common(p, s, experiment=False)
    p.add_argument("--frames", type=int, default=DEFAULT_POSITIONS,
                   help="positions sampled uniformly per video (default %(default)s)")
    p.add_argument("--stack", type=int, default=DEFAULT_STACK, help="flows per stack, L (default %(default)s)")
    p.add_argument("--flow", choices=FLOW_METHODS, default="dis",
                   help="optical flow: dis (fast), farneback, tvl1 (~100x slower) (default %(default)s)")
    p.add_argument("--size", type=int, default=DEFAULT_SIZE,
                   help="stored short side in pixels, aspect kept (default %(default)s)")
    cores = os.cpu_count() or 1
    p.add_argument("--workers", type=int, default=s.workers_for("extract", cores),
                   help="concurrent extraction tasks (default: settings workers.extract, else the cores)")
    p.add_argument("--overwrite", action="store_true",
                   help="empty the store's videos/clips/classes and extract again (needed to change settings)")


def _extract_run(args: argparse.Namespace, s: Settings) -> int:
    from hyvid.pipelines.extract import ExtractConfig, extract

    cfg = ExtractConfig(dataset=args.dataset, store_uri=args.store, split=args.split, frames=args.frames,
                        stack=args.stack, flow=args.flow, size=args.size, address=args.address,
                        workers=args.workers, overwrite=args.overwrite,
                        storage_options=s.resolved_storage_options())
    r = extract(cfg)
    print(f"extracted {r.ok} videos, {r.failed} failed, {r.skipped} skipped (already in the store) "
          f"of {r.total} in {r.seconds:.1f} s: {r.frames_per_s:.0f} source frames/s, {r.clips} clips "
          f"[settings {r.config_hash}]")
    if r.node_spread:
        print("videos per node: " + ", ".join(f"{n[:12]}={k}" for n, k in sorted(r.node_spread.items())))
    if r.orphans_deleted:
        print(f"removed {r.orphans_deleted} clips rows left by an interrupted run")
    if r.failures:
        print(f"failed videos ({len(r.failures)}):")
        for vid, reason in r.failures[:50]:
            print(f"  {vid}: {reason}")
        if len(r.failures) > 50:
            print(f"  ... and {len(r.failures) - 50} more (videos table, status = 'failed')")
    if r.exit_code:
        print("nothing could be extracted", file=sys.stderr)
    return r.exit_code


COMMANDS["extract"] = ("decode videos, sample frames and stack optical flow into the Lance store (Ray tasks)",
                       _EXTRACT_EXAMPLES, _extract_args, _extract_run)
# === train-cnn ===
_TRAIN_CNN_EXAMPLES = """  hyvid train-cnn --store store                          # both streams at once, 3 epochs, local Ray
  hyvid train-cnn --store store --stream spatial --finetune all --epochs 5 --lr 1e-3
  hyvid train-cnn --store s3://bucket/ucf --address auto --workers 4 --split 2
  hyvid train-cnn --store store --stream motion --epochs 10 --resume   # continue an interrupted fit
each stream is one Ray Train fit (GPUs when the cluster has them) and one MLflow run named
spatial_cnn / motion_cnn with per-epoch metrics, lineage and the model; then run `hyvid features`."""


def _train_cnn_args(p: argparse.ArgumentParser, s: Settings) -> None:
    from hyvid.pipelines.train_cnn import STREAM_CHOICES, TrainCNNConfig

    d = TrainCNNConfig(store_uri=s.store_uri)
    _common(p, s)
    p.add_argument("--stream", choices=STREAM_CHOICES, default=d.stream, help="which CNN(s) (default %(default)s)")
    p.add_argument("--epochs", type=int, default=d.epochs, help="default %(default)s")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="clips per step (default %(default)s)")
    p.add_argument("--lr", type=float, default=None,
                   help="SGD learning rate (default: 1e-2 spatial head / motion, 1e-3 spatial --finetune all)")
    p.add_argument("--finetune", choices=("head", "all"), default=d.finetune,
                   help="spatial CNN: train fc1+classifier on the frozen ImageNet backbone, or all (default %(default)s)")
    p.add_argument("--head-views", type=int, default=d.head_views,
                   help="--finetune head: augmented views cached per training clip (default %(default)s)")
    p.add_argument("--feature-dim", type=int, default=d.feature_dim, help="fc1 width = feature size (default %(default)s)")
    p.add_argument("--workers", type=int, default=s.workers_for("train-cnn", d.workers),
                   help="Ray Train workers per stream (default: settings workers.train-cnn, else %(default)s)")
    p.add_argument("--cpus-per-worker", type=int, default=None, help="default: the cluster's CPUs shared out")
    p.add_argument("--gpu", dest="use_gpu", action="store_true", default=None, help="require GPUs (default: auto)")
    p.add_argument("--no-gpu", dest="use_gpu", action="store_false", help="train on CPUs even if GPUs exist")
    p.add_argument("--checkpoint-path", default=None, help="Ray Train storage (default: STORE/_checkpoints)")
    p.add_argument("--resume", action="store_true", help="continue the last fit of this stream/split from its checkpoint")


def _train_cnn_run(args: argparse.Namespace, s: Settings) -> int:
    from hyvid.pipelines import tracking
    from hyvid.pipelines.train_cnn import TrainCNNConfig, train_cnn

    cfg = TrainCNNConfig(
        store_uri=args.store, stream=args.stream, split=args.split, epochs=args.epochs, batch_size=args.batch_size,
        lr=args.lr, finetune=args.finetune, head_views=args.head_views, feature_dim=args.feature_dim,
        workers=args.workers,
        cpus_per_worker=args.cpus_per_worker, use_gpu=args.use_gpu, experiment=args.experiment,
        tracking_uri=tracking.resolve_tracking_uri(args.tracking_uri, s), storage_options=s.resolved_storage_options(),
        checkpoint_path=args.checkpoint_path, resume=args.resume, address=args.address,
    )
    r = train_cnn(cfg)
    for stream, run_id in r.run_ids.items():
        m = r.metrics.get(stream, {})
        val = f", val accuracy {m['val_accuracy']:.3f}" if "val_accuracy" in m else ""
        print(f"{stream} CNN: MLflow run {run_id}; epoch {int(m.get('epoch', -1)) + 1}: train loss "
              f"{m.get('train_loss', float('nan')):.3f}, train accuracy {m.get('train_accuracy', float('nan')):.3f}{val}")
    print(f"next: hyvid features --store {args.store} --split {args.split}")
    return 0


COMMANDS["train-cnn"] = ("fine-tune the spatial CNN and train the motion CNN on stored clips (Ray Train + MLflow)",
                         _TRAIN_CNN_EXAMPLES, _train_cnn_args, _train_cnn_run)
# === features ===
_FEATURES_EXAMPLES = """  hyvid features --store store                 # the latest train-cnn runs of the split
  hyvid features --store store --run SPATIAL_RUN_ID,MOTION_RUN_ID
  hyvid features --store s3://bucket/ucf --address auto --workers 32 --split 2
writes frame_features (one row per video and sampled position: fc1 features of both CNNs) and the
spatial_cnn / motion_cnn / two_stream_cnn rows of video_scores. Re-running skips finished videos."""


def _features_args(p: argparse.ArgumentParser, s: Settings) -> None:
    from hyvid.pipelines.features import FeaturesConfig

    d = FeaturesConfig(store_uri=s.store_uri)
    _common(p, s)
    p.add_argument("--run", default=None, metavar="SPATIAL_RUN,MOTION_RUN",
                   help="MLflow run ids of the two CNNs (default: the latest train-cnn runs of the split)")
    p.add_argument("--spatial-run", default=None, help="spatial CNN run id (overrides --run)")
    p.add_argument("--motion-run", default=None, help="motion CNN run id (overrides --run)")
    w = s.workers_for("features", 0)
    p.add_argument("--workers", type=int, default=w or None, help="tasks in flight (default: the cluster's CPUs)")
    p.add_argument("--videos-per-task", type=int, default=d.videos_per_task, help="default %(default)s")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="clips per forward pass (default %(default)s)")


def _features_run(args: argparse.Namespace, s: Settings) -> int:
    from hyvid.pipelines import tracking
    from hyvid.pipelines.features import FeaturesConfig, extract_features

    spatial_run = motion_run = None
    if args.run:
        parts = [x.strip() for x in args.run.split(",")]
        if len(parts) != 2 or not all(parts):
            raise ValueError(f"--run {args.run!r}: expected SPATIAL_RUN_ID,MOTION_RUN_ID")
        spatial_run, motion_run = parts
    cfg = FeaturesConfig(
        store_uri=args.store, split=args.split, spatial_run_id=args.spatial_run or spatial_run,
        motion_run_id=args.motion_run or motion_run, experiment=args.experiment,
        tracking_uri=tracking.resolve_tracking_uri(args.tracking_uri, s), workers=args.workers,
        videos_per_task=args.videos_per_task, batch_size=args.batch_size,
        storage_options=s.resolved_storage_options(), address=args.address,
    )
    r = extract_features(cfg)
    print(f"features of {r.n_features_written} videos written ({r.n_rows_written} frame rows, dims "
          f"{r.spatial_dim}/{r.motion_dim}), {r.n_skipped} already there, CNN scores of {r.n_scored} videos "
          f"stored [{r.seconds:.1f} s]")
    print(f"CNN runs: spatial {r.spatial_run_id}, motion {r.motion_run_id}")
    if r.node_tasks:
        print("tasks per node: " + ", ".join(f"{n[:12]}={k}" for n, k in sorted(r.node_tasks.items())))
    print(f"next: hyvid train --store {args.store} --split {args.split}")
    return 0


COMMANDS["features"] = ("run both CNNs over every stored clip: frame_features + CNN video_scores (Ray tasks)",
                        _FEATURES_EXAMPLES, _features_args, _features_run)
# === query ===
def _positions(text: str | None) -> tuple[int, int | None]:
    """`A:B` -> [A, B); `A:` / `:B` open-ended; `A` -> just position A."""
    if not text:
        return 0, None
    try:
        if ":" not in text:
            return int(text), int(text) + 1
        a, b = text.split(":", 1)
        return (int(a) if a else 0), (int(b) if b else None)
    except ValueError:
        raise ValueError(f"--frames {text!r}: expected A:B, A:, :B or A (sampled positions)") from None


def _print_rows(table, vector_cols: tuple[str, ...], n_values: int = 4) -> None:
    """A readable terminal table: scalar columns, then the first values of each vector + its dim."""
    cols = [c for c in table.column_names if c not in vector_cols and not c.endswith("_run_id")]
    header = list(cols)
    cells = [[("%.3f" % v if isinstance(v, float) else str(v)) for v in (r[c] for c in cols)]
             for r in table.to_pylist()]
    for vc in (c for c in vector_cols if c in table.column_names):
        header.append(f"{vc}[{table.schema.field(vc).type.list_size}]")
        for row, vec in zip(cells, table.column(vc).to_pylist()):
            row.append(" ".join(f"{x:+.3f}" for x in vec[:n_values]) + (" ..." if len(vec) > n_values else ""))
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(header)]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    for r in cells:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)))


def _emit(table, fmt: str, out: str | None, vector_cols: tuple[str, ...]) -> None:
    import json

    if fmt == "parquet":
        import pyarrow.parquet as pq

        if not out:
            raise ValueError("--format parquet writes a file: give --out FILE.parquet")
        pq.write_table(table, out)
        print(f"wrote {table.num_rows} rows to {out}")
    elif fmt == "json":
        text = json.dumps(table.to_pylist())
        if out:
            with open(out, "w") as f:
                f.write(text)
        else:
            print(text)
    else:
        _print_rows(table, vector_cols)


def _query_args(p: argparse.ArgumentParser, s: Settings) -> None:
    _common(p, s, split=False, experiment=False, address=False)
    p.add_argument("--video", required=True, help="video id (quotes and any characters are fine)")
    p.add_argument("--frames", help="sampled positions A:B (half-open), A:, :B or A (default: all)")
    p.add_argument("--format", choices=("table", "json", "parquet"), default="table",
                   help="table: readable summary; json: full rows; parquet: write --out")
    p.add_argument("--out", help="output file (required for parquet; optional for json)")


def _query_run(args: argparse.Namespace, s: Settings) -> int:
    from hyvid.models.registry import STREAMS
    from hyvid.store.feature_store import FeatureStore

    start, stop = _positions(args.frames)
    rows = FeatureStore(args.store).frame_features(args.video, start, stop)
    if rows.num_rows == 0:
        raise ValueError(f"no frame_features rows for video {args.video!r} positions {args.frames or 'all'} "
                         f"in {args.store!r}; list ids with FeatureStore(...).videos()")
    _emit(rows, args.format, args.out, STREAMS)
    return 0


def _similar_args(p: argparse.ArgumentParser, s: Settings) -> None:
    _common(p, s, split=False, experiment=False, address=False)
    p.add_argument("--video", required=True, help="video id of the query frame")
    p.add_argument("--frame", type=int, required=True, help="sampled position of the query frame (as in query --frames)")
    p.add_argument("-k", "--k", type=int, default=10, help="neighbours to return (default 10; the frame itself is first)")
    p.add_argument("--column", choices=("spatial", "motion"), default="spatial", help="feature stream to compare")
    p.add_argument("--format", choices=("table", "json"), default="table")


def _similar_run(args: argparse.Namespace, s: Settings) -> int:
    from hyvid.store.feature_store import FeatureStore

    fs = FeatureStore(args.store)
    row = fs.frame_features(args.video, args.frame, args.frame + 1, columns=[args.column])
    if row.num_rows == 0:
        raise ValueError(f"video {args.video!r} has no stored frame at position {args.frame} in {args.store!r}")
    hits = fs.similar(row.column(args.column)[0].values.to_numpy(), k=args.k, column=args.column)
    _emit(hits, args.format, None, ())
    return 0


COMMANDS["query"] = (
    "print one video's stored per-frame features",
    "  hyvid query --store store --video 'ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01' --frames 0:5\n"
    "  hyvid query --store store --video 'Basketball/v_Basketball_g01_c01' --format json > rows.json\n"
    "  hyvid query --store s3://bucket/store --video 'Basketball/v_Basketball_g01_c01' --format parquet --out v.parquet\n",
    _query_args,
    _query_run,
)
COMMANDS["similar"] = (
    "find the stored frames nearest to one frame's features",
    "  hyvid similar --store store --video 'Basketball/v_Basketball_g01_c01' --frame 3 -k 10\n"
    "  hyvid similar --store store --video 'Basketball/v_Basketball_g01_c01' --frame 0 -k 5 --column motion --format json\n",
    _similar_args,
    _similar_run,
)

# === train ===
def _float_list(text: str, flag: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ValueError(f"{flag} {text!r}: expected comma-separated numbers such as 0,3e-5,3e-4") from None


def _train_args(p: argparse.ArgumentParser, s: Settings) -> None:
    # Defaults live in pipelines.train.TrainConfig (not imported here: it pulls in torch, slow for --help).
    _common(p, s)
    p.add_argument("--models", default="spatial_lstm,motion_lstm,fusion,baselines",
                   help="comma-separated registry names; 'baselines' = fusion_noreg,nn_ef,nn_lf,svm_ef,svm_lf "
                        "(default: %(default)s)")
    p.add_argument("--workers-per-model", type=int, default=s.workers_for("train", 1),
                   help="Ray Train workers (data-parallel ranks) per torch model (default: %(default)s)")
    p.add_argument("--cpus-per-worker", type=float,
                   help="CPUs each worker, SVM task and CV trial asks for (default: the cluster's CPUs shared "
                        "evenly among all fits' workers, or all of them per fit with --sequential)")
    p.add_argument("--epochs", type=int, help="epochs of every model (sets --lstm-epochs and --video-epochs)")
    p.add_argument("--lstm-epochs", type=int, help="epochs of the LSTMs (default 30)")
    p.add_argument("--video-epochs", type=int, help="epochs of the fusion net and NN baselines (default 60)")
    p.add_argument("--paper-lstm", action="store_true",
                   help="the paper's LSTM: 1024/512 units, SGD lr 1e-4, momentum 0.9, batch 10 "
                        "(the default is 256/128 units with Adam at lr 1e-3, which converges in a few epochs)")
    p.add_argument("--lstm-hidden", help="LSTM layer widths bottom first, e.g. 1024,512")
    p.add_argument("--lstm-lr", type=float, help="LSTM learning rate")
    p.add_argument("--lstm-optimizer", choices=("sgd", "adam"), help="LSTM optimizer (default adam; sgd is the paper's)")
    p.add_argument("--pooling", choices=("last", "mean"), help="LSTM video prediction: last step (paper) or mean")
    p.add_argument("--peephole", action="store_true", help="LSTM cells with the paper's peephole terms")
    p.add_argument("--fusion-lr", type=float,
                   help="SGD learning rate of the fusion net and fusion_noreg (default 0.3; the paper's is 0.7, "
                        "which was unstable on the demo's features)")
    p.add_argument("--lam-grid", help="λ2 and λ3 values cross-validated for the fusion net (default 0,3e-5,3e-4)")
    p.add_argument("--sequential", action="store_true", help="fit the models one after another (for comparison)")
    p.add_argument("--storage-path", help="where Ray Train keeps checkpoints (default: <store>/_train; "
                                          "shared storage on a multi-node cluster)")


def _train_run(args: argparse.Namespace, s: Settings) -> int:
    from hyvid.pipelines import tracking
    from hyvid.pipelines.train import TrainConfig, format_table, train

    opts: dict = {}
    if args.epochs is not None:
        opts["lstm_epochs"] = opts["video_epochs"] = args.epochs
    for flag, key in (("lstm_epochs", "lstm_epochs"), ("video_epochs", "video_epochs"), ("lstm_lr", "lstm_lr"),
                      ("lstm_optimizer", "lstm_optimizer"), ("pooling", "lstm_pooling"), ("fusion_lr", "fusion_lr"),
                      ("cpus_per_worker", "cpus_per_worker"), ("storage_path", "storage_path")):
        if getattr(args, flag) is not None:
            opts[key] = getattr(args, flag)
    if args.lstm_hidden:
        try:
            opts["lstm_hidden"] = tuple(int(x) for x in args.lstm_hidden.split(",") if x.strip())
        except ValueError:
            raise ValueError(f"--lstm-hidden {args.lstm_hidden!r}: expected widths such as 1024,512") from None
    if args.peephole:
        opts["lstm_peephole"] = True
    if args.lam_grid:
        opts["lam2_grid"] = opts["lam3_grid"] = _float_list(args.lam_grid, "--lam-grid")
    common = dict(
        store_uri=args.store, split=args.split, experiment=args.experiment, address=args.address,
        models=tuple(m.strip() for m in args.models.split(",") if m.strip()),
        workers_per_model=args.workers_per_model, concurrent=not args.sequential,
        tracking_uri=tracking.resolve_tracking_uri(args.tracking_uri, s), storage_options=s.resolved_storage_options(),
    )
    cfg = TrainConfig.paper(**common, **opts) if args.paper_lstm else TrainConfig(**common, **opts)
    print(format_table(train(cfg)))
    return 0


COMMANDS["train"] = (
    "fit the LSTMs, the regularized fusion net and the baselines concurrently (Ray Train/Tune + MLflow)",
    "  hyvid train --store store\n"
    "  hyvid train --store store --models spatial_lstm,motion_lstm --epochs 20 --workers-per-model 2\n"
    "  hyvid train --store store --models fusion --lam-grid 0,3e-5,3e-4,3e-3\n"
    "  hyvid train --store store --paper-lstm --split 2 --experiment paper\n",
    _train_args,
    _train_run,
)

# === hybrid ===
def _split_list(text: str | None, default: int) -> list[int]:
    """`--splits 1,2,3` -> [1, 2, 3]; absent -> [default]."""
    if not text:
        return [default]
    try:
        splits = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--splits {text!r}: expected comma-separated split numbers such as 1,2,3") from None
    bad = [x for x in splits if x not in (1, 2, 3)]
    if bad or not splits:
        raise ValueError(f"--splits {text!r}: splits are 1, 2 and 3")
    return splits


def _hybrid_args(p: argparse.ArgumentParser, s: Settings) -> None:
    # Defaults live in pipelines.hybrid (not imported here: it pulls in MLflow, slow for --help).
    _common(p, s, address=False)
    p.add_argument("--splits", help="several splits, e.g. 1,2,3 (overrides --split)")
    p.add_argument("--models", help="score sets to fuse (default spatial_lstm,motion_lstm,fusion; CNN scores "
                                    "may be added: spatial_cnn, motion_cnn, two_stream_cnn)")
    p.add_argument("--step", type=float, help="weight grid step on the simplex (default 0.05)")
    p.add_argument("--refine", action="store_true", help="then search a 4x finer grid around the best weights")
    p.add_argument("--metric", help="validation metric to maximise: accuracy, mean_class_accuracy, map, top5 "
                                    "(default: accuracy, or map for multi-label data)")
    p.add_argument("--out", help="folder for the PNG/CSV files (default hyvid_plots; split<N>/ inside)")
    p.add_argument("--no-late-fusion", action="store_true", help="skip Table 1's late average fusions")
    p.add_argument("--register", metavar="NAME",
                   help="register the hybrid (a pyfunc that classifies video files) as MLflow model NAME; "
                        "then `hyvid predict --model models:/NAME/<version>`")


def _hybrid_run(args: argparse.Namespace, s: Settings) -> int:
    from hyvid.pipelines import tracking
    from hyvid.pipelines.hybrid import DEFAULT_OUT_DIR, HybridConfig, hybrid

    opts = {}
    if args.models:
        opts["models"] = tuple(m.strip() for m in args.models.split(",") if m.strip())
    if args.step is not None:
        opts["step"] = args.step
    out = (args.out or DEFAULT_OUT_DIR).rstrip("/")
    for split in _split_list(args.splits, args.split):
        res = hybrid(HybridConfig(
            store_uri=args.store, split=split, refine=args.refine, metric=args.metric,
            experiment=args.experiment, tracking_uri=tracking.resolve_tracking_uri(args.tracking_uri, s),
            storage_options=s.resolved_storage_options(), out_dir=f"{out}/split{split}",
            late_fusion=not args.no_late_fusion, register_as=args.register, **opts))
        print(f"split {split}: hybrid weights " + ", ".join(f"{m}={w:.3f}" for m, w in res.weights.items()))
        print(f"  val {res.metric} {res.val_metric:.4f}; test " +
              ", ".join(f"{k} {v:.4f}" for k, v in res.test_metrics.items()))
        for row, vals in res.late_fusion.items():
            print(f"  late fusion {row}: test " + ", ".join(f"{k} {v:.4f}" for k, v in vals.items()))
        print(f"  MLflow run {res.run_id}; files in {out}/split{split}/")
        if res.registered_version:
            print(f"  registered as models:/{args.register}/{res.registered_version}")
    return 0


COMMANDS["hybrid"] = (
    "fuse the models' scores linearly with weights searched on validation (Sec. 4.2.3)",
    "  hyvid hybrid --store store\n"
    "  hyvid hybrid --store store --splits 1,2,3 --models spatial_lstm,motion_lstm,fusion,spatial_cnn --step 0.1\n"
    "  hyvid hybrid --store store --refine --experiment hyvid\n",
    _hybrid_args,
    _hybrid_run,
)

# === report ===
def _report_args(p: argparse.ArgumentParser, s: Settings) -> None:
    _common(p, s, store=False, split=False, address=False)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--split", type=int, choices=(1, 2, 3), help="report one split")
    g.add_argument("--splits", help="report these splits and their mean, e.g. 1,2,3 (default: every split with runs)")
    p.add_argument("--format", choices=("markdown", "json"), default="markdown",
                   help="markdown: the paper's Tables 1-3 beside its numbers; json: {model: {metric: value}}")


def _report_run(args: argparse.Namespace, s: Settings) -> int:
    from hyvid.pipelines import tracking
    from hyvid.pipelines.report import ReportConfig, report

    splits = (args.split,) if args.split else (tuple(_split_list(args.splits, 1)) if args.splits else None)
    print(report(ReportConfig(args.experiment, tracking.resolve_tracking_uri(args.tracking_uri, s), splits, args.format)))
    return 0


def _runs_args(p: argparse.ArgumentParser, s: Settings) -> None:
    _common(p, s, store=False, split=False, address=False)
    p.add_argument("--model", help="only runs of this model (e.g. fusion, spatial_cnn+spatial_lstm)")
    p.add_argument("--stage", help="only runs of this stage (e.g. train-cnn, train, hybrid, late_fusion)")
    p.add_argument("--limit", type=int, default=50, help="newest N runs (default 50)")
    p.add_argument("--all-params", action="store_true", help="show every parameter, not the first 6")


def _runs_run(args: argparse.Namespace, s: Settings) -> int:
    from hyvid.pipelines import tracking
    from hyvid.pipelines.runs import RunsConfig, format_table, list_runs

    uri = tracking.resolve_tracking_uri(args.tracking_uri, s)
    rows = list_runs(RunsConfig(args.experiment, uri, args.model, args.stage, args.limit,
                                0 if args.all_params else 6))
    print(format_table(rows))
    print(f"\n{len(rows)} run(s). Browse them: mlflow ui --backend-store-uri {tracking.redact(uri)}")
    return 0


COMMANDS["report"] = (
    "the paper's Tables 1-3 from the experiment's MLflow runs, beside the paper's numbers",
    "  hyvid report --experiment hyvid\n"
    "  hyvid report --experiment hyvid --splits 1,2,3\n"
    "  hyvid report --experiment hyvid --format json > results.json\n",
    _report_args,
    _report_run,
)
COMMANDS["runs"] = (
    "compare an experiment's runs: parameters, test metrics, lineage",
    "  hyvid runs --experiment hyvid\n"
    "  hyvid runs --experiment hyvid --model fusion --all-params\n"
    "  hyvid runs --stage hybrid --limit 5\n",
    _runs_args,
    _runs_run,
)

# === predict ===
def _predict_args(p: argparse.ArgumentParser, s: Settings) -> None:
    p.add_argument("videos", nargs="+", metavar="VIDEO", help="video files to classify")
    g = p.add_mutually_exclusive_group()
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else ray_config.yaml)")
    g.add_argument("--experiment", default=s.experiment,
                   help=f"use the latest hybrid run of this MLflow experiment (default: {s.experiment})")
    g.add_argument("--model", help="a hybrid run, runs:/<run id> (see `hyvid runs --stage hybrid`), or a registered "
                                   "hybrid, models:/<name>/<version> or models:/<name>@<alias>")
    p.add_argument("--split", type=int, choices=(1, 2, 3), help="the latest hybrid run of this split (default: any)")
    p.add_argument("--top", type=int, default=5, help="classes to print per video (default 5)")
    p.add_argument("--batch-size", type=int, default=8, help="videos per CNN/LSTM batch (default 8)")
    p.add_argument("--json", action="store_true", help="print JSON (predictions and timing) instead of text")


def _predict_run(args: argparse.Namespace, s: Settings) -> int:
    from hyvid.pipelines import tracking
    from hyvid.pipelines.predict import PredictConfig, format_json, format_text, predict

    res = predict(PredictConfig(tuple(args.videos), args.experiment, args.model, args.split,
                                tracking.resolve_tracking_uri(args.tracking_uri, s), args.top, args.batch_size))
    print(format_json(res) if args.json else format_text(res))
    if args.json:  # the text output lists failures inline already
        for p in res.predictions:
            if not p.ok:
                print(f"hyvid predict: error: {p.error}", file=sys.stderr)
    return res.exit_code()


COMMANDS["predict"] = (
    "classify new video files with the latest hybrid (decode, flow, CNNs, LSTMs, fusion) and time each step",
    "  hyvid predict clip.avi\n"
    "  hyvid predict a.avi b.mp4 --top 3 --json\n"
    "  hyvid predict clip.avi --model runs:/0123456789abcdef0123456789abcdef\n",
    _predict_args,
    _predict_run,
)

# === run/demo ===
def _run_args(p: argparse.ArgumentParser, s: Settings) -> None:
    # Defaults live in pipelines.run.RunConfig (not imported here: it pulls in MLflow and Ray, slow for --help).
    p.add_argument("dataset", help="UCF-101-layout folder or manifest CSV")
    _common(p, s)
    p.add_argument("--splits", default=None, help="comma-separated splits, e.g. 1,2,3 (the UCF-101 protocol); overrides --split")
    p.add_argument("--frames", type=int, default=25, help="sampled positions per video (default 25)")
    p.add_argument("--stack", type=int, default=10, help="L flows per stack (default 10)")
    p.add_argument("--flow", default="dis", choices=("dis", "farneback", "tvl1"))
    p.add_argument("--cnn-epochs", type=int, help="train-cnn epochs of both streams (default 6)")
    p.add_argument("--models", default="spatial_lstm,motion_lstm,fusion,baselines",
                   help="models for `train` (default: spatial_lstm,motion_lstm,fusion,baselines)")
    p.add_argument("--plots", default=None, help="folder for the hybrid's PNG plots (also MLflow artifacts)")


def _splits_of(args: argparse.Namespace) -> tuple[int, ...]:
    if getattr(args, "splits", None):
        return tuple(int(x) for x in args.splits.split(",") if x.strip())
    return (args.split,)


def _run_run(args: argparse.Namespace, s: Settings) -> int:
    from hyvid.pipelines.run import RunConfig, run

    res = run(RunConfig(
        dataset=args.dataset, store_uri=args.store, splits=_splits_of(args), experiment=args.experiment, tracking_uri=args.tracking_uri,
        address=args.address, storage_options=s.resolved_storage_options(), frames=args.frames,
        stack=args.stack, flow=args.flow, models=tuple(m for m in args.models.split(",") if m), out_dir=args.plots,
        **({"cnn_epochs": args.cnn_epochs} if args.cnn_epochs is not None else {}),
    ))
    print("\nstage seconds:", ", ".join(f"{k}: {v}" for k, v in res.seconds.items()))
    for split, m in res.test_metrics.items():
        print(f"hybrid split {split}: " + ", ".join(f"{k}={v:.3f}" for k, v in m.items()))
    return 0


COMMANDS["run"] = (
    "run extract, train-cnn, features, train and hybrid in order, resuming what is done",
    "  hyvid run data/synth --store store --experiment exp1\n"
    "  hyvid run /data/UCF-101 --store s3://bucket/ucf --splits 1,2,3\n",
    _run_args, _run_run,
)


def _demo_args(p: argparse.ArgumentParser, s: Settings) -> None:
    p.add_argument("--out", default="demo_out", help="folder for the data, store, MLflow db and plots")
    p.add_argument("--classes", type=int, default=None, help="synthetic classes (default: synth's)")
    p.add_argument("--videos-per-class", type=int, help="default 20 (pipelines.run.DemoConfig)")
    p.add_argument("--splits", default="1", help="comma-separated splits (default 1)")
    p.add_argument("--experiment", default="hyvid-demo")


def _demo_run(args: argparse.Namespace, s: Settings) -> int:
    from hyvid.pipelines.run import DemoConfig, demo, next_steps
    from hyvid.store.feature_store import FeatureStore

    cfg = DemoConfig(out=args.out, classes=args.classes, splits=_splits_of(args), experiment=args.experiment,
                     **({"videos_per_class": args.videos_per_class} if args.videos_per_class else {}))
    res, md = demo(cfg)
    print("\n" + md)
    print("stage seconds:", ", ".join(f"{k}: {v}" for k, v in res.seconds.items()))
    ids = FeatureStore(cfg.paths()["store"]).videos(split=cfg.splits[0], subset="test")["video_id"].to_pylist()
    print("\n" + next_steps(cfg, ids[0] if ids else None))
    return 0


COMMANDS["demo"] = (
    "generate a synthetic dataset and run the whole pipeline on it, locally",
    "  hyvid demo --out demo_out\n  hyvid demo --out /tmp/d --classes 6 --videos-per-class 8\n",
    _demo_args, _demo_run,
)


# === jobs ===
_JOB_COMMANDS = ("submit", "jobs", "logs", "stop")


def _job_address(p: argparse.ArgumentParser, s: Settings) -> None:
    p.add_argument("--address", default=s.dashboard_address,
                   help=f"Ray dashboard / Jobs API address (default: {s.dashboard_address}; "
                        "metadata.hyvid.dashboard_address or HYVID_DASHBOARD)")


def _submit_args(p: argparse.ArgumentParser, s: Settings) -> None:
    _job_address(p, s)
    p.add_argument("--working-dir", default=None,
                   help="project directory shipped with the job (default: this hyvid checkout)")
    p.add_argument("--no-working-dir", action="store_true",
                   help="ship nothing: hyvid is installed on the cluster (ray_config.yaml setup_commands)")
    p.add_argument("--pip", action="append", default=[], metavar="PKG",
                   help="extra pip package for this job only (repeatable)")
    p.add_argument("--env", action="append", default=[], metavar="NAME[=VALUE]",
                   help="non-secret environment variable for the job, e.g. HYVID_STORE=s3://b/hyvid "
                        "(NAME alone copies it from here; repeatable)")
    p.add_argument("--python", default="python", help="interpreter on the cluster (default: python)")
    p.add_argument("--submission-id", default=None, help="job id to use (default: generated)")
    p.add_argument("--wait", action="store_true",
                   help="follow the job's logs until it ends; exit 0 only if it succeeded")
    p.add_argument("stage_args", nargs=argparse.REMAINDER, metavar="-- COMMAND ...",
                   help="the hyvid command and its arguments, after --")


def _submit_run(args: argparse.Namespace, s: Settings) -> int:
    import os
    from pathlib import Path

    from hyvid.cluster import jobs

    command = list(args.stage_args)
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        raise ValueError("nothing to submit: add `-- COMMAND ARGS`, e.g. `hyvid submit -- extract data/ucf101`")
    if command[0] not in COMMANDS or command[0] in _JOB_COMMANDS:
        runnable = sorted(set(COMMANDS) - set(_JOB_COMMANDS))
        raise ValueError(f"{command[0]!r} is not a hyvid stage to submit; choose one of {runnable}")
    env = {}
    for item in args.env:
        name, eq, value = item.partition("=")
        if not eq:
            if name not in os.environ:
                raise ValueError(f"--env {name}: not set here; give NAME=VALUE")
            value = os.environ[name]
        env[name] = value
    if args.no_working_dir:
        working_dir = None
    else:
        working_dir = str(Path(args.working_dir).resolve()) if args.working_dir else str(jobs.default_working_dir())
    cfg = jobs.SubmitConfig(
        address=args.address, args=tuple(command), working_dir=working_dir, pip=tuple(args.pip),
        env=env, python=args.python, submission_id=args.submission_id,
    )
    probe = argparse.ArgumentParser(add_help=False)
    COMMANDS[command[0]][2](probe, s)
    if probe.get_default("store") is not None:  # the stage reads a store: warn about relative paths
        for warning in jobs.relative_path_warnings(command, s.store_uri):
            print(f"hyvid submit: warning: {warning}", file=sys.stderr)
    try:
        job_id = jobs.submit(cfg)
    except ConnectionError as e:
        print(f"hyvid submit: error: {e}", file=sys.stderr)
        return 2
    print(f"submitted {job_id}: {cfg.entrypoint()}")
    if not args.wait:
        print(f"  hyvid logs {job_id} --follow   |   hyvid stop {job_id}")
        return 0
    for chunk in jobs.follow_logs(args.address, job_id):
        print(chunk, end="", flush=True)
    final = jobs.wait(args.address, job_id)
    print(f"job {job_id}: {final}")
    return 0 if final == "SUCCEEDED" else 1


def _jobs_args(p: argparse.ArgumentParser, s: Settings) -> None:
    _job_address(p, s)


def _jobs_run(args: argparse.Namespace, s: Settings) -> int:
    import datetime

    from hyvid.cluster import jobs

    rows = [("SUBMISSION ID", "STATUS", "STARTED", "ENTRYPOINT")]
    for j in jobs.list_jobs(args.address):
        started = datetime.datetime.fromtimestamp(j.start_time / 1000).strftime("%Y-%m-%d %H:%M:%S") \
            if j.start_time else "-"
        rows.append((j.submission_id or j.job_id or "-", str(j.status.value), started, j.entrypoint))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for r in rows:
        print("  ".join(v.ljust(w) for v, w in zip(r[:3], widths)) + "  " + r[3])
    return 0


def _logs_args(p: argparse.ArgumentParser, s: Settings) -> None:
    _job_address(p, s)
    p.add_argument("job", help="submission id (see `hyvid jobs`)")
    p.add_argument("--follow", "-f", action="store_true", help="keep printing until the job ends")


def _logs_run(args: argparse.Namespace, s: Settings) -> int:
    from hyvid.cluster import jobs

    if args.follow:
        for chunk in jobs.follow_logs(args.address, args.job):
            print(chunk, end="", flush=True)
    else:
        print(jobs.logs(args.address, args.job), end="")
    return 0


def _stop_args(p: argparse.ArgumentParser, s: Settings) -> None:
    _job_address(p, s)
    p.add_argument("job", help="submission id (see `hyvid jobs`)")


def _stop_run(args: argparse.Namespace, s: Settings) -> int:
    from hyvid.cluster import jobs

    stopped = jobs.stop(args.address, args.job)
    print(f"{args.job}: {'stop requested' if stopped else 'already ended'} ({jobs.status(args.address, args.job)})")
    return 0


COMMANDS["submit"] = (
    "run any hyvid command as a Ray job on a cluster",
    "  hyvid submit -- extract s3://bucket/ucf101 --store s3://bucket/hyvid\n"
    "  hyvid submit --address http://127.0.0.1:8265 --wait -- features --store s3://bucket/hyvid\n"
    "  hyvid submit --env HYVID_STORE=s3://bucket/hyvid -- train --models fusion\n",
    _submit_args, _submit_run,
)
COMMANDS["jobs"] = ("list the cluster's Ray jobs", "  hyvid jobs\n  hyvid jobs --address http://head:8265\n",
                    _jobs_args, _jobs_run)
COMMANDS["logs"] = ("print (or --follow) a job's output", "  hyvid logs raysubmit_XYZ --follow\n",
                    _logs_args, _logs_run)
COMMANDS["stop"] = ("stop a running job", "  hyvid stop raysubmit_XYZ\n", _stop_args, _stop_run)


def build_parser(settings: Settings | None = None) -> argparse.ArgumentParser:
    settings = settings or load_settings()
    parser = argparse.ArgumentParser(
        prog="hyvid",
        description="Hybrid deep learning framework for video classification on Ray, Lance and MLflow.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (help_, examples, add_args, _) in COMMANDS.items():
        p = sub.add_parser(
            name, help=help_, description=help_, epilog=("examples:\n" + examples) if examples else None,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        add_args(p, settings)
    return parser


def main(argv: list[str] | None = None) -> int:
    settings = load_settings()
    parser = build_parser(settings)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.command:
        parser.print_help()
        return 2
    _, _, _, run = COMMANDS[args.command]
    try:
        return int(run(args, settings) or 0)
    except (ValueError, FileNotFoundError) as e:
        print(f"hyvid {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
