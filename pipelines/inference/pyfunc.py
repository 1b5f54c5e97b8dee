"""The hybrid as one portable MLflow model: a pyfunc that classifies video files end to end.

`hyvid hybrid` logs it in the hybrid run under the name `hybrid`. The model folder carries
everything (`inference.bundle`): both CNNs, the LSTMs and the fusion network, the linear
weights, the class names and the extraction settings, plus hyvid's own code (`code/`), a
signature and pinned pip requirements. A copy of the folder needs no tracking server:

    model = mlflow.pyfunc.load_model("path/to/hybrid")   # or runs:/<id>/hybrid, models:/NAME@alias
    model.predict(["a.avi", "b.avi"])                    # one row per file
    model.predict(pd.DataFrame({"path": [...]}), params={"top": 3})

Each row: path, class (the top class), score, top (JSON list of {class, score}), scores (JSON
list of every class's score, in `class_names` order) and error (None, or why the file failed).
"""
from __future__ import annotations

import importlib.metadata
import json
from typing import Any

import mlflow
import pandas as pd

from hyvid.pipelines.inference.bundle import BUNDLE_ARTIFACT

OUTPUT_COLUMNS = ("path", "class", "score", "top", "scores", "error")
DEFAULT_TOP = 5
# The distributions the pyfunc imports when it loads and predicts (hyvid's own code travels in the
# model folder): torch for the models, OpenCV for decoding and flow, pyarrow for the store's codec
# constants, efficientnet-lite for the spatial CNN's backbone, scikit-learn for NN-EF/NN-LF's module.
REQUIREMENTS = ("mlflow", "torch", "numpy", "pandas", "opencv-contrib-python-headless", "pyarrow",
                "efficientnet-lite-pytorch", "scikit-learn", "PyYAML")


def signature():
    """Video paths in (one string column), one row of OUTPUT_COLUMNS out; `top` as a parameter.

    The input column has no name so that MLflow accepts a plain list of paths, a single path, or a
    DataFrame / dict with a `path` column alike (a named column refuses lists)."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    out = Schema([ColSpec("string", "path"), ColSpec("string", "class", required=False),
                  ColSpec("double", "score", required=False), ColSpec("string", "top"),
                  ColSpec("string", "scores", required=False), ColSpec("string", "error", required=False)])
    return ModelSignature(inputs=Schema([ColSpec("string")]), outputs=out,
                          params=ParamSchema([ParamSpec("top", "long", DEFAULT_TOP)]))


def pip_requirements() -> list[str]:
    """REQUIREMENTS pinned to the versions installed here (local build tags such as +cpu dropped,
    so pip can resolve them from an index)."""
    return [f"{d}=={importlib.metadata.version(d).split('+')[0]}" for d in REQUIREMENTS]


class HybridVideoClassifier(mlflow.pyfunc.PythonModel):
    """pyfunc: video paths (a list, or a DataFrame with a `path` column) -> one row per video."""

    def load_context(self, context) -> None:
        from hyvid.pipelines.inference.bundle import load_bundle

        folder = (context.artifacts or {}).get(BUNDLE_ARTIFACT)
        if not folder:
            raise ValueError("this hybrid model carries no models (it predates portable hybrids and points to "
                             "runs on a tracking server); re-run `hyvid hybrid` to log a self-contained one")
        self._loaded = load_bundle(folder)
        self._top = int((context.model_config or {}).get("top", DEFAULT_TOP))

    # A DataFrame hint is one MLflow infers nothing from: inputs are checked against the signature.
    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        from hyvid.pipelines.inference.hybrid import classify_videos

        paths = _paths(model_input)
        if not paths:
            raise ValueError("give at least one video file to classify")
        top = int((params or {}).get("top", self._top))
        if top < 1:
            raise ValueError(f"top must be >= 1, got {top}")
        predictions, _ = classify_videos(self._loaded, paths, top=top)
        rows = []
        for p in predictions:
            best = p.top[0] if p.top else (None, None)
            rows.append({"path": p.path, "class": best[0], "score": best[1],
                         "top": json.dumps([{"class": c, "score": round(s, 6)} for c, s in p.top]),
                         "scores": None if p.scores is None else json.dumps([round(float(v), 6) for v in p.scores]),
                         "error": p.error})
        return pd.DataFrame(rows, columns=list(OUTPUT_COLUMNS))


def _paths(model_input: Any) -> list[str]:
    if isinstance(model_input, pd.DataFrame):
        if "path" in model_input.columns:
            return [str(v) for v in model_input["path"]]
        if model_input.shape[1] == 1:
            return [str(v) for v in model_input.iloc[:, 0]]
        raise ValueError(f"give video paths as a list or a DataFrame with a 'path' column; got columns "
                         f"{list(model_input.columns)}")
    if isinstance(model_input, str):
        return [model_input]
    return [str(v) for v in model_input]
