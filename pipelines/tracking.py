"""MLflow conventions shared by every stage: run names, tags, metric names and lineage.

MLflow is written from one place per fit (the driver, or rank 0 of a trainer). Run names are
model registry names; tags let `report` and `runs` find runs without parsing names.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from typing import Any, Iterator

import mlflow

from hyvid.cluster.settings import Settings
from hyvid.store.lance_io import canonical_store_uri, table_versions

log = logging.getLogger(__name__)

TAG_MODEL = "hyvid.model"  # a models.registry name
TAG_STAGE = "hyvid.stage"  # train-cnn | train | hybrid | ...
TAG_SPLIT = "hyvid.split"
TAG_STORE = "hyvid.store"
LINEAGE_PREFIX = "lineage."  # params lineage.store_uri, lineage.<table>.version

# Metric names: f"{subset}_{metric}" for subset in train/val/test.
METRICS = ("accuracy", "mean_class_accuracy", "map", "top5")


def metric_name(subset: str, metric: str) -> str:
    return f"{subset}_{metric}"


_CRED_RE = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^:/@]+)(:(?P<pw>[^@/]*))?@")


def redact(uri: str) -> str:
    """A URI safe to log or print: user:password@ becomes ***@."""
    return _CRED_RE.sub(lambda m: f"{m.group('scheme')}***@", uri or "")


def store_tag(store_uri: str) -> str:
    """The `hyvid.store` tag of a store: canonical and credential-free, so runs compare by string."""
    return redact(canonical_store_uri(store_uri))


def absolute_tracking_uri(uri: str) -> str:
    """A relative sqlite/file tracking URI made absolute, so Ray workers open the same database."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + os.path.abspath(uri.removeprefix("sqlite:///"))
    if "://" not in uri:
        return os.path.abspath(uri)
    return uri


def resolve_tracking_uri(explicit: str | None = None, settings: Settings | None = None) -> str:
    """Flag > MLFLOW_TRACKING_URI > ray_config.yaml > sqlite:///mlflow.db in the working dir."""
    if explicit:
        uri = explicit
    elif os.environ.get("MLFLOW_TRACKING_URI"):
        uri = os.environ["MLFLOW_TRACKING_URI"]
    elif settings is not None:
        uri = settings.tracking_uri
    else:
        uri = "sqlite:///mlflow.db"
    return absolute_tracking_uri(uri)


def setup(tracking_uri: str, experiment: str) -> str:
    """Point MLflow at `tracking_uri`, make sure `experiment` exists and make it the active one
    (so `start_run` logs there, not in "Default"); returns its id."""
    mlflow.set_tracking_uri(tracking_uri)
    exp = mlflow.get_experiment_by_name(experiment)
    exp_id = mlflow.create_experiment(experiment) if exp is None else exp.experiment_id
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id


@contextlib.contextmanager
def start_run(
    model: str,
    stage: str,
    split: int | None = None,
    store_uri: str | None = None,
    tags: dict[str, str] | None = None,
    nested: bool = False,
    run_id: str | None = None,
) -> Iterator[mlflow.ActiveRun]:
    """An MLflow run named after the model, tagged so reports can find it."""
    all_tags = {TAG_MODEL: model, TAG_STAGE: stage}
    if split is not None:
        all_tags[TAG_SPLIT] = str(split)
    if store_uri:
        all_tags[TAG_STORE] = store_tag(store_uri)
    all_tags.update(tags or {})
    with mlflow.start_run(run_id=run_id, run_name=None if run_id else model, nested=nested, tags=all_tags) as run:
        yield run


def log_lineage(store_uri: str, tables: list[str], storage_options: dict | None = None,
                versions: dict[str, int] | None = None) -> dict[str, Any]:
    """Log the store URI and the Lance version of every table a fit read (params + lineage.json).

    `versions` (table -> version) records the versions a fit actually read when it pinned them
    at load time; by default the tables' current versions are looked up.
    """
    if versions is None:
        versions = table_versions(store_uri, tables, storage_options)
    else:
        versions = {t: int(versions[t]) for t in tables if t in versions}
    lineage = {"store_uri": store_tag(store_uri), "tables": versions}
    params = {f"{LINEAGE_PREFIX}store_uri": lineage["store_uri"]}
    params.update({f"{LINEAGE_PREFIX}{t}.version": v for t, v in versions.items()})
    mlflow.log_params(params)
    mlflow.log_dict(lineage, "lineage.json")
    return lineage


def log_params_safe(params: dict[str, Any]) -> None:
    """Log params with anything that looks like a credential left out and URIs redacted."""
    clean = {}
    for k, v in params.items():
        if re.search(r"secret|password|token|access_key|credential", k, re.I):
            continue
        clean[k] = redact(v) if isinstance(v, str) else v
    mlflow.log_params(clean)


def dump_json(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True, default=str)
