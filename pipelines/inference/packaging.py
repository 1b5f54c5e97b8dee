"""Logging hyvid's models as MLflow models that stand on their own: the code they carry, their
pinned requirements, and a fitted model's signature and input example (`log_component`).

One home for what every logged model needs, the hybrid's pyfunc (`inference.logged`) and the
component models (`inference.components`) alike.
"""
from __future__ import annotations

import contextlib
import importlib.metadata
import shutil
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from hyvid.pipelines.inference import components as C

# What a component needs beyond its own code (MLflow depends on scikit-learn and skops itself).
COMPONENT_REQUIREMENTS = ("mlflow", "torch", "numpy")
ESTIMATOR_REQUIREMENTS = ("scikit-learn", "skops")
# Third-party code a pickled model references that is no dependency of MLflow's: the spatial CNN's
# EfficientNet-Lite backbone (pure Python on torch), carried in the model's code/ folder.
BUNDLED_PACKAGES = ("efficientnet_lite_pytorch",)
# The spatial and motion CNNs pool adaptively, so any frame size works; the examples are small.
EXAMPLE_SIDE = 32
_HYVID_PACKAGES = ("cluster", "models", "pipelines", "store")


def pip_requirements(dists: Sequence[str]) -> list[str]:
    """`dists` pinned to the versions installed here (local build tags such as +cpu dropped, so pip
    can resolve them from an index)."""
    return [f"{d}=={importlib.metadata.version(d).split('+')[0]}" for d in dists]


def code_copy(dst: Path, packages: Sequence[str] = _HYVID_PACKAGES, modules: Sequence[str] = ()) -> str:
    """hyvid's `packages` (whole) and `modules` (dotted names, with their parents' __init__ files)
    copied under `dst/hyvid/`, for a model's `code/` folder: the model then needs only its pip
    requirements, not a hyvid install. Returns the `hyvid` folder."""
    root = dst / "hyvid"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for pkg in packages:
        shutil.copytree(_package_dir(pkg), root / pkg, ignore=ignore)
    for mod in modules:
        parts = mod.removeprefix("hyvid.").split(".")
        for depth in range(1, len(parts)):  # each parent package's __init__.py
            init = _package_dir(parts[0]).joinpath(*parts[1:depth], "__init__.py")
            target = root.joinpath(*parts[:depth], "__init__.py")
            target.parent.mkdir(parents=True, exist_ok=True)
            if init.is_file() and not target.exists():
                shutil.copy2(init, target)
        src = _package_dir(parts[0]).joinpath(*parts[1:]).with_suffix(".py")
        shutil.copy2(src, root.joinpath(*parts).with_suffix(".py"))
    return str(root)


def _package_dir(name: str) -> Path:
    """The folder of hyvid.<name> (the editable install maps each to a folder of the checkout)."""
    import importlib

    return Path(importlib.import_module(f"hyvid.{name}").__file__).resolve().parent


def bundled_code(dst: Path, names: Sequence[str] = BUNDLED_PACKAGES) -> list[str]:
    """Copies of the third-party packages `names` under `dst`, for a model's code/ folder."""
    import importlib

    out = []
    for name in names:
        src = Path(importlib.import_module(name).__file__).resolve().parent
        shutil.copytree(src, dst / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        out.append(str(dst / name))
    return out


@contextlib.contextmanager
def kept_sys_path() -> Iterator[None]:
    """Undo what validating a model's input example does to sys.path: MLflow loads the logged
    model, which prepends its (temporary) code/ folder, in a process that goes on fitting."""
    saved = list(sys.path)
    try:
        yield
    finally:
        sys.path[:] = saved


@contextlib.contextmanager
def _by_value(module: Any) -> Iterator[None]:
    """Pickle `module`'s classes by value while a model is logged: the component's python_model.pkl then
    holds its pyfunc class itself, so loading it imports nothing of hyvid.pipelines. Several models (a
    component, then the hybrid) load in one process that way: the first one's partial copy of a
    hyvid package would otherwise shadow the next one's modules."""
    import cloudpickle

    cloudpickle.register_pickle_by_value(module)
    try:
        yield
    finally:
        cloudpickle.unregister_pickle_by_value(module)


def component_config(model: str, kind: str, inputs: dict[str, list[int]], class_names: Sequence[str],
                     multilabel: bool, fmt: str = C.TORCH_FORMAT, trusted: Sequence[str] = ()) -> dict[str, Any]:
    """The model config a component's pyfunc reads (see `inference.components`)."""
    if kind not in C.KINDS:
        raise ValueError(f"kind must be one of {C.KINDS}, got {kind!r}")
    return {"model": model, "kind": kind, "inputs": {k: [int(d) for d in v] for k, v in inputs.items()},
            "dtype": "uint8" if kind in ("frames", "flow_stacks") else "float32", "class_names": list(class_names),
            "multilabel": bool(multilabel), "format": fmt, "trusted": list(trusted)}


def cnn_config(model: str, stream: str, stack: int, class_names: Sequence[str], multilabel: bool) -> dict[str, Any]:
    """A stream CNN's component config: frames [N, H, W, 3] or flow stacks [N, 2L, H, W], uint8."""
    if stream == "spatial":
        return component_config(model, "frames", {"": [-1, -1, -1, 3]}, class_names, multilabel)
    return component_config(model, "flow_stacks", {"": [-1, 2 * int(stack), -1, -1]}, class_names, multilabel)


def cnn_example(config: dict[str, Any], seed: int = 0) -> np.ndarray:
    """One small uint8 input of a CNN component (any size works: the nets pool adaptively)."""
    rng = np.random.default_rng(seed)
    shape = [EXAMPLE_SIDE if d == -1 else d for d in config["inputs"][""]]
    shape[0] = 1
    return rng.integers(0, 256, size=shape, dtype=np.uint8)


def signature(config: dict[str, Any]):
    """The tensor signature of a component: its inputs as `config` gives them, scores [rows, C] out."""
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    dtype = np.dtype(config["dtype"])
    inputs = Schema([TensorSpec(dtype, tuple(shape), name or None) for name, shape in config["inputs"].items()])
    outputs = Schema([TensorSpec(np.dtype("float32"), (-1, len(config["class_names"])))])
    return ModelSignature(inputs=inputs, outputs=outputs)


def log_component(fitted: Any, config: dict[str, Any], input_example: Any, name: str | None = None,
                  registered_model_name: str | None = None):
    """Log a fitted model in the active run as a standalone pyfunc (`inference.components`) named
    `name` (default its registry name); returns MLflow's ModelInfo."""
    import mlflow

    with tempfile.TemporaryDirectory(prefix="hyvid_component_") as tmp:
        root = Path(tmp)
        path = root / C.MODEL_FILES[config["format"]]
        if config["format"] == C.SKOPS_FORMAT:
            import skops.io

            skops.io.dump(fitted, str(path))
            dists = (*COMPONENT_REQUIREMENTS, *ESTIMATOR_REQUIREMENTS)
        else:
            import torch

            # contiguous_format: the file does not depend on the layout this process chose for speed.
            torch.save(fitted.to(memory_format=torch.contiguous_format).eval(), path)
            dists = COMPONENT_REQUIREMENTS
        # hyvid's models/ for the pickled modules; the pyfunc class itself is pickled by value (below).
        code = [code_copy(root / "code", packages=("models",))]
        if config["kind"] == "frames":
            code += bundled_code(root / "bundled")
        with kept_sys_path(), _by_value(C), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*CloudPickle.*")
            return mlflow.pyfunc.log_model(
                name=name or config["model"], python_model=C.ComponentClassifier(config),
                artifacts={C.MODEL_ARTIFACT: str(path)}, code_paths=code, signature=signature(config),
                input_example=input_example, pip_requirements=pip_requirements(dists),
                metadata={C.METADATA_KEY: config, "inputs": C.describe(config)},
                registered_model_name=registered_model_name)


def log_cnn(model: Any, name: str, stream: str, stack: int, class_names: Sequence[str], multilabel: bool):
    """Log a fitted stream CNN in the active run as a standalone pyfunc under `name`."""
    config = cnn_config(name, stream, stack, class_names, multilabel)
    return log_component(model, config, cnn_example(config))


def read_component(model_dir: str | Path, device: str = "cpu") -> Any | None:
    """The fitted object of a downloaded component model folder (a torch module in eval mode, or an
    SVM), or None when the folder holds no hyvid component."""
    import yaml

    root = Path(model_dir)
    try:
        mlmodel = yaml.safe_load((root / "MLmodel").read_text())
    except (OSError, yaml.YAMLError):
        return None
    conf = (mlmodel.get("flavors") or {}).get("python_function") or {}
    config = (mlmodel.get("metadata") or {}).get(C.METADATA_KEY) or {}
    artifacts = conf.get("artifacts") or {}
    if config.get("kind") not in C.KINDS or C.MODEL_ARTIFACT not in artifacts:
        return None
    return C.load_native(root / artifacts[C.MODEL_ARTIFACT]["path"], config, device)


def load_fitted(model_uri: str, device: str = "cpu") -> Any:
    """The fitted object (torch module in eval mode, or SVM) of a logged model URI or folder: a
    standalone component, or a model logged before components were (MLflow's pytorch or sklearn
    flavor). Raises what MLflow raises for a missing run or artifact."""
    import os

    import mlflow

    if os.path.isdir(model_uri):
        return _read_any(model_uri, device)
    with tempfile.TemporaryDirectory(prefix="hyvid_model_") as tmp:
        return _read_any(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=tmp), device)


def _read_any(local: str, device: str) -> Any:
    fitted = read_component(local, device)
    if fitted is not None:
        return fitted
    import yaml

    flavors = yaml.safe_load((Path(local) / "MLmodel").read_text()).get("flavors") or {}
    if "pytorch" in flavors:
        import mlflow.pytorch

        return mlflow.pytorch.load_model(local, map_location=device).eval()
    if "sklearn" in flavors:
        import mlflow.sklearn

        return mlflow.sklearn.load_model(local)
    raise ValueError(f"{local} is neither a hyvid component model nor an MLflow pytorch or sklearn model "
                     f"(flavors: {sorted(flavors)})")
