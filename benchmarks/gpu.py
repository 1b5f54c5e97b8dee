"""Device benchmark (issue 22): what one GPU does for hyvid, as one script that needs no network and
finishes in at most 8 minutes on one H100.

Each section is a function `section(args, device) -> dict` in SECTIONS, run in order within the
time budget (--budget-s; a section that would start past it is recorded as skipped, and one that
fails records its error while the others go on). Sections now:

* flow: tvl1-torch frames/s on the device at 320x240, by batch size, against OpenCV's TV-L1 and
  DIS on all the machine's CPU cores, on the same frames (photos translating at known sub-pixel
  velocities, as benchmarks/flow.py makes them); the end-point error of tvl1-torch against
  OpenCV's TV-L1 and of both against the truth. Goal (issue 22): >= 300 frames/s on one H100.

To come as sections of their own: train-cnn and features clips/s with and without autocast, and
a small end-to-end run.

    make bench-gpu                      # python -m benchmarks.gpu: writes benchmarks/results/gpu.json
    python -m benchmarks.gpu --cpu-smoke --out /tmp/gpu.json   # tiny, on the CPU: that it runs, no figures
"""
from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
import time
import traceback

import cv2
import numpy as np
import torch

from hyvid.pipelines.data.tvl1 import tvl1_flow

from ._common import arg_parser, write_json
from .flow import epe, opencv_flow, photo_pairs

log = logging.getLogger("bench.gpu")
TARGET_TVL1_TORCH_FPS = 300.0  # at 320x240 on one H100: 10x the ~30 frames/s reported for GPU TV-L1


def get_args_parser() -> argparse.ArgumentParser:
    p = arg_parser(__doc__, "gpu")
    p.add_argument("--cpu-smoke", action="store_true",
                   help="tiny sizes on the CPU: checks that every section runs (its figures mean nothing)")
    p.add_argument("--budget-s", type=float, default=420.0, help="no section starts after this many seconds")
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated, of {', '.join(SECTIONS)}")
    return p


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def flow_section(args: argparse.Namespace, device: str) -> dict:
    """tvl1-torch on the device against OpenCV TV-L1 and DIS on the CPU, on the same frames."""
    w, h = (64, 48) if args.cpu_smoke else (320, 240)
    batches = (2, 4) if args.cpu_smoke else (32, 128, 256)
    n_opencv = 2 if args.cpu_smoke else 16  # OpenCV's TV-L1 takes ~1 s a pair: a subset
    i0, i1, vs = photo_pairs(max(batches), w, h, seed=7)
    out: dict = {"size": f"{w}x{h}", "pairs": len(i0), "cpu_cores": os.cpu_count()}
    tvl1_flow(i0[:2], i1[:2], device=device)  # warm-up: allocator, kernels
    rates, flows = {}, None
    for b in batches:
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        _sync(device)
        t0 = time.perf_counter()
        f = tvl1_flow(i0[:b], i1[:b], device=device).cpu()  # host frames in, host flows out: as extract's actors
        dt = time.perf_counter() - t0
        rates[str(b)] = {"frames_per_s": round(b / dt, 1), "seconds": round(dt, 3)}
        if device.startswith("cuda"):
            rates[str(b)]["peak_memory_gb"] = round(torch.cuda.max_memory_allocated() / 1e9, 2)
        flows = f.numpy()
        log.info("tvl1-torch on %s, batch %d: %.1f frames/s", device, b, b / dt)
    out["tvl1_torch_frames_per_s_by_batch"] = rates
    out["tvl1_torch_frames_per_s"] = max(r["frames_per_s"] for r in rates.values())
    cv2.setNumThreads(os.cpu_count() or 1)
    cpu = {}
    for method, n in (("tvl1", n_opencv), ("dis", len(i0))):
        calc = opencv_flow(method)
        t0 = time.perf_counter()
        ref = np.stack([calc(a, b) for a, b in zip(i0[:n], i1[:n], strict=True)])
        cpu[method] = {"frames_per_s": round(n / (time.perf_counter() - t0), 2), "pairs": n}
        cpu[method]["epe_vs_truth_px"] = round(float(np.mean([epe(ref[j], vs[j]) for j in range(n)])), 4)
        if method == "tvl1":
            out["epe_tvl1_torch_vs_opencv_px"] = round(
                float(np.mean([epe(flows[j], ref[j]) for j in range(n)])), 4)
    out["opencv_cpu_all_cores"] = cpu
    out["tvl1_torch_epe_vs_truth_px"] = round(float(np.mean([epe(flows[j], vs[j]) for j in range(len(vs))])), 4)
    out["speedup_over_opencv_tvl1_cpu"] = round(out["tvl1_torch_frames_per_s"] / cpu["tvl1"]["frames_per_s"], 1)
    out["target_frames_per_s"] = TARGET_TVL1_TORCH_FPS
    out["met_target"] = None if args.cpu_smoke else out["tvl1_torch_frames_per_s"] >= TARGET_TVL1_TORCH_FPS
    return out


SECTIONS = {"flow": flow_section}


def main(args: argparse.Namespace) -> dict:
    if args.cpu_smoke:
        device = "cpu"
    elif torch.cuda.is_available():
        device = "cuda"
    else:
        raise SystemExit("benchmarks.gpu: error: torch sees no CUDA device here; run it on a GPU machine, "
                         "or pass --cpu-smoke to check that it runs")
    names = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = [s for s in names if s not in SECTIONS]
    if unknown:
        raise SystemExit(f"benchmarks.gpu: error: unknown section(s) {', '.join(unknown)}; "
                         f"choose from {', '.join(SECTIONS)}")
    out: dict = {"machine": {
        "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
        "cuda": torch.version.cuda, "torch": torch.__version__, "opencv": cv2.__version__,
        "python": platform.python_version(), "cpus": os.cpu_count(),
        "loadavg_before": [round(x, 2) for x in os.getloadavg()]}, "smoke": bool(args.cpu_smoke), "sections": {}}
    t_start = time.perf_counter()
    for name in names:
        elapsed = time.perf_counter() - t_start
        if elapsed > args.budget_s:
            out["sections"][name] = {"skipped": f"budget of {args.budget_s:g} s spent ({elapsed:.0f} s)"}
            continue
        t0 = time.perf_counter()
        try:
            out["sections"][name] = SECTIONS[name](args, device)
        except Exception as e:  # noqa: BLE001 - recorded; the other sections still run
            log.error("section %s failed: %s", name, e)
            out["sections"][name] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-2000:]}
        out["sections"][name]["section_seconds"] = round(time.perf_counter() - t0, 1)
    out["machine"]["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    out["seconds"] = round(time.perf_counter() - t_start, 1)
    return out


def print_table(r: dict) -> None:
    print(f"\ndevice benchmark on {r['machine']['device']} ({r['machine']['cpus']} CPU cores)"
          + (" [cpu smoke: no figures]" if r["smoke"] else "") + f", {r['seconds']} s")
    f = r["sections"].get("flow", {})
    if "tvl1_torch_frames_per_s" in f:
        print(f"flow at {f['size']}: tvl1-torch {f['tvl1_torch_frames_per_s']} frames/s (by batch: "
              + ", ".join(f"{b}: {v['frames_per_s']}" for b, v in f["tvl1_torch_frames_per_s_by_batch"].items())
              + f"); OpenCV on the CPU: TV-L1 {f['opencv_cpu_all_cores']['tvl1']['frames_per_s']}, "
              f"DIS {f['opencv_cpu_all_cores']['dis']['frames_per_s']} frames/s; "
              f"EPE tvl1-torch vs OpenCV {f['epe_tvl1_torch_vs_opencv_px']} px")
    for name, s in r["sections"].items():
        if "error" in s or "skipped" in s:
            print(f"{name}: {s.get('error') or s.get('skipped')}")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    a = get_args_parser().parse_args()
    result = main(a)
    write_json(a.out, result)
    print_table(result)
    sys.exit(1 if any("error" in s for s in result["sections"].values()) else 0)
