"""Device benchmark (issue 22): what one GPU does for hyvid, as one script that needs no network and
finishes in at most 8 minutes on one H100.

Each section is a function `section(args, device) -> dict` in SECTIONS, run in order within the
time budget (--budget-s; a section that would start past it is recorded as skipped, and one that
fails records its error while the others go on). Sections now:

* flow: tvl1-torch frames/s on the device at 320x240, by batch size, against OpenCV's TV-L1 and
  DIS on all the machine's CPU cores, on the same frames (photos translating at known sub-pixel
  velocities, as benchmarks/flow.py makes them); the end-point error of tvl1-torch against
  OpenCV's TV-L1 and of both against the truth. Goal (issue 22): >= 300 frames/s on one H100.

* cnn_loader: the CNN stages' loader from Lance with no model (benchmarks/cnn_loader.py) on a
  synthetic store made here, batches copied to the device as the stages copy them (pinned host
  memory, non-blocking, channels-last): train-cnn's by reader, features' by tasks at once.
* train_cnn: train-cnn's SGD step (`training.cnn_loop.train_step`) clips/s for each stream
  (spatial fine-tuned whole, as --paper does; motion from scratch), autocast off and on (bf16
  where the GPU supports it, else fp16 with a grad scaler: `precision.resolve_amp("auto")`), the
  model channels-last on CUDA: on one host batch (the step's bound), fed by the stage's loader
  (`iter_batches` with prefetch, crop + flip), and at the paper's geometry (224 crops of 256-px
  frames, random data, step only); beside it the loader alone on the same data.
* features: the forward pass `features` runs (`inference.cnn.stream_forward`, centre view) for
  each stream, autocast off and on: forward-only on a device-resident batch (the model's bound),
  from decoded host clips, and fed by the stage's own read (one task's scan + decode, then the
  forward, as `features._features_task`); `vs_forward_only` is the last over the first, the issue's
  goal being >= 0.8 ("features within 20% of the forward-only bound"); beside it the loader alone.
* e2e: a small `hyvid run` (benchmarks/scale.py's end-to-end part at small sizes), per-stage wall
  time; skipped under --cpu-smoke, and when fewer than E2E_MIN_S seconds of the budget are left.

    make bench-gpu                      # python -m benchmarks.gpu: writes benchmarks/results/gpu.json
    python -m benchmarks.gpu --cpu-smoke --out /tmp/gpu.json   # tiny, on the CPU: that it runs, no figures

Work is sized by device (SIZES): the whole script stays within 8 minutes on one H100.
"""
from __future__ import annotations

import argparse
import itertools
import logging
import os
import platform
import shutil
import sys
import time
import traceback
from pathlib import Path

import cv2
import numpy as np
import torch

from hyvid.models.cnn import build_stream_cnn, motion_input, random_crop_flip, spatial_input, stream_input, view_crops
from hyvid.pipelines.data.clips import ClipsDataset
from hyvid.pipelines.data.tvl1 import tvl1_flow
from hyvid.pipelines.inference.cnn import DEFAULT_BATCH as FEATURES_BATCH
from hyvid.pipelines.inference.cnn import cnn_forward, stream_forward
from hyvid.pipelines.precision import autocast, channels_last, grad_scaler, resolve_amp, to_device
from hyvid.pipelines.training.cnn_loop import train_step

from . import cnn_loader
from ._common import add_scratch_args, arg_parser, write_json
from ._measure import best_seconds
from .flow import epe, opencv_flow, photo_pairs

log = logging.getLogger("bench.gpu")
TARGET_TVL1_TORCH_FPS = 300.0  # at 320x240 on one H100: 10x the ~30 frames/s reported for GPU TV-L1
TARGET_FEATURES_VS_FORWARD = 0.8  # issue 22: features within 20% of the model's forward-only bound
E2E_MIN_S = 180.0  # the e2e section starts only with this much of the budget left (its guessed length)
# The e2e section's `hyvid run` (benchmarks/scale.py's e2e sizes): 32 synthetic videos, 10 positions
# each, short fits. scale.py's tiny size (16 videos, 6 positions) took 93 s on this 2-core machine.
E2E_SIZE = {"classes": 8, "videos_per_class": 4,
            "run_args": ["--cnn-epochs", "2", "--lstm-epochs", "3", "--video-epochs", "5", "--frames", "10"]}
STREAMS = cnn_loader.STREAMS
NUM_CLASSES = 101  # UCF-101's head: the classifier's width is part of the step's cost

# Work by device: the CNN sections' store, batches, steps and passes. "cuda" is sized so that the
# whole script (flow included) stays within 8 minutes on one H100 with 16 cores; "smoke" only runs.
SIZES = {
    "smoke": {"classes": 4, "videos_per_class": 1, "crop": 32, "train_batches": (4,), "steps": 1, "repeats": 1,
              "feature_clips": 8, "tasks": 1, "paper": {"frame_hw": (40, 53), "crop": 32, "batch": 4}},
    "cuda": {"classes": 8, "videos_per_class": 6, "crop": cnn_loader.DEFAULT_CROP,
             "train_batches": (cnn_loader.TRAIN_BATCH, 128), "steps": 30, "repeats": 2, "feature_clips": None,
             "tasks": None, "paper": {"frame_hw": (256, 341), "crop": 224, "batch": cnn_loader.TRAIN_BATCH}},
}
_STORES: dict[str, cnn_loader.LoaderStore] = {}  # workdir -> the store the CNN sections share


def get_args_parser() -> argparse.ArgumentParser:
    p = arg_parser(__doc__, "gpu")
    p.add_argument("--cpu-smoke", action="store_true",
                   help="tiny sizes on the CPU: checks that every section runs (its figures mean nothing)")
    p.add_argument("--budget-s", type=float, default=420.0, help="no section starts after this many seconds")
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated, of {', '.join(SECTIONS)}")
    add_scratch_args(p, "/tmp/hyvid_bench_gpu")
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


# ---------------------------------------------------------------------------------------------
# The CNN stages: loader, train-cnn's step, features' forward pass, on one synthetic store.


def _size(args: argparse.Namespace) -> dict:
    return SIZES["smoke" if args.cpu_smoke else "cuda"]


def _store(args: argparse.Namespace) -> cnn_loader.LoaderStore:
    """The synthetic store the CNN sections share, made once per run (in --workdir)."""
    key = str(Path(args.workdir) / "cnn_store")
    if key not in _STORES:
        z = _size(args)
        _STORES[key] = cnn_loader.make_store(Path(key), z["classes"], z["videos_per_class"])
        log.info("CNN store: %d videos, %d clips (made in %.0f s)", len(_STORES[key].labels), _STORES[key].clips,
                 _STORES[key].make_seconds)
    return _STORES[key]


def _amp_modes(device: torch.device) -> dict[str, str]:
    """Autocast off, and on as the stages' `auto` turns it on (bf16 on the CPU, so the smoke runs it)."""
    return {"off": "off", "on": "auto" if device.type == "cuda" else "bf16"}


def _dtype_name(dtype: torch.dtype | None) -> str:
    return "fp32" if dtype is None else str(dtype).replace("torch.", "")


def _to_device_fn(device: torch.device):
    """A host batch as the stages put it on the device: pinned, non-blocking, NHWC on CUDA."""
    def to(t: torch.Tensor) -> torch.Tensor:
        x = to_device(t, device)
        return channels_last(x) if device.type == "cuda" else x
    return to


def _store_info(store: cnn_loader.LoaderStore) -> dict:
    return {"videos": len(store.labels), "clips": store.clips, "frame_hw": list(store.frame_hw),
            "stack": store.stack, "store_seconds": round(store.make_seconds, 1)}


def cnn_loader_section(args: argparse.Namespace, device: str) -> dict:
    """The loaders alone, batches copied to the device: the bound the CNN sections are read against."""
    dev, z, cores = torch.device(device), _size(args), os.cpu_count() or 1
    store = _store(args)
    readers = ["serial", "prefetch"] + ([f"threads_{cores}"] if cores > 1 else [])
    tasks = sorted({1, z["tasks"] or cores})
    out: dict = {**_store_info(store), "crop": z["crop"], "readers": readers, "cpu_cores": cores,
                 "train_cnn": {}, "features": {}}
    for s in STREAMS:
        out["train_cnn"][s] = cnn_loader.train_loader_rates(
            store, s, cnn_loader.TRAIN_BATCH, z["crop"], readers, z["repeats"], to=_to_device_fn(dev),
            sync=lambda: _sync(device))
    for s in (*STREAMS, "both"):
        out["features"][s] = cnn_loader.features_loader_rates(store, s, z["crop"], tasks, z["repeats"])
    return out


def _fit_model(stream: str, stack: int, crop: int, device: torch.device
               ) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """A stream CNN set up as `cnn_fit` sets it (NHWC on CUDA; the spatial one fine-tuned whole)."""
    model = build_stream_cnn(stream, NUM_CLASSES, stack, finetune="all", pretrained=False, crop=crop).to(device)
    if device.type == "cuda":
        model = channels_last(model)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    return model, torch.optim.SGD(params, lr=1e-3, momentum=0.9, weight_decay=5e-4)


def _steps_rate(model, opt, scaler, batches, device: torch.device, amp, steps: int) -> float:
    """clips/s of `steps` train steps on (x, y) host batches from `batches` (up to two warm-up steps
    first: cuDNN picks its algorithms and the allocator its blocks on the first)."""
    loss_fn = torch.nn.CrossEntropyLoss()
    it = iter(batches)
    for _ in range(min(2, steps)):
        x, y = next(it)
        train_step(model, loss_fn, opt, scaler, x, y, device, amp)
    _sync(str(device))
    n, t0 = 0, time.perf_counter()
    for _ in range(steps):
        try:
            x, y = next(it)
        except StopIteration:
            break
        train_step(model, loss_fn, opt, scaler, x, y, device, amp)
        n += len(y)
    _sync(str(device))
    return n / (time.perf_counter() - t0)


def _loader_epochs(data: ClipsDataset, stream: str, batch: int, crop: int):
    """train-cnn's (x, y) host batches, epoch after epoch (a new shuffle each)."""
    epoch = 0
    while True:
        yield from cnn_loader.train_batches(data, stream, batch, crop, "prefetch", seed=epoch)
        epoch += 1


def _random_clips(stream: str, n: int, hw: tuple[int, int], stack: int, seed: int = 0) -> np.ndarray:
    """uint8 clips of random content, frames [n, H, W, 3] or flow stacks [n, 2L, H, W] (smooth-ish, around 0)."""
    rng = np.random.default_rng(seed)
    if stream == "spatial":
        return rng.integers(0, 256, (n, *hw, 3), dtype=np.uint8)
    return np.clip(128 + rng.normal(0, 6, (n, 2 * stack, *hw)), 0, 255).astype(np.uint8)


def train_cnn_section(args: argparse.Namespace, device: str) -> dict:
    """train-cnn's SGD step clips/s by stream, batch and autocast: on one host batch, fed by the
    stage's loader, and at the paper's geometry; the loader alone beside them."""
    dev, z = torch.device(device), _size(args)
    store, crop, steps = _store(args), z["crop"], z["steps"]
    out: dict = {**_store_info(store), "crop": crop, "steps": steps, "finetune": {"spatial": "all", "motion": "all"}}
    for s in STREAMS:
        data = ClipsDataset(store.store_uri, store.labels, s)
        loader = cnn_loader.train_loader_rates(store, s, cnn_loader.TRAIN_BATCH, crop, ["prefetch"], z["repeats"],
                                               to=_to_device_fn(dev), sync=lambda: _sync(device))
        res: dict = {"loader_prefetch_clips_per_s": loader["prefetch"]["clips_per_s"], "by_batch": {}}
        for b in z["train_batches"]:
            x_host, y_host = data.get_batch(np.arange(min(b, len(data))))
            x0 = stream_input(s, random_crop_flip(x_host, (crop, crop), np.random.default_rng(0),
                                                  cnn_loader.KIND[s]))
            one = (x0, torch.from_numpy(y_host))
            by_amp = {}
            for name, mode in _amp_modes(dev).items():
                amp = resolve_amp(mode, dev)
                torch.manual_seed(0)
                model, opt = _fit_model(s, store.stack, crop, dev)
                scaler = grad_scaler(dev, amp)
                r = {"dtype": _dtype_name(amp), "grad_scaler": scaler.is_enabled()}
                r["step_clips_per_s"] = round(_steps_rate(model, opt, scaler, itertools.repeat(one), dev, amp,
                                                          steps), 1)
                r["with_loader_clips_per_s"] = round(_steps_rate(
                    model, opt, scaler, _loader_epochs(data, s, b, crop), dev, amp, steps), 1)
                r["with_loader_vs_step"] = round(r["with_loader_clips_per_s"] / r["step_clips_per_s"], 3)
                if dev.type == "cuda":
                    r["peak_memory_gb"] = round(torch.cuda.max_memory_allocated() / 1e9, 2)
                    torch.cuda.reset_peak_memory_stats()
                by_amp[name] = r
                log.info("train-cnn %s, batch %d, amp %s: step %.1f, with loader %.1f clips/s", s, b, r["dtype"],
                         r["step_clips_per_s"], r["with_loader_clips_per_s"])
                del model, opt
            res["by_batch"][str(b)] = by_amp
        out[s] = res
    # The paper's geometry (224 crops of 256-px frames): no store at that size here, so random clips, step only.
    p = z["paper"]
    paper: dict = {"frame_hw": list(p["frame_hw"]), "crop": p["crop"], "batch": p["batch"]}
    for s in STREAMS:
        x = stream_input(s, random_crop_flip(_random_clips(s, p["batch"], p["frame_hw"], store.stack),
                                             (p["crop"], p["crop"]), np.random.default_rng(0), cnn_loader.KIND[s]))
        one = (x, torch.zeros(p["batch"], dtype=torch.int64))
        paper[s] = {}
        for name, mode in _amp_modes(dev).items():
            amp = resolve_amp(mode, dev)
            model, opt = _fit_model(s, store.stack, p["crop"], dev)
            paper[s][name] = {"dtype": _dtype_name(amp), "step_clips_per_s": round(_steps_rate(
                model, opt, grad_scaler(dev, amp), itertools.repeat(one), dev, amp, steps), 1)}
            del model, opt
    out["paper_geometry"] = paper
    return out


def _eval_model(stream: str, stack: int, crop: int, device: torch.device) -> torch.nn.Module:
    """A stream CNN as `features` loads it (`load_cnn_pair`): eval mode, channels-last."""
    model = build_stream_cnn(stream, NUM_CLASSES, stack, pretrained=False, crop=crop).to(device).eval()
    return channels_last(model)


def features_section(args: argparse.Namespace, device: str) -> dict:
    """features' forward pass clips/s by stream and autocast: forward-only on the device (the bound),
    from decoded host clips, and fed by the stage's read; the loader alone beside them."""
    dev, z = torch.device(device), _size(args)
    store, crop = _store(args), z["crop"]
    chunks = cnn_loader.task_chunks(store)
    if args.cpu_smoke:
        chunks = chunks[:1]
    version = ClipsDataset(store.store_uri, store.labels, "spatial").version
    sync = lambda: _sync(device)  # noqa: E731
    out: dict = {**_store_info(store), "crop": crop, "batch_size": FEATURES_BATCH, "views": 1,
                 "tasks_timed": len(chunks), "target_vs_forward_only": TARGET_FEATURES_VS_FORWARD}
    models: dict = {}
    for s in STREAMS:
        prep = spatial_input if s == "spatial" else motion_input
        data = ClipsDataset(store.store_uri, store.labels, s)
        n_host = min(len(data), z["feature_clips"] or len(data))
        host = data.get_batch(np.arange(n_host))[0]
        batch = host[:FEATURES_BATCH]
        loader = cnn_loader.features_loader_rates(store, s, crop, [1], z["repeats"])
        res: dict = {"loader_1_task_clips_per_s": loader["tasks_1"]["clips_per_s"], "host_clips": n_host}
        for name, mode in _amp_modes(dev).items():
            amp = resolve_amp(mode, dev)
            model = models[(s, name)] = _eval_model(s, store.stack, crop, dev)
            x_dev = channels_last(to_device(prep(view_crops(batch, (crop, crop), cnn_loader.KIND[s], 1)[0]), dev))

            def forward_only(model=model, x_dev=x_dev, amp=amp):
                with torch.inference_mode(), autocast(dev, amp):
                    model.features_and_logits(x_dev)
                sync()

            def from_host(model=model, mode=mode, prep=prep, host=host):
                stream_forward(model, host, prep, FEATURES_BATCH, 1, mode)
                sync()

            def with_loader(model=model, mode=mode, prep=prep, s=s):
                n = 0
                for c in chunks:
                    x = cnn_loader.features_task_rows(store.store_uri, version, c, s)[s]
                    stream_forward(model, x, prep, FEATURES_BATCH, 1, mode)
                    n += len(x)
                sync()
                return n

            n_loaded = with_loader()
            r = {"dtype": _dtype_name(amp),
                 "forward_only_clips_per_s": round(len(batch) / best_seconds(forward_only, z["repeats"] + 2), 1),
                 "from_host_clips_per_s": round(n_host / best_seconds(from_host, z["repeats"]), 1),
                 "with_loader_clips_per_s": round(n_loaded / best_seconds(with_loader, z["repeats"]), 1)}
            r["vs_forward_only"] = round(r["with_loader_clips_per_s"] / r["forward_only_clips_per_s"], 3)
            r["met_target"] = None if args.cpu_smoke else r["vs_forward_only"] >= TARGET_FEATURES_VS_FORWARD
            res[name] = r
            log.info("features %s, amp %s: forward-only %.1f, from host %.1f, with loader %.1f clips/s", s,
                     r["dtype"], r["forward_only_clips_per_s"], r["from_host_clips_per_s"],
                     r["with_loader_clips_per_s"])
        out[s] = res
    # Both streams as the stage runs them: one scan of both, then cnn_forward; its bound combines the
    # two forward-only rates (the streams run one after the other).
    both: dict = {"loader_1_task_clips_per_s": cnn_loader.features_loader_rates(
        store, "both", crop, [1], z["repeats"])["tasks_1"]["clips_per_s"]}
    for name, mode in _amp_modes(dev).items():
        def stage_read(name=name, mode=mode):
            n = 0
            for c in chunks:
                rows = cnn_loader.features_task_rows(store.store_uri, version, c, "both")
                cnn_forward(models[("spatial", name)], models[("motion", name)], rows["spatial"], rows["motion"],
                            FEATURES_BATCH, 1, mode)
                n += len(rows["spatial"])
            sync()
            return n

        n_both = stage_read()
        fwd = 1.0 / sum(1.0 / out[s][name]["forward_only_clips_per_s"] for s in STREAMS)
        r = {"dtype": out["spatial"][name]["dtype"], "forward_only_clips_per_s": round(fwd, 1),
             "with_loader_clips_per_s": round(n_both / best_seconds(stage_read, z["repeats"]), 1)}
        r["vs_forward_only"] = round(r["with_loader_clips_per_s"] / r["forward_only_clips_per_s"], 3)
        r["met_target"] = None if args.cpu_smoke else r["vs_forward_only"] >= TARGET_FEATURES_VS_FORWARD
        both[name] = r
    out["both"] = both
    return out


def e2e_section(args: argparse.Namespace, device: str) -> dict:
    """A small `hyvid run` through every stage (benchmarks/scale.py's end-to-end part), per-stage seconds."""
    if args.cpu_smoke:
        return {"skipped": "not under --cpu-smoke (a whole `hyvid run` takes minutes on the CPU)"}
    from .scale import e2e

    work = Path(args.workdir) / "e2e"
    shutil.rmtree(work, ignore_errors=True)
    r = e2e(work, E2E_SIZE)
    return {k: r[k] for k in ("videos", "classes", "clips", "run", "stages", "hybrid_test_accuracy", "run_args")}


SECTIONS = {"flow": flow_section, "cnn_loader": cnn_loader_section, "train_cnn": train_cnn_section,
            "features": features_section, "e2e": e2e_section}
# Sections that need this many seconds of the budget left to start (the others start while any is).
SECTION_MIN_S = {"e2e": E2E_MIN_S}


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
        if elapsed + SECTION_MIN_S.get(name, 0.0) > args.budget_s:
            out["sections"][name] = {"skipped": f"budget of {args.budget_s:g} s spent ({elapsed:.0f} s, "
                                                f"{SECTION_MIN_S.get(name, 0.0):g} s needed)"}
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
    if not args.keep:
        shutil.rmtree(args.workdir, ignore_errors=True)
        _STORES.clear()
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
    t = r["sections"].get("train_cnn", {})
    for st in STREAMS if "spatial" in t else ():
        for b, by in t[st]["by_batch"].items():
            print(f"train-cnn {st}, batch {b}: " + "; ".join(
                f"{v['dtype']} step {v['step_clips_per_s']}, with loader {v['with_loader_clips_per_s']}"
                for v in by.values()) + f" clips/s (loader alone {t[st]['loader_prefetch_clips_per_s']})")
    f = r["sections"].get("features", {})
    for st in (*STREAMS, "both") if "both" in f else ():
        print(f"features {st}: " + "; ".join(
            f"{f[st][a]['dtype']} forward-only {f[st][a]['forward_only_clips_per_s']}, with loader "
            f"{f[st][a]['with_loader_clips_per_s']} ({f[st][a]['vs_forward_only']}x)" for a in ("off", "on"))
            + f" clips/s (loader alone {f[st]['loader_1_task_clips_per_s']})")
    e = r["sections"].get("e2e", {})
    if "stages" in e:
        print(f"e2e ({e['videos']} videos, {e['clips']} clips): {e['run']['seconds']} s; "
              + ", ".join(f"{k} {v['seconds']} s" for k, v in e["stages"].items()))
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
