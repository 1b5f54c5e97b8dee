"""`hyvid predict`: classify new video files end to end with the hybrid framework logged in MLflow.

Per batch of videos, the paper's three steps (Sec. 4.2.3, "Efficiency"):

1. frames + flow: decode, sample the positions and stack the optical flows exactly as
   `hyvid extract` did for the training videos (the settings are read back from the hybrid run);
   videos are prepared in parallel threads (OpenCV releases the GIL);
2. CNN features: both stream CNNs over every position of every video of the batch at once;
3. LSTM + fusion: the stream LSTMs over the per-frame feature sequences, the fusion network
   over the frame-averaged features, then the hybrid's linear weights over their scores.

Everything is loaded once: the latest `hybrid` run of the experiment (or `--model runs:/<id>`)
names its component runs (`component.<model>.run_id`), the CNN runs behind its features
(`cnn.<model>.run_id`) and the extraction settings (`extract.*`). A file that cannot be read
gets its own error; the others are still classified.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from hyvid.models import registry as R
from hyvid.pipelines import tracking
from hyvid.pipelines.hybrid import CLASSES_ARTIFACT, CNN_PREFIX, EXTRACT_PREFIX, STAGE as HYBRID_STAGE
from hyvid.pipelines.data.video import VideoError, extract_clip_arrays

log = logging.getLogger(__name__)

# The paper's per-video times on one K40 GPU (Sec. 4.2.3), printed beside ours.
PAPER_TIMES_S = {"frames_flow": 3.9, "cnn": 9.0, "lstm_fusion": 2.8}
STEP_LABELS = {"frames_flow": "frames+flow", "cnn": "CNN features", "lstm_fusion": "LSTM+fusion"}
# Score sets predict can rebuild from a video (the SVM baselines' kernels need the training set).
SUPPORTED = (R.SPATIAL_CNN, R.MOTION_CNN, R.TWO_STREAM_CNN, R.SPATIAL_LSTM, R.MOTION_LSTM,
             R.FUSION, R.FUSION_NOREG, R.NN_EF, R.NN_LF)
_LSTM_STREAM = {R.SPATIAL_LSTM: 0, R.MOTION_LSTM: 1}  # index into (spatial, motion) features
_TRAIN_CNN_STAGE = "train-cnn"


@dataclass(frozen=True)
class PredictConfig:
    """What to classify and with which logged hybrid."""

    videos: tuple[str, ...]
    experiment: str = "hyvid"
    model_uri: str | None = None  # runs:/<hybrid run id>, models:/<name>/<version|@alias>; None: latest hybrid run
    split: int | None = None  # with model_uri=None: the latest hybrid run of this split
    tracking_uri: str | None = None
    top: int = 5
    batch_size: int = 8  # videos per CNN/LSTM batch
    threads: int | None = None  # frames+flow threads; None: one per CPU core

    def __post_init__(self) -> None:
        object.__setattr__(self, "videos", tuple(os.fspath(v) for v in self.videos))
        if not self.videos:
            raise ValueError("give at least one video file to classify")
        if self.top < 1:
            raise ValueError(f"top must be >= 1, got {self.top}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.split is not None and self.split not in (1, 2, 3):
            raise ValueError(f"split must be 1, 2 or 3, got {self.split}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")


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


@dataclass(frozen=True)
class PredictResult:
    predictions: list[VideoPrediction]
    timing: dict[str, float]  # load_s, frames_flow_s, cnn_s, lstm_fusion_s, total_s (wall, all batches)
    run_id: str

    @property
    def n_ok(self) -> int:
        return sum(p.ok for p in self.predictions)

    def exit_code(self) -> int:
        """0 when at least one video was classified (failures are reported per file)."""
        return 0 if self.n_ok else 1

    def to_json(self) -> dict[str, Any]:
        return {
            "hybrid_run_id": self.run_id,
            "videos": [
                {"path": p.path, "ok": p.ok, "error": p.error,
                 "top": [{"class": c, "score": round(s, 6)} for c, s in p.top],
                 "frames_flow_s": round(p.frames_flow_s, 4)}
                for p in self.predictions
            ],
            "timing": {k: round(v, 4) for k, v in self.timing.items()},
            "paper_k40_per_video_s": PAPER_TIMES_S,
        }


# -- loading ------------------------------------------------------------------------------------
def _run_id_of(model_uri: str, client=None) -> str:
    """The hybrid run id behind `runs:/<id>[/...]`, a bare run id, or a registered hybrid model
    `models:/<name>/<version>` / `models:/<name>@<alias>` (its version's source run)."""
    uri = model_uri.strip()
    if uri.startswith("runs:/"):
        parts = [p for p in uri[len("runs:/"):].split("/") if p]
        if parts:
            return parts[0]
    elif uri.startswith("models:/") and client is not None:
        ref = uri[len("models:/"):].strip("/")
        try:
            if "@" in ref:
                name, alias = ref.split("@", 1)
                mv = client.get_model_version_by_alias(name, alias)
            else:
                name, _, version = ref.rpartition("/")
                if not name or not version.isdigit():
                    raise ValueError("expected models:/<name>/<version> or models:/<name>@<alias>")
                mv = client.get_model_version(name, version)
        except Exception as e:  # MLflow raises RestException for unknown names/versions
            raise FileNotFoundError(f"--model {model_uri!r}: no such registered model version ({e}); "
                                    "register one with `hyvid hybrid --register NAME`") from e
        if not mv.run_id:
            raise ValueError(f"--model {model_uri!r}: version {mv.version} of {mv.name!r} has no source run; "
                             "register the model a hybrid run logged (`hyvid hybrid --register NAME`)")
        return mv.run_id
    elif "/" not in uri and ":" not in uri and uri:
        return uri
    raise ValueError(f"--model {model_uri!r}: expected runs:/<hybrid run id>, models:/<name>/<version> or "
                     "models:/<name>@<alias> (see `hyvid runs --stage hybrid`)")


def find_hybrid_run(client, experiment: str, split: int | None = None):
    """The latest finished hybrid run of the experiment (of one split when given)."""
    import mlflow

    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise ValueError(f"no MLflow experiment {experiment!r} at {tracking.redact(mlflow.get_tracking_uri())}; "
                         "pass --experiment or --model runs:/<hybrid run id>")
    # Only registry constants and an int enter the filter string.
    flt = f"tags.`{tracking.TAG_STAGE}` = '{HYBRID_STAGE}' AND attributes.status = 'FINISHED'"
    if split is not None:
        flt += f" AND tags.`{tracking.TAG_SPLIT}` = '{int(split)}'"
    runs = client.search_runs([exp.experiment_id], flt, order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        raise FileNotFoundError(
            f"no finished hybrid run in experiment {experiment!r}" + (f" for split {split}" if split else "")
            + "; run `hyvid hybrid` first, or pass --model runs:/<hybrid run id>")
    return runs[0]


def _latest_cnn_run(client, experiment_id: str, model: str, split: int | None) -> str | None:
    flt = (f"tags.`{tracking.TAG_MODEL}` = '{model}' AND tags.`{tracking.TAG_STAGE}` = '{_TRAIN_CNN_STAGE}' "
           "AND attributes.status = 'FINISHED'")
    if split is not None:
        flt += f" AND tags.`{tracking.TAG_SPLIT}` = '{int(split)}'"
    runs = client.search_runs([experiment_id], flt, order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0].info.run_id if runs else None


def _load_torch(run_id: str, what: str) -> torch.nn.Module:
    import mlflow.pytorch

    try:
        model = mlflow.pytorch.load_model(f"runs:/{run_id}/model", map_location="cpu")
    except Exception as e:  # MLflow raises several types for a missing run or artifact
        raise FileNotFoundError(f"cannot load the {what} model of run {run_id} (runs:/{run_id}/model): {e}") from e
    return model.eval()


def _extract_settings(run) -> dict[str, Any]:
    p = run.data.params
    missing = [k for k in ("frames", "stack", "flow", "size") if f"{EXTRACT_PREFIX}{k}" not in p]
    if missing:
        raise ValueError(
            f"hybrid run {run.info.run_id} records no extraction settings ({', '.join(EXTRACT_PREFIX + k for k in missing)}); "
            "it predates them: re-run `hyvid hybrid` on the store so predict can prepare videos the same way")
    return {"frames": int(p[f"{EXTRACT_PREFIX}frames"]), "stack": int(p[f"{EXTRACT_PREFIX}stack"]),
            "flow": p[f"{EXTRACT_PREFIX}flow"], "size": int(p[f"{EXTRACT_PREFIX}size"])}


def load_hybrid(tracking_uri: str | None, experiment: str = "hyvid", model_uri: str | None = None,
                split: int | None = None) -> LoadedHybrid:
    """Load a hybrid run's weights and every model it needs from MLflow (once per invocation)."""
    import mlflow
    from mlflow.tracking import MlflowClient

    t0 = time.perf_counter()
    # Six small local artifact copies would each draw a progress bar over the CLI's output.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    mlflow.set_tracking_uri(tracking.resolve_tracking_uri(tracking_uri))
    client = MlflowClient()
    if model_uri:
        run_id = _run_id_of(model_uri, client)
        try:
            run = client.get_run(run_id)
        except Exception as e:
            raise FileNotFoundError(f"--model {model_uri!r}: no such MLflow run at "
                                    f"{tracking.redact(mlflow.get_tracking_uri())} ({e})") from e
        if run.data.tags.get(tracking.TAG_STAGE) != HYBRID_STAGE:
            raise ValueError(f"--model {model_uri!r} is a {run.data.tags.get(tracking.TAG_STAGE)!r} run, not a "
                             f"hybrid run; list hybrid runs with `hyvid runs --stage hybrid`")
    else:
        run = find_hybrid_run(client, experiment, split)
    params, run_id = run.data.params, run.info.run_id
    split_tag = run.data.tags.get(tracking.TAG_SPLIT)
    run_split = int(split_tag) if split_tag and split_tag.isdigit() else None

    models = [m for m in params.get("models", "").split(",") if m]
    weights = {m: float(params[f"weight.{m}"]) for m in models}
    unsupported = [m for m in models if m not in SUPPORTED]
    if unsupported:
        raise ValueError(f"hybrid run {run_id} fuses {unsupported}, which predict cannot rebuild from a video "
                         f"(supported: {list(SUPPORTED)}); run `hyvid hybrid --models` without them")
    components = {}
    for m in models:
        if m in R.CNN_MODELS:
            continue  # CNN scores come straight from the CNNs below
        rid = params.get(f"component.{m}.run_id", "")
        if not rid or "," in rid:
            raise ValueError(f"hybrid run {run_id}: component {m} has run id {rid!r}; expected one run")
        components[m] = _load_torch(rid, m)

    cnn_ids = {}
    for m in (R.SPATIAL_CNN, R.MOTION_CNN):
        rid = params.get(f"{CNN_PREFIX}{m}.run_id") or _latest_cnn_run(client, run.info.experiment_id, m, run_split)
        if not rid:
            raise FileNotFoundError(f"hybrid run {run_id} names no {m} run and the experiment has no finished "
                                    f"`hyvid train-cnn` run of {m}; train the CNNs first")
        cnn_ids[m] = rid
    # channels_last: oneDNN's faster convolution layout on CPU (motion CNN ~1.5x); same numbers.
    spatial, motion = (_load_torch(cnn_ids[m], m).to(memory_format=torch.channels_last)
                       for m in (R.SPATIAL_CNN, R.MOTION_CNN))

    try:
        class_names = list(mlflow.artifacts.load_dict(f"runs:/{run_id}/{CLASSES_ARTIFACT}")["class_names"])
    except Exception:  # older runs: numbered classes
        class_names = []
    n_classes = getattr(spatial, "num_classes", None) or len(class_names)
    if len(class_names) != n_classes:
        class_names = [f"class {i}" for i in range(n_classes)]
    loaded = LoadedHybrid(
        run_id=run_id, split=run_split, weights=weights, components=components, spatial_cnn=spatial,
        motion_cnn=motion, class_names=class_names, extract=_extract_settings(run),
        multilabel=params.get("multilabel", "False") == "True", cnn_run_ids=cnn_ids)
    loaded.load_s = time.perf_counter() - t0
    log.info("loaded hybrid run %s (%s) in %.2f s", run_id, ", ".join(f"{m}={w:g}" for m, w in weights.items()),
             loaded.load_s)
    return loaded


# -- the three steps ----------------------------------------------------------------------------
def _prepare(path: str, ex: dict[str, Any]):
    t = time.perf_counter()
    clip = extract_clip_arrays(path, ex["frames"], ex["stack"], ex["size"], ex["flow"])
    return clip, time.perf_counter() - t


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


def _stream_forward(model: torch.nn.Module, data: np.ndarray, prep, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """One stream CNN over P positions -> (fc1 features [P, D], softmax scores [P, C]).

    The per-stream half of pipelines.features.cnn_forward (same inputs, same outputs; the test
    checks predict against cnn_forward). predict runs the two streams in two threads, one
    intra-op thread each: on 2 cores that keeps both busy without OpenMP's barrier spinning,
    which made a 2-thread CNN step 2x slower than 1 thread on a loaded machine.
    """
    feats, probs = [], []
    with torch.inference_mode():  # thread-local: entered in the worker thread itself
        for i in range(0, len(data), batch_size):
            f, logits = model.features_and_logits(prep(data[i:i + batch_size]))
            feats.append(f.float().numpy())
            probs.append(logits.float().softmax(1).numpy())
    return np.concatenate(feats), np.concatenate(probs)


def predict(cfg: PredictConfig, loaded: LoadedHybrid | None = None) -> PredictResult:
    """Classify `cfg.videos` (in batches); a file that fails gets its own error."""
    from hyvid.models.cnn import motion_input, spatial_input

    h = loaded or load_hybrid(cfg.tracking_uri, cfg.experiment, cfg.model_uri, cfg.split)
    threads = max(2, cfg.threads or min(os.cpu_count() or 1, cfg.batch_size))  # >= 2: the two CNN streams
    # Wall seconds per step, and CPU seconds (all threads): the CPU figure does not depend on
    # what else the machine is running, so it shows what an idle 2-core box would take.
    timing = {"load_s": h.load_s, **{f"{k}_s": 0.0 for k in STEP_LABELS}, **{f"{k}_cpu_s": 0.0 for k in STEP_LABELS}}
    results: dict[int, VideoPrediction] = {}
    t_all, c_all = time.perf_counter(), time.process_time()
    paths = list(cfg.videos)
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for start in range(0, len(paths), cfg.batch_size):
            batch = list(enumerate(paths[start:start + cfg.batch_size], start))
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
            frames = np.concatenate([clip.frames for _, _, clip, _ in ok])
            flows = np.concatenate([clip.flow_stacks for _, _, clip, _ in ok])
            with _torch_threads(1):
                (sf, sp), (mf, mp) = pool.map(_stream_forward, (h.spatial_cnn, h.motion_cnn), (frames, flows),
                                              (spatial_input, motion_input))
            bounds = np.cumsum([0] + [len(c.frames) for _, _, c, _ in ok])
            cut = [(a, b) for a, b in zip(bounds[:-1], bounds[1:])]
            timing["cnn_s"] += time.perf_counter() - t
            timing["cnn_cpu_s"] += time.process_time() - c

            t, c = time.perf_counter(), time.process_time()
            with _torch_threads(1):
                scores = hybrid_scores(h, [sf[a:b] for a, b in cut], [mf[a:b] for a, b in cut],
                                       [sp[a:b] for a, b in cut], [mp[a:b] for a, b in cut])
            timing["lstm_fusion_s"] += time.perf_counter() - t
            timing["lstm_fusion_cpu_s"] += time.process_time() - c
            k = min(cfg.top, scores.shape[1])
            for (i, p, _, secs), s in zip(ok, scores):
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
    return json.dumps(res.to_json(), indent=2)
