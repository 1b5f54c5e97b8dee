"""A logged hybrid, loaded for classification: its component models from MLflow, and the
end-to-end classification of video files (frames + flow, CNNs, LSTMs + fusion, linear weights).

`hyvid predict` and the hybrid's MLflow pyfunc both classify through here. Everything is loaded
once: the hybrid run (the latest of an experiment, or `runs:/<id>`, or a registered
`models:/NAME/VERSION`) names its component runs (`component.<model>.run_id`), the CNN runs
behind its features (`cnn.<model>.run_id`) and the extraction settings (`extract.*`).
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

from hyvid.cluster.settings import DEFAULT_EXPERIMENT
from hyvid.models import registry as R
from hyvid.pipelines import tracking
from hyvid.pipelines.data.video import VideoError, extract_clip_arrays
from hyvid.pipelines.inference.cnn import load_logged_model, stream_forward

log = logging.getLogger(__name__)

STEP_LABELS = {"frames_flow": "frames+flow", "cnn": "CNN features", "lstm_fusion": "LSTM+fusion"}
# Score sets a hybrid can rebuild from a video (the SVM baselines' kernels need the training set).
SUPPORTED = (R.SPATIAL_CNN, R.MOTION_CNN, R.TWO_STREAM_CNN, R.SPATIAL_LSTM, R.MOTION_LSTM,
             R.FUSION, R.FUSION_NOREG, R.NN_EF, R.NN_LF)
_LSTM_STREAM = {R.SPATIAL_LSTM: 0, R.MOTION_LSTM: 1}  # index into (spatial, motion) features


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


def find_hybrid_run(experiment: str, split: int | None = None):
    """The latest finished hybrid run of the experiment (of one split when given)."""
    import mlflow

    if mlflow.get_experiment_by_name(experiment) is None:
        raise ValueError(f"no MLflow experiment {experiment!r} at {tracking.redact(mlflow.get_tracking_uri())}; "
                         "pass --experiment or --model runs:/<hybrid run id>")
    run = tracking.latest_run(experiment, stage=tracking.STAGE_HYBRID, split=split)
    if run is None:
        raise FileNotFoundError(
            f"no finished hybrid run in experiment {experiment!r}" + (f" for split {split}" if split else "")
            + "; run `hyvid hybrid` first, or pass --model runs:/<hybrid run id>")
    return run


def _latest_cnn_run(experiment_name: str, model: str, split: int | None) -> str | None:
    run = tracking.latest_run(experiment_name, stage=tracking.STAGE_TRAIN_CNN, model=model, split=split)
    return run.info.run_id if run else None


def _extract_settings(run) -> dict[str, Any]:
    p = run.data.params
    missing = [k for k in ("frames", "stack", "flow", "size") if f"{tracking.EXTRACT_PREFIX}{k}" not in p]
    if missing:
        raise ValueError(
            f"hybrid run {run.info.run_id} records no extraction settings "
            f"({', '.join(tracking.EXTRACT_PREFIX + k for k in missing)}); "
            "it predates them: re-run `hyvid hybrid` on the store so predict can prepare videos the same way")
    return {"frames": int(p[f"{tracking.EXTRACT_PREFIX}frames"]), "stack": int(p[f"{tracking.EXTRACT_PREFIX}stack"]),
            "flow": p[f"{tracking.EXTRACT_PREFIX}flow"], "size": int(p[f"{tracking.EXTRACT_PREFIX}size"])}


def load_hybrid(tracking_uri: str | None, experiment: str = DEFAULT_EXPERIMENT, model_uri: str | None = None,
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
        if run.data.tags.get(tracking.TAG_STAGE) != tracking.STAGE_HYBRID:
            raise ValueError(f"--model {model_uri!r} is a {run.data.tags.get(tracking.TAG_STAGE)!r} run, not a "
                             f"hybrid run; list hybrid runs with `hyvid runs --stage hybrid`")
    else:
        run = find_hybrid_run(experiment, split)
    params, run_id = run.data.params, run.info.run_id
    split_tag = run.data.tags.get(tracking.TAG_SPLIT)
    run_split = int(split_tag) if split_tag and split_tag.isdigit() else None

    models = [m for m in params.get("models", "").split(",") if m]
    weights = {m: float(params[f"{tracking.WEIGHT_PREFIX}{m}"]) for m in models}
    unsupported = [m for m in models if m not in SUPPORTED]
    if unsupported:
        raise ValueError(f"hybrid run {run_id} fuses {unsupported}, which predict cannot rebuild from a video "
                         f"(supported: {list(SUPPORTED)}); run `hyvid hybrid --models` without them")
    components = {}
    for m in models:
        if m in R.CNN_MODELS:
            continue  # CNN scores come straight from the CNNs below
        rid = params.get(f"{tracking.COMPONENT_PREFIX}{m}.run_id", "")
        if not rid or "," in rid:
            raise ValueError(f"hybrid run {run_id}: component {m} has run id {rid!r}; expected one run")
        components[m] = load_logged_model(rid, m)

    cnn_ids = {}
    for m in (R.SPATIAL_CNN, R.MOTION_CNN):
        rid = (params.get(f"{tracking.CNN_PREFIX}{m}.run_id")
               or _latest_cnn_run(client.get_experiment(run.info.experiment_id).name, m, run_split))
        if not rid:
            raise FileNotFoundError(f"hybrid run {run_id} names no {m} run and the experiment has no finished "
                                    f"`hyvid train-cnn` run of {m}; train the CNNs first")
        cnn_ids[m] = rid
    # channels_last: oneDNN's faster convolution layout on CPU (motion CNN ~1.5x); same numbers.
    spatial, motion = (load_logged_model(cnn_ids[m], m).to(memory_format=torch.channels_last)
                       for m in (R.SPATIAL_CNN, R.MOTION_CNN))

    try:
        class_names = list(mlflow.artifacts.load_dict(f"runs:/{run_id}/{tracking.CLASSES_ARTIFACT}")["class_names"])
    except Exception:  # noqa: BLE001 - older runs have no classes artifact: numbered classes
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
            frames = np.concatenate([clip.frames for _, _, clip, _ in ok])
            flows = np.concatenate([clip.flow_stacks for _, _, clip, _ in ok])
            with _torch_threads(1):
                (sf, sp), (mf, mp) = pool.map(stream_forward, (h.spatial_cnn, h.motion_cnn), (frames, flows),
                                              (spatial_input, motion_input))
            bounds = np.cumsum([0] + [len(c.frames) for _, _, c, _ in ok])
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


