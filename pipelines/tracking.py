"""The MLflow run contract of every stage: stage names, tags, param prefixes, artifact names,
lineage, and the one lookup of finished runs (`finished_runs` / `latest_run`).

MLflow is written from one place per fit (the driver, or rank 0 of a trainer). Run names are
model registry names; tags let `report`, `runs`, `run`, `features` and `predict` find runs
without parsing names. Filter strings sent to MLflow hold only the constants below, registry
names and split numbers; user values (a store URI, say) are compared in Python.
"""
from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import re
import time
import warnings
from pathlib import Path
from typing import Any, Iterator

import mlflow
from mlflow.data.meta_dataset import MetaDataset
from mlflow.entities import Run

from hyvid.cluster.settings import DEFAULT_TRACKING_URI, SECRET_KEY_RE, Settings, redact
from hyvid.models import registry as R
from hyvid.pipelines.logs import COMMAND_ENV, OWNER_ENV
from hyvid.store.lance_io import canonical_store_uri, open_table, table_uri, table_versions

log = logging.getLogger(__name__)

# -- stages: the value of the hyvid.stage tag --------------------------------------------------
STAGE_EXTRACT = "extract"
STAGE_TRAIN_CNN = "train-cnn"
STAGE_FEATURES = "features"
STAGE_TRAIN = "train"
STAGE_TRAIN_CV = "train-cv"  # search trials and out-of-fold fits: nested runs, never mistaken for the final fit
STAGE_HYBRID = "hybrid"
STAGE_LATE_FUSION = "late_fusion"  # Table 1's "+" rows, nested under the hybrid run
STAGE_EVALUATE = "evaluate"  # `hyvid evaluate`: a logged model scored end to end on a labelled video set
CHAIN = (STAGE_EXTRACT, STAGE_TRAIN_CNN, STAGE_FEATURES, STAGE_TRAIN, STAGE_HYBRID)  # `hyvid run`'s order
STAGES = (*CHAIN, STAGE_TRAIN_CV, STAGE_LATE_FUSION, STAGE_EVALUATE)
NESTED_STAGES = (STAGE_TRAIN_CV, STAGE_LATE_FUSION)  # whose runs sit under another run (mlflow.parentRunId)

# -- tags ---------------------------------------------------------------------------------------
TAG_MODEL = "hyvid.model"  # a models.registry name
TAG_STAGE = "hyvid.stage"  # one of STAGES
TAG_SPLIT = "hyvid.split"
TAG_STORE = "hyvid.store"  # store_tag(store URI)
TAG_FIT_ID = "hyvid.fit_id"  # one uuid per fit: a restarted worker finds its MLflow run by it
TAG_NODES = "hyvid.nodes"  # Ray node ids rank 0 of a fit ran on, one per attempt
TAG_RESUMED_FROM = "hyvid.resumed_from_epoch"  # set when a fit resumed from a checkpoint
TAG_MODEL_LOGGED = "hyvid.model_logged"  # "true" once a CNN run's model artifact is complete
TAG_ERROR = "hyvid.error"
TAG_SEED = "hyvid.seed"  # a hybrid run of `hyvid run --seeds N`: the seed of the fits it fused
TAG_CROSS_FIT = "hyvid.cross_fit"  # a cross-fitted CNN run: K, its fold count (training.folds)
TAG_FOLD = "hyvid.fold"  # ... and k: it was fitted on the training groups outside fold k
TAG_PARENT = "mlflow.parentRunId"  # MLflow's own tag for nested runs
TAG_REFIT_OF = "hyvid.refit_of"  # a refit's (train + val) run -> the final fit whose choices it repeats
TAG_GIT_COMMIT = "mlflow.source.git.commit"  # MLflow's own tag: the UI shows it as the run's source version
TAG_COMMAND = "hyvid.command"  # the command line that made the run (redacted), from logs.COMMAND_ENV
TAG_OWNER = "hyvid.owner"  # "host:pid:start" of the hyvid command that opened the run (pipelines.ownership)
TAG_CLOSED_BY = "hyvid.closed_by"  # why hyvid, not the run's own code, ended it (interrupted, owner gone)

# -- param prefixes -----------------------------------------------------------------------------
LINEAGE_PREFIX = "lineage."  # lineage.store_uri, lineage.<table>.version
EXTRACT_PREFIX = "extract."  # the hybrid's record of the store's extraction settings (predict reads them)
CNN_PREFIX = "cnn."  # cnn.<model>.run_id: the CNN runs behind a hybrid's features
COMPONENT_PREFIX = "component."  # component.<model>.run_id: the fits a hybrid fuses
WEIGHT_PREFIX = "weight."  # weight.<model>: the hybrid's linear weights

# -- artifacts ----------------------------------------------------------------------------------
MODEL_ARTIFACT = "model"  # the name models were logged under before each got its registry name
ARTIFACTS_DIR = "mlartifacts"  # beside a sqlite database: where experiments hyvid creates keep their artifacts
LINEAGE_ARTIFACT = "lineage.json"
CNN_CONFIG_ARTIFACT = "cnn_config.json"
EXTRACT_ARTIFACT = "extract_settings.json"
CLASSES_ARTIFACT = "classes.json"
HYBRID_SUMMARY_ARTIFACT = "hybrid_summary.json"
HYBRID_CANDIDATES_ARTIFACT = "hybrid_candidates.json"
FINDINGS_ARTIFACT = "findings.json"  # the hybrid's paired-bootstrap tests of the paper's findings

# -- metric suffixes ----------------------------------------------------------------------------
CI_LOW_SUFFIX = "_ci_low"  # test_accuracy_ci_low / _ci_high: the 95% bootstrap interval over test videos
CI_HIGH_SUFFIX = "_ci_high"
N_VIDEOS_METRIC = "n_videos"  # test_n_videos: how many videos the test metrics (and intervals) rest on

_FINISHED = "FINISHED"


def metric_name(subset: str, metric: str) -> str:
    """`val_accuracy`, `test_map`, ...: how a subset's metric is logged."""
    return f"{subset}_{metric}"


def ci_metric_names(subset: str, metric: str) -> tuple[str, str]:
    """`test_accuracy_ci_low`, `test_accuracy_ci_high`: how a metric's bootstrap interval is logged."""
    name = metric_name(subset, metric)
    return name + CI_LOW_SUFFIX, name + CI_HIGH_SUFFIX


def interval_metrics(subset: str, intervals: dict[str, tuple[float, float]], n_videos: int) -> dict[str, float]:
    """The `<subset>_<metric>_ci_low/_ci_high` and `<subset>_n_videos` metrics of a set of intervals."""
    out = {metric_name(subset, N_VIDEOS_METRIC): float(n_videos)}
    for m, (lo, hi) in intervals.items():
        lo_name, hi_name = ci_metric_names(subset, m)
        out[lo_name], out[hi_name] = float(lo), float(hi)
    return out


def model_uri(run_id: str, name: str = MODEL_ARTIFACT) -> str:
    """The URI of the model logged in a run under `name` (its model registry name, e.g. `fusion`)."""
    return f"runs:/{run_id}/{name}"


# -- URIs ---------------------------------------------------------------------------------------
# `redact` (credentials in URIs, secret values) is cluster.settings.redact, re-exported here for the
# stages that record URIs; there is one redaction in hyvid.


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


def check_tracking_server(uri: str, timeout_s: float) -> None:
    """Fail in one line, before a stage starts Ray or writes to the store, when the tracking server
    at an http(s) `uri` does not answer its /health within `timeout_s`; bound every later MLflow HTTP
    call of this process the same way (MLflow's own defaults waited 120 s, retried 7 times).

    Other URIs (sqlite, file) have no server to check.
    """
    import urllib.error
    import urllib.request

    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(max(1, round(timeout_s))))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    if not uri.startswith(("http://", "https://")):
        return
    fix = ("start it (`mlflow server --host 127.0.0.1 ...`) or point --tracking-uri / MLFLOW_TRACKING_URI at a "
           "running one; metadata.hyvid.tracking_timeout_s sets the wait")
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s) as reply:
            reply.read(64)
    except urllib.error.HTTPError as e:
        if e.code in (401, 403):
            return  # a server that answers, behind authentication: MLflow's own calls carry the credentials
        raise ValueError(f"tracking server {redact(uri)} answered /health with HTTP {e.code}; {fix}") from None
    except (OSError, ValueError) as e:  # refused, timed out, DNS (URLError and socket.timeout are OSErrors)
        reason = getattr(e, "reason", None) or e
        raise ValueError(f"tracking server {redact(uri)} did not answer within {timeout_s:g} s ({reason}); "
                         f"{fix}") from None


def resolve_tracking_uri(explicit: str | None = None, settings: Settings | None = None) -> str:
    """Flag > MLFLOW_TRACKING_URI > ray_config.yaml > sqlite:///mlflow.db in the working dir."""
    if explicit:
        uri = explicit
    elif os.environ.get("MLFLOW_TRACKING_URI"):
        uri = os.environ["MLFLOW_TRACKING_URI"]
    elif settings is not None:
        uri = settings.tracking_uri
    else:
        uri = DEFAULT_TRACKING_URI
    return absolute_tracking_uri(uri)


def sqlite_path(uri: str) -> str | None:
    """The database file of a `sqlite:///` tracking URI (absolute), else None."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri.removeprefix("sqlite:///").split("?", 1)[0]
    return os.path.abspath(path)


# What sqlite says (anywhere in an error's chain, a Ray task's remote traceback included) when the
# tracking database itself is at fault, and what the user can do about it.
_DATABASE_FAULTS = (
    (("attempt to write a readonly database", "readonly database"), "is read-only",
     "make the file and its folder writable, or pass --tracking-uri to a writable database"),
    (("file is not a database", "database disk image is malformed", "malformed database schema"), "is corrupt",
     "restore it from a backup, or pass --tracking-uri sqlite:///new.db to start a new one"),
    (("unable to open database file",), "cannot be opened",
     "check that its folder exists and is writable, or pass --tracking-uri to another database"),
    (("database is locked",), "is locked by another process",
     "wait for it, or use a tracking server (`mlflow server`) for concurrent writers"),
)


def database_fault(error_text: str, tracking_uri: str) -> str | None:
    """One line naming a sqlite tracking database's own fault (read-only, corrupt, ...) and its fix,
    from the text of an error and its causes; None when the error is not one of those."""
    path = sqlite_path(tracking_uri)
    if path is None:
        return None
    for needles, what, fix in _DATABASE_FAULTS:
        found = next((n for n in needles if n in error_text), None)
        if found:
            return f"MLflow tracking database {path} {what} (sqlite: {found}): {fix}"
    return None


def artifact_location(tracking_uri: str) -> str | None:
    """Where a new experiment on this tracking store keeps its artifacts: `mlartifacts/` beside a
    sqlite database. None leaves MLflow's default, which is right for a file store (artifacts
    inside its folder) and a tracking server (its own artifact root), but for a database is
    `./mlruns` of whatever directory a command happens to run in."""
    db = sqlite_path(tracking_uri)
    if db is None:
        return None
    return str(Path(db).parent / ARTIFACTS_DIR)


def check_store_exists(tracking_uri: str) -> None:
    """Refuse, in one line, to read a sqlite tracking database that does not exist: opening it
    would create an empty one (a read-only command must leave no mlflow.db behind)."""
    db = sqlite_path(tracking_uri)
    if db is not None and not os.path.exists(db):
        raise FileNotFoundError(f"no MLflow database at {db}; run a stage first, or point --tracking-uri / "
                                "MLFLOW_TRACKING_URI at the database your runs are in")


# -- writing runs -------------------------------------------------------------------------------
def setup(tracking_uri: str, experiment: str) -> str:
    """Point MLflow at `tracking_uri`, make sure `experiment` exists and make it the active one
    (so `start_run` logs there, not in "Default"); returns its id.

    An experiment made here on a sqlite store keeps its artifacts beside the database
    (`artifact_location`), never in the working directory.
    """
    mlflow.set_tracking_uri(tracking_uri)
    exp = mlflow.get_experiment_by_name(experiment)
    if exp is None:
        exp_id = mlflow.create_experiment(experiment, artifact_location=artifact_location(tracking_uri))
    else:
        exp_id = exp.experiment_id
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The commit of the git checkout hyvid runs from, or None (an installed wheel, no git)."""
    try:
        from mlflow.utils.git_utils import get_git_commit

        return get_git_commit(str(Path(__file__).resolve().parent))
    except Exception:  # noqa: BLE001 - provenance only: a broken git must not stop a fit
        return None


def run_owner() -> str | None:
    """The hyvid command process that owns the runs this process opens (logs.OWNER_ENV), if any."""
    return os.environ.get(OWNER_ENV) or None


def command_line() -> str | None:
    """The `hyvid ...` command line this process (or the driver that started its Ray) runs, redacted."""
    return os.environ.get(COMMAND_ENV) or None


def run_name(model: str, split: int | None = None, when: float | None = None) -> str:
    """A top-level run's name: its model, split and start time, `fusion-split1-20260101-120000`, so
    runs of one model tell apart in the UI (nested runs keep their own: `fusion-fold1of3`)."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(when))
    return f"{model}-split{int(split)}-{stamp}" if split is not None else f"{model}-{stamp}"


RUN_NAME_TIME_RE = re.compile(r"-\d{8}-\d{6}$")  # the start time `run_name` ends a name with


def run_tags(model: str, stage: str, split: int | None = None, store_uri: str | None = None,
             **extra: str) -> dict[str, str]:
    """The tags every hyvid run carries (model, stage, split, store, git commit, command line), plus `extra`."""
    tags = {TAG_MODEL: model, TAG_STAGE: stage}
    commit = git_commit()
    if commit:
        tags[TAG_GIT_COMMIT] = commit
    command = command_line()
    if command:
        tags[TAG_COMMAND] = command[:5000]
    owner = run_owner()
    if owner:
        tags[TAG_OWNER] = owner
    if split is not None:
        tags[TAG_SPLIT] = str(int(split))
    if store_uri:
        tags[TAG_STORE] = store_tag(store_uri)
    tags.update(extra)
    return tags


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
    """An MLflow run named by `run_name` (a nested one: by its model alone), tagged so reports can find it."""
    all_tags = {**run_tags(model, stage, split, store_uri), **(tags or {})}
    name = None if run_id else (model if nested else run_name(model, split))
    with mlflow.start_run(run_id=run_id, run_name=name, nested=nested, tags=all_tags) as run:
        yield run


def log_lineage(store_uri: str, tables: list[str], storage_options: dict | None = None,
                versions: dict[str, int] | None = None, context: str = "training") -> dict[str, Any]:
    """Log the store URI and the Lance version of every table a fit read (params + lineage.json),
    and each table as an MLflow dataset input, so the UI's Datasets column shows them.

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
    mlflow.log_dict(lineage, LINEAGE_ARTIFACT)
    log_dataset_inputs(store_uri, versions, context, storage_options)
    return lineage


def log_dataset_inputs(store_uri: str, versions: dict[str, int], context: str = "training",
                       storage_options: dict | None = None) -> None:
    """Each Lance table as an MLflow dataset input of the active run: name = table, digest =
    its version, source = the table's URI (redacted), schema = the table's columns, profile =
    its row count at that version."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source

    for table, version in versions.items():
        uri = redact(table_uri(canonical_store_uri(store_uri), table))
        with warnings.catch_warnings():  # "can be interpreted in multiple ways": a local path is a local path
            warnings.simplefilter("ignore")
            try:
                source = resolve_dataset_source(uri)
            except Exception:  # noqa: BLE001 - an object store MLflow has no source type for: lineage params suffice
                log.debug("no MLflow dataset source for %s", uri, exc_info=True)
                continue
        try:
            ds = open_table(store_uri, table, storage_options, version=int(version))
            schema, rows = arrow_schema(ds.schema), int(ds.count_rows())
        except Exception:  # noqa: BLE001 - a table gone since it was read: name and version still say what it was
            log.debug("cannot read %s v%s for its dataset input", table, version, exc_info=True)
            schema, rows = None, None
        dataset = _LanceTable(source, name=table, digest=f"v{int(version)}", schema=schema, num_rows=rows)
        _log_input_once(dataset, context)


def _log_input_once(dataset: Any, context: str, attempts: int = 3) -> None:
    """`mlflow.log_input`, retried when concurrent fits insert the same dataset at once.

    The tracking server's get-or-create of a dataset is not atomic: two runs of one experiment
    logging the same table version together can both insert it, and the loser fails with a UNIQUE
    constraint error. A retry then finds the winner's row and links to it.
    """
    from mlflow.exceptions import MlflowException

    for attempt in range(attempts):
        try:
            mlflow.log_input(dataset, context=context)
            return
        except MlflowException as e:
            if "UNIQUE constraint" not in str(e) or attempt == attempts - 1:
                raise
            time.sleep(0.2 * (attempt + 1))


def arrow_schema(schema) -> Any:
    """An MLflow Schema of a pyarrow one (lists and fixed-size vectors as arrays, structs as objects)."""
    from mlflow.types import ColSpec, Schema

    return Schema([ColSpec(_arrow_type(f.type), f.name, required=not f.nullable) for f in schema])


def _arrow_type(t) -> Any:
    import pyarrow as pa
    from mlflow.types import DataType
    from mlflow.types.schema import AnyType, Array, Object, Property

    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        return Array(_arrow_type(t.value_type))
    if pa.types.is_struct(t):
        return Object([Property(f.name, _arrow_type(f.type)) for f in t])
    for test, kind in ((pa.types.is_boolean, DataType.boolean), (pa.types.is_int64, DataType.long),
                       (pa.types.is_integer, DataType.integer), (pa.types.is_float32, DataType.float),
                       (pa.types.is_floating, DataType.double), (pa.types.is_string, DataType.string),
                       (pa.types.is_large_string, DataType.string), (pa.types.is_binary, DataType.binary),
                       (pa.types.is_large_binary, DataType.binary), (pa.types.is_timestamp, DataType.datetime)):
        if test(t):
            return kind
    return AnyType()


class _LanceTable(MetaDataset):
    """A Lance table version as an MLflow dataset: MetaDataset's source, name, digest and schema,
    plus the row count as its profile."""

    def __init__(self, source, name: str, digest: str, schema=None, num_rows: int | None = None) -> None:
        self._num_rows = num_rows
        super().__init__(source, name=name, digest=digest, schema=schema)

    @property
    def profile(self) -> Any | None:
        return None if self._num_rows is None else {"num_rows": self._num_rows}

    def to_dict(self) -> dict[str, str]:
        out = super().to_dict()
        if self._num_rows is not None:
            out["profile"] = json.dumps(self.profile)
        return out


def seed_of(run: Run) -> str | None:
    """The seed a run's fit used (its `seed` param, or the hybrid's TAG_SEED); None when it records none."""
    return run.data.tags.get(TAG_SEED) or run.data.params.get("seed")


def lineage_matches(run: Run, versions: dict[str, int], tables: tuple[str, ...]) -> bool:
    """Whether a run read exactly these Lance versions of `tables` (its fit is current)."""
    p = run.data.params
    return all(p.get(f"{LINEAGE_PREFIX}{t}.version") == str(versions.get(t)) for t in tables)


def log_params_safe(params: dict[str, Any]) -> None:
    """Log params with anything that looks like a credential left out and URIs redacted."""
    clean = {}
    for k, v in params.items():
        if SECRET_KEY_RE.search(k):
            continue
        clean[k] = redact(v) if isinstance(v, str) else v
    mlflow.log_params(clean)


# -- finding runs -------------------------------------------------------------------------------
def experiment_id(experiment: str, tracking_uri: str | None = None) -> str:
    """The id of an existing experiment; ValueError lists the experiments there are."""
    if tracking_uri is not None:
        mlflow.set_tracking_uri(tracking_uri)
    check_store_exists(mlflow.get_tracking_uri())
    exp = mlflow.get_experiment_by_name(experiment)
    if exp is None:
        names = [e.name for e in mlflow.search_experiments()]
        raise ValueError(f"no MLflow experiment {experiment!r} at {redact(mlflow.get_tracking_uri())}; "
                         f"experiments there: {names}")
    return exp.experiment_id


def finished_runs(
    experiment: str,
    *,
    stage: str | None = None,
    model: str | None = None,
    split: int | None = None,
    store_uri: str | None = None,
    tags: dict[str, str] | None = None,
    top_level: bool = False,
    tracking_uri: str | None = None,
) -> list[Run]:
    """Finished runs of an experiment, newest first, narrowed by stage, model, split, store and tags.

    `top_level` drops nested runs (CV trials, late fusions). An unknown experiment gives [].
    Only validated constants enter MLflow's filter string; `store_uri` and `tags` are compared here.
    """
    if tracking_uri is not None:
        mlflow.set_tracking_uri(tracking_uri)
    db = sqlite_path(mlflow.get_tracking_uri())
    if db is not None and not os.path.exists(db):
        return []  # looking would create an empty database
    exp = mlflow.get_experiment_by_name(experiment)
    if exp is None:
        return []
    clauses = [f"attributes.status = '{_FINISHED}'"]
    if stage is not None:
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; stages are {list(STAGES)}")
        clauses.append(f"tags.`{TAG_STAGE}` = '{stage}'")
    if model is not None:
        R.check_model_names([model])
        clauses.append(f"tags.`{TAG_MODEL}` = '{model}'")
    if split is not None:
        clauses.append(f"tags.`{TAG_SPLIT}` = '{R.check_split(int(split))}'")
    runs = mlflow.search_runs(experiment_ids=[exp.experiment_id], filter_string=" AND ".join(clauses),
                              order_by=["attributes.start_time DESC"], output_format="list")
    want = dict(tags or {})
    if store_uri is not None:
        want[TAG_STORE] = store_tag(store_uri)
    return [r for r in runs
            if all(r.data.tags.get(k) == v for k, v in want.items())
            and not (top_level and TAG_PARENT in r.data.tags)]


def latest_run(experiment: str, **filters: Any) -> Run | None:
    """The newest run `finished_runs(experiment, **filters)` finds, or None."""
    runs = finished_runs(experiment, **filters)
    return runs[0] if runs else None


def latest_runs_by_model(experiment: str, **filters: Any) -> dict[str, Run]:
    """The newest finished top-level run of each model (e.g. the current fits of a stage)."""
    out: dict[str, Run] = {}
    for r in finished_runs(experiment, top_level=True, **filters):
        out.setdefault(r.data.tags.get(TAG_MODEL, ""), r)
    return out
