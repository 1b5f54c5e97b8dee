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

    .venv/bin/python -m benchmarks.cnn_features            # writes benchmarks/results/cnn_features.json
    .venv/bin/python -m benchmarks.cnn_features --quick    # fewer repetitions
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import time

import numpy as np
import torch

from hyvid.models.cnn import MotionCNN, SpatialCNN, motion_input, spatial_input
from hyvid.pipelines.data.video import DEFAULT_SIZE, DEFAULT_STACK, stored_shape
from hyvid.pipelines.inference.cnn import cnn_forward
from hyvid.store.clips import decode_flow_stack, decode_frame, encode_flow_stack, encode_frame

from ._common import RESULTS_DIR, arg_parser, write_json

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
    return p


def _rate(fn, n_items: int, repeats: int) -> float:
    """Items per second of fn() (one warm-up call, then the best of `repeats` timed calls)."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return n_items / best


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


def main(args) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
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
