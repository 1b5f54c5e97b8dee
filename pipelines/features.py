"""`hyvid features`: run the trained stream CNNs over every stored clip and store what they say.

For each ok video of the split, Ray tasks (spread over the cluster) read its clips from Lance,
run the spatial CNN on the frames and the motion CNN on the flow stacks, and write

- `frame_features`: one row per (video, position) with both fc1 features and the two CNNs'
  MLflow run ids (fragments written by the tasks, committed by the driver in atomic batches);
- the video-level scores of `spatial_cnn`, `motion_cnn` and `two_stream_cnn` into
  `video_scores` (mean of the per-position softmax scores; the two-stream score averages the
  two streams, the paper's "Two-stream CNN").

Every row carries the split whose CNNs made it, the fold and the two run ids (`store.tables`):
the CNNs of split N never saw split N's test groups, and `--split 2` leaves split 1's rows alone.
With `--cross-fit K` the split's K CNN pairs each describe the videos of their fold
(`training.folds`): a training video gets the features and scores of the pair that did not see it.

Idempotent and resumable: videos whose features exist from the same pair of runs, made with the
same test views (TAG_TEST_VIEWS), are skipped (a re-run adds no rows), and so are scores already
stored for those runs. The table holds one set of features per (video, split): a video whose rows
of this split came from other runs or views has them replaced in the same atomic commit that adds
the new ones.
"""
from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from hyvid.cluster.settings import DEFAULT_EXPERIMENT
from hyvid.models.cnn import two_stream_scores
from hyvid.models.registry import MOTION_CNN, SPATIAL_CNN, TWO_STREAM_CNN, check_split
from hyvid.pipelines import tracking
from hyvid.pipelines.inference.cnn import DEFAULT_TEST_VIEWS, check_test_views, cnn_forward, load_cnn_pair
from hyvid.pipelines.precision import DEFAULT_AMP, check_amp
from hyvid.pipelines.training.folds import DEFAULT_CROSS_FIT, check_cross_fit, cnn_pairs, video_folds
from hyvid.store.lance_io import canonical_store_uri
from hyvid.store.tables import (
    CLIPS,
    FOLD_ALL,
    FRAME_FEATURES_NAME,
    FRAME_FEATURES_PROVENANCE,
    VIDEO_SCORES,
    frame_features_schema,
)

log = logging.getLogger(__name__)

# The test views (models.cnn.TEST_VIEWS) of two-stream testing, set by `--paper`: the centre and four
# corner crops and their horizontal flips.
PAPER_TEST_VIEWS = 10
PAPER_FEATURES_SETTINGS: dict[str, Any] = {"test_views": PAPER_TEST_VIEWS}

# The MLflow tag, on the spatial run of each CNN pair, recording the test views of the features and
# scores a store holds from that pair, as JSON {"views", "store", "motion_run_id"}: the rows name only
# the runs, so without it a re-run with another view count would skip every video. A record of another
# store or motion run says nothing of this pair's rows, and views null marks a rewrite under way: both
# redo the pair, so an interrupted rewrite is finished whatever the next count. No tag (rows written
# before it existed): DEFAULT_TEST_VIEWS, the only count the shell could ask for then.
TAG_TEST_VIEWS = "hyvid.features.test_views"

_CLIP_COLUMNS = ["video_id", "position", "frame_index", "timestamp", "frame", "flow_stack", "stack", "height",
                 "width"]


@dataclass(frozen=True)
class FeaturesConfig:
    """Which store and CNN runs `extract_features` uses, and how it spreads the work."""

    store_uri: str
    split: int = 1
    spatial_run_id: str | None = None  # None: the latest finished train-cnn run of the split
    motion_run_id: str | None = None
    cross_fit: int = DEFAULT_CROSS_FIT  # K: use the split's K cross-fitted CNN pairs (training.folds)
    cnn_seed: int | None = None  # only CNN runs fitted with this seed (`hyvid run --seeds`); None: the newest
    experiment: str = DEFAULT_EXPERIMENT
    tracking_uri: str | None = None
    workers: int | None = None  # tasks in flight; None: the cluster's CPUs
    videos_per_task: int = 16
    batch_size: int = 64  # clips per CNN forward pass
    # Fixed crops per clip at the CNN's training crop size, features and scores averaged over them:
    # 1 centre, 5 centre + corners, 10 those and their flips (models.cnn.view_crops).
    test_views: int = DEFAULT_TEST_VIEWS
    amp: str = DEFAULT_AMP  # mixed precision of the forward pass (pipelines.precision: off on the CPU)
    commit_every: int = 4  # finished tasks per atomic commit
    use_gpu: bool | None = None  # None: GPUs when the cluster has them
    storage_options: dict[str, str] | None = None
    address: str | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        check_split(self.split)
        for name in ("videos_per_task", "batch_size", "commit_every"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        check_test_views(self.test_views)
        check_amp(self.amp)
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers!r}")
        check_cross_fit(self.cross_fit)
        if self.cross_fit and (self.spatial_run_id or self.motion_run_id):
            raise ValueError("explicit CNN run ids name one pair; with cross_fit the split's K pairs are found "
                             "by their fold tags (drop --run / --spatial-run / --motion-run)")

    @classmethod
    def paper(cls, **overrides: Any) -> "FeaturesConfig":
        """Two-stream testing as the paper's CNNs are tested (PAPER_TEST_VIEWS); `overrides` win."""
        return cls(**{**PAPER_FEATURES_SETTINGS, **overrides})


@dataclass(frozen=True)
class FeaturesResult:
    """What a `features` run did; `node_tasks` counts tasks per Ray node (the spread record)."""

    spatial_run_id: str  # comma-joined, in fold order, with cross-fitting
    motion_run_id: str
    n_videos: int  # ok videos of the split
    n_features_written: int  # videos whose frame features this run wrote
    n_skipped: int  # videos whose features and scores were already there
    n_rows_written: int
    n_scored: int  # videos whose three CNN scores this run stored
    spatial_dim: int
    motion_dim: int
    frame_features_version: int | None
    video_scores_version: int | None
    node_tasks: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)  # model -> val_*/test_* it logged
    fold_runs: dict[int, tuple[str, str]] = field(default_factory=dict)  # fold -> (spatial, motion) run ids


# ---------------------------------------------------------------------------------------------
# Finding the CNN runs.


def _check_run_split(run_id: str, model: str, split: int) -> None:
    """An explicit CNN run must be of `model` and fitted on `split`: another split's CNNs trained on
    videos that may be this split's test videos, and their features would leak them."""
    from mlflow import MlflowClient

    tags = MlflowClient().get_run(run_id).data.tags
    if tags.get(tracking.TAG_MODEL) != model or tags.get(tracking.TAG_SPLIT) != str(split):
        raise ValueError(f"run {run_id!r} is a {tags.get(tracking.TAG_MODEL)} run of split "
                         f"{tags.get(tracking.TAG_SPLIT)}, not a {model} run of split {split}: a split's features "
                         "must come from CNNs fitted on that split's training videos")


def fold_runs(cfg: FeaturesConfig, store_uri: str) -> dict[int, tuple[str, str]]:
    """fold -> (spatial run, motion run) this run uses: the explicit pair, else the split's newest."""
    found: dict[int, tuple[str, str]] = {}
    if not (cfg.spatial_run_id and cfg.motion_run_id):
        found = cnn_pairs(cfg.experiment, cfg.split, store_uri, cfg.cross_fit, cfg.cnn_seed)
    if cfg.cross_fit:
        return found
    s_run = cfg.spatial_run_id or found[FOLD_ALL][0]
    m_run = cfg.motion_run_id or found[FOLD_ALL][1]
    for run_id, model in ((s_run, SPATIAL_CNN), (m_run, MOTION_CNN)):
        _check_run_split(run_id, model, cfg.split)
    return {FOLD_ALL: (s_run, m_run)}


def stored_test_views(store_uri: str, spatial_run_id: str, motion_run_id: str) -> int | None:
    """The test views of the features and scores `store_uri` holds from this pair (TAG_TEST_VIEWS);
    None: unknown (another store's or pair's record, or a rewrite under way)."""
    import json

    from mlflow import MlflowClient

    raw = MlflowClient().get_run(spatial_run_id).data.tags.get(TAG_TEST_VIEWS)
    if raw is None:
        return DEFAULT_TEST_VIEWS
    try:
        record = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(record, dict) or record.get("store") != store_uri or record.get("motion_run_id") != motion_run_id:
        return None
    return record.get("views")


def _record_test_views(store_uri: str, pairs: list[tuple[str, str]], views: int | None) -> None:
    """TAG_TEST_VIEWS on each pair's spatial run: `views` (None: a rewrite under way)."""
    import json

    from mlflow import MlflowClient

    client = MlflowClient()
    for s_run, m_run in pairs:
        client.set_tag(s_run, TAG_TEST_VIEWS, json.dumps({"views": views, "store": store_uri, "motion_run_id": m_run}))


# ---------------------------------------------------------------------------------------------
# The Ray task.


def _features_task(
    store_uri: str,
    clips_version: int,
    video_ids: list[str],
    write_ids: list[str],
    split: int,
    fold: int,
    spatial_run_id: str,
    motion_run_id: str,
    tracking_uri: str,
    batch_size: int,
    storage_options: dict[str, str] | None,
    threads: int = 1,
    views: int = 1,
    amp: str = "off",
) -> dict[str, Any]:
    """Ray task: the CNNs over some videos' clips; writes `write_ids`' feature fragments.

    Returns small metadata only: fragments to commit, per-video mean softmax scores, node id.
    """
    import ray

    from hyvid.pipelines.data.clips import decode_rows
    from hyvid.store.lance_io import open_table, write_table_fragments

    # As many intra-op threads as the task's CPU share: more only fight the other tasks' threads.
    torch.set_num_threads(max(1, threads))
    device = torch.device("cuda" if torch.cuda.is_available() and ray.get_gpu_ids() else "cpu")
    spatial, motion = load_cnn_pair(tracking_uri, spatial_run_id, motion_run_id, device)
    ds = open_table(store_uri, CLIPS.name, storage_options, version=clips_version)
    rows = ds.scanner(columns=_CLIP_COLUMNS, filter=pc.field("video_id").isin(video_ids)).to_table()
    rows = rows.sort_by([("video_id", "ascending"), ("position", "ascending")])
    vids = rows.column("video_id").to_pylist()
    node_id = ray.get_runtime_context().get_node_id()
    if not vids:
        return {"fragments": [], "n_rows": 0, "written": [], "scores": {}, "missing": sorted(video_ids),
                "dims": None, "node_id": node_id, "fold": fold}
    sf, mf, sp, mp = cnn_forward(spatial, motion, decode_rows(rows, "spatial"), decode_rows(rows, "motion"), batch_size,
                                 views, amp)

    vid_arr = np.asarray(vids, dtype=object)
    scores = {}
    for v in dict.fromkeys(vids):
        m = vid_arr == v
        scores[v] = (sp[m].mean(0), mp[m].mean(0))
    keep = np.isin(vid_arr, np.asarray(write_ids, dtype=object))
    fragments, n_rows = [], int(keep.sum())
    if n_rows:
        schema = frame_features_schema(sf.shape[1], mf.shape[1])
        n = n_rows
        table = pa.table(
            {
                "video_id": rows.column("video_id").filter(pa.array(keep)),
                "position": rows.column("position").filter(pa.array(keep)),
                "split": pa.array([int(split)] * n, pa.int32()),
                "fold": pa.array([int(fold)] * n, pa.int32()),
                "frame_index": rows.column("frame_index").filter(pa.array(keep)),
                "timestamp": rows.column("timestamp").filter(pa.array(keep)),
                "spatial": pa.FixedSizeListArray.from_arrays(pa.array(sf[keep].reshape(-1)), sf.shape[1]),
                "motion": pa.FixedSizeListArray.from_arrays(pa.array(mf[keep].reshape(-1)), mf.shape[1]),
                "spatial_run_id": pa.array([spatial_run_id] * n, pa.string()),
                "motion_run_id": pa.array([motion_run_id] * n, pa.string()),
            },
            schema=schema,
        )
        fragments = write_table_fragments(store_uri, FRAME_FEATURES_NAME, table, storage_options)
    missing = sorted(set(video_ids) - set(vids))
    return {
        "fragments": fragments,
        "n_rows": n_rows,
        "written": sorted(set(write_ids) & set(vids)),
        "scores": scores,
        "missing": missing,
        "dims": (int(sf.shape[1]), int(mf.shape[1])),
        "node_id": node_id,
        "fold": fold,
    }


# ---------------------------------------------------------------------------------------------
# The driver.


def _existing_features(store_uri: str, split: int, storage_options: dict[str, str] | None
                       ) -> tuple[dict[str, set], tuple | None, bool]:
    """video id -> set of (fold, spatial_run_id, motion_run_id) it has rows of `split` from; the table's
    dims; and whether the table has the old layout (no provenance columns: it is rebuilt)."""
    from hyvid.store.lance_io import open_table, table_exists

    if not table_exists(store_uri, FRAME_FEATURES_NAME, storage_options):
        return {}, None, False
    ds = open_table(store_uri, FRAME_FEATURES_NAME, storage_options)
    if any(c not in ds.schema.names for c in FRAME_FEATURES_PROVENANCE):
        log.warning("frame_features of %s has the old layout (rows keyed by video alone); it is rebuilt with "
                    "the split, fold and CNN runs of every row: run `hyvid features` for each split", store_uri)
        return {}, None, True
    t = ds.to_table(columns=["video_id", "fold", "spatial_run_id", "motion_run_id"],
                    filter=pc.field("split") == int(split))
    out: dict[str, set] = {}
    columns = (t.column(c).to_pylist() for c in ("video_id", "fold", "spatial_run_id", "motion_run_id"))
    for v, f, s, m in zip(*columns, strict=True):
        out.setdefault(v, set()).add((f, s, m))
    dims = (ds.schema.field("spatial").type.list_size, ds.schema.field("motion").type.list_size)
    return out, dims, False


def _drop_unreadable(store_uri: str, storage_options: dict[str, str] | None) -> None:
    """Fragments of frame_features or video_scores whose files cannot be read are dropped (under the
    features lease) before the plan, so the videos they held are computed again, not counted as done."""
    from hyvid.store.damage import broken_fragments, drop_broken
    from hyvid.store.lance_io import open_table, table_exists
    from hyvid.store.lease import FEATURES_LEASE, SCORES_LEASE, Lease

    for lease_name, table in ((FEATURES_LEASE, FRAME_FEATURES_NAME), (SCORES_LEASE, VIDEO_SCORES.name)):
        if table_exists(store_uri, table, storage_options) and broken_fragments(
                open_table(store_uri, table, storage_options)):  # the lease only when there is something to drop
            with Lease(store_uri, lease_name, "hyvid features", storage_options=storage_options):
                drop_broken(store_uri, table, storage_options)


def _pair_runs(s_run: str, m_run: str) -> dict[str, str]:
    """The run id each CNN model's video_scores rows carry for one pair (two_stream_cnn: both)."""
    return {SPATIAL_CNN: s_run, MOTION_CNN: m_run, TWO_STREAM_CNN: f"{s_run}+{m_run}"}


def _existing_scores(store_uri: str, split: int, expected: dict[str, dict[str, str]],
                     storage_options: dict[str, str] | None) -> set[str]:
    """Videos that already have all three CNN scores of this split from the runs `expected` names
    (video -> model -> run id)."""
    from hyvid.store.lance_io import open_table, table_exists

    if not table_exists(store_uri, VIDEO_SCORES.name, storage_options):
        return set()
    ds = open_table(store_uri, VIDEO_SCORES.name, storage_options)
    done: set[str] | None = None
    for model in (SPATIAL_CNN, MOTION_CNN, TWO_STREAM_CNN):
        flt = (pc.field("model") == model) & (pc.field("split") == int(split))
        t = ds.scanner(columns=["video_id", "run_id"], filter=flt).to_table()
        vids = {v for v, r in zip(t.column("video_id").to_pylist(), t.column("run_id").to_pylist(), strict=True)
                if v in expected and expected[v][model] == r}
        done = vids if done is None else done & vids
    return done or set()


def _commit_features(store_uri: str, fragments: list, written_ids: list[str], split: int, schema: pa.Schema,
                     storage_options: dict[str, str] | None, rebuild: bool = False) -> int:
    """One atomic commit: append the new fragments, deleting the rows the table holds for the same
    videos and split (another pair of CNNs' features, or these committed meanwhile by a concurrent
    run). `rebuild`: the table has the old layout and is replaced by the new fragments.

    Under the store's frame_features lease, so that check and the commit see the same table: a
    video never has two sets of rows, whichever of two concurrent `features` runs commits last.
    """
    from hyvid.store.lance_io import commit_fragments, commit_replacing, open_table, row_addresses, table_exists
    from hyvid.store.lease import FEATURES_LEASE, Lease

    with Lease(store_uri, FEATURES_LEASE, "hyvid features", storage_options=storage_options) as lease:
        lease.check()
        if rebuild or not table_exists(store_uri, FRAME_FEATURES_NAME, storage_options):
            return commit_fragments(store_uri, FRAME_FEATURES_NAME, fragments, schema, storage_options,
                                    overwrite=rebuild)
        ds = open_table(store_uri, FRAME_FEATURES_NAME, storage_options)
        old = row_addresses(ds, ["video_id"], pc.field("video_id").isin(pa.array(written_ids, pa.string()))
                            & (pc.field("split") == int(split)))
        if old.num_rows == 0:
            return commit_fragments(store_uri, FRAME_FEATURES_NAME, fragments, schema, storage_options)
        version = commit_replacing(store_uri, FRAME_FEATURES_NAME, old.column("_rowaddr").to_pylist(), fragments,
                                   storage_options, read_version=ds.version)
    log.info("replaced the stored features of %d video(s)", len(set(old.column("video_id").to_pylist())))
    return version


def _index_features(cfg: FeaturesConfig) -> None:
    """Keep one video's lookup independent of the store's size (BTREE on video_id), and build the
    vector indexes once the table is large enough for them to pay off."""
    from hyvid.store.indexes import ensure_scalar_index, ensure_vector_index

    ensure_scalar_index(cfg.store_uri, FRAME_FEATURES_NAME, storage_options=cfg.storage_options)
    for column in ("spatial", "motion"):
        ensure_vector_index(cfg.store_uri, FRAME_FEATURES_NAME, column, storage_options=cfg.storage_options)


def _subset_metrics(scores, multilabel: bool, groups_of) -> dict[str, float]:
    """val_* and test_* metrics of one CNN's stored video scores (the test ones with their 95%
    bootstrap intervals over groups and test_n_videos), named as every other model's run names them."""
    from hyvid.pipelines.evaluation.bootstrap import metric_intervals, resampling_units
    from hyvid.pipelines.evaluation.metrics import evaluate

    subsets = np.asarray(scores.subsets, dtype=object)
    out: dict[str, float] = {}
    for sub in ("val", "test"):
        keep = np.flatnonzero(subsets == sub)
        if not len(keep):
            continue
        s, labels = scores.scores[keep], scores.labels[keep]
        multi = [scores.labels_multi[i] for i in keep]
        out.update({tracking.metric_name(sub, k): float(v) for k, v in evaluate(s, labels, multi, multilabel).items()})
        if sub == "test":
            units = resampling_units(groups_of([scores.video_ids[i] for i in keep]), multi)
            ci = metric_intervals(s, labels, multi, multilabel, groups=units)
            out.update(tracking.interval_metrics(sub, ci, len(keep)))
    return out


def _two_stream_run(cfg: FeaturesConfig, store_uri: str, s_run: str, m_run: str) -> str:
    """The `two_stream_cnn` run of this pair of CNN runs (comma-joined per fold when cross-fitted):
    found again on a re-run, else created.

    The two-stream CNN is not fitted (it averages the two streams' scores), so its run holds
    what it was made of (the two runs, as params) and its metrics, like every other model's run.
    """
    # MLflow params are strings: the views as one, so that a re-run finds this run again.
    params = {f"{tracking.CNN_PREFIX}{SPATIAL_CNN}.run_id": s_run, f"{tracking.CNN_PREFIX}{MOTION_CNN}.run_id": m_run,
              "test_views": str(cfg.test_views)}
    tracking.setup(tracking.resolve_tracking_uri(cfg.tracking_uri), cfg.experiment)
    for run in tracking.finished_runs(cfg.experiment, stage=tracking.STAGE_FEATURES, model=TWO_STREAM_CNN,
                                      split=cfg.split):
        if all(run.data.params.get(k) == v for k, v in params.items()):
            return run.info.run_id
    with tracking.start_run(TWO_STREAM_CNN, tracking.STAGE_FEATURES, cfg.split, store_uri) as run:
        tracking.log_params_safe({"model": TWO_STREAM_CNN, "split": cfg.split, "fusion": "mean of the two streams",
                                  "cross_fit": cfg.cross_fit, **params})
        tracking.log_lineage(store_uri, [VIDEO_SCORES.name], cfg.storage_options, context="evaluation")
        return run.info.run_id


def log_cnn_metrics(cfg: FeaturesConfig, store_uri: str, pairs: dict[int, tuple[str, str]]
                    ) -> dict[str, dict[str, float]]:
    """Score the CNNs from the video scores this stage stored, into each CNN's own MLflow run
    (spatial_cnn and motion_cnn: the train-cnn runs, each fold's when cross-fitted; two_stream_cnn:
    its own, see `_two_stream_run`).

    Returns model -> metrics. The per-epoch val metrics train-cnn logged are clip-level; these are
    video-level (mean of the clip scores), the numbers every other model's run reports. Cross-fitted,
    they are the figures of the K pairs together (each video scored by its fold's pair).
    """
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    from hyvid.store.feature_store import FeatureStore

    fs = FeatureStore(store_uri, cfg.storage_options)
    multilabel = fs.is_multilabel()
    per_fold = [_pair_runs(s, m) for s, m in pairs.values()]
    expected = {model: ",".join(sorted({r[model] for r in per_fold})) for model in per_fold[0]}
    s_joined = ",".join(s for s, _ in pairs.values())
    m_joined = ",".join(m for _, m in pairs.values())
    two_stream = _two_stream_run(cfg, store_uri, s_joined, m_joined)
    targets = {SPATIAL_CNN: [s for s, _ in pairs.values()], MOTION_CNN: [m for _, m in pairs.values()],
               TWO_STREAM_CNN: [two_stream]}
    client = MlflowClient()
    out = {}
    for model, run_ids in targets.items():
        scores = fs.scores(model, cfg.split)
        if scores.run_id != expected[model]:  # another pair's scores (a concurrent run): not these runs' numbers
            log.warning("video_scores of %s hold run(s) %s, not %s: its metrics are not logged", model,
                        scores.run_id, expected[model])
            continue
        out[model] = _subset_metrics(scores, multilabel, fs.groups)
        for run_id in run_ids:
            logged = client.get_run(run_id).data.metrics
            if all(logged.get(k) == v for k, v in out[model].items()):  # a re-run that changed nothing logs nothing
                continue
            # One step after the fit's last epoch (as train's final metrics): MLflow shows a metric's value
            # at its largest step, so these are the ones the UI and `hyvid runs` show, and no step holds two.
            step = max((m.step for m in client.get_metric_history(run_id, "val_accuracy")), default=-1) + 1
            now = int(time.time() * 1000)
            client.log_batch(run_id, metrics=[Metric(k, v, now, step) for k, v in out[model].items()])
    return out


def extract_features(cfg: FeaturesConfig) -> FeaturesResult:
    """Per-frame CNN features into `frame_features` and CNN scores into `video_scores`."""
    import mlflow
    import ray
    from tqdm import tqdm

    from hyvid.cluster.connect import connect
    from hyvid.cluster.resources import task_options
    from hyvid.store.feature_store import FeatureStore
    from hyvid.store.lance_io import open_table
    from hyvid.store.scores import upsert_video_scores

    t0 = time.perf_counter()
    store_uri = canonical_store_uri(cfg.store_uri)
    tracking_uri = tracking.resolve_tracking_uri(cfg.tracking_uri)
    mlflow.set_tracking_uri(tracking_uri)
    pairs = fold_runs(cfg, store_uri)

    fs = FeatureStore(store_uri, cfg.storage_options)
    videos = fs.videos(split=cfg.split)
    ids = videos.column("video_id").to_pylist()
    if not ids:
        raise ValueError(f"no ok video in split {cfg.split} of store {store_uri!r}; run `hyvid extract` first")
    subsets_of = videos.column("subset").to_pylist()
    info = {v: (s, lab, labs) for v, s, lab, labs in zip(
        ids, subsets_of, videos.column("label").to_pylist(), videos.column("labels").to_pylist(), strict=True)}
    # The carve uses every video of the split (failed ones too, see FeatureStore._with_subset): the same
    # training folds as train-cnn's, which read the same table.
    all_videos = fs.videos(split=cfg.split, status=None)
    fold_of = video_folds(all_videos.column("video_id").to_pylist(), all_videos.column("subset").to_pylist(),
                          all_videos.column("group").to_pylist(), cfg.cross_fit)
    missing_folds = sorted({fold_of[v] for v in ids} - set(pairs))
    if missing_folds:
        raise FileNotFoundError(f"no CNN pair for fold(s) {missing_folds} of split {cfg.split}")
    expected = {v: _pair_runs(*pairs[fold_of[v]]) for v in ids}
    clips_version = open_table(store_uri, CLIPS.name, cfg.storage_options).version

    _drop_unreadable(store_uri, cfg.storage_options)
    existing, table_dims, rebuild = _existing_features(store_uri, cfg.split, cfg.storage_options)
    have_scores = _existing_scores(store_uri, cfg.split, expected, cfg.storage_options)
    # A pair whose stored rows were made with another view count (or by an interrupted rewrite) is redone whole.
    stale = {f for f, pair in pairs.items() if stored_test_views(store_uri, *pair) != cfg.test_views}
    need_features = [v for v in ids if fold_of[v] in stale or existing.get(v) != {(fold_of[v], *pairs[fold_of[v]])}]
    need_scores = [v for v in ids if fold_of[v] in stale or v not in have_scores]
    replace = {v for v in need_features if v in existing}
    todo = [v for v in ids if v in set(need_features) | set(need_scores)]
    log.info("features: %d ok videos in split %d (%d CNN pair(s), %d test view(s)); %d need features (%d replacing "
             "other runs' or other views'), %d need scores", len(ids), cfg.split, len(pairs), cfg.test_views,
             len(need_features), len(replace), len(need_scores))

    node_tasks: Counter = Counter()
    n_rows = n_written = n_scored = 0
    dims: tuple[int, int] | None = None
    ff_version: int | None = None
    vs_version: int | None = None
    if stale:
        _record_test_views(store_uri, [pairs[f] for f in stale], None)
    if todo:
        resources = connect(cfg.address)
        in_flight = cfg.workers or max(1, int(float(resources.get("CPU", 1))))
        opts = task_options("features", in_flight=in_flight, use_gpu=cfg.use_gpu, cluster=resources)
        task = ray.remote(_features_task).options(scheduling_strategy="SPREAD", max_retries=2, **opts)
        need_f = set(need_features)
        # A task runs one CNN pair: its videos are of one fold.
        chunks = [(f, c[i:i + cfg.videos_per_task]) for f in pairs
                  for c in [[v for v in todo if fold_of[v] == f]] for i in range(0, len(c), cfg.videos_per_task)]
        pending_chunks = list(reversed(chunks))
        running: dict[Any, list[str]] = {}
        batch: list[dict[str, Any]] = []

        def launch() -> None:
            while pending_chunks and len(running) < in_flight:
                f, c = pending_chunks.pop()
                ref = task.remote(store_uri, clips_version, c, [v for v in c if v in need_f], cfg.split, f,
                                  *pairs[f], tracking_uri, cfg.batch_size, cfg.storage_options, int(opts["num_cpus"]),
                                  cfg.test_views, cfg.amp)
                running[ref] = c

        def flush() -> None:
            nonlocal ff_version, vs_version, n_rows, n_written, n_scored, dims, table_dims, rebuild
            if not batch:
                return
            got = [r["dims"] for r in batch if r["dims"] is not None]
            if not got:
                batch.clear()
                return
            dims = got[0]
            if table_dims is not None and tuple(table_dims) != tuple(dims):
                raise ValueError(
                    f"frame_features in {store_uri!r} holds features of dims {table_dims} but these CNNs give "
                    f"{dims}; train with the same --feature-dim, or delete the table to start over")
            frags = [f for r in batch for f in r["fragments"]]
            written = [v for r in batch for v in r["written"]]
            if frags:
                try:
                    ff_version = _commit_features(store_uri, frags, written, cfg.split, frame_features_schema(*dims),
                                                  cfg.storage_options, rebuild=rebuild)
                except Exception as err:
                    err.add_note(f"while committing {len(written)} video(s) to the {FRAME_FEATURES_NAME} table")
                    raise
                table_dims, rebuild = dims, False
            n_rows += sum(r["n_rows"] for r in batch)
            n_written += len(written)
            for fold in sorted({r["fold"] for r in batch}):
                scored = {v: s for r in batch if r["fold"] == fold for v, s in r["scores"].items() if v in info}
                sv = sorted(scored)
                if not sv:
                    continue
                sp = np.stack([scored[v][0] for v in sv])
                mp = np.stack([scored[v][1] for v in sv])
                subsets = [info[v][0] for v in sv]
                labels = [info[v][1] if info[v][1] is not None else -1 for v in sv]
                multi = [list(info[v][2]) if info[v][2] is not None else [lab] if lab >= 0 else []
                         for v, lab in zip(sv, labels, strict=True)]
                runs = _pair_runs(*pairs[fold])
                for model, s in ((SPATIAL_CNN, sp), (MOTION_CNN, mp), (TWO_STREAM_CNN, two_stream_scores(sp, mp))):
                    vs_version = upsert_video_scores(store_uri, model, cfg.split, runs[model], sv, subsets, s,
                                                     labels, multi, storage_options=cfg.storage_options,
                                                     folds=[fold] * len(sv))
                n_scored += len(sv)
            batch.clear()

        launch()
        with tqdm(total=len(todo), desc="features", unit="video", disable=None if cfg.progress else True) as bar:
            while running:
                done, _ = ray.wait(list(running), num_returns=1)
                ref = done[0]
                chunk = running.pop(ref)
                try:
                    res = ray.get(ref)
                except Exception as err:  # the run ends: say which videos the task held
                    more = f" and {len(chunk) - 1} more" if len(chunk) > 1 else ""
                    err.add_note(f"while computing the features of {chunk[0]}{more}")
                    raise
                if res["missing"]:
                    log.warning("%d video(s) have no clips at clips version %d, e.g. %s", len(res["missing"]),
                                clips_version, res["missing"][:3])
                node_tasks[res["node_id"]] += 1
                batch.append(res)
                bar.update(len(chunk))
                launch()
                if len(batch) >= cfg.commit_every:
                    flush()
            flush()
    if stale:  # every video of these pairs now has rows and scores made with these views
        _record_test_views(store_uri, [pairs[f] for f in stale], cfg.test_views)

    metrics = log_cnn_metrics(cfg, store_uri, pairs)
    if dims is None:
        dims = table_dims or (0, 0)
    if FRAME_FEATURES_NAME in fs.versions():
        _index_features(cfg)
        ff_version = None  # indexing commits new versions
    if ff_version is None:
        ds_ver = fs.versions()
        ff_version = ds_ver.get(FRAME_FEATURES_NAME)
        vs_version = vs_version or ds_ver.get(VIDEO_SCORES.name)
    return FeaturesResult(
        spatial_run_id=",".join(s for s, _ in pairs.values()), motion_run_id=",".join(m for _, m in pairs.values()),
        n_videos=len(ids), n_features_written=n_written, n_skipped=len(ids) - len(todo), n_rows_written=n_rows,
        n_scored=n_scored, spatial_dim=int(dims[0]), motion_dim=int(dims[1]), frame_features_version=ff_version,
        video_scores_version=vs_version, node_tasks=dict(node_tasks), seconds=time.perf_counter() - t0,
        metrics=metrics, fold_runs=dict(pairs),
    )
