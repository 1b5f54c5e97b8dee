"""`hyvid predict`: classify new video files end to end with the hybrid framework logged in MLflow.

Per batch of videos, the paper's three steps (Sec. 4.2.3, "Efficiency"):

1. frames + flow: decode, sample the positions and stack the optical flows exactly as
   `hyvid extract` did for the training videos (the settings are read back from the hybrid run);
   videos are prepared in parallel threads (OpenCV releases the GIL);
2. CNN features: both stream CNNs over every position of every video of the batch at once;
3. LSTM + fusion: the stream LSTMs over the per-frame feature sequences, the fusion network
   over the frame-averaged features, then the hybrid's linear weights over their scores.

Everything is loaded once, from the hybrid's portable MLflow model: the latest `hybrid` run's,
or `--model` (a copied model folder, `runs:/<id>`, `models:/NAME@alias`; `inference.logged`). It
carries the CNNs, LSTMs and fusion net, the weights, the class names and the extraction settings.
Videos are given as files, folders (walked), manifest CSVs or text lists (`inference.inputs`). A
file that cannot be read gets its own error; the others are still classified.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

from hyvid.cluster.settings import DEFAULT_EXPERIMENT
from hyvid.models.registry import check_split
from hyvid.pipelines.inference import inputs
from hyvid.pipelines.inference.hybrid import STEP_LABELS, LoadedHybrid, VideoPrediction, classify_videos
from hyvid.pipelines.inference.logged import load_hybrid

log = logging.getLogger(__name__)

# The paper's per-video times on one K40 GPU (Sec. 4.2.3), printed beside ours.
PAPER_TIMES_S = {"frames_flow": 3.9, "cnn": 9.0, "lstm_fusion": 2.8}


@dataclass(frozen=True)
class PredictConfig:
    """What to classify and with which logged hybrid."""

    videos: tuple[str, ...]  # files, folders, manifest CSVs or text lists of paths (inference.inputs)
    experiment: str = DEFAULT_EXPERIMENT
    # A hybrid model folder, runs:/<hybrid run id>, models:/<name>/<version|@alias>; None: latest hybrid run
    model_uri: str | None = None
    split: int | None = None  # with model_uri=None: the latest hybrid run of this split
    tracking_uri: str | None = None
    top: int = 5
    batch_size: int = 8  # videos per CNN/LSTM batch
    threads: int | None = None  # frames+flow threads; None: one per CPU core
    allow_failures: bool = False  # exit 0 when some videos failed (still 1 when none was classified)

    def __post_init__(self) -> None:
        object.__setattr__(self, "videos", tuple(os.fspath(v) for v in self.videos))
        if not self.videos:
            raise ValueError("give at least one video file (or a folder or list of them) to classify")
        if self.top < 1:
            raise ValueError(f"top must be >= 1, got {self.top}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.split is not None:
            check_split(self.split)
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")


@dataclass(frozen=True)
class PredictResult:
    predictions: list[VideoPrediction]
    timing: dict[str, float]  # load_s, frames_flow_s, cnn_s, lstm_fusion_s, total_s (wall, all batches)
    run_id: str

    @property
    def n_ok(self) -> int:
        return sum(p.ok for p in self.predictions)

    def exit_code(self, allow_failures: bool = False) -> int:
        """1 when a video failed (with `allow_failures`: only when none was classified), else 0."""
        if not self.n_ok:
            return 1
        return 0 if allow_failures or self.n_ok == len(self.predictions) else 1

    def to_json(self) -> dict[str, Any]:
        return {
            "hybrid_run_id": self.run_id,
            "n_videos": len(self.predictions),
            "n_failed": len(self.predictions) - self.n_ok,
            "videos": [
                {"path": p.path, "ok": p.ok, "error": p.error,
                 "top": [{"class": c, "score": round(s, 6)} for c, s in p.top],
                 "frames_flow_s": round(p.frames_flow_s, 4)}
                for p in self.predictions
            ],
            # Counts as integers, seconds rounded.
            "timing": {k: int(v) if k.startswith("n_") else round(v, 4) for k, v in self.timing.items()},
            "paper_k40_per_video_s": PAPER_TIMES_S,
        }


def predict(cfg: PredictConfig, loaded: LoadedHybrid | None = None) -> PredictResult:
    """Classify `cfg.videos` (in batches); a file that fails gets its own error."""
    paths = inputs.expand_videos(cfg.videos)
    h = loaded or load_hybrid(cfg.tracking_uri, cfg.experiment, cfg.model_uri, cfg.split)
    preds, timing = classify_videos(h, paths, top=cfg.top, batch_size=cfg.batch_size, threads=cfg.threads)
    return PredictResult(preds, timing, h.run_id)


def format_text(res: PredictResult) -> str:
    """The CLI's readable output: each video's top classes, then the timing breakdown."""
    lines = []
    for p in res.predictions:
        if not p.ok:
            lines.append(f"{p.path}: error: {p.error}")
            continue
        lines.append(f"{p.path}:")
        width = max(len(c) for c, _ in p.top)
        lines += [f"  {r}. {c.ljust(width)}  {s:.4f}" for r, (c, s) in enumerate(p.top, 1)]
    t = res.timing
    n_ok = res.n_ok
    lines.append("")
    lines.append(f"timing, {n_ok} of {int(t['n_videos'])} video(s) classified (hybrid run {res.run_id}):")
    if n_ok:
        for key, label in STEP_LABELS.items():
            lines.append(f"  {label:<13} {t[key + '_s']:7.3f} s total, {t[key + '_s'] / n_ok:6.3f} s/video, "
                         f"CPU {t[key + '_cpu_s']:6.3f} s   (paper, K40 GPU: {PAPER_TIMES_S[key]:.1f} s/video)")
        lines.append(f"  {'total':<13} {t['total_s']:7.3f} s total, {t['per_video_s']:6.3f} s/video, "
                     f"CPU {t['total_cpu_s']:6.3f} s   (paper: {sum(PAPER_TIMES_S.values()):.1f} s/video)")
    lines.append(f"  loading the models: {t['load_s']:.2f} s (once per invocation)")
    return "\n".join(lines)


def format_json(res: PredictResult) -> str:
    """Strict JSON: a figure with no value (the per-video time when no video was classified) is null."""
    return inputs.dumps(res.to_json(), indent=2)
