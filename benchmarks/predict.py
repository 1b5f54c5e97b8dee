"""Benchmark: `hyvid predict` on an 8-s 320x240 video (UCF-101's typical clip), per step.

Target (issue 5): at most 2 s in total per video on the 2-core CPU, model loading excluded
(reported separately). The paper took 3.9 s (frames + flow) + 9 s (CNN features) + 2.8 s (LSTM
+ fusion) per video on a K40 GPU.

The models have the real architectures and sizes the stages train (EfficientNet-Lite0 spatial CNN,
the CNN-M-like motion CNN with L = 10, both with 1024-d fc1; `hyvid train`'s default LSTM widths;
the 200-unit fusion net) for 101 classes. They are untrained, which changes no timing, and
are logged to a scratch MLflow store with the stages' conventions, with a hybrid run on top, so
the timed path is exactly `hyvid predict`'s: load_hybrid once, then predict(). The video is
synthetic (textured shapes moving over a textured background), encoded with XVID like UCF-101
(MJPG where OpenCV has no XVID encoder). Extraction uses `hyvid extract`'s defaults.

In the same run, two reference points: decoding the video alone (the floor for step 1) and the
same predict with the paper's LSTM widths (1024, 512).

    .venv/bin/python -m benchmarks.predict               # writes benchmarks/results/predict.json
    .venv/bin/python -m benchmarks.predict --repeats 2   # a quicker look
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from hyvid.models import registry as R
from hyvid.pipelines import tracking
from hyvid.pipelines.data.video import DEFAULT_POSITIONS, DEFAULT_SIZE, DEFAULT_STACK, decode_video
from hyvid.pipelines.inference.logged import load_hybrid
from hyvid.pipelines.predict import PAPER_TIMES_S, PredictConfig, predict

from ._common import arg_parser

log = logging.getLogger("bench.predict")
TARGET_S = 2.0


def get_args_parser() -> argparse.ArgumentParser:
    p = arg_parser(__doc__, "predict")
    p.add_argument("--seconds", type=float, default=8.0, help="video length (UCF-101: ~8 s typical)")
    p.add_argument("--fps", type=float, default=25.0)
    p.add_argument("--width", type=int, default=320)
    p.add_argument("--height", type=int, default=240)
    p.add_argument("--classes", type=int, default=101)
    p.add_argument("--repeats", type=int, default=5, help="timed predictions of the single video (median reported)")
    p.add_argument("--batch", type=int, default=4, help="videos in the batched measurement")
    p.add_argument("--workdir", default=None, help="scratch folder (default: a temp dir, deleted afterwards)")
    return p


def write_video(path: Path, seconds: float, fps: float, w: int, h: int, seed: int = 0) -> str:
    """A synthetic clip: two textured squares moving over a textured, slowly panning background."""
    rng = np.random.default_rng(seed)
    bg = cv2.resize(rng.integers(0, 256, (h // 8, 2 * w // 8, 3), dtype=np.uint8), (2 * w, h),
                    interpolation=cv2.INTER_CUBIC)
    tex = [rng.integers(0, 256, (48, 48, 3), dtype=np.uint8) for _ in range(2)]
    for fourcc in ("XVID", "MJPG"):
        vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (w, h))
        if vw.isOpened():
            break
    else:
        raise RuntimeError("OpenCV can write neither XVID nor MJPG video here")
    for i in range(int(round(seconds * fps))):
        f = bg[:, i % w: i % w + w].copy()
        x0, y0 = (10 + 3 * i) % (w - 60), 40 + int(30 * np.sin(i / 9))
        x1, y1 = (w - 70 - 2 * i) % (w - 60), 140 + int(20 * np.cos(i / 7))
        f[y0:y0 + 48, x0:x0 + 48] = tex[0]
        f[y1:y1 + 48, x1:x1 + 48] = tex[1]
        vw.write(f)
    vw.release()
    return fourcc


def log_models(uri: str, classes: int, lstm_hidden: tuple[int, ...], tag: str) -> str:
    """The five models as MLflow runs (stage conventions) and a hybrid run over them; its id."""
    import mlflow
    import mlflow.pytorch

    from hyvid.models.cnn import MotionCNN, SpatialCNN
    from hyvid.models.fusion import RegularizedFusionNet
    from hyvid.models.lstm import StreamLSTM

    tracking.setup(uri, "bench")
    torch.manual_seed(0)
    fd = 1024
    models = {
        R.SPATIAL_CNN: SpatialCNN(classes, feature_dim=fd, pretrained=False),
        R.MOTION_CNN: MotionCNN(classes, stack=DEFAULT_STACK, feature_dim=fd),
        R.SPATIAL_LSTM: StreamLSTM(fd, classes, hidden=lstm_hidden),
        R.MOTION_LSTM: StreamLSTM(fd, classes, hidden=lstm_hidden),
        R.FUSION: RegularizedFusionNet([fd, fd], classes),
    }
    ids = {}
    for name, model in models.items():
        stage = tracking.STAGE_TRAIN_CNN if name in R.CNN_MODELS else tracking.STAGE_TRAIN
        with tracking.start_run(name, stage, 1) as run:
            mlflow.pytorch.log_model(model.eval(), name="model", serialization_format="pickle",
                                     pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"])
            ids[name] = run.info.run_id
    comps = (R.SPATIAL_LSTM, R.MOTION_LSTM, R.FUSION)
    with tracking.start_run(R.HYBRID, tracking.STAGE_HYBRID, 1, tags={"bench": tag}) as run:
        mlflow.log_params({
            "models": ",".join(comps), "multilabel": False,
            **{f"{tracking.WEIGHT_PREFIX}{m}": w for m, w in zip(comps, (0.4, 0.3, 0.3), strict=True)},
            **{f"{tracking.COMPONENT_PREFIX}{m}.run_id": ids[m] for m in comps},
            **{f"{tracking.CNN_PREFIX}{m}.run_id": ids[m] for m in (R.SPATIAL_CNN, R.MOTION_CNN)},
            **{f"{tracking.EXTRACT_PREFIX}{k}": v for k, v in
               {"frames": DEFAULT_POSITIONS, "stack": DEFAULT_STACK, "flow": "dis", "size": DEFAULT_SIZE}.items()},
        })
        mlflow.log_dict({"class_names": [f"class_{i:03d}" for i in range(classes)]}, tracking.CLASSES_ARTIFACT)
        return run.info.run_id


def time_predict(uri: str, run_id: str, videos: list[str], repeats: int) -> dict:
    t = time.perf_counter()
    h = load_hybrid(uri, model_uri=f"runs:/{run_id}")
    load_s = time.perf_counter() - t
    cfg = PredictConfig(tuple(videos[:1]), model_uri=f"runs:/{run_id}", tracking_uri=uri, batch_size=len(videos))
    predict(cfg, loaded=h)  # warm-up: first-call allocations, OpenCV/torch thread pools
    runs = [predict(cfg, loaded=h).timing for _ in range(repeats)]
    keys = [f"{k}{c}_s" for k in ("frames_flow", "cnn", "lstm_fusion", "total") for c in ("", "_cpu")]
    med = {k: statistics.median(r[k] for r in runs) for k in keys}
    batch = predict(PredictConfig(tuple(videos), model_uri=f"runs:/{run_id}", tracking_uri=uri,
                                  batch_size=len(videos)), loaded=h).timing
    return {"load_s": load_s, "single_video_median": med, "single_video_runs": runs,
            "batch": {"videos": len(videos), "total_s": batch["total_s"], "per_video_s": batch["per_video_s"],
                      "frames_flow_s": batch["frames_flow_s"], "cnn_s": batch["cnn_s"],
                      "lstm_fusion_s": batch["lstm_fusion_s"]}}


def main(args: argparse.Namespace) -> dict:
    from hyvid.pipelines.train import DEMO_LSTM_HIDDEN, PAPER_LSTM_HIDDEN

    work = Path(args.workdir or tempfile.mkdtemp(prefix="hyvid_bench_predict_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        videos = []
        for i in range(args.batch):
            path = work / f"clip_{i}.avi"
            codec = write_video(path, args.seconds, args.fps, args.width, args.height, seed=i)
            videos.append(str(path))
        decode = []
        for _ in range(3):
            t = time.perf_counter()
            frames, _ = decode_video(videos[0], DEFAULT_SIZE)
            decode.append(time.perf_counter() - t)
        uri = f"sqlite:///{work}/mlflow.db"
        demo = time_predict(uri, log_models(uri, args.classes, tuple(DEMO_LSTM_HIDDEN), "demo"), videos, args.repeats)
        paper = time_predict(uri, log_models(uri, args.classes, tuple(PAPER_LSTM_HIDDEN), "paper"), videos,
                             max(1, args.repeats // 2))
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    total = demo["single_video_median"]["total_s"]
    result = {
        "claim": f"an {args.seconds:g}-s {args.width}x{args.height} video classified in <= {TARGET_S} s on this CPU "
                 "(model loading excluded)",
        "video": {"seconds": args.seconds, "fps": args.fps, "width": args.width, "height": args.height,
                  "frames": int(round(args.seconds * args.fps)), "codec": codec, "classes": args.classes},
        "extract_settings": {"frames": DEFAULT_POSITIONS, "stack": DEFAULT_STACK, "flow": "dis", "size": DEFAULT_SIZE},
        "lstm_hidden": {"demo": list(DEMO_LSTM_HIDDEN), "paper": list(PAPER_LSTM_HIDDEN)},
        "decode_only_s": statistics.median(decode),
        "demo_lstm": demo,
        "paper_lstm": paper,
        "total_s": total,
        "total_cpu_s": demo["single_video_median"]["total_cpu_s"],
        "target_s": TARGET_S,
        "meets_target": total <= TARGET_S,
        "total_over_decode_only": total / statistics.median(decode),
        "paper_k40_s": PAPER_TIMES_S,
        "paper_total_over_ours": sum(PAPER_TIMES_S.values()) / total,
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "load_avg_1m": os.getloadavg()[0], "python": platform.python_version(),
                    "torch": torch.__version__, "opencv": cv2.__version__},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    m = demo["single_video_median"]
    print(f"predict, one {args.seconds:g}-s {args.width}x{args.height} video (median of {args.repeats}): "
          f"frames+flow {m['frames_flow_s']:.3f} s, CNN {m['cnn_s']:.3f} s, LSTM+fusion {m['lstm_fusion_s']:.3f} s, "
          f"total {total:.3f} s (target <= {TARGET_S} s: {'met' if total <= TARGET_S else 'NOT met'}; "
          f"CPU time {m['total_cpu_s']:.3f} s over all threads); "
          f"decode alone {result['decode_only_s']:.3f} s; loading {demo['load_s']:.2f} s once; "
          f"batch of {args.batch}: {demo['batch']['per_video_s']:.3f} s/video; "
          f"paper LSTM widths: total {paper['single_video_median']['total_s']:.3f} s. "
          f"load avg {result['machine']['load_avg_1m']:.1f}. -> {out}")
    return result


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    main(get_args_parser().parse_args())
