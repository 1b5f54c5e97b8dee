"""Every model a fit logs (CNNs, LSTMs, fusion nets, every baseline, the SVMs too) as a standalone
MLflow pyfunc: tensors in, class scores out, with nothing of hyvid installed.

`train-cnn` and `train` log each fitted model under its registry name (`runs:/<id>/fusion`) as a
`ComponentClassifier`: the fitted object itself (a pickled torch module, or an SVM in skops
format) as the artifact `model`, hyvid's `models/` package and this module as the model's code,
a tensor signature, an input example, and pinned requirements (mlflow, torch, numpy; the SVMs
add scikit-learn and skops, which MLflow itself depends on). So

    model = mlflow.pyfunc.load_model("runs:/<id>/fusion")         # or a copied folder, models:/NAME@alias
    model.predict({"spatial": spatial_means, "motion": motion_means})   # float32 [B, Ds], [B, Dm] -> [B, C]

What each kind of model takes (`KINDS`), always the way the pipeline fed it:

    frames       spatial_cnn   uint8 RGB frames [N, H, W, 3] as the clips table decodes them -> per-frame scores
    flow_stacks  motion_cnn    uint8 quantized flow stacks [N, 2L, H, W] (128 = no motion)   -> per-stack scores
    sequence     *_lstm        float32 per-frame fc1 features of one stream [B, T, D]        -> per-video scores
    streams      the rest      float32 frame-averaged fc1 features, one input per stream it reads, [B, D_stream]

Scores are what `train` stores in `video_scores` (softmax, per-class sigmoids on multi-label data,
the fusion nets' logistic outputs, the SVMs' decision values), in the order of the model's
`class_names` (its model config and metadata). A CNN's video score is the mean of its rows.

This module is part of every model's code: it imports numpy and MLflow at the top and hyvid's
`models` (through the pickled objects) only, never Ray, Lance or the rest of hyvid.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
import numpy as np

MODEL_ARTIFACT = "model"  # the pyfunc's artifact key: <model folder>/artifacts/<file>
METADATA_KEY = "hyvid"  # the MLmodel metadata entry holding a component's config
TORCH_FORMAT, SKOPS_FORMAT = "torch", "skops"
MODEL_FILES = {TORCH_FORMAT: "model.pt", SKOPS_FORMAT: "model.skops"}
KINDS = ("frames", "flow_stacks", "sequence", "streams")
STREAM_ORDER = ("spatial", "motion")  # models.registry.STREAMS: the order estimators read xs in
SINGLE = "input"  # the name the error messages give an unnamed (single-tensor) input


def shape_text(shape: list[int] | tuple[int, ...], names: tuple[str, ...]) -> str:
    """`[batch, T, 16]`: a shape with its free dimensions named."""
    return "[" + ", ".join(n if d == -1 else str(d) for d, n in zip(shape, names, strict=True)) + "]"


_AXES = {"frames": ("N", "H", "W", "3"), "flow_stacks": ("N", "2L", "H", "W"), "sequence": ("batch", "T", "D"),
         "streams": ("batch", "D")}
_WHAT = {"frames": "RGB frames as the clips table stores them",
         "flow_stacks": "quantized flow stacks as the clips table stores them, 128 = no motion",
         "sequence": "a video's per-frame fc1 features per row",
         "streams": "each video's frame-averaged fc1 features per row"}


def describe(config: dict[str, Any]) -> str:
    """What a component takes, in one line: `fusion takes 'spatial' float32 [batch, 16], ...`."""
    axes = _AXES[config["kind"]]
    parts = [(f"{name!r} " if name else "") + f"{config['dtype']} {shape_text(shape, axes)}"
             for name, shape in config["inputs"].items()]
    return f"{config['model']} takes {' and '.join(parts)} ({_WHAT[config['kind']]})"


def check_inputs(config: dict[str, Any], model_input: Any) -> dict[str, np.ndarray]:
    """The inputs by name ("" for a single unnamed one), or ValueError in one line naming the
    expected shapes: MLflow's signature checks the shapes it can express, this the rest (a
    batch of 0, streams of different batch sizes, non-finite features) and unwrapped calls."""
    expected: dict[str, list[int]] = config["inputs"]
    if isinstance(model_input, dict):
        given = dict(model_input)
    elif "" in expected:
        given = {"": model_input}
    else:
        raise ValueError(f"{describe(config)}; give a dict of arrays {{{', '.join(map(repr, expected))}}}, "
                         f"got {type(model_input).__name__}")
    missing = [n for n in expected if n not in given]
    if missing:
        raise ValueError(f"{describe(config)}; missing {missing}")
    out: dict[str, np.ndarray] = {}
    batch = None
    for name, shape in expected.items():
        x = np.asarray(given[name])
        label = repr(name) if name else SINGLE
        bad = x.ndim != len(shape) or any(d not in (-1, a) for d, a in zip(shape, x.shape, strict=False))
        if bad or x.shape[0] == 0:
            raise ValueError(f"{describe(config)}; got {label} of shape {tuple(x.shape)}")
        if config["dtype"] == "uint8":
            if x.dtype != np.uint8:
                raise ValueError(f"{describe(config)}; got {label} of dtype {x.dtype}")
        else:
            if not np.issubdtype(x.dtype, np.number):
                raise ValueError(f"{describe(config)}; got {label} of dtype {x.dtype}")
            x = x.astype(np.float32, copy=False)
            if not np.isfinite(x).all():
                raise ValueError(f"{describe(config)}; {label} holds NaN or infinite values")
        if batch is not None and x.shape[0] != batch:
            raise ValueError(f"{describe(config)}; the inputs hold {batch} and {x.shape[0]} rows: one row per video "
                             "in every input")
        batch = x.shape[0]
        out[name] = x
    return out


def load_native(path: str | Path, config: dict[str, Any], device: str = "cpu") -> Any:
    """The fitted object in a component's artifact file: a torch module in eval mode, or an SVM."""
    if config["format"] == SKOPS_FORMAT:
        import skops.io

        return skops.io.load(str(path), trusted=list(config.get("trusted", [])))
    import torch

    # Whole pickled modules (architecture + weights), the classes coming from the model's code/.
    return torch.load(str(path), map_location=device, weights_only=False).eval()


def component_scores(config: dict[str, Any], model: Any, inputs: dict[str, np.ndarray]) -> np.ndarray:
    """Class scores [rows, C] of checked inputs, computed as the pipeline computes them."""
    import torch

    kind = config["kind"]
    with torch.inference_mode():
        if kind in ("frames", "flow_stacks"):
            from hyvid.models.cnn import motion_input, spatial_input

            prep = spatial_input if kind == "frames" else motion_input
            _, logits = model.features_and_logits(prep(inputs[""]))
            return np.asarray(model.scores(logits.float()).numpy(), dtype=np.float32)
        if kind == "sequence":
            logits = model.video_logits(torch.from_numpy(inputs[""]), None)
            probs = torch.sigmoid(logits) if config["multilabel"] else torch.softmax(logits, dim=1)
            return np.asarray(probs.numpy(), dtype=np.float32)
        if hasattr(model, "predict_scores"):  # the SVMs and M-DBM take every stream, each reads its own
            return np.asarray(model.predict_scores([inputs.get(s) for s in STREAM_ORDER]), dtype=np.float32)
        xs = [torch.from_numpy(inputs[s]) for s in STREAM_ORDER if s in inputs]
        return np.asarray(model(xs).numpy(), dtype=np.float32)


class ComponentClassifier(mlflow.pyfunc.PythonModel):
    """pyfunc of one fitted model: its inputs (see the module doc) -> class scores [rows, C].

    The config travels in the pickled instance (and in the MLmodel's `metadata`, key `hyvid`),
    not as MLflow's model_config, which MLflow would also log as the fit's run parameters."""

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        self._config = dict(config or {})

    def load_context(self, context) -> None:
        if self._config.get("kind") not in KINDS:
            raise ValueError(f"this model's config names kind {self._config.get('kind')!r}, not one of {KINDS}; "
                             "log it again with this hyvid")
        self._model = load_native(context.artifacts[MODEL_ARTIFACT], self._config)

    # An ndarray hint is one MLflow infers nothing from: inputs are checked against the signature
    # (a dict of them for the stream models).
    def predict(self, context, model_input: np.ndarray, params=None) -> np.ndarray:
        return component_scores(self._config, self._model, check_inputs(self._config, model_input))
