"""The hybrid framework, loaded for classification: the end-to-end classification of video files
(frames + flow, CNNs, LSTMs + fusion, linear weights) with every model in memory.

`hyvid predict`, `hyvid evaluate` and the hybrid's MLflow pyfunc all classify through here, with
the same decode and flow code as `extract` (`data.video.extract_clip_arrays`, frames stored as
JPEG as the clips table holds them) and the same CNN forward pass as `features`
(`inference.cnn.stream_forward`), so what a model sees at serving time is what it was trained on.

Nothing here talks to MLflow: `inference.bundle` reads a hybrid from a model folder and
`inference.logged` from a tracking server.
"""
from __future__ import annotations

import contextlib
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from hyvid.models import registry as R
from hyvid.pipelines.data.video import DEFAULT_MAX_ASPECT, DEFAULT_MAX_LONG_SIDE, VideoError, extract_clip_arrays
from hyvid.pipelines.inference.cnn import stream_forward
from hyvid.store.clips import decode_frame, encode_frame

log = logging.getLogger(__name__)

STEP_LABELS = {"frames_flow": "frames+flow", "cnn": "CNN features", "lstm_fusion": "LSTM+fusion"}
# Score sets a hybrid can rebuild from a video (the SVM baselines' kernels need the training set).
SUPPORTED = (R.SPATIAL_CNN, R.MOTION_CNN, R.TWO_STREAM_CNN, R.SPATIAL_LSTM, R.MOTION_LSTM,
             R.FUSION, R.FUSION_NOREG, R.NN_EF, R.NN_LF)
_LSTM_STREAM = {R.SPATIAL_LSTM: 0, R.MOTION_LSTM: 1}  # index into (spatial, motion) features
EXTRACT_KEYS = ("frames", "stack", "flow", "size")  # the extraction settings a hybrid must record


@dataclass
class LoadedHybrid:
    """Every model of one hybrid run, in memory, plus how to prepare a video for them."""

    run_id: str
    split: int | None
    weights: dict[str, float]
    components: dict[str, torch.nn.Module]  # LSTM / fusion / NN models by name (CNN scores need none)
    spatial_cnn: torch.nn.Module
    motion_cnn: torch.nn.Module
    class_names: list[str]
    extract: dict[str, Any]  # frames, stack, flow, size
    multilabel: bool
    cnn_run_ids: dict[str, str]
    component_run_ids: dict[str, str] = field(default_factory=dict)
    load_s: float = 0.0


@dataclass(frozen=True)
class VideoPrediction:
    """One file's result: the top classes, or the error that stopped it."""

    path: str
    top: list[tuple[str, float]] = field(default_factory=list)
    scores: np.ndarray | None = None  # the hybrid's class scores [C]
    error: str | None = None
    frames_flow_s: float = 0.0  # this video's own decode + flow time (threads overlap them)

    @property
    def ok(self) -> bool:
        return self.error is None


# -- the three steps ----------------------------------------------------------------------------
def prepare_video(path: str, ex: dict[str, Any]):
    """A video's sampled frames and flow stacks exactly as `extract` stores them and `features`
    reads them: same sampling, flow and bounds, and the frames through the clips table's JPEG
    codec (the CNNs were trained and their features computed on decoded JPEGs)."""
    clip = extract_clip_arrays(path, ex["frames"], ex["stack"], ex["size"], ex["flow"],
                               ex.get("max_long_side", DEFAULT_MAX_LONG_SIDE), ex.get("max_aspect", DEFAULT_MAX_ASPECT))
    frames = np.stack([decode_frame(encode_frame(f)) for f in clip.frames])
    return clip, frames


def _prepare(path: str, ex: dict[str, Any]):
    t = time.perf_counter()
    clip, frames = prepare_video(path, ex)
    return (clip, frames), time.perf_counter() - t


def _probs(logits: torch.Tensor, multilabel: bool) -> torch.Tensor:
    """Scores as `hyvid train` stored them: softmax (sigmoid for multi-label) of the logits."""
    return torch.sigmoid(logits) if multilabel else torch.softmax(logits, dim=1)


@torch.inference_mode()
def hybrid_scores(h: LoadedHybrid, spatial_feats: Sequence[np.ndarray], motion_feats: Sequence[np.ndarray],
                  spatial_probs: Sequence[np.ndarray], motion_probs: Sequence[np.ndarray]) -> np.ndarray:
    """The hybrid's class scores [B, C] from each video's per-position CNN outputs."""
    from hyvid.models.cnn import two_stream_scores

    feats = [spatial_feats, motion_feats]
    lengths = torch.tensor([len(f) for f in spatial_feats], dtype=torch.long)
    t_max = int(lengths.max())

    def padded(seqs: Sequence[np.ndarray]) -> torch.Tensor:
        out = torch.zeros(len(seqs), t_max, seqs[0].shape[1])
        for i, s in enumerate(seqs):
            out[i, : len(s)] = torch.from_numpy(s)
        return out

    means = [torch.from_numpy(np.stack([f.mean(0) for f in fs])) for fs in feats]
    sp = np.stack([p.mean(0) for p in spatial_probs])
    mp = np.stack([p.mean(0) for p in motion_probs])
    total = np.zeros_like(sp, dtype=np.float64)
    for m, w in h.weights.items():
        if m == R.SPATIAL_CNN:
            s = sp
        elif m == R.MOTION_CNN:
            s = mp
        elif m == R.TWO_STREAM_CNN:
            s = two_stream_scores(sp, mp)
        elif m in _LSTM_STREAM:
            model = h.components[m]
            s = _probs(model.video_logits(padded(feats[_LSTM_STREAM[m]]), lengths), h.multilabel).numpy()
        elif m in (R.FUSION, R.FUSION_NOREG):
            s = h.components[m](means).numpy()  # per-class logistic outputs, stored as they are
        else:  # NN-EF / NN-LF: forward already returns softmax (sigmoid) scores, as `train` stored them
            s = h.components[m](means).numpy()
        total += w * np.asarray(s, dtype=np.float64)
    return total


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """Run a block on n intra-op threads: the LSTMs step through 25 small matmuls at batch size
    ~1, where a second thread only adds synchronisation (measured 60x slower on a busy 2-core box)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)




def classify_videos(h: LoadedHybrid, paths: Sequence[str], top: int = 5, batch_size: int = 8,
                    threads: int | None = None) -> tuple[list[VideoPrediction], dict[str, float]]:
    """Classify video files with a loaded hybrid, in batches: (one prediction per path, timing).

    A file that fails gets its own error. The two CNN streams run in two threads, one intra-op
    thread each: on 2 cores that keeps both busy without OpenMP's barrier spinning, which made a
    2-thread CNN step 2x slower than 1 thread on a loaded machine.
    """
    from hyvid.models.cnn import motion_input, spatial_input

    threads = max(2, threads or min(os.cpu_count() or 1, batch_size))  # >= 2: the two CNN streams
    # Wall seconds per step, and CPU seconds (all threads): the CPU figure does not depend on
    # what else the machine is running, so it shows what an idle 2-core box would take.
    timing = {"load_s": h.load_s, **{f"{k}_s": 0.0 for k in STEP_LABELS}, **{f"{k}_cpu_s": 0.0 for k in STEP_LABELS}}
    results: dict[int, VideoPrediction] = {}
    t_all, c_all = time.perf_counter(), time.process_time()
    paths = list(paths)
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for start in range(0, len(paths), batch_size):
            batch = list(enumerate(paths[start:start + batch_size], start))
            t, c = time.perf_counter(), time.process_time()
            futures = [(i, p, pool.submit(_prepare, p, h.extract)) for i, p in batch]
            ok = []
            for i, p, fut in futures:
                try:
                    clip, secs = fut.result()
                    ok.append((i, p, clip, secs))
                except VideoError as e:
                    results[i] = VideoPrediction(p, error=str(e))
                except Exception as e:  # a decoder crash on one file must not sink the batch
                    log.debug("predict: %s failed", p, exc_info=True)
                    results[i] = VideoPrediction(p, error=f"{p}: {type(e).__name__}: {e}")
            timing["frames_flow_s"] += time.perf_counter() - t
            timing["frames_flow_cpu_s"] += time.process_time() - c
            if not ok:
                continue

            t, c = time.perf_counter(), time.process_time()
            frames = np.concatenate([fr for _, _, (_, fr), _ in ok])
            flows = np.concatenate([clip.flow_stacks for _, _, (clip, _), _ in ok])
            with _torch_threads(1):
                (sf, sp), (mf, mp) = pool.map(stream_forward, (h.spatial_cnn, h.motion_cnn), (frames, flows),
                                              (spatial_input, motion_input))
            bounds = np.cumsum([0] + [len(fr) for _, _, (_, fr), _ in ok])
            cut = list(pairwise(bounds))
            timing["cnn_s"] += time.perf_counter() - t
            timing["cnn_cpu_s"] += time.process_time() - c

            t, c = time.perf_counter(), time.process_time()
            with _torch_threads(1):
                scores = hybrid_scores(h, [sf[a:b] for a, b in cut], [mf[a:b] for a, b in cut],
                                       [sp[a:b] for a, b in cut], [mp[a:b] for a, b in cut])
            timing["lstm_fusion_s"] += time.perf_counter() - t
            timing["lstm_fusion_cpu_s"] += time.process_time() - c
            k = min(top, scores.shape[1])
            for (i, p, _, secs), s in zip(ok, scores, strict=True):
                order = np.argsort(-s, kind="stable")[:k]
                results[i] = VideoPrediction(p, [(h.class_names[c], float(s[c])) for c in order], s.astype(np.float32),
                                             frames_flow_s=secs)
    timing["total_s"] = time.perf_counter() - t_all
    timing["total_cpu_s"] = time.process_time() - c_all
    preds = [results[i] for i in range(len(paths))]
    n_ok = sum(p.ok for p in preds)
    timing["per_video_s"] = timing["total_s"] / n_ok if n_ok else float("nan")
    timing["n_videos"] = float(len(paths))
    timing["n_failed"] = float(len(paths) - n_ok)
    return preds, timing
