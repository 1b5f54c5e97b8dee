"""Cluster-wide defaults: the one home of the store URI, tracking URI and workers per stage.

Precedence (lowest to highest): built-in defaults < the `metadata.hyvid` block of
`ray_config.yaml` (the Ray cluster-launcher file; Ray ignores `metadata`) < environment
variables < CLI flags (applied by the caller).

Credentials never live in the file: `storage_options` values may be written as `${VAR}` and
are expanded from the environment only when a stage opens the store.
"""
from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = REPO_ROOT / "ray_config.yaml"

# The built-in defaults, each in one place: stages and their configs import these.
DEFAULT_STORE_URI = "hyvid_store"
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
DEFAULT_EXPERIMENT = "hyvid"
DEFAULT_DASHBOARD = "http://127.0.0.1:8265"

# Environment variables that override the file, by settings field.
ENV_VARS = {
    "store_uri": "HYVID_STORE",
    "tracking_uri": "MLFLOW_TRACKING_URI",
    "ray_address": "RAY_ADDRESS",
    "experiment": "HYVID_EXPERIMENT",
    "dashboard_address": "HYVID_DASHBOARD",
}

_VAR_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)")
# storage_options keys whose values are secrets: they must be `${VAR}` references in the file.
SECRET_KEY_RE = re.compile(r"secret|password|token|access_key|session|credential|key_id", re.I)


@dataclass(frozen=True)
class Settings:
    store_uri: str = DEFAULT_STORE_URI
    tracking_uri: str = DEFAULT_TRACKING_URI
    # Address stages pass to ray.init (None: start a local Ray; inside a Ray job: the job's cluster).
    ray_address: str | None = None
    experiment: str = DEFAULT_EXPERIMENT
    # Storage options for object stores (s3://...). Values may name environment variables
    # as "${VAR}" so credentials never live in the file.
    storage_options: dict[str, str] = field(default_factory=dict)
    workers: dict[str, int] = field(default_factory=dict)
    # The Ray dashboard / Jobs API that `hyvid submit|jobs|logs|stop` talk to.
    dashboard_address: str = DEFAULT_DASHBOARD

    def __post_init__(self) -> None:
        if not isinstance(self.storage_options, dict) or not isinstance(self.workers, dict):
            raise ValueError("metadata.hyvid.storage_options and .workers must be mappings")
        for stage, n in self.workers.items():
            if not isinstance(n, int) or n < 1:
                raise ValueError(f"metadata.hyvid.workers.{stage} must be a positive integer, got {n!r}")
        for key, value in self.storage_options.items():
            if SECRET_KEY_RE.search(key) and not _VAR_RE.fullmatch(str(value).strip()):
                raise ValueError(
                    f"metadata.hyvid.storage_options.{key} holds a literal secret; write it as "
                    f'"${{SOME_ENV_VAR}}" and export the variable instead'
                )

    def workers_for(self, stage: str, default: int) -> int:
        return int(self.workers.get(stage, default))

    def resolved_storage_options(self) -> dict[str, str] | None:
        """storage_options with `${VAR}` expanded from the environment (None when empty)."""
        if not self.storage_options:
            return None
        return {k: expand_env(str(v), f"storage_options.{k}") for k, v in self.storage_options.items()}


def expand_env(value: str, what: str = "value") -> str:
    """Expand `${VAR}` / `$VAR`; an unset variable is an error naming it (never a silent "")."""

    def sub(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        if name not in os.environ:
            raise ValueError(f"{what} refers to ${{{name}}}, which is not set in the environment; export it")
        return os.environ[name]

    return _VAR_RE.sub(sub, value)


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
        values.update({k: v for k, v in block.items() if v is not None})
    for name, var in ENV_VARS.items():
        if os.environ.get(var):
            values[name] = os.environ[var]
    try:
        return Settings(**values)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
