"""Benchmark: per-frame feature extraction throughput of each stream CNN at the stored resolution.

Measured in one run, on this machine, for clips at the stored size (default 128x171, the short
side `pipelines.data.video.DEFAULT_SIZE`; flow stacks of L = 10, i.e. 20 channels):

* spatial CNN (EfficientNet-Lite0 + fc1) frames/s, and the same backbone at ImageNet's 224x224 as
  the baseline it is compared against (ratio = stored-size speed / 224-px speed);
* motion CNN (CNN-M-like) flow stacks/s;
* `cnn_forward` (both CNNs on P positions, what `hyvid features` runs) clips/s, with and without
  decoding the stored bytes (JPEG frames, zstd flow stacks) first;
* each with torch using 1 thread (one Ray task per core, as `features` schedules them) and all
  cores. On a GPU (when CUDA is present) the same measurements run on it too.

The paper's reference point (Sec. 4.2.3): 9 s of CNN features per 8-s UCF-101 video on a K40,
i.e. 25 frames + 25 stacks through VGG-19 and CNN-M, about 2.8 clips/s. The JSON records the load
average before and after: on a shared machine the numbers are noisy.

`--stage` measures the whole `hyvid features` stage instead, as it is (Ray tasks of 16 videos that
read, decode, run both CNNs and write fragments, one lease-protected commit per 4 tasks) against
the idiomatic Ray Data pipeline doing the same work (`read_lance` -> `map_batches` on an actor pool
of the CNNs, which write the fragments -> the same commit, then the three CNN score sets), on a
demo-sized synthetic store (10 classes x 20 videos, 25 positions each), each from empty tables.
The stage would move onto Ray Data only if that measured at least as fast.

    .venv/bin/python -m benchmarks.cnn_features            # writes benchmarks/results/cnn_features.json
    .venv/bin/python -m benchmarks.cnn_features --quick    # fewer repetitions
    .venv/bin/python -m benchmarks.cnn_features --stage    # features_stage_vs_ray_data, the rest kept
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from hyvid.models.cnn import MotionCNN, SpatialCNN, motion_input, spatial_input
from hyvid.pipelines.data.video import DEFAULT_SIZE, DEFAULT_STACK, stored_shape
from hyvid.pipelines.inference.cnn import cnn_forward
from hyvid.store.clips import decode_flow_stack, decode_frame, encode_flow_stack, encode_frame

from ._common import RESULTS_DIR, add_scratch_args, arg_parser, write_json
from ._measure import best_seconds

log = logging.getLogger("bench.cnn_features")
PAPER_CLIPS_PER_S = 25 / 9.0  # Sec. 4.2.3: 9 s of CNN features for a 25-position UCF-101 video (K40)
NUM_CLASSES = 101


def get_args_parser() -> argparse.ArgumentParser:
    p = arg_parser(__doc__, "cnn_features")
    p.add_argument("--batch", type=int, default=25, help="positions per forward pass (default: one video)")
    p.add_argument("--repeats", type=int, default=5, help="timed batches per measurement")
    p.add_argument("--size", type=int, default=DEFAULT_SIZE, help="stored short side (4:3 source)")
    p.add_argument("--stack", type=int, default=DEFAULT_STACK, help="flows per stack, L")
    p.add_argument("--quick", action="store_true", help="2 repeats")
    p.add_argument("--stage", action="store_true",
                   help="only the features stage (Ray tasks) against Ray Data on a demo-sized store; its numbers go "
                        "into the JSON's features_stage_vs_ray_data, the rest of the file is kept")
    p.add_argument("--classes", type=int, default=10, help="--stage: synthetic classes (the demo's)")
    p.add_argument("--videos-per-class", type=int, default=20, help="--stage: videos per class (the demo's)")
    p.add_argument("--stage-repeats", type=int, default=1, help="--stage: timed runs of each path, alternating")
    add_scratch_args(p, "/tmp/hyvid_bench_features")
    return p


def _rate(fn, n_items: int, repeats: int) -> float:
    """Items per second of fn() (one warm-up call, then the best of `repeats` timed calls)."""
    return n_items / best_seconds(fn, repeats)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(device: torch.device, threads: int, args, frames, stacks, frame_bytes, stack_bytes) -> dict:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    spatial = SpatialCNN(NUM_CLASSES).to(device).eval()
    motion = MotionCNN(NUM_CLASSES, stack=args.stack).to(device).eval()
    b = len(frames)
    h, w = frames.shape[1:3]
    frames224 = np.ascontiguousarray(np.resize(frames, (b, 224, 224, 3)))

    def run_spatial(x=frames):
        with torch.inference_mode():
            spatial.features_and_logits(spatial_input(x).to(device))
        _sync(device)

    def run_motion():
        with torch.inference_mode():
            motion.features_and_logits(motion_input(stacks).to(device))
        _sync(device)

    def run_both():
        cnn_forward(spatial, motion, frames, stacks, batch_size=b)
        _sync(device)

    def run_both_decoded():
        fr = np.stack([decode_frame(x) for x in frame_bytes])
        st = np.stack([decode_flow_stack(x, args.stack, h, w) for x in stack_bytes])
        cnn_forward(spatial, motion, fr, st, batch_size=b)
        _sync(device)

    out = {
        "device": str(device),
        "torch_threads": threads,
        "spatial_frames_per_s": _rate(run_spatial, b, args.repeats),
        "spatial_224px_frames_per_s": _rate(lambda: run_spatial(frames224), b, args.repeats),
        "motion_stacks_per_s": _rate(run_motion, b, args.repeats),
        "both_clips_per_s": _rate(run_both, b, args.repeats),
        "both_with_decode_clips_per_s": _rate(run_both_decoded, b, args.repeats),
    }
    out["spatial_stored_vs_224px_ratio"] = out["spatial_frames_per_s"] / out["spatial_224px_frames_per_s"]
    out["both_vs_paper_k40_ratio"] = out["both_with_decode_clips_per_s"] / PAPER_CLIPS_PER_S
    return out


def features_stage_rate(runs: list[dict]) -> dict | None:
    """The `features` stage's own rate (clips/s, measured end to end in benchmarks/scale.py's e2e run)
    beside this forward pass's rate on all cores: how much of the hardware the stage uses."""
    scale = RESULTS_DIR / "scale.json"
    if not scale.exists():
        return None
    e2e = (json.loads(scale.read_text()) or {}).get("e2e") or {}
    stage = (e2e.get("stages") or {}).get("features")
    if not stage:
        return None
    stage_rate = e2e["clips"] / stage["seconds"]
    forward = max(r["both_with_decode_clips_per_s"] for r in runs if r["device"] == "cpu")
    return {"source": "benchmarks/results/scale.json e2e", "clips": e2e["clips"], "seconds": stage["seconds"],
            "stage_clips_per_s": round(stage_rate, 1), "forward_with_decode_clips_per_s": round(forward, 1),
            "stage_vs_forward": round(stage_rate / forward, 2)}


# ---------------------------------------------------------------------------------------------
# The features stage as it is (Ray tasks) against Ray Data (read_lance -> map_batches on a CNN
# actor pool -> the store's lease-protected commit), on a demo-sized store (`--stage`).


class _CNNActor:
    """Ray Data actor: both CNNs over a batch of clip rows; writes their feature fragments and returns
    small rows only (pickled fragment metadata, per-video score sums), as the stage's tasks do."""

    def __init__(self, store: str, tracking_uri: str, s_run: str, m_run: str, batch_size: int, threads: int,
                 video_ids: list[str]):
        import pyarrow as pa

        from hyvid.pipelines.inference.cnn import load_cnn_pair

        torch.set_num_threads(threads)
        self.store, self.runs, self.batch_size = store, (s_run, m_run), batch_size
        self.video_ids = pa.array(video_ids, pa.string())  # the split's: matched by value, not in a filter string
        self.spatial, self.motion = load_cnn_pair(tracking_uri, s_run, m_run, "cpu")

    def __call__(self, rows):
        import pickle

        import pyarrow as pa
        import pyarrow.compute as pc

        from hyvid.pipelines.data.clips import decode_rows
        from hyvid.store.lance_io import write_table_fragments
        from hyvid.store.tables import FRAME_FEATURES_NAME, frame_features_schema

        rows = rows.filter(pc.is_in(rows.column("video_id"), value_set=self.video_ids))
        if rows.num_rows == 0:  # a batch of videos outside the split
            return {"video_id": np.zeros(0, dtype=object), "spatial_sum": np.zeros((0, 0)),
                    "motion_sum": np.zeros((0, 0)), "count": np.zeros(0, np.int64),
                    "fragments": np.zeros(0, dtype=object), "dims": np.zeros((0, 2), np.int64)}
        sf, mf, sp, mp = cnn_forward(self.spatial, self.motion, decode_rows(rows, "spatial"),
                                     decode_rows(rows, "motion"), self.batch_size)
        n = rows.num_rows
        table = pa.table({
            "video_id": rows.column("video_id"), "position": rows.column("position"),
            "frame_index": rows.column("frame_index"), "timestamp": rows.column("timestamp"),
            "split": pa.array([1] * n, pa.int32()), "fold": pa.array([-1] * n, pa.int32()),  # split 1's one pair
            "spatial": pa.FixedSizeListArray.from_arrays(pa.array(sf.reshape(-1)), sf.shape[1]),
            "motion": pa.FixedSizeListArray.from_arrays(pa.array(mf.reshape(-1)), mf.shape[1]),
            "spatial_run_id": pa.array([self.runs[0]] * n, pa.string()),
            "motion_run_id": pa.array([self.runs[1]] * n, pa.string())}, schema=frame_features_schema(*[
                int(sf.shape[1]), int(mf.shape[1])]))
        frags = write_table_fragments(self.store, FRAME_FEATURES_NAME, table)
        vids = np.asarray(rows.column("video_id").to_pylist(), dtype=object)
        uniq = list(dict.fromkeys(vids))
        return {"video_id": np.asarray(uniq, dtype=object),
                "spatial_sum": np.stack([sp[vids == v].sum(0) for v in uniq]),
                "motion_sum": np.stack([mp[vids == v].sum(0) for v in uniq]),
                "count": np.asarray([int((vids == v).sum()) for v in uniq]),
                "fragments": np.asarray([pickle.dumps(frags)] + [b""] * (len(uniq) - 1), dtype=object),
                "dims": np.asarray([[sf.shape[1], mf.shape[1]]] * len(uniq))}


def ray_data_features(store: str, tracking_uri: str, s_run: str, m_run: str, split: int, cpus: int,
                      rows_per_batch: int, batch_size: int) -> dict:
    """The features stage's work through Ray Data: read_lance -> map_batches(actor pool) -> one
    lease-protected commit of the fragments the actors wrote, then the three CNN score sets."""
    import pickle

    import ray

    from hyvid.models.cnn import two_stream_scores
    from hyvid.models.registry import MOTION_CNN, SPATIAL_CNN, TWO_STREAM_CNN
    from hyvid.pipelines.features import _CLIP_COLUMNS, _commit_features
    from hyvid.store.feature_store import FeatureStore
    from hyvid.store.lance_io import table_uri
    from hyvid.store.scores import upsert_video_scores
    from hyvid.store.tables import CLIPS, frame_features_schema

    t0 = time.perf_counter()
    videos = FeatureStore(store).videos(split=split)
    ids = videos.column("video_id").to_pylist()
    # Reads get a sliver of CPU so they run beside the actors (two actors would hold both cores of a
    # 2-core machine and starve the reads otherwise), as the stage's tasks read inside their task.
    ds = ray.data.read_lance(table_uri(store, CLIPS.name), columns=_CLIP_COLUMNS, num_cpus=0.25)
    actors = max(1, cpus)
    out = ds.map_batches(_CNNActor, fn_constructor_args=(store, tracking_uri, s_run, m_run, batch_size, 1, ids),
                         batch_size=rows_per_batch, batch_format="pyarrow", concurrency=actors,
                         num_cpus=max(0.25, (cpus - 0.5) / actors))
    rows = out.take_all()
    frags = [f for r in rows if r["fragments"] for f in pickle.loads(r["fragments"])]
    dims = tuple(int(x) for x in rows[0]["dims"])
    _commit_features(store, frags, ids, 1, frame_features_schema(*dims), None)
    sums: dict[str, list] = {}
    for r in rows:  # a video's clips may come in two batches
        s = sums.setdefault(r["video_id"], [0.0, 0.0, 0])
        s[0], s[1], s[2] = s[0] + np.asarray(r["spatial_sum"]), s[1] + np.asarray(r["motion_sum"]), s[2] + r["count"]
    info = dict(zip(ids, zip(videos.column("subset").to_pylist(), videos.column("label").to_pylist(), strict=True),
                    strict=True))
    sv = sorted(sums)
    sp = np.stack([sums[v][0] / sums[v][2] for v in sv])
    mp = np.stack([sums[v][1] / sums[v][2] for v in sv])
    labels = [info[v][1] for v in sv]
    runs = {SPATIAL_CNN: s_run, MOTION_CNN: m_run, TWO_STREAM_CNN: f"{s_run}+{m_run}"}
    for model, s in ((SPATIAL_CNN, sp), (MOTION_CNN, mp), (TWO_STREAM_CNN, two_stream_scores(sp, mp))):
        upsert_video_scores(store, model, split, runs[model], sv, [info[v][0] for v in sv], s, labels,
                            [[lab] for lab in labels])
    return {"seconds": time.perf_counter() - t0, "clips": int(sum(r["count"] for r in rows)), "videos": len(sv),
            "actors": actors, "rows_per_batch": rows_per_batch, "batch_size": batch_size}


def _log_cnn_runs(store: str, tracking_uri: str, n_classes: int, stack: int) -> tuple[str, str]:
    """Untrained CNNs logged as train-cnn runs: the stage's throughput does not depend on the weights."""
    import mlflow

    from hyvid.models.cnn import build_stream_cnn
    from hyvid.models.registry import MOTION_CNN, SPATIAL_CNN
    from hyvid.pipelines import tracking

    tracking.setup(tracking_uri, "bench")
    ids = []
    for stream, name in (("spatial", SPATIAL_CNN), ("motion", MOTION_CNN)):
        net = build_stream_cnn(stream, n_classes, stack, pretrained=False).eval()
        with tracking.start_run(name, tracking.STAGE_TRAIN_CNN, 1, store) as run:
            mlflow.pytorch.log_model(net, name=name, serialization_format="pickle",
                                     pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"])
            mlflow.set_tag(tracking.TAG_MODEL_LOGGED, "true")
            ids.append(run.info.run_id)
    return ids[0], ids[1]


def stage_comparison(args) -> dict:
    """`hyvid features` (Ray tasks) and the Ray Data pipeline on the same demo-sized store, each from
    an empty frame_features/video_scores, alternating, `--stage-repeats` times each."""
    import shutil

    from hyvid.cluster.connect import connect
    from hyvid.pipelines.data.synth import SynthConfig, synth
    from hyvid.pipelines.extract import ExtractConfig, extract
    from hyvid.pipelines.features import FeaturesConfig, extract_features
    from hyvid.store.tables import FRAME_FEATURES_NAME, VIDEO_SCORES

    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    data, store, uri = work / "data", str(work / "store"), f"sqlite:///{work / 'mlflow.db'}"
    cpus = os.cpu_count() or 1
    connect(num_cpus=cpus)
    res = synth(SynthConfig(out=str(data), classes=args.classes, videos_per_class=args.videos_per_class))
    ex = extract(ExtractConfig(dataset=str(data), store_uri=store, progress=False))
    s_run, m_run = _log_cnn_runs(store, uri, len(res.classes), 10)
    out: dict[str, list] = {"ray_tasks": [], "ray_data": []}
    loads = []
    for _ in range(args.stage_repeats):
        for how in ("ray_tasks", "ray_data"):
            for table in (FRAME_FEATURES_NAME, VIDEO_SCORES.name):
                shutil.rmtree(f"{store}/{table}.lance", ignore_errors=True)
            loads.append(os.getloadavg()[0])
            if how == "ray_tasks":
                r = extract_features(FeaturesConfig(store_uri=store, experiment="bench", tracking_uri=uri,
                                                    spatial_run_id=s_run, motion_run_id=m_run, progress=False))
                out[how].append({"seconds": r.seconds, "clips": r.n_rows_written, "videos": r.n_videos})
            else:
                out[how].append(ray_data_features(store, uri, s_run, m_run, 1, cpus, 16 * 25, 64))
            log.info("%s: %s", how, out[how][-1])
    best = {k: min(v, key=lambda r: r["seconds"]) for k, v in out.items()}
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return {"videos": len(res.videos), "clips": ex.clips, "runs": out, "loadavg_1min_at_starts": loads,
            "best_clips_per_s": {k: round(r["clips"] / r["seconds"], 2) for k, r in best.items()},
            "ray_data_vs_ray_tasks": round(best["ray_tasks"]["seconds"] / best["ray_data"]["seconds"], 3),
            "decision": "features moves onto Ray Data" if best["ray_data"]["seconds"] <= best["ray_tasks"]["seconds"]
            else "features stays on Ray tasks: Ray Data measured slower on demo-sized data"}


def main(args) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.stage:
        result = json.loads(Path(args.out).read_text()) if Path(args.out).exists() else {"benchmark": "cnn_features"}
        load_before = os.getloadavg()
        result["features_stage_vs_ray_data"] = {**stage_comparison(args), "machine": {
            "cpus": os.cpu_count(), "loadavg_before": load_before, "loadavg_after": os.getloadavg()}}
        write_json(args.out, result)
        log.info("features stage vs Ray Data: %s", result["features_stage_vs_ray_data"]["best_clips_per_s"])
        return result
    if args.quick:
        args.repeats = 2
    h, w = stored_shape(320, 240, args.size)  # UCF-101's 320x240 at the stored short side
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (args.batch, h, w, 3), dtype=np.uint8)
    # Smooth-ish flow around 128 (zero) compresses like real flow, unlike uniform noise.
    stacks = np.clip(128 + rng.normal(0, 6, (args.batch, 2 * args.stack, h, w)), 0, 255).astype(np.uint8)
    frame_bytes = [encode_frame(f) for f in frames]
    stack_bytes = [encode_flow_stack(s) for s in stacks]
    load_before = os.getloadavg()
    cores = os.cpu_count() or 1
    runs = []
    for threads in sorted({1, cores}):
        log.info("CPU, %d torch thread(s)", threads)
        runs.append(measure(torch.device("cpu"), threads, args, frames, stacks, frame_bytes, stack_bytes))
    if torch.cuda.is_available():
        log.info("CUDA")
        runs.append(measure(torch.device("cuda"), cores, args, frames, stacks, frame_bytes, stack_bytes))
    result = {
        "benchmark": "cnn_features",
        "stored_frame_hw": [h, w],
        "stack": args.stack,
        "batch": args.batch,
        "repeats": args.repeats,
        "paper_k40_clips_per_s": PAPER_CLIPS_PER_S,
        "runs": runs,
        "machine": {"cpus": cores, "platform": platform.platform(), "torch": torch.__version__,
                    "loadavg_before": load_before, "loadavg_after": os.getloadavg()},
    }
    result["features_stage"] = features_stage_rate(runs)
    write_json(args.out, result)
    for r in runs:
        log.info("%s x%d threads: spatial %.1f frames/s (%.2fx the 224-px rate), motion %.1f stacks/s, "
                 "both %.1f clips/s (%.1f with decoding; %.2fx the paper's K40)", r["device"], r["torch_threads"],
                 r["spatial_frames_per_s"], r["spatial_stored_vs_224px_ratio"], r["motion_stacks_per_s"],
                 r["both_clips_per_s"], r["both_with_decode_clips_per_s"], r["both_vs_paper_k40_ratio"])
    log.info("wrote %s", args.out)
    return result


if __name__ == "__main__":
    main(get_args_parser().parse_args())
