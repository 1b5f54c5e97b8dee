"""Benchmark: extraction throughput (no Ray vs Ray with 1 and 2 workers), flow methods, clip bytes.

Generates one dataset of 320x240 XVID videos (UCF-101's size and codec) with photographic
texture from scikit-image: a camera panning over a photo and an object crossing it. Then, in the
same run and on the same files:

* source frames/s of the whole extraction, store writes included: in this process without Ray,
  then Ray with 1 and with 2 workers (Ray is started and its workers warmed up before timing);
* flows/s of DIS (the default), Farneback and TV-L1 at the stored size (TV-L1 on a few frames:
  it is ~100x slower), and DIS at other stored sizes, which is what chose the default size;
* bytes per stored clip (frame + flow stack, and on disk), and the encodings compared on real
  clips: frames as JPEG/PNG/raw, flow stacks as zstd/PNG/JPEG/raw, with size, speed and error.

Targets (issue 2): >= 400 source frames/s at 320x240 with DIS on this 2-core machine, and Ray
2 workers >= 1.7x Ray 1 worker. Other processes on a shared machine make the numbers noisy;
the JSON records the load average before and after.

    .venv/bin/python -m benchmarks.extract               # writes benchmarks/results/extract.json
    .venv/bin/python -m benchmarks.extract --videos 4    # a quick look
"""
from __future__ import annotations

import argparse
import logging
import os
import platform
import shutil
import time
from pathlib import Path

import cv2
import numpy as np

from hyvid.pipelines.data.video import (
    DEFAULT_SIZE,
    compute_flows,
    decode_video,
    dequantize_flow,
    extract_clip_arrays,
    resize_frame,
)
from hyvid.pipelines.extract import ExtractConfig, extract
from hyvid.store import clips as codec
from hyvid.store.lance_io import open_table, table_uri
from hyvid.store.tables import CLIPS

from ._common import add_scratch_args, arg_parser, write_json

log = logging.getLogger("bench.extract")
TARGET_FPS = 400.0
TARGET_RATIO = 1.7


def get_args_parser() -> argparse.ArgumentParser:
    p = arg_parser(__doc__, "extract")
    p.add_argument("--videos", type=int, default=24, help="videos in the generated dataset")
    p.add_argument("--frames", type=int, default=150, help="frames per video (UCF-101 averages ~186)")
    p.add_argument("--size", type=int, default=DEFAULT_SIZE, help="stored short side")
    p.add_argument("--tvl1-frames", type=int, default=4, help="frames for the TV-L1 measurement")
    add_scratch_args(p, "/tmp/hyvid_bench_extract")
    return p


def make_dataset(root: Path, n_videos: int, n_frames: int, w: int = 320, h: int = 240) -> list[Path]:
    """UCF-101-layout dataset of XVID videos: a panning camera over a photo, an object crossing it."""
    from skimage import data

    photos = [data.coffee(), data.astronaut(), data.chelsea(), data.rocket()]
    obj = cv2.resize(data.chelsea()[50:250, 100:350], (64, 48))
    lists = root / "ucfTrainTestlist"
    lists.mkdir(parents=True, exist_ok=True)
    (lists / "classInd.txt").write_text("1 Pan\n2 Cross\n")
    paths = []
    rng = np.random.default_rng(0)
    for i in range(n_videos):
        cls = ("Pan", "Cross")[i % 2]
        bg = cv2.resize(photos[i % len(photos)], (w + 160, h + 120))
        p = root / cls / f"v_{cls}_g{i // 2 + 1:02d}_c01.avi"
        p.parent.mkdir(parents=True, exist_ok=True)
        vw = cv2.VideoWriter(str(p), cv2.VideoWriter_fourcc(*"XVID"), 25, (w, h))
        vx, vy = rng.uniform(-1, 1, 2)
        for t in range(n_frames):
            ox = int(80 + 60 * np.sin(t * vx / 20)) % 160
            oy = int(60 + 40 * np.cos(t * vy / 20)) % 120
            f = bg[oy:oy + h, ox:ox + w].copy()
            x = int((t * 3) % (w - 64))
            f[100:148, x:x + 64] = obj
            vw.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
        vw.release()
        paths.append(p)
    return paths


def time_extract(dataset: Path, store: Path, size: int, **kw) -> dict:
    shutil.rmtree(store, ignore_errors=True)
    cfg = ExtractConfig(dataset=str(dataset), store_uri=str(store), size=size, progress=False, **kw)
    t0 = time.perf_counter()
    r = extract(cfg)
    dt = time.perf_counter() - t0
    assert r.failed == 0 and r.ok == r.total, r.failures
    # cores_used: CPU time of the extraction tasks over the wall time. Below the worker count
    # means the tasks waited for a core (other processes on a shared machine, or the driver).
    return {"seconds": round(dt, 3), "source_frames": r.frames, "frames_per_s": round(r.frames / dt, 1),
            "videos": r.ok, "cores_used": round(r.task_cpu_seconds / dt, 2),
            "task_seconds": round(r.task_seconds, 2), "node_spread": r.node_spread}


def flow_rates(gray: list[np.ndarray], tvl1_frames: int) -> dict:
    out = {}
    for method, n in (("dis", len(gray)), ("farneback", min(len(gray), 60)), ("tvl1", tvl1_frames)):
        t0 = time.perf_counter()
        compute_flows(gray[:n], method)
        out[method] = round((n - 1) / (time.perf_counter() - t0), 2)
    return out


def encodings(ca) -> dict:
    """Bytes, encode/decode ms and error of each candidate encoding on real clips."""
    def timed(fn, reps=5):
        t0 = time.perf_counter()
        for _ in range(reps):
            r = fn()
        return r, (time.perf_counter() - t0) / reps * 1000

    import pyarrow as pa

    frames, stacks = ca.frames, ca.flow_stacks
    res = {"frame": {}, "flow_stack": {}}
    for name, enc, dec in (
        ("jpeg90", lambda f: codec.encode_frame(f, 90), codec.decode_frame),
        ("jpeg95", lambda f: codec.encode_frame(f, 95), codec.decode_frame),
        ("png", lambda f: cv2.imencode(".png", f[..., ::-1], [cv2.IMWRITE_PNG_COMPRESSION, 1])[1].tobytes(),
         codec.decode_frame),
        ("raw", lambda f: f.tobytes(), lambda b: np.frombuffer(b, np.uint8).reshape(frames.shape[1:])),
    ):
        blobs, enc_ms = timed(lambda enc=enc: [enc(f) for f in frames])
        back, dec_ms = timed(lambda dec=dec, blobs=blobs: [dec(b) for b in blobs])
        mse = np.mean([(b.astype(float) - f) ** 2 for b, f in zip(back, frames, strict=True)])
        res["frame"][name] = {"bytes": int(np.mean([len(b) for b in blobs])),
                              "encode_ms": round(enc_ms / len(frames), 3), "decode_ms": round(dec_ms / len(frames), 3),
                              "psnr_db": round(10 * np.log10(255**2 / mse), 1) if mse > 0 else None}
    shape = stacks.shape[1:]
    tile = (shape[0] * shape[1], shape[2])
    for name, enc, dec in (
        ("zstd1", codec.encode_flow_stack, lambda b: codec.decode_flow_stack(b, shape[0] // 2, *shape[1:])),
        ("lz4", lambda s: pa.Codec("lz4").compress(s.tobytes(), asbytes=True),
         lambda b: np.frombuffer(pa.Codec("lz4").decompress(b, decompressed_size=int(np.prod(shape)), asbytes=True),
                                 np.uint8).reshape(shape)),
        ("png", lambda s: cv2.imencode(".png", s.reshape(tile), [cv2.IMWRITE_PNG_COMPRESSION, 1])[1].tobytes(),
         lambda b: cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_UNCHANGED).reshape(shape)),
        ("jpeg95", lambda s: cv2.imencode(".jpg", s.reshape(tile), [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes(),
         lambda b: cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_UNCHANGED).reshape(shape)),
        ("raw", lambda s: s.tobytes(), lambda b: np.frombuffer(b, np.uint8).reshape(shape)),
    ):
        blobs, enc_ms = timed(lambda enc=enc: [enc(s) for s in stacks])
        back, dec_ms = timed(lambda dec=dec, blobs=blobs: [dec(b) for b in blobs])
        errs = [np.abs(dequantize_flow(b) - dequantize_flow(s)) for b, s in zip(back, stacks, strict=True)]
        res["flow_stack"][name] = {"bytes": int(np.mean([len(b) for b in blobs])),
                                   "encode_ms": round(enc_ms / len(stacks), 3),
                                   "decode_ms": round(dec_ms / len(stacks), 3),
                                   "mean_abs_error_px": round(float(np.mean([e.mean() for e in errs])), 4),
                                   "max_abs_error_px": round(float(max(e.max() for e in errs)), 3)}
    return res


def main(args: argparse.Namespace) -> dict:
    import ray

    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    dataset = work / "data"
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    paths = make_dataset(dataset, args.videos, args.frames)
    log.info("generated %d videos of %d frames in %.1f s", len(paths), args.frames, time.perf_counter() - t0)

    out: dict = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                             "opencv": cv2.__version__, "loadavg_before": [round(x, 2) for x in load_before]},
                 "dataset": {"videos": args.videos, "frames_per_video": args.frames, "source": "320x240 XVID",
                             "stored_size": args.size}}

    # Stage costs on one video, single thread (what one worker pays per frame).
    cv2.setNumThreads(1)
    t = time.perf_counter()
    full, _ = decode_video(str(paths[0]))
    decode_fps = len(full) / (time.perf_counter() - t)
    t = time.perf_counter()
    small = [resize_frame(f, args.size) for f in full]
    resize_fps = len(full) / (time.perf_counter() - t)
    gray = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in small]
    out["stage_rates_single_thread"] = {"decode_320x240_fps": round(decode_fps, 1),
                                        "resize_fps": round(resize_fps, 1)}
    out["flow_per_s_single_thread"] = {"at_stored_size": flow_rates(gray, args.tvl1_frames)}
    by_size = {}
    for s in (112, 128, 160, 240):
        g = [cv2.cvtColor(resize_frame(f, s), cv2.COLOR_RGB2GRAY) for f in full[:60]]
        t = time.perf_counter()
        compute_flows(g, "dis")
        by_size[str(s)] = round(59 / (time.perf_counter() - t), 1)
    out["flow_per_s_single_thread"]["dis_by_stored_size"] = by_size
    cv2.setNumThreads(0)  # back to OpenCV's default for the no-Ray run

    # Whole extraction, store writes included.
    # address="local": a fresh instance even when another Ray runs on this machine; a loaded
    # machine can take more than Ray's default 60 s to register the raylet.
    os.environ.setdefault("RAY_raylet_start_wait_time_s", "300")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        # Warm-up: start both workers and import everything in them, outside the timings.
        warm = work / "warm"
        shutil.copytree(dataset, warm, ignore=shutil.ignore_patterns("*_g0[2-9]_*", "*_g[1-9]*_*"))
        time_extract(warm, work / "store_warm", args.size, workers=2, shard_size=1)
        runs = {
            "no_ray_single_process": time_extract(dataset, work / "store_local", args.size, use_ray=False),
            "ray_1_worker": time_extract(dataset, work / "store_ray1", args.size, workers=1),
            "ray_2_workers": time_extract(dataset, work / "store_ray2", args.size, workers=2),
        }
    finally:
        ray.shutdown()
    out["extract"] = runs
    ratio = runs["ray_2_workers"]["frames_per_s"] / runs["ray_1_worker"]["frames_per_s"]
    out["ratio_2w_over_1w"] = round(ratio, 2)

    store = work / "store_ray2"
    ds = open_table(str(store), CLIPS.name)
    t = ds.to_table(columns=["frame", "flow_stack"])
    rows = t.num_rows
    disk = sum(f.stat().st_size for f in Path(table_uri(str(store), CLIPS.name)).rglob("*") if f.is_file())
    out["bytes_per_clip"] = {
        "frame": int(sum(len(b) for b in t["frame"].to_pylist()) / rows),
        "flow_stack": int(sum(len(b) for b in t["flow_stack"].to_pylist()) / rows),
        "on_disk": int(disk / rows),
        "frame_raw": args.size * int(round(args.size * 4 / 3)) * 3,
        "flow_stack_raw": 2 * 10 * args.size * int(round(args.size * 4 / 3)),
    }
    out["encodings"] = encodings(extract_clip_arrays(str(paths[1]), size=args.size))
    out["targets"] = {
        "frames_per_s": TARGET_FPS, "met_frames_per_s": runs["ray_2_workers"]["frames_per_s"] >= TARGET_FPS,
        "ratio_2w_over_1w": TARGET_RATIO, "met_ratio": ratio >= TARGET_RATIO,
    }
    out["machine"]["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return out


def print_table(r: dict) -> None:
    print(f"\nextraction, {r['dataset']['videos']} videos x {r['dataset']['frames_per_video']} frames, "
          f"320x240 XVID -> short side {r['dataset']['stored_size']}, DIS, 25 positions, L=10 "
          f"(load avg before {r['machine']['loadavg_before'][0]}, after {r['machine']['loadavg_after'][0]})")
    print(f"{'mode':26s} {'seconds':>8s} {'frames/s':>9s} {'cores used':>11s}")
    for k, v in r["extract"].items():
        print(f"{k:26s} {v['seconds']:8.2f} {v['frames_per_s']:9.1f} {v['cores_used']:11.2f}")
    print(f"ratio 2 workers / 1 worker: {r['ratio_2w_over_1w']:.2f} (target >= {TARGET_RATIO}); "
          f"target >= {TARGET_FPS:.0f} frames/s met: {r['targets']['met_frames_per_s']}")
    f = r["flow_per_s_single_thread"]
    print("flows/s, one thread, at the stored size: " + ", ".join(f"{k} {v}" for k, v in f["at_stored_size"].items()))
    print("DIS flows/s by stored short side: " + ", ".join(f"{k}px {v}" for k, v in f["dis_by_stored_size"].items()))
    print("stage rates, one thread: " + ", ".join(f"{k} {v}" for k, v in r["stage_rates_single_thread"].items()))
    b = r["bytes_per_clip"]
    print(f"bytes per clip: frame {b['frame']} + flow stack {b['flow_stack']} "
          f"(raw {b['frame_raw']} + {b['flow_stack_raw']}); on disk {b['on_disk']}")
    for col, cands in r["encodings"].items():
        print(f"{col} encodings:")
        for name, v in cands.items():
            if "psnr_db" in v:
                extra = f"psnr {v['psnr_db']} dB" if v["psnr_db"] is not None else "lossless"
            else:
                extra = f"abs err mean {v['mean_abs_error_px']} / max {v['max_abs_error_px']} px"
            print(f"  {name:8s} {v['bytes']:8d} B  enc {v['encode_ms']:.3f} ms  dec {v['decode_ms']:.3f} ms  {extra}")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = get_args_parser().parse_args()
    result = main(args)
    write_json(args.out, result)
    print_table(result)
    print(f"\nwrote {args.out}")
