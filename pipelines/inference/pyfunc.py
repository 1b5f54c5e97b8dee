"""The hybrid as one MLflow model: a pyfunc that classifies video files end to end.

A hybrid run holds weights and the run ids of the models it fuses, not one model file. Logging
this small pyfunc in the hybrid run makes it registrable like any MLflow model (`hyvid hybrid
--register NAME`, or the MLflow UI), so users can pin a version (`models:/NAME/3`) or an alias
(`models:/NAME@champion`) and

- classify with `hyvid predict VIDEO... --model models:/NAME@champion`, or
- load it in Python: `mlflow.pyfunc.load_model("models:/NAME/1").predict(["a.avi", "b.avi"])`
  returns one row per file (class, score, top-k, error).

The pyfunc stores only the hybrid run id. On load it fetches the component models (CNNs,
LSTMs, fusion net) from the same tracking server, so they are never copied twice.
"""
from __future__ import annotations

import json
import warnings
from typing import Any

import mlflow
import pandas as pd

from hyvid.pipelines.tracking import MODEL_ARTIFACT

RUN_ID_KEY = "hybrid_run_id"


class HybridVideoClassifier(mlflow.pyfunc.PythonModel):
    """pyfunc: video paths (a list, or a DataFrame with a `path` column) -> one row per video."""

    def load_context(self, context) -> None:
        from hyvid.pipelines.inference.hybrid import load_hybrid

        run_id = context.model_config[RUN_ID_KEY]
        # The components live in the tracking server the caller is using now.
        self._loaded = load_hybrid(mlflow.get_tracking_uri(), model_uri=f"runs:/{run_id}")
        self._top = int(context.model_config.get("top", 5))

    # The hint is what MLflow can pass through unvalidated (a list of paths works as well); a
    # typed signature would make MLflow coerce file paths it cannot check anyway.
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
                         "error": p.error})
        return pd.DataFrame(rows, columns=["path", "class", "score", "top", "error"])


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


def log_hybrid_model(run_id: str, register_as: str | None = None) -> tuple[str, str | None]:
    """Log the pyfunc in the active hybrid run (and register it); returns (model URI, version)."""
    with warnings.catch_warnings():
        # Input is file paths in a list or a DataFrame, checked in predict(); no typed signature.
        warnings.filterwarnings("ignore", message=".*type hints.*")
        info = mlflow.pyfunc.log_model(
            name=MODEL_ARTIFACT,
            python_model=HybridVideoClassifier(),
            model_config={RUN_ID_KEY: run_id, "top": 5},
            # Explicit: inferring requirements would load every component model once more.
            pip_requirements=["hyvid"],
            registered_model_name=register_as,
        )
    version = str(info.registered_model_version) if register_as and info.registered_model_version else None
    return info.model_uri, version
