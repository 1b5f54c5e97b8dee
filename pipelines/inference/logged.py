"""Hybrids logged in MLflow: find one, load it, and log one as a portable model.

`load_hybrid` takes what a user gives `--model`:
- nothing: the latest finished hybrid run of the experiment (of one split when given);
- a folder: a copied hybrid model (or its bundle), read with no tracking server at all;
- `runs:/<hybrid run id>` or a bare run id: the model that run logged;
- any other MLflow model URI: `runs:/<id>/hybrid`, `models:/NAME/VERSION`, `models:/NAME@alias`,
  `s3://...`: downloaded, then read like a folder.

A hybrid run logged before models were portable has no model to download; it is rebuilt from the
runs it names (`component.<model>.run_id`, `cnn.<model>.run_id`) and its `extract.*` params.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from hyvid.cluster.settings import DEFAULT_EXPERIMENT
from hyvid.models import registry as R
from hyvid.pipelines import tracking
from hyvid.pipelines.inference.bundle import BUNDLE_ARTIFACT, find_bundle, load_bundle, save_bundle
from hyvid.pipelines.inference.cnn import load_logged_model
from hyvid.pipelines.inference.hybrid import EXTRACT_KEYS, SUPPORTED, LoadedHybrid

log = logging.getLogger(__name__)

HYBRID_MODEL = R.HYBRID  # the name the hybrid run logs its model under: runs:/<id>/hybrid


def _quiet_downloads() -> None:
    # Each artifact copy would draw a progress bar over the CLI's output.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def _run_id_of(model_uri: str) -> str | None:
    """The run id of `runs:/<id>` (no path) or of a bare run id; None for any other URI."""
    uri = model_uri.strip()
    if uri.startswith("runs:/"):
        parts = [p for p in uri[len("runs:/"):].split("/") if p]
        return parts[0] if len(parts) == 1 else None
    if uri and "/" not in uri and ":" not in uri and not os.path.exists(uri):
        return uri
    return None


def find_hybrid_run(experiment: str, split: int | None = None):
    """The latest finished hybrid run of the experiment (of one split when given)."""
    import mlflow

    tracking.check_store_exists(mlflow.get_tracking_uri())
    if mlflow.get_experiment_by_name(experiment) is None:
        raise ValueError(f"no MLflow experiment {experiment!r} at {tracking.redact(mlflow.get_tracking_uri())}; "
                         "pass --experiment, or --model with a hybrid model folder or URI")
    run = tracking.latest_run(experiment, stage=tracking.STAGE_HYBRID, split=split)
    if run is None:
        raise FileNotFoundError(
            f"no finished hybrid run in experiment {experiment!r}" + (f" for split {split}" if split else "")
            + "; run `hyvid hybrid` first, or pass --model runs:/<hybrid run id>")
    return run


def load_hybrid(tracking_uri: str | None = None, experiment: str = DEFAULT_EXPERIMENT, model_uri: str | None = None,
                split: int | None = None) -> LoadedHybrid:
    """Load a hybrid and every model it runs, once per invocation (see the module docstring)."""
    t0 = time.perf_counter()
    if model_uri and os.path.exists(model_uri):
        bundle = find_bundle(model_uri)
        if bundle is None:
            raise FileNotFoundError(f"--model {model_uri!r} is not a hybrid model folder (no hybrid.json in it or "
                                    f"in its artifacts/{BUNDLE_ARTIFACT}/); copy the `hybrid` model of a hybrid run")
        return load_bundle(bundle)

    import mlflow
    from mlflow.tracking import MlflowClient

    _quiet_downloads()
    mlflow.set_tracking_uri(tracking.resolve_tracking_uri(tracking_uri))
    if model_uri is None:
        h = _from_run(find_hybrid_run(experiment, split))
    elif (run_id := _run_id_of(model_uri)) is not None:
        tracking.check_store_exists(mlflow.get_tracking_uri())
        try:
            run = MlflowClient().get_run(run_id)
        except Exception as e:  # noqa: BLE001 - MLflow raises RestException / MlflowException
            raise FileNotFoundError(f"--model {model_uri!r}: no such MLflow run at "
                                    f"{tracking.redact(mlflow.get_tracking_uri())} ({e})") from e
        if run.data.tags.get(tracking.TAG_STAGE) != tracking.STAGE_HYBRID:
            raise ValueError(f"--model {model_uri!r} is a {run.data.tags.get(tracking.TAG_STAGE)!r} run, not a "
                             "hybrid run; list hybrid runs with `hyvid runs --stage hybrid`")
        h = _from_run(run)
    else:
        h = _from_uri(model_uri)
    h.load_s = time.perf_counter() - t0
    return h


def _download(uri: str, what: str) -> tuple[str, str]:
    """(temp folder, downloaded path) of an MLflow model URI; FileNotFoundError names the URI."""
    import mlflow

    tmp = tempfile.mkdtemp(prefix="hyvid_model_")
    try:
        return tmp, mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp)
    except Exception as e:  # noqa: BLE001 - unknown names/versions/runs raise several MLflow types
        shutil.rmtree(tmp, ignore_errors=True)
        raise FileNotFoundError(f"{what}: cannot download {uri} ({tracking.redact(str(e)).splitlines()[0]})") from e


def _from_uri(model_uri: str) -> LoadedHybrid:
    hint = "; register one with `hyvid hybrid --register NAME`" if model_uri.startswith("models:/") else ""
    try:
        tmp, path = _download(model_uri, f"--model {model_uri!r}")
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{e}{hint}") from e
    try:
        bundle = find_bundle(path)
        if bundle is not None:
            return load_bundle(bundle)
        legacy = _legacy_run_id(path)
        if legacy is None:
            raise ValueError(f"--model {model_uri!r} is not a hyvid hybrid model; give a hybrid run's `hybrid` "
                             "model (see `hyvid runs --stage hybrid`)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    from mlflow.tracking import MlflowClient

    return load_hybrid_run(MlflowClient().get_run(legacy))


def _legacy_run_id(model_dir: str) -> str | None:
    """The hybrid run id an early (pointer-only) hybrid pyfunc recorded in its model_config."""
    from mlflow.models import Model

    try:
        conf = Model.load(model_dir).flavors.get("python_function", {}).get("config") or {}
    except Exception:  # noqa: BLE001 - not an MLflow model folder at all
        return None
    run_id = conf.get("hybrid_run_id")
    return str(run_id) if run_id else None


def _from_run(run) -> LoadedHybrid:
    """The model a hybrid run logged; a run from before portable models is rebuilt from its params."""
    run_id = run.info.run_id
    try:
        tmp, path = _download(tracking.model_uri(run_id, HYBRID_MODEL), f"hybrid run {run_id}")
    except FileNotFoundError:
        log.info("hybrid run %s logged no portable model; loading its components' runs", run_id)
        return load_hybrid_run(run)
    try:
        bundle = find_bundle(path)
        if bundle is not None:
            return load_bundle(bundle)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return load_hybrid_run(run)


# -- a hybrid from its run's params ------------------------------------------------------------
def _latest_cnn_run(experiment_name: str, model: str, split: int | None) -> str | None:
    run = tracking.latest_run(experiment_name, stage=tracking.STAGE_TRAIN_CNN, model=model, split=split)
    return run.info.run_id if run else None


def _extract_settings(run) -> dict[str, Any]:
    p = run.data.params
    missing = [k for k in EXTRACT_KEYS if f"{tracking.EXTRACT_PREFIX}{k}" not in p]
    if missing:
        raise ValueError(
            f"hybrid run {run.info.run_id} records no extraction settings "
            f"({', '.join(tracking.EXTRACT_PREFIX + k for k in missing)}); "
            "it predates them: re-run `hyvid hybrid` on the store so predict can prepare videos the same way")
    def param(k: str) -> str:
        return p[f"{tracking.EXTRACT_PREFIX}{k}"]

    out: dict[str, Any] = {"frames": int(param("frames")), "stack": int(param("stack")), "flow": param("flow"),
                           "size": int(param("size"))}
    # Bounds recorded only when extract ran with non-default ones (ExtractConfig.settings).
    if f"{tracking.EXTRACT_PREFIX}max_long_side" in p:
        out["max_long_side"] = int(param("max_long_side"))
    if f"{tracking.EXTRACT_PREFIX}max_aspect" in p:
        out["max_aspect"] = float(param("max_aspect"))
    return out


def load_hybrid_run(run) -> LoadedHybrid:
    """A hybrid rebuilt from its run: its weights and extraction params, its component runs' models
    and the CNN runs behind its features, all from the current tracking server."""
    import mlflow
    from mlflow.tracking import MlflowClient

    t0 = time.perf_counter()
    _quiet_downloads()
    client = MlflowClient()
    params, run_id = run.data.params, run.info.run_id
    split_tag = run.data.tags.get(tracking.TAG_SPLIT)
    run_split = int(split_tag) if split_tag and split_tag.isdigit() else None

    models = [m for m in params.get("models", "").split(",") if m]
    weights = {m: float(params[f"{tracking.WEIGHT_PREFIX}{m}"]) for m in models}
    unsupported = [m for m in models if m not in SUPPORTED]
    if unsupported:
        raise ValueError(f"hybrid run {run_id} fuses {unsupported}, which predict cannot rebuild from a video "
                         f"(supported: {list(SUPPORTED)}); run `hyvid hybrid --models` without them")
    components, component_ids = {}, {}
    for m in models:
        if m in R.CNN_MODELS:
            continue  # CNN scores come straight from the CNNs below
        rid = params.get(f"{tracking.COMPONENT_PREFIX}{m}.run_id", "")
        if not rid or "," in rid:
            raise ValueError(f"hybrid run {run_id}: component {m} has run id {rid!r}; expected one run")
        components[m], component_ids[m] = load_logged_model(rid, m), rid

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
        multilabel=params.get("multilabel", "False") == "True", cnn_run_ids=cnn_ids, component_run_ids=component_ids)
    loaded.load_s = time.perf_counter() - t0
    log.info("loaded hybrid run %s (%s) in %.2f s", run_id, ", ".join(f"{m}={w:g}" for m, w in weights.items()),
             loaded.load_s)
    return loaded


# -- logging the portable model ----------------------------------------------------------------
def _example_video(folder: Path, extract: dict[str, Any]) -> bytes:
    """A tiny video for the model's input example: a bright square sliding right, long enough for
    the hybrid's sampling (its positions plus one flow stack)."""
    import numpy as np

    from hyvid.pipelines.data.synth.writer import write_video

    n = int(extract["frames"]) + int(extract["stack"]) + 1
    frames = np.full((n, 48, 64, 3), 40, dtype=np.uint8)
    for t in range(n):
        x = (2 * t) % 48
        frames[t, 16:32, x:x + 16] = 220
    path = folder / "example.avi"
    write_video(path, frames, 25.0)
    return path.read_bytes()


def log_hybrid_model(run_id: str) -> str:
    """Log the hybrid of the active run as one portable MLflow model named `hybrid`; returns its
    model URI (`inference.registration` registers it)."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from hyvid.pipelines.inference import packaging
    from hyvid.pipelines.inference.pyfunc import REQUIREMENTS, HybridVideoClassifier, input_example, signature

    h = load_hybrid_run(MlflowClient().get_run(run_id))
    with tempfile.TemporaryDirectory(prefix="hyvid_hybrid_model_") as tmp:
        root = Path(tmp)
        bundle = save_bundle(h, root / BUNDLE_ARTIFACT)
        example = input_example(_example_video(root, h.extract))
        code = [packaging.code_copy(root / "code"), *packaging.bundled_code(root / "bundled")]
        with packaging.kept_sys_path(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*CloudPickle.*")
            info = mlflow.pyfunc.log_model(
                name=HYBRID_MODEL,
                python_model=HybridVideoClassifier(),
                artifacts={BUNDLE_ARTIFACT: bundle},
                code_paths=code,
                signature=signature(),
                input_example=example,
                # Explicit and pinned: inferring them would load every component once more in a subprocess.
                pip_requirements=packaging.pip_requirements(REQUIREMENTS),
                metadata={"class_names": h.class_names, "extract": h.extract},
            )
    return info.model_uri
