"""Cluster-wide defaults: the one home of the store URI, tracking URI and workers per stage.

Precedence (lowest to highest): built-in defaults < the `metadata.hyvid` block of
`ray_config.yaml` (the Ray cluster-launcher file; Ray ignores `metadata`) < environment
variables < CLI flags (applied by the caller).

Credentials never live in the file: `storage_options` values may be written as `${VAR}` and
are expanded from the environment only when a stage opens the store.
"""
from __future__ import annotations

import dataclasses
import math
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
# How long connecting to an existing Ray cluster (`--address`) may take before it is an error.
DEFAULT_CONNECT_TIMEOUT_S = 30.0
# Seconds one MLflow HTTP request may wait on the tracking server (connect, then each read), with one
# retry: a closed port or a silent server fails in ~2x this plus a 2 s back-off, well inside 30 s,
# where MLflow's own defaults (120 s, 7 retries) took 250-264 s.
DEFAULT_TRACKING_TIMEOUT_S = 10.0

# Environment variables that override the file, by settings field.
ENV_VARS = {
    "store_uri": "HYVID_STORE",
    "tracking_uri": "MLFLOW_TRACKING_URI",
    "ray_address": "RAY_ADDRESS",
    "experiment": "HYVID_EXPERIMENT",
    "dashboard_address": "HYVID_DASHBOARD",
    "connect_timeout_s": "HYVID_CONNECT_TIMEOUT",
    "tracking_timeout_s": "HYVID_TRACKING_TIMEOUT",
}

_VAR_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)")
# Names whose values are secrets: storage_options keys (they must be `${VAR}` references in the
# file), job env vars, MLflow params, and the environment variables whose values `redact` masks.
# Covers object_store's AWS (aws_secret_access_key, aws_session_token), Azure
# (azure_storage_account_key, azure_storage_sas_key, azure_client_secret, ...) and GCS
# (google_service_account_key) option names.
SECRET_KEY_RE = re.compile(
    r"secret|password|passwd|token|access_key|session|credential|key_id|account_key|sas_key|master_key"
    r"|private_key|service_account_key|api_key",
    re.I,
)


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
    # Seconds `cluster.connect` waits for an existing cluster (`--address`) before failing.
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S
    # Seconds each MLflow HTTP call may wait on a tracking server before it fails (one retry).
    tracking_timeout_s: float = DEFAULT_TRACKING_TIMEOUT_S

    def __post_init__(self) -> None:
        if not isinstance(self.storage_options, dict) or not isinstance(self.workers, dict):
            raise ValueError("metadata.hyvid.storage_options and .workers must be mappings")
        for name, upper in (("connect_timeout_s", 3600), ("tracking_timeout_s", 600)):
            object.__setattr__(self, name, self._seconds(name, upper))
        for stage, n in self.workers.items():
            if not isinstance(n, int) or n < 1:
                raise ValueError(f"metadata.hyvid.workers.{stage} must be a positive integer, got {n!r}")
        for key, value in self.storage_options.items():
            if SECRET_KEY_RE.search(key) and not _VAR_RE.fullmatch(str(value).strip()):
                # The value itself is never repeated: this message may reach a log.
                raise ValueError(
                    f"metadata.hyvid.storage_options.{key} holds a literal secret; write it as "
                    f'"${{SOME_ENV_VAR}}" and export the variable instead'
                )

    def _seconds(self, name: str, upper: float) -> float:
        """Field `name` as seconds in (0, upper], refused in one line naming it and its variable."""
        value = getattr(self, name)
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            seconds = math.nan
        if not (0 < seconds <= upper):
            raise ValueError(f"metadata.hyvid.{name} (or {ENV_VARS[name]}) must be a number of seconds in "
                             f"(0, {upper:g}], got {value!r}")
        return seconds

    def workers_for(self, stage: str, default: int) -> int:
        return int(self.workers.get(stage, default))

    def resolved_storage_options(self) -> dict[str, str] | None:
        """storage_options with `${VAR}` expanded from the environment (None when empty)."""
        if not self.storage_options:
            return None
        out = {k: expand_env(str(v), f"storage_options.{k}") for k, v in self.storage_options.items()}
        for k, v in out.items():
            if SECRET_KEY_RE.search(k):
                register_secret(v)
        return out


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


def node_type_resources(path: str | Path | None = None) -> list[dict[str, float]]:
    """What each node type of `ray_config.yaml` advertises (`available_node_types.*.resources`).

    An autoscaling cluster may have none of these nodes up yet; a request that fits one of them
    is feasible there, one that fits none never will be.
    """
    path = Path(path or os.environ.get("HYVID_CONFIG") or DEFAULT_CONFIG)
    if not path.exists():
        return []
    with open(path) as f:
        doc = yaml.safe_load(f) or {}
    types = doc.get("available_node_types") or {}
    out = []
    for t in types.values():
        res = (t or {}).get("resources") or {}
        out.append({str(k): float(v) for k, v in res.items()})
    return out


# -- redaction ---------------------------------------------------------------------------------
# user:password@ in any URI of a text (tracking URIs, store URIs, exception messages that quote them).
_URI_CRED_RE = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^:/@\s]+)(:(?P<pw>[^@/\s]*))?@")
# Secret-looking query parameters (presigned URLs, tokens in query strings).
_QUERY_SECRET_RE = re.compile(
    r"(?P<key>[?&][^=&\s]*(?:password|secret|token|signature|sig|credential|key)[^=&\s]*=)[^&\s'\"]+", re.I)
_MIN_SECRET_LEN = 6  # shorter values would mask ordinary words
_registered_secrets: set[str] = set()


def register_secret(value: str) -> None:
    """Make `redact` mask `value` wherever it appears (e.g. a storage option read from ${VAR})."""
    if value and len(value) >= _MIN_SECRET_LEN:
        _registered_secrets.add(value)


def _secret_values() -> list[str]:
    from_env = (v for k, v in os.environ.items() if SECRET_KEY_RE.search(k) and len(v) >= _MIN_SECRET_LEN)
    return sorted({*_registered_secrets, *from_env}, key=len, reverse=True)  # longest first: no partial masks


def redact(text: object) -> str:
    """`text` safe to print or log: credentials in URIs (user:password@ -> ***@), secret query
    parameters, and the values of secret environment variables and storage options masked.

    The one redaction of hyvid: the CLI passes everything it prints through it, and code that
    logs or records a URI (MLflow tags, lineage, messages) calls it.
    """
    out = _URI_CRED_RE.sub(lambda m: f"{m.group('scheme')}***@", "" if text is None else str(text))
    out = _QUERY_SECRET_RE.sub(lambda m: f"{m.group('key')}***", out)
    for value in _secret_values():
        out = out.replace(value, "***")
    return out
