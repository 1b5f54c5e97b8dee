"""A hybrid as one self-contained folder: every model it runs and everything it needs to know.

    hybrid.json          weights, class names, extraction settings, multi-label flag, provenance
    components/<name>.pt each torch module it runs (pickled whole: architecture and weights):
                         spatial_cnn and motion_cnn, the LSTMs and the fusion network (and any other
                         fused model a video can be scored with, e.g. nn_ef)

The hybrid's MLflow model (`inference.pyfunc`) carries this folder as an artifact, so a copy of
the model folder classifies videos with no tracking server: `load_bundle(find_bundle(folder))`.
"""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import torch

from hyvid.models import registry as R
from hyvid.pipelines.inference.hybrid import EXTRACT_KEYS, SUPPORTED, LoadedHybrid

log = logging.getLogger(__name__)

BUNDLE_ARTIFACT = "hybrid"  # the pyfunc's artifact key: <model folder>/artifacts/hybrid/
MANIFEST = "hybrid.json"
COMPONENTS_DIR = "components"
FORMAT = 1


def find_bundle(path: str | os.PathLike) -> str | None:
    """The bundle folder inside `path`: `path` itself, or the artifact of a hybrid MLflow model
    folder (`<path>/artifacts/hybrid`); None when `path` holds neither."""
    p = Path(path)
    for cand in (p, p / "artifacts" / BUNDLE_ARTIFACT):
        if (cand / MANIFEST).is_file():
            return str(cand)
    return None


def save_bundle(h: LoadedHybrid, folder: str | os.PathLike) -> str:
    """Write a loaded hybrid into `folder` (created; must be empty or new)."""
    out = Path(folder)
    (out / COMPONENTS_DIR).mkdir(parents=True, exist_ok=True)
    manifest = {
        "format": FORMAT, "run_id": h.run_id, "split": h.split, "models": list(h.weights),
        "weights": h.weights, "class_names": h.class_names, "extract": h.extract, "multilabel": h.multilabel,
        "cnn_run_ids": h.cnn_run_ids, "component_run_ids": h.component_run_ids,
    }
    modules = {R.SPATIAL_CNN: h.spatial_cnn, R.MOTION_CNN: h.motion_cnn, **h.components}
    for name, module in modules.items():
        # contiguous_format: the file does not depend on the layout this process chose for speed.
        torch.save(module.to(memory_format=torch.contiguous_format).eval(), out / COMPONENTS_DIR / f"{name}.pt")
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return str(out)


def load_bundle(folder: str | os.PathLike, device: torch.device | str = "cpu") -> LoadedHybrid:
    """The hybrid in a bundle folder, every model in eval mode (CNNs channels_last on CPU)."""
    t0 = time.perf_counter()
    root = Path(folder)
    try:
        m = json.loads((root / MANIFEST).read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{root} holds no {MANIFEST}; give a hybrid model folder (as `hyvid hybrid` "
                                "logs it) or its MLflow URI") from None
    if int(m.get("format", 0)) > FORMAT:
        raise ValueError(f"{root / MANIFEST} has format {m.get('format')}, newer than this hyvid reads ({FORMAT}); "
                         "upgrade hyvid")
    weights = {k: float(v) for k, v in m["weights"].items()}
    unsupported = [k for k in weights if k not in SUPPORTED]
    if unsupported:
        raise ValueError(f"{root}: the hybrid fuses {unsupported}, which cannot be rebuilt from a video "
                         f"(supported: {list(SUPPORTED)})")
    missing = [k for k in EXTRACT_KEYS if k not in m.get("extract", {})]
    if missing:
        raise ValueError(f"{root / MANIFEST} records no extraction settings {missing}; re-log the model with "
                         "`hyvid hybrid`")

    def module(name: str) -> torch.nn.Module:
        path = root / COMPONENTS_DIR / f"{name}.pt"
        if not path.is_file():
            raise FileNotFoundError(f"{root}: the hybrid needs {path.name}, which is missing from {path.parent}")
        # Whole pickled modules (architecture + weights), as MLflow's pytorch flavor logs them.
        return torch.load(path, map_location=device, weights_only=False).eval()

    components = {k: module(k) for k in weights if k not in R.CNN_MODELS}
    cnn_layout = torch.channels_last if torch.device(device).type == "cpu" else torch.contiguous_format
    spatial, motion = (module(k).to(memory_format=cnn_layout) for k in (R.SPATIAL_CNN, R.MOTION_CNN))
    split = m.get("split")
    h = LoadedHybrid(
        run_id=str(m.get("run_id") or ""), split=int(split) if split is not None else None, weights=weights,
        components=components, spatial_cnn=spatial, motion_cnn=motion, class_names=list(m["class_names"]),
        extract=dict(m["extract"]), multilabel=bool(m.get("multilabel", False)),
        cnn_run_ids=dict(m.get("cnn_run_ids", {})), component_run_ids=dict(m.get("component_run_ids", {})))
    h.load_s = time.perf_counter() - t0
    log.info("loaded hybrid model from %s (%s) in %.2f s", root, ", ".join(f"{k}={w:g}" for k, w in weights.items()),
             h.load_s)
    return h
