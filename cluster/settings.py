"""Cluster-wide defaults: the one home of the store URI, tracking URI and workers per stage.

Precedence (lowest to highest): built-in defaults < the `metadata.hyvid` block of
`ray_config.yaml` (the Ray cluster-launcher file; Ray ignores `metadata`) < environment
variables < CLI flags (applied by the caller).
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = REPO_ROOT / "ray_config.yaml"

# Environment variables that override the file, by settings field.
ENV_VARS = {
    "store_uri": "HYVID_STORE",
    "tracking_uri": "MLFLOW_TRACKING_URI",
    "ray_address": "RAY_ADDRESS",
    "experiment": "HYVID_EXPERIMENT",
}


@dataclass(frozen=True)
class Settings:
    store_uri: str = "hyvid_store"
    tracking_uri: str = "sqlite:///mlflow.db"
    ray_address: str | None = None
    experiment: str = "hyvid"
    # Storage options for object stores (s3://...). Values may name environment variables
    # as "${VAR}" so credentials never live in the file.
    storage_options: dict[str, str] = field(default_factory=dict)
    workers: dict[str, int] = field(default_factory=dict)

    def workers_for(self, stage: str, default: int) -> int:
        return int(self.workers.get(stage, default))

    def resolved_storage_options(self) -> dict[str, str] | None:
        if not self.storage_options:
            return None
        return {k: _expand(v) for k, v in self.storage_options.items()}


def _expand(value: str) -> str:
    return os.path.expandvars(str(value))


def load_settings(path: str | Path | None = None) -> Settings:
    """Settings from `ray_config.yaml` (or `HYVID_CONFIG`) and the environment."""
    path = Path(path or os.environ.get("HYVID_CONFIG") or DEFAULT_CONFIG)
    values: dict[str, Any] = {}
    if path.exists():
        with open(path) as f:
            doc = yaml.safe_load(f) or {}
        block = (doc.get("metadata") or {}).get("hyvid") or {}
        known = {f.name for f in dataclasses.fields(Settings)}
        unknown = set(block) - known
        if unknown:
            raise ValueError(
                f"{path}: unknown keys {sorted(unknown)} under metadata.hyvid; "
                f"known keys are {sorted(known)}"
            )
        values.update(block)
    for name, var in ENV_VARS.items():
        if os.environ.get(var):
            values[name] = os.environ[var]
    return Settings(**values)
