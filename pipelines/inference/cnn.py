"""The one CNN forward pass of hyvid: stored (or freshly extracted) clips -> per-frame features
and scores. `features` runs it over the store, `predict` and `evaluate` over new videos.

Also loading logged CNNs from MLflow, with a per-process cache: a logged model never changes,
and loading one (MLflow lookup, artifact copy, unpickling EfficientNet) costs seconds.
"""
from __future__ import annotations

import logging
from typing import Callable

import numpy as np
import torch
from torch import nn

from hyvid.models.cnn import TEST_VIEWS, motion_input, spatial_input, view_crops
from hyvid.models.registry import MOTION_CNN, SPATIAL_CNN
from hyvid.pipelines.precision import autocast, channels_last, resolve_amp, to_device

log = logging.getLogger(__name__)

DEFAULT_BATCH = 64  # clips per forward pass: large enough to keep oneDNN busy, small enough for memory
# Test crops per clip (models.cnn.TEST_VIEWS): one centre crop by default, the cheapest view with the training
# geometry; two-stream practice tests on 10 (`--paper`), at 10x the forward passes.
DEFAULT_TEST_VIEWS = 1


def check_test_views(views: int) -> int:
    """`views` if it is one of models.cnn.TEST_VIEWS, else a ValueError naming it and the choices."""
    if views not in TEST_VIEWS:
        raise ValueError(f"test_views must be one of {', '.join(map(str, TEST_VIEWS))}, got {views!r}")
    return views


def device_of(model: nn.Module) -> torch.device:
    """The device a model's parameters are on (CPU for a parameterless module)."""
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def stream_forward(model: nn.Module, data: np.ndarray, prep: Callable[[np.ndarray], torch.Tensor],
                   batch_size: int = DEFAULT_BATCH, views: int = 1, amp: str = "off",
                   kind: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One stream CNN over P positions -> (fc1 features [P, D], class scores [P, C]), float32.

    Scores are softmax probabilities, or per-class sigmoids for a CNN trained on multi-label data.

    `data` is uint8 as stored (frames [P, H, W, 3] or flow stacks [P, 2L, H, W]) and `prep` the
    stream's input transform. Each position is seen through `views` fixed crops at the model's
    training crop size (`input_crop`; `models.cnn.view_crops`: centre, + corners, + flips) and its
    features and scores are the means over them; a model trained on whole frames (or logged before
    crops were recorded) sees whole frames. `amp` is `precision.resolve_amp`'s mode on the model's
    device. Runs in eval mode and inference mode on the model's device; inference mode is entered
    here because it is thread-local (predict runs streams in threads).
    """
    model.eval()
    device = device_of(model)
    kind = kind or ("frames" if prep is spatial_input else "flow")
    crop = int(getattr(model, "input_crop", 0) or 0)
    dtype = resolve_amp(amp, device)
    layout = _is_channels_last(model)
    feats, probs = [], []
    with torch.inference_mode():
        for i in range(0, len(data), batch_size):
            chunk = np.asarray(data[i:i + batch_size])
            crops = view_crops(chunk, (crop, crop), kind, views)  # [V, n, ...]
            x = to_device(prep(crops.reshape(-1, *crops.shape[2:])), device)
            if layout:
                x = channels_last(x)
            with autocast(device, dtype):
                f, logits = model.features_and_logits(x)
            # Softmax, or a sigmoid per class for a CNN trained on multi-label data (StreamCNN.scores).
            scores = getattr(model, "scores", None)
            p = scores(logits.float()) if scores is not None else logits.float().softmax(1)
            n = len(chunk)
            feats.append(f.float().reshape(len(crops), n, -1).mean(0).cpu().numpy())
            probs.append(p.reshape(len(crops), n, -1).mean(0).cpu().numpy())
    if not feats:
        raise ValueError("stream_forward got no positions; a video needs at least one sampled position")
    return np.concatenate(feats), np.concatenate(probs)


def _is_channels_last(model: nn.Module) -> bool:
    for p in model.parameters():
        if p.dim() == 4:
            return p.is_contiguous(memory_format=torch.channels_last)
    return False


def cnn_forward(
    spatial_model: nn.Module,
    motion_model: nn.Module,
    frames: np.ndarray,
    flow_stacks: np.ndarray,
    batch_size: int = DEFAULT_BATCH,
    views: int = 1,
    amp: str = "off",
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Both CNNs over P positions: frames uint8 [P, H, W, 3], flow stacks uint8 [P, 2L, H, W].

    Returns float32 (spatial_feats [P, Ds], motion_feats [P, Dm], spatial_probs [P, C],
    motion_probs [P, C]); features are fc1 outputs, probs softmax scores, each the mean over `views`
    test crops (`stream_forward`), run under the autocast of `amp`.
    """
    if len(frames) != len(flow_stacks):
        raise ValueError(f"got {len(frames)} frames but {len(flow_stacks)} flow stacks; one of each per position")
    sf, sp = stream_forward(spatial_model, frames, spatial_input, batch_size, views, amp, "frames")
    mf, mp = stream_forward(motion_model, flow_stacks, motion_input, batch_size, views, amp, "flow")
    return sf, mf, sp, mp


def load_logged_model(run_id: str, name: str, device: torch.device | str = "cpu") -> nn.Module:
    """The torch model logged in an MLflow run under `name` (its registry name, e.g. `spatial_cnn`),
    in eval mode; runs logged before models had names hold it as `model`, and before models were
    standalone pyfuncs (`inference.components`) as MLflow pytorch models. FileNotFoundError names the run."""
    from hyvid.pipelines.inference.packaging import load_fitted
    from hyvid.pipelines.tracking import MODEL_ARTIFACT, model_uri

    errors = []
    for artifact in dict.fromkeys((name, MODEL_ARTIFACT)):
        try:
            model = load_fitted(model_uri(run_id, artifact), str(device))
        except Exception as e:  # noqa: BLE001 - MLflow raises several types for a missing run or artifact
            errors.append(f"{model_uri(run_id, artifact)}: {e}")
            continue
        return model.to(device).eval()
    raise FileNotFoundError(f"cannot load the {name} model of run {run_id} ({'; '.join(errors)})")


# The CNN pair last loaded in this process (a Ray worker keeps it between tasks).
_LOADED: dict[tuple, tuple[nn.Module, nn.Module]] = {}


def load_cnn_pair(tracking_uri: str, spatial_run_id: str, motion_run_id: str,
                  device: torch.device | str = "cpu", channels_last: bool = True) -> tuple[nn.Module, nn.Module]:
    """The spatial and motion CNNs of two train-cnn runs, cached per process.

    channels_last: NHWC, the faster convolution layout of oneDNN on CPU (the motion CNN ~1.5x) and of
    cuDNN's tensor cores on CUDA; same numbers.
    """
    import mlflow

    key = (tracking_uri, spatial_run_id, motion_run_id, str(device), channels_last)
    if key not in _LOADED:
        mlflow.set_tracking_uri(tracking_uri)
        pair = tuple(load_logged_model(r, name, device)
                     for r, name in ((spatial_run_id, SPATIAL_CNN), (motion_run_id, MOTION_CNN)))
        if channels_last:
            pair = tuple(m.to(memory_format=torch.channels_last) for m in pair)
        _LOADED.clear()
        _LOADED[key] = pair  # type: ignore[assignment]
    return _LOADED[key]
