"""`hyvid synth` and `hyvid extract`: make a dataset, and turn one into the store's clips."""
from __future__ import annotations

import argparse
import sys
from types import SimpleNamespace

from hyvid.cluster.settings import Settings
from hyvid.pipelines.cli._common import command, common, defaults, given, next_command, per_node, settings_workers
from hyvid.pipelines.cli._static import constant

# Read from source by `_static` (see there): importing these stages would load OpenCV and Lance.
_SYNTH, _EXTRACT, _VIDEO = "hyvid.pipelines.data.synth", "hyvid.pipelines.extract", "hyvid.pipelines.data.video"

_SYNTH_EXAMPLES = """  hyvid synth data/synth                      # the default classes and videos per class
  hyvid synth data/tiny --classes 4 --videos-per-class 2 --frames 40
  hyvid synth data/big --classes 19 --videos-per-class 25 --size 320x240 --seed 7
  hyvid synth data/synth --overwrite --seed 1   # replace a dataset made with other settings
  hyvid synth data/ccv --multilabel             # CCV-style: 10 labels, 4 per video, OUT/manifest.csv
  hyvid synth data/ccv_small --multilabel --classes 6 --labels-per-video 2 --videos 60 --size 160x120
classes are named after the clue that separates them: Appearance* (static appearance),
Motion* (short-term motion), Order* (order of two sub-actions; pairs). With --multilabel they are
the labels, each positive label one panel of a grid in the video. See docs/synth.md."""


def _synth_args(p: argparse.ArgumentParser, s: Settings) -> None:
    d = defaults(f"{_SYNTH}:SynthConfig")
    m = defaults(f"{_SYNTH}:MultiLabelConfig")
    min_classes, max_classes = constant(f"{_SYNTH}:MIN_CLASSES"), constant(f"{_SYNTH}:MAX_CLASSES")
    p.add_argument("out", help="output directory (UCF-101 layout: OUT/<Class>/*.avi + OUT/ucfTrainTestlist/; "
                               "with --multilabel OUT/manifest.csv + OUT/videos/)")
    p.add_argument("--classes", type=int,
                   help=f"number of classes (labels with --multilabel), {min_classes}..{max_classes} "
                        f"(default {d.classes})")
    p.add_argument("--videos-per-class", type=int,
                   help=f"videos per class, spread over groups g01..g25 (default {d.videos_per_class})")
    p.add_argument("--frames", type=int, help=f"mean frames per video; each varies by ±20%% (default {d.frames})")
    p.add_argument("--size", help=f"WxH (default {'x'.join(map(str, d.size))}; "
                                  f"{'x'.join(map(str, m.size))} with --multilabel)")
    p.add_argument("--multilabel", action="store_true", default=None,
                   help="write a CCV-style multi-label dataset: a manifest CSV (path,labels,subset,group) whose "
                        "videos each show several labels, one per panel of a grid")
    p.add_argument("--labels-per-video", type=int,
                   help=f"--multilabel: labels of every labelled video (default {m.labels_per_video})")
    p.add_argument("--empty-fraction", type=float,
                   help=f"--multilabel: fraction of videos with no label (default {m.empty_fraction})")
    p.add_argument("--videos", type=int, help=f"--multilabel: number of videos (default {m.videos})")
    p.add_argument("--seed", type=int, help=f"random seed (default {d.seed})")
    p.add_argument("--stack", type=int,
                   help=f"flow stack length L the order classes' pause must exceed (default {d.stack})")
    p.add_argument("--workers", type=int, help=f"writer threads (default {d.workers})")
    p.add_argument("--overwrite", action="store_true", default=None,
                   help="replace a synth dataset made with other settings")


_MULTILABEL_ONLY = ("labels_per_video", "empty_fraction", "videos")


def _synth_config(args: argparse.Namespace, s: Settings):
    from hyvid.pipelines.data.synth import MultiLabelConfig, SynthConfig, parse_size

    shared = given(classes=args.classes, frames=args.frames,
                   size=parse_size(args.size) if args.size is not None else None, seed=args.seed, stack=args.stack,
                   workers=args.workers, overwrite=args.overwrite)
    if args.multilabel:
        if args.videos_per_class is not None:
            raise ValueError("--videos-per-class is for single-label data; with --multilabel give --videos")
        return MultiLabelConfig(out=args.out, **shared, **given(
            labels_per_video=args.labels_per_video, empty_fraction=args.empty_fraction, videos=args.videos))
    extra = [f"--{k.replace('_', '-')}" for k in _MULTILABEL_ONLY if getattr(args, k) is not None]
    if extra:
        raise ValueError(f"{', '.join(extra)} only apply with --multilabel")
    return SynthConfig(out=args.out, **shared, **given(videos_per_class=args.videos_per_class))


def _print_classes(classes) -> None:
    """The classes (or labels) a synthetic dataset holds, one line each: number, name, kind, what it shows."""
    for c in classes:
        print(f"  {c.label + 1:2d} {c.name:22s} {c.kind:10s} {c.description}")


def _synth_run(args: argparse.Namespace, s: Settings) -> int:
    from collections import Counter

    from hyvid.pipelines.data.synth import MultiLabelConfig, synth, synth_multilabel

    cfg = _synth_config(args, s)
    if isinstance(cfg, MultiLabelConfig):
        ml = synth_multilabel(cfg)
        verb = "reused" if ml.reused else "wrote"
        n_empty = sum(not v.labels for v in ml.videos)
        print(f"{verb} {len(ml.videos)} multi-label videos ({cfg.labels_per_video} of {len(ml.classes)} labels each, "
              f"{n_empty} with none) in {ml.root} [{ml.seconds:.1f} s]")
        _print_classes(ml.classes)
        print(next_command(args, s, "run", str(ml.manifest), store="STORE"))
        return 0
    res = synth(cfg)
    kinds = Counter(c.kind for c in res.classes)
    verb = "reused" if res.reused else "wrote"
    print(f"{verb} {len(res.videos)} videos of {len(res.classes)} classes "
          f"({', '.join(f'{n} {k}' for k, n in kinds.items())}) in {res.root} [{res.seconds:.1f} s]")
    _print_classes(res.classes)
    print(next_command(args, s, "extract", str(res.root), store="STORE"))
    return 0


command("synth", "write a synthetic UCF-101-layout dataset whose classes need appearance, motion or order",
        _SYNTH_EXAMPLES, _synth_args, _synth_run, _synth_config)

_EXTRACT_EXAMPLES = """  hyvid extract data/synth --store store                 # local Ray, all cores, default settings
  hyvid extract /data/UCF-101 --store s3://bucket/ucf --address auto --workers 32
  hyvid extract data/ccv/manifest.csv --store ccv_store --flow farneback --size 160
  hyvid extract data/synth --store store --frames 25 --stack 10 --overwrite   # changed settings
  hyvid extract data/crawl.csv --store store --retry-failed    # decode every failed video again
a dataset is a UCF-101 layout (ROOT/<Class>/*.avi + ROOT/ucfTrainTestlist/) or a manifest CSV
`path,labels[,subset][,group]` (labels 'A|B' for multi-label). Re-running skips extracted videos,
retries failed ones whose file changed, and copies changed labels/subsets/groups into the store.
Two extracts into one store take turns: the second waits (--wait) for the first."""


def _extract_args(p: argparse.ArgumentParser, s: Settings) -> None:
    ex = SimpleNamespace(**{k: constant(f"{_EXTRACT}:{k}") for k in ("MAX_POSITIONS", "MAX_STACK", "MAX_WORKERS")})
    v = SimpleNamespace(**{k: constant(f"{_VIDEO}:{k}")
                           for k in ("FLOW_METHODS", "FLOW_DEVICES", "MAX_ASPECT", "MAX_LONG_SIDE", "MAX_SIZE",
                                     "MIN_SIZE")})
    d = defaults(f"{_EXTRACT}:ExtractConfig")
    p.add_argument("dataset", help="UCF-101-layout directory or manifest .csv")
    common(p, s, f"{_EXTRACT}:ExtractConfig", experiment=False)
    p.add_argument("--frames", type=int,
                   help=f"positions sampled uniformly per video, 1..{ex.MAX_POSITIONS}; at most one per frame of "
                        f"a video (default {d.frames})")
    p.add_argument("--stack", type=int, help=f"flows per stack, L, 1..{ex.MAX_STACK} (default {d.stack})")
    p.add_argument("--flow", choices=v.FLOW_METHODS,
                   help=f"optical flow: dis (fast), farneback, tvl1 (OpenCV's TV-L1, ~100x slower), tvl1-torch "
                        f"(the same TV-L1 in torch, batched: faster, and on GPUs where the cluster has them) "
                        f"(default {d.flow})")
    p.add_argument("--flow-device",
                   help=f"where tvl1-torch runs, {'|'.join(v.FLOW_DEVICES)}: auto = GPU flow actors where the cluster "
                        f"has GPUs, else each task's CPU (default {d.flow_device})")
    p.add_argument("--size", type=int,
                   help=f"stored short side in pixels, {v.MIN_SIZE}..{v.MAX_SIZE}, aspect kept (default {d.size})")
    p.add_argument("--max-long-side", type=int,
                   help=f"stored long side cap in pixels, --size..{v.MAX_LONG_SIDE}: wider frames shrink to fit "
                        f"(default {d.max_long_side})")
    p.add_argument("--max-aspect", type=float,
                   help=f"videos wider (or taller) than this are failed with the reason, 1..{v.MAX_ASPECT:g} "
                        f"(default {d.max_aspect:g})")
    p.add_argument("--workers", type=int, default=settings_workers(s, "extract"),
                   help=f"concurrent extraction tasks, 1..{ex.MAX_WORKERS} (default: settings workers.extract, "
                        "else the cluster's CPUs)")
    p.add_argument("--local-cpus", type=int,
                   help="CPUs a local Ray claims (default: --workers, at most this machine's cores)")
    p.add_argument("--retry-failed", action="store_true", default=None,
                   help="extract every failed video again (failed videos whose file changed are retried anyway)")
    p.add_argument("--wait", type=float, dest="wait_s",
                   help=f"seconds to wait while another command writes the store (default {d.wait_s:g}; 0: fail "
                        "at once)")
    p.add_argument("--overwrite", action="store_true", default=None,
                   help="empty the store's videos/clips/classes and extract again (needed to change settings)")
    p.add_argument("--allow-failures", action="store_true", default=None,
                   help="exit 0 when some videos failed (default: exit 1 if any video is failed; always 1 when none "
                        "is extracted)")


def _extract_config(args: argparse.Namespace, s: Settings):
    from hyvid.pipelines.extract import ExtractConfig

    return ExtractConfig(dataset=args.dataset, store_uri=args.store, address=args.address,
                         storage_options=s.resolved_storage_options(), **given(
                             split=args.split, frames=args.frames, stack=args.stack, flow=args.flow,
                             flow_device=args.flow_device,
                             size=args.size, workers=args.workers, overwrite=args.overwrite,
                             max_long_side=args.max_long_side, max_aspect=args.max_aspect,
                             local_cpus=args.local_cpus, retry_failed=args.retry_failed, wait_s=args.wait_s,
                             allow_failures=args.allow_failures))


def _extract_run(args: argparse.Namespace, s: Settings) -> int:
    from hyvid.pipelines.extract import extract

    cfg = _extract_config(args, s)
    r = extract(cfg)
    print(f"extracted {r.ok} videos, {r.failed} failed, {r.skipped} skipped (already in the store) "
          f"of {r.total} in {r.seconds:.1f} s: {r.frames_per_s:.0f} source frames/s, {r.clips} clips "
          f"[settings {r.config_hash}]")
    if r.retried or r.relabeled:
        print(f"retried {r.retried} failed videos; updated the labels/subsets/groups of {r.relabeled} videos")
    if r.redone or r.fragments_dropped:
        print(f"extracted {r.redone} videos again whose clip rows could not be read "
              f"({r.fragments_dropped} unreadable fragments dropped from the store)")
    if r.node_spread:
        print("videos per node: " + per_node(r.node_spread))
    if r.flow_actors:
        print(f"tvl1-torch: {r.flow_actor_pairs} frame pairs solved by {r.flow_actors} GPU flow actors")
    if r.orphans_deleted:
        print(f"removed {r.orphans_deleted} clips rows left by an interrupted run")
    if r.failures:
        print(f"failed videos ({len(r.failures)}):")
        for vid, reason in r.failures[:50]:
            print(f"  {vid}: {reason}")
        if len(r.failures) > 50:
            print(f"  ... and {len(r.failures) - 50} more (videos table, status = 'failed')")
    if r.exit_code:
        print(f"hyvid extract: error: {r.failure_line()}", file=sys.stderr)
    else:
        print(next_command(args, s, "train-cnn", store=args.store, split=cfg.split))
    code = r.exit_status(cfg.allow_failures)
    if code and not r.exit_code:
        print(f"hyvid extract: {r.failed + r.skipped_failed} of {r.total} videos are failed (see above); "
              "--allow-failures exits 0 when some are extracted", file=sys.stderr)
    return code


command("extract", "decode videos, sample frames and stack optical flow into the Lance store (Ray tasks)",
        _EXTRACT_EXAMPLES, _extract_args, _extract_run, _extract_config)
