"""The hybrid as one portable MLflow model: a pyfunc that classifies video files end to end.

`hyvid hybrid` logs it in the hybrid run under the name `hybrid`. The model folder carries
everything (`inference.bundle`): both CNNs, the LSTMs and the fusion network, the linear
weights, the class names and the extraction settings, plus hyvid's own code (`code/`), a
signature, an input example (a tiny generated video) and pinned pip requirements. A copy of
the folder needs no tracking server:

    model = mlflow.pyfunc.load_model("path/to/hybrid")   # or runs:/<id>/hybrid, models:/NAME@alias
    model.predict(["a.avi", "b.avi"])                    # paths: one row per file
    model.predict(pd.DataFrame({"video": [base64.b64encode(open("a.avi", "rb").read()).decode()]}))
    model.predict(pd.DataFrame({"path": [...]}), params={"top": 3})

Inputs: paths on the model's machine (a list, a string, or a `path` column), or the files
themselves: base64 text in a column named `video` (what JSON carries: a served model takes
`{"dataframe_records": [{"video": "<base64>"}]}`), or bytes in any column. Each row of the
output: path (None for file contents), class (the top class), score, top (a list of
{class, score}), scores (every class's score, in `class_names` order) and error (None, or why
the input failed). Served, that is plain JSON: {"predictions": [{"class": ..., "top": [...]}]}.
"""
from __future__ import annotations

import base64
import binascii
import os
import tempfile
from typing import Any

import mlflow
import pandas as pd

from hyvid.pipelines.inference.bundle import BUNDLE_ARTIFACT

OUTPUT_COLUMNS = ("path", "class", "score", "top", "scores", "error")
VIDEO_COLUMN = "video"  # the input column of base64-encoded video files (bytes are taken in any column)
PATH_COLUMN = "path"
DEFAULT_TOP = 5
# The distributions the pyfunc imports when it loads and predicts (hyvid's own code and the spatial
# CNN's EfficientNet-Lite code travel in the model folder): torch for the models, OpenCV for decoding
# and flow, pyarrow for the store's codec constants, scikit-learn for NN-EF/NN-LF's module.
REQUIREMENTS = ("mlflow", "torch", "numpy", "pandas", "opencv-contrib-python-headless", "pyarrow",
                "scikit-learn", "PyYAML")
# Container magic numbers: the suffix a decoded video's temporary file gets (FFmpeg probes the
# content, but some demuxers also go by the name).
_SUFFIXES = ((b"RIFF", ".avi"), (b"\x1aE\xdf\xa3", ".mkv"), (b"OggS", ".ogv"), (b"FLV", ".flv"))


def signature():
    """Video paths or base64 files in (one string column), one row of OUTPUT_COLUMNS out; `top` as a parameter.

    The input column has no name so that MLflow accepts a plain list of paths, a single path, or a
    DataFrame / dict with a `path` or `video` column alike (a named column refuses lists)."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema
    from mlflow.types.schema import Array, Object, Property

    top = Array(Object([Property("class", "string"), Property("score", "double")]))
    out = Schema([ColSpec("string", "path", required=False), ColSpec("string", "class", required=False),
                  ColSpec("double", "score", required=False), ColSpec(top, "top"),
                  ColSpec(Array("double"), "scores", required=False), ColSpec("string", "error", required=False)])
    return ModelSignature(inputs=Schema([ColSpec("string")]), outputs=out,
                          params=ParamSchema([ParamSpec("top", "long", DEFAULT_TOP)]))


def input_example(video_bytes: bytes) -> pd.DataFrame:
    """The model's input example: one video file, base64 in the `video` column (as JSON sends it)."""
    return pd.DataFrame({VIDEO_COLUMN: [base64.b64encode(video_bytes).decode("ascii")]})


class HybridVideoClassifier(mlflow.pyfunc.PythonModel):
    """pyfunc: video paths or files (see the module doc) -> one row per video."""

    def __init__(self, top: int = DEFAULT_TOP) -> None:
        self._top = int(top)

    def load_context(self, context) -> None:
        from hyvid.pipelines.inference.bundle import load_bundle

        folder = (context.artifacts or {}).get(BUNDLE_ARTIFACT)
        if not folder:
            raise ValueError("this hybrid model carries no models (it predates portable hybrids and points to "
                             "runs on a tracking server); re-run `hyvid hybrid` to log a self-contained one")
        self._loaded = load_bundle(folder)
        # Models logged before the default moved onto the instance kept it in their model_config.
        self._top = int((context.model_config or {}).get("top", getattr(self, "_top", DEFAULT_TOP)))

    # A DataFrame hint is one MLflow infers nothing from: inputs are checked against the signature.
    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        from hyvid.pipelines.inference.hybrid import classify_videos

        items = _items(model_input)
        if not items:
            raise ValueError("give at least one video: a path, or a file's bytes (base64 in a 'video' column)")
        top = int((params or {}).get("top", self._top))
        if top < 1:
            raise ValueError(f"top must be >= 1, got {top}")
        with tempfile.TemporaryDirectory(prefix="hyvid_predict_") as tmp:
            paths, names, errors = _materialize(items, tmp)
            todo = [i for i, p in enumerate(paths) if p is not None]
            predictions, _ = classify_videos(self._loaded, [paths[i] for i in todo], top=top)
        rows: list[dict[str, Any]] = [{"path": names[i], "class": None, "score": None, "top": [], "scores": None,
                                       "error": errors[i]} for i in range(len(items))]
        for i, p in zip(todo, predictions, strict=True):
            best = p.top[0] if p.top else (None, None)
            error = p.error.replace(paths[i], names[i] or f"video {i}") if p.error and paths[i] else p.error
            rows[i].update({"class": best[0], "score": best[1],
                            "top": [{"class": c, "score": round(float(s), 6)} for c, s in p.top],
                            "scores": None if p.scores is None else [round(float(v), 6) for v in p.scores],
                            "error": error})
        # object columns: a missing value stays None (JSON null), where pandas' string dtype would make it NaN.
        return pd.DataFrame(rows, columns=list(OUTPUT_COLUMNS), dtype=object)


def _items(model_input: Any) -> list[tuple[str, Any]]:
    """(kind, value) per input row: kind "path", "base64" or "bytes"."""
    if isinstance(model_input, pd.DataFrame):
        if PATH_COLUMN in model_input.columns:
            col, values = PATH_COLUMN, model_input[PATH_COLUMN]
        elif VIDEO_COLUMN in model_input.columns:
            col, values = VIDEO_COLUMN, model_input[VIDEO_COLUMN]
        elif model_input.shape[1] == 1:
            col, values = PATH_COLUMN, model_input.iloc[:, 0]
        else:
            raise ValueError(f"give videos as a list of paths, or a DataFrame with a '{PATH_COLUMN}' column (paths) "
                             f"or a '{VIDEO_COLUMN}' column (base64 files); got columns {list(model_input.columns)}")
        values = list(values)
    elif isinstance(model_input, (str, bytes)):
        col, values = PATH_COLUMN, [model_input]
    else:
        col, values = PATH_COLUMN, list(model_input)
    out: list[tuple[str, Any]] = []
    for v in values:
        if isinstance(v, (list, tuple)):  # {"path": [a, b]} arrives as one row holding a list
            out += [("path", str(x)) for x in v]
        elif isinstance(v, (bytes, bytearray)):
            out.append(("bytes", bytes(v)))
        else:
            out.append(("base64" if col == VIDEO_COLUMN else "path", str(v)))
    return out


def _materialize(items: list[tuple[str, Any]], folder: str) -> tuple[list[str | None], list[str | None],
                                                                     list[str | None]]:
    """(a path to classify or None, the row's `path` output, an error) per input: file contents
    are written to temporary files in `folder` (OpenCV decodes files, not buffers)."""
    paths: list[str | None] = []
    names: list[str | None] = []
    errors: list[str | None] = []
    for i, (kind, value) in enumerate(items):
        if kind == "path":
            paths.append(value)
            names.append(value)
            errors.append(None)
            continue
        data = value
        if kind == "base64":
            try:
                data = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                paths.append(None)
                names.append(None)
                errors.append(f"video {i}: the '{VIDEO_COLUMN}' column holds base64-encoded video files, and this "
                              f"value is not base64; give paths in a '{PATH_COLUMN}' column")
                continue
        suffix = next((s for magic, s in _SUFFIXES if data.startswith(magic)),
                      ".mp4" if data[4:8] == b"ftyp" else ".video")
        path = os.path.join(folder, f"video_{i}{suffix}")
        with open(path, "wb") as f:
            f.write(data)
        paths.append(path)
        names.append(None)
        errors.append(None)
    return paths, names, errors
