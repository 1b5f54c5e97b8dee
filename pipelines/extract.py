"""`hyvid extract`: videos -> sampled RGB frames + stacked optical flow in the store's `clips` table.

How a run goes:
1. The dataset is discovered (`pipelines.data.datasets`) and compared with the store: videos whose
   `videos` row exists with the same settings hash are skipped, so a re-run adds nothing and a
   killed run resumes. A store extracted with other settings is refused unless `overwrite`.
2. Ray tasks, one per shard of a few videos, decode, sample and compute flow
   (`pipelines.data.video.extract_clip_arrays`), write the `clips` rows as Lance fragment files
   (invisible until committed) and return only the fragments' metadata and the small `videos` rows.
   With `--flow tvl1-torch` on a cluster with GPUs, the tasks send each video's frame pairs to GPU
   flow actors (`FlowActor`, placed by `cluster.resources.flow_actor_options`) instead of solving
   them on their CPU: while an actor solves one task's pairs, the other tasks decode. Without GPUs
   (or with `--flow-device cpu`) the tasks solve them on their own CPU, as for every other method.
3. The driver commits in batches: first the clips fragments, then the batch's `videos` rows, each
   an atomic Lance append. A video counts as extracted only once its `videos` row exists, so
   readers take clips of `ok` videos only; clips left by a run that died between the two commits
   belong to videos without a row, and are deleted before those videos are extracted again.

Bad files (empty, not a video, truncated, one frame, frames beyond the size and aspect bounds)
become `videos` rows with status `failed` and the reason; a worker process that dies is retried by
Ray, then video by video, so one poison file cannot stop the run.

Re-runs revisit what is committed: a failed video whose file changed since (size or mtime) is
extracted again, every failed one with `retry_failed`; manifest labels, subsets, groups and paths
that changed are copied into the `videos` rows in one commit, without re-extracting. The run holds
the store's extract lease throughout (`store.lease`), so two extracts into one store never both
add a video: the second waits for the first (`wait_s`), then skips what it committed.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from collections import deque
from dataclasses import asdict, dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from hyvid.models.registry import check_split
from hyvid.pipelines import faults
from hyvid.pipelines.data.datasets import Dataset, VideoEntry, load_dataset
from hyvid.pipelines.data.shards import FlowActor, ShardResult, extract_shard, file_signature, videos_row
from hyvid.pipelines.data.video import (
    DEFAULT_FLOW,
    DEFAULT_FLOW_DEVICE,
    DEFAULT_MAX_ASPECT,
    DEFAULT_MAX_LONG_SIDE,
    DEFAULT_POSITIONS,
    DEFAULT_SIZE,
    DEFAULT_STACK,
    DIS_PRESET,
    FLOW_CHUNK,
    FLOW_METHODS,
    MAX_ASPECT,
    MAX_LONG_SIDE,
    MAX_SIZE,
    MIN_SIZE,
    FlowServiceError,
    check_flow_device,
    peak_bytes,
    resolve_flow_device,
)
from hyvid.store.damage import drop_broken, videos_missing_clips
from hyvid.store.lance_io import (
    commit_fragments,
    commit_replacing,
    open_table,
    row_addresses,
    table_exists,
    table_uri,
    write_table_fragments,
)
from hyvid.store.lease import DEFAULT_WAIT_S, EXTRACT_LEASE, Lease
from hyvid.store.tables import (
    CLASSES,
    CLIPS,
    EXTRACT_SETTINGS_METADATA_KEY,
    FLOW_BOUND,
    FLOW_ENCODING,
    FRAME_ENCODING,
    FRAME_JPEG_QUALITY,
    STATUS_FAILED,
    STATUS_OK,
    VIDEOS,
)

log = logging.getLogger(__name__)

# Bump when stored bytes would differ for the same settings (sampling, codecs, quantization).
FORMAT_VERSION = 1
MAX_SHARD = 8  # videos per task: a killed worker loses at most this many (~4 s of work at 320x240)
SHARDS_PER_WORKER = 4  # at least this many shards per worker, so the last ones balance
COMMIT_EVERY_VIDEOS = 256
COMMIT_EVERY_S = 20.0  # bounds the work a dead driver loses
TASK_RETRIES = 3  # Ray retries a task whose worker or node died
# Frame pairs per request to a GPU flow actor: a whole video's stacks at the defaults (25 x 10);
# a GPU needs batches this large to be busy (a batch of 32 at 128 px is ~20 launches' worth of work).
ACTOR_FLOW_CHUNK = 256
ACTOR_RESTARTS = 3  # Ray restarts a flow actor whose process died, and retries the calls it held

# Upper bounds of the count and size settings: each far above any use (the paper samples 25
# positions with L=10 at 256 px), low enough that a typo cannot make one video cost a node.
MAX_POSITIONS = 500
MAX_STACK = 64
MAX_WORKERS = 4096  # concurrent tasks; a local Ray still gets at most this machine's cores
MAX_SHARD_SIZE = 256
MAX_TASK_RETRIES = 10
MAX_WAIT_S = 7 * 24 * 3600.0
# The arrays one video's extraction holds (pipelines.data.video.peak_bytes) stay under this, so a
# task stays under 3 GB with the decoder and the interpreter: 260 MB at the defaults.
MAX_VIDEO_BYTES = 2 * 1024**3
# Manifest columns a re-run copies into existing `videos` rows (no re-extraction needed).
METADATA_COLUMNS = ("path", "class_name", "label", "labels", "group", "splits")


def _check_bound(name: str, value: object, low: float, high: float, flag: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (low <= value <= high):
        raise ValueError(f"{name} must be between {low:g} and {high:g}, got {value!r}; pass {flag} in that range")


@dataclass(frozen=True)
class ExtractConfig:
    """Settings of one extraction run. Only frames/stack/flow/size (and the codecs) enter the hash."""

    dataset: str  # UCF-101-layout directory or manifest CSV
    store_uri: str
    split: int = 1  # informational: all three splits' membership is recorded
    frames: int = DEFAULT_POSITIONS  # sampled positions per video
    stack: int = DEFAULT_STACK  # L flows per stack
    flow: str = DEFAULT_FLOW
    # Where tvl1-torch runs: auto = the cluster's GPUs through flow actors where it has some, else
    # each task's CPU; cuda insists on GPUs, cpu never uses them. Not in the hash: the same flow.
    flow_device: str = DEFAULT_FLOW_DEVICE
    size: int = DEFAULT_SIZE  # stored short side, pixels
    address: str | None = None  # Ray address; None starts a local Ray
    workers: int | None = None  # concurrent tasks; None = the cluster's CPUs
    overwrite: bool = False
    storage_options: dict | None = None
    use_ray: bool = True  # False: extract in this process (benchmarks, debugging)
    shard_size: int | None = None  # videos per task; None = automatic (<= MAX_SHARD)
    faults: str | None = None  # fault injection (hyvid.pipelines.faults); None: HYVID_FAULTS if set
    task_retries: int = TASK_RETRIES  # Ray retries of a task whose worker or node died
    progress: bool = True
    max_long_side: int = DEFAULT_MAX_LONG_SIDE  # stored long side cap, pixels (frames shrink to fit)
    max_aspect: float = DEFAULT_MAX_ASPECT  # wider (or taller) videos are failed with the reason
    retry_failed: bool = False  # re-extract every failed video (changed files are retried anyway)
    wait_s: float = DEFAULT_WAIT_S  # how long to wait for another writer of the store (0: fail at once)
    allow_failures: bool = False  # exit 0 when some videos failed (1 still when none is extracted)
    local_cpus: int | None = None  # CPUs a local Ray claims; None: min(workers, this machine's cores)

    def __post_init__(self) -> None:
        if not self.dataset:
            raise ValueError("dataset must name a UCF-101-layout directory or a manifest CSV")
        if not self.store_uri:
            raise ValueError("store_uri must be set (a directory or s3://bucket/prefix)")
        check_split(self.split)
        _check_bound("frames", self.frames, 1, MAX_POSITIONS, "--frames")
        _check_bound("stack", self.stack, 1, MAX_STACK, "--stack")
        if self.flow not in FLOW_METHODS:
            raise ValueError(f"flow must be one of {', '.join(FLOW_METHODS)}, got {self.flow!r}")
        check_flow_device(self.flow_device)
        _check_bound("size (stored short side, pixels)", self.size, MIN_SIZE, MAX_SIZE, "--size")
        _check_bound("max_long_side (pixels)", self.max_long_side, self.size, MAX_LONG_SIDE,
                     "--max-long-side (at least --size)")
        _check_bound("max_aspect", self.max_aspect, 1.0, MAX_ASPECT, "--max-aspect")
        if self.workers is not None:
            _check_bound("workers", self.workers, 1, MAX_WORKERS, "--workers")
        if self.local_cpus is not None:
            _check_bound("local_cpus", self.local_cpus, 1, MAX_WORKERS, "--local-cpus")
        _check_bound("task_retries", self.task_retries, 0, MAX_TASK_RETRIES, "task_retries")
        if self.shard_size is not None:
            _check_bound("shard_size", self.shard_size, 1, MAX_SHARD_SIZE, "shard_size")
        _check_bound("wait_s", self.wait_s, 0, MAX_WAIT_S, "--wait")
        need = peak_bytes(self.frames, self.stack, self.size, self.max_long_side)
        if need > MAX_VIDEO_BYTES:
            raise ValueError(
                f"--frames {self.frames} x --stack {self.stack} at --size {self.size} (long side up to "
                f"{self.max_long_side}) needs ~{need / 1024**3:.1f} GB per video, over the "
                f"{MAX_VIDEO_BYTES / 1024**3:.0f} GB bound; lower one of them")
        faults.parse(self.faults)

    def settings(self) -> dict:
        """What determines the stored bytes: the settings that the hash covers."""
        return {
            "format": FORMAT_VERSION,
            "frames": self.frames,
            "stack": self.stack,
            "flow": self.flow,
            "dis_preset": int(DIS_PRESET) if self.flow == "dis" else None,
            "size": self.size,
            "flow_bound": FLOW_BOUND,
            "frame_encoding": FRAME_ENCODING,
            "frame_quality": FRAME_JPEG_QUALITY,
            "flow_encoding": FLOW_ENCODING,
            # The bounds enter the hash only when changed: at their defaults they leave every video
            # of aspect <= 4:1 as stores made before they existed hold it, so those stay valid.
            **({"max_long_side": self.max_long_side} if self.max_long_side != DEFAULT_MAX_LONG_SIDE else {}),
            **({"max_aspect": self.max_aspect} if self.max_aspect != DEFAULT_MAX_ASPECT else {}),
        }

    def config_hash(self) -> str:
        blob = json.dumps(self.settings(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


@dataclass
class ExtractResult:
    """Summary of a run: counts, failures with reasons, throughput and where the work ran."""

    total: int = 0
    ok: int = 0
    failed: int = 0
    skipped: int = 0
    skipped_failed: int = 0  # of the skipped: failed videos left as they were (file unchanged)
    retried: int = 0  # failed videos extracted again (--retry-failed, or their file changed)
    relabeled: int = 0  # videos whose manifest labels/subsets/groups/path changed: rows updated
    redone: int = 0  # ok videos whose clip rows could not all be read: extracted again
    fragments_dropped: int = 0  # unreadable fragments of videos/clips dropped before planning (store.damage)
    failures: list[tuple[str, str]] = field(default_factory=list)  # (video_id, reason)
    frames: int = 0  # source frames decoded
    clips: int = 0  # clip rows committed
    seconds: float = 0.0
    node_spread: dict[str, int] = field(default_factory=dict)  # node id -> videos extracted
    config_hash: str = ""
    versions: dict[str, int] = field(default_factory=dict)
    orphans_deleted: int = 0
    task_seconds: float = 0.0  # wall time inside extraction tasks, summed
    task_cpu_seconds: float = 0.0  # CPU time of those tasks: / seconds = cores really used
    flow_actors: int = 0  # GPU flow actors the tasks sent their tvl1-torch pairs to (0: flow on the tasks' CPUs)
    flow_actor_pairs: int = 0  # frame pairs those actors solved

    @property
    def frames_per_s(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    @property
    def exit_code(self) -> int:
        """0 unless no video of the dataset is extracted: none now, none from earlier runs."""
        return 1 if self.total > 0 and self.ok == 0 and self.skipped == self.skipped_failed else 0

    def exit_status(self, allow_failures: bool = False) -> int:
        """`exit_code`, and also 1 when any video is failed (now, or unchanged since it failed) unless
        `allow_failures`: a script sees that not every input made it."""
        if self.exit_code or allow_failures:
            return self.exit_code
        return 1 if self.failed or self.skipped_failed else 0

    def failure_line(self) -> str:
        """The one line a run that extracted nothing ends with."""
        first = f" (first: {self.failures[0][0]}: {self.failures[0][1]})" if self.failures else ""
        if self.skipped_failed:
            return (f"nothing extracted: all {self.total} videos are failed in the store{first}; fix the files "
                    "and run again (changed files are retried), or pass --retry-failed")
        return f"nothing could be extracted: all {self.total} videos failed{first}"


# --- worker side: pipelines.data.shards --------------------------------------------------------


def _shard_task(entries, store_uri, settings, config_hash, storage_options, fault_spec,
                flow_actor=None) -> ShardResult:
    import cv2
    import ray

    # One task per CPU: OpenCV's and torch's own threads would only fight the other tasks for cores.
    cv2.setNumThreads(1)
    flow_batch = None
    if settings["flow"] == "tvl1-torch":
        import torch

        torch.set_num_threads(1)
    if flow_actor is not None:
        def flow_batch(i0, i1):
            try:
                return ray.get(flow_actor.flows.remote(i0, i1))
            except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as err:
                raise FlowServiceError(f"the GPU flow actor failed after {ACTOR_RESTARTS} restarts: "
                                       f"{type(err).__name__}") from err
    node_id = ray.get_runtime_context().get_node_id()
    # Without an actor, tvl1-torch runs on this task's CPU (a task holds no GPU).
    return extract_shard(entries, store_uri, settings, config_hash, storage_options, node_id, fault_spec,
                         flow_device="cpu", flow_batch=flow_batch,
                         flow_chunk=ACTOR_FLOW_CHUNK if flow_actor else FLOW_CHUNK)


# --- driver side ---------------------------------------------------------------------------------


def _start_flow_actors(cfg: ExtractConfig) -> list:
    """The GPU flow actors of a tvl1-torch run on a cluster with GPUs ([] where the tasks solve on their CPU)."""
    import ray

    from hyvid.cluster.resources import flow_actor_options

    if cfg.flow != "tvl1-torch" or cfg.flow_device == "cpu":
        return []
    n, opts = flow_actor_options()
    if n == 0:
        if cfg.flow_device == "cuda":
            raise ValueError("--flow-device cuda, but the Ray cluster has no GPU; pass --flow-device auto (the "
                             "CPUs where there is no GPU) or cpu, or run on a cluster with GPUs (--address)")
        return []
    actor = ray.remote(FlowActor).options(max_restarts=ACTOR_RESTARTS, max_task_retries=ACTOR_RESTARTS, **opts)
    actors = [actor.remote(cfg.flow_device) for _ in range(n)]
    log.info("tvl1-torch flow on %d GPU actors (%s each)", n, opts)
    return actors


def _stop_flow_actors(actors: list) -> int:
    """Kill the flow actors; returns the frame pairs they solved (those that still answer)."""
    if not actors:
        return 0
    import ray

    pairs = 0
    for a in actors:
        try:
            pairs += ray.get(a.stats.remote(), timeout=30)["pairs"]
        except Exception:  # noqa: BLE001 - a dead actor solved nothing more; the run's result stands
            pass
        ray.kill(a)
    return pairs


_STATE_COLUMNS = ["video_id", "extract_config", "status", "file_size", "file_mtime", "n_positions", *METADATA_COLUMNS]


def _store_state(cfg: ExtractConfig) -> tuple[dict[str, dict], dict | None]:
    """{video_id: its `videos` row (state and manifest columns)}, and the settings recorded there."""
    so = cfg.storage_options
    if not table_exists(cfg.store_uri, VIDEOS.name, so):
        return {}, None
    ds = open_table(cfg.store_uri, VIDEOS.name, so)
    meta = (ds.schema.metadata or {}).get(EXTRACT_SETTINGS_METADATA_KEY)
    rows = ds.to_table(columns=_STATE_COLUMNS).to_pylist()
    return {r["video_id"]: r for r in rows}, (json.loads(meta) if meta else None)


def _incomplete_videos(cfg: ExtractConfig, stored: dict[str, dict]) -> set[str]:
    """Ok videos with fewer `clips` rows than their sampled positions: rows lost to a damaged
    store (a data file deleted, its fragment dropped). They are extracted again, not skipped."""
    ok = {v: r["n_positions"] for v, r in stored.items() if r["status"] == STATUS_OK}
    missing = videos_missing_clips(cfg.store_uri, ok, cfg.storage_options) if ok else set()
    if missing:
        log.warning("%d video(s) marked ok have lost clip rows (e.g. %s): extracting them again",
                    len(missing), sorted(missing)[0])
    return missing


def _plan(cfg: ExtractConfig, entries: list[VideoEntry], stored: dict[str, dict],
          result: ExtractResult, incomplete: set[str] = frozenset()) -> tuple[list[VideoEntry], list[VideoEntry]]:
    """(videos to extract, videos whose manifest columns changed) of a run over `stored`.

    A failed video is extracted again with --retry-failed, or when its file changed since (size
    or mtime differ from those recorded: the common case of a fixed file), so a re-run after a
    fix needs no flag; an unchanged broken file is not decoded again on every run.
    """
    pending, relabel = [], []
    for e in entries:
        row = stored.get(e.video_id)
        if row is None:
            pending.append(e)
            continue
        if e.video_id in incomplete and row["status"] == STATUS_OK:
            pending.append(e)
            result.redone += 1
            continue
        if row["status"] == STATUS_FAILED and (
                cfg.retry_failed or file_signature(e.path) != (row["file_size"], row["file_mtime"])):
            pending.append(e)
            result.retried += 1
            continue
        fresh = videos_row(e, status="", error=None, config_hash="", node_id="")
        if any(fresh[c] != row[c] for c in METADATA_COLUMNS):
            relabel.append(e)
        result.skipped += 1
        result.skipped_failed += row["status"] == STATUS_FAILED
    return pending, relabel


def _update_metadata(cfg: ExtractConfig, entries: list[VideoEntry]) -> int:
    """Copy the manifest's labels, subsets, groups and paths into existing rows: one commit."""
    so = cfg.storage_options
    ds = open_table(cfg.store_uri, VIDEOS.name, so)
    by_id = {e.video_id: videos_row(e, status="", error=None, config_hash="", node_id="") for e in entries}
    old = row_addresses(ds, VIDEOS.schema.names, pc.field("video_id").isin(pa.array(list(by_id), pa.string())))
    rows = old.drop(["_rowaddr"]).to_pylist()
    for r in rows:
        r.update({c: by_id[r["video_id"]][c] for c in METADATA_COLUMNS})
    data = pa.Table.from_pylist(rows, schema=ds.schema)
    frags = write_table_fragments(cfg.store_uri, VIDEOS.name, data, so)
    version = commit_replacing(cfg.store_uri, VIDEOS.name, old.column("_rowaddr").to_pylist(), frags, so,
                               read_version=ds.version)
    log.info("updated labels/subsets/groups of %d videos from the manifest (videos version %d)", len(rows), version)
    return version


def _videos_schema(cfg: ExtractConfig) -> pa.Schema:
    meta = dict(VIDEOS.schema.metadata or {})
    meta[EXTRACT_SETTINGS_METADATA_KEY] = json.dumps(cfg.settings(), sort_keys=True).encode()
    return VIDEOS.schema.with_metadata(meta)


def _empty_table(cfg: ExtractConfig, name: str, schema: pa.Schema, *, truncate: bool) -> None:
    """Create an empty table, or (truncate) empty an existing one; old versions stay readable.

    Creating the tables up front lets workers write fragments into an existing dataset.
    """
    import lance

    so = cfg.storage_options
    exists = table_exists(cfg.store_uri, name, so)
    if exists and not truncate:
        return
    read_version = open_table(cfg.store_uri, name, so).version if exists else None
    lance.LanceDataset.commit(table_uri(cfg.store_uri, name), lance.LanceOperation.Overwrite(schema, []),
                              read_version=read_version, storage_options=so)


def _add_new_columns(cfg: ExtractConfig) -> None:
    """Give a `videos` table written by an older hyvid the columns added since (all null there)."""
    ds = open_table(cfg.store_uri, VIDEOS.name, cfg.storage_options)
    missing = [f for f in VIDEOS.schema if f.name not in ds.schema.names]
    if missing:
        ds.add_columns(missing)


def _write_classes(cfg: ExtractConfig, dataset: Dataset) -> None:
    so = cfg.storage_options
    classes = list(dataset.classes)
    if table_exists(cfg.store_uri, CLASSES.name, so):
        t = open_table(cfg.store_uri, CLASSES.name, so).to_table()
        stored = [n for _, n in sorted(zip(t["label"].to_pylist(), t["class_name"].to_pylist(), strict=True))]
        if stored == classes:
            return
        if stored:
            raise ValueError(
                f"store {cfg.store_uri!r} holds {len(stored)} classes ({', '.join(stored[:5])}...) that differ from "
                f"the {len(classes)} of dataset {dataset.source!r}; pass --overwrite to replace them, "
                "or use a new --store"
            )
    data = pa.table({"label": pa.array(range(len(classes)), pa.int32()), "class_name": classes}, schema=CLASSES.schema)
    frags = write_table_fragments(cfg.store_uri, CLASSES.name, data, so)
    commit_fragments(cfg.store_uri, CLASSES.name, frags, CLASSES.schema, so)


def _delete_orphan_clips(cfg: ExtractConfig, video_ids: list[str]) -> int:
    """Delete clips rows of videos that have no `videos` row (a run died between its two commits)."""
    so = cfg.storage_options
    if not video_ids or not table_exists(cfg.store_uri, CLIPS.name, so):
        return 0
    ds = open_table(cfg.store_uri, CLIPS.name, so)
    pred = pc.field("video_id").isin(pa.array(video_ids, pa.string()))
    n = ds.count_rows(filter=pred)
    if n:
        log.warning("deleting %d clips rows left by an interrupted run (videos not committed)", n)
        ds.delete(pred)
    return n


def _shard_size(cfg: ExtractConfig, n_pending: int, workers: int) -> int:
    if cfg.shard_size:
        return cfg.shard_size
    return max(1, min(MAX_SHARD, math.ceil(n_pending / (workers * SHARDS_PER_WORKER))))


class _Committer:
    """Accumulates finished shards and commits them: clips first, then the `videos` rows."""

    def __init__(self, cfg: ExtractConfig, result: ExtractResult, lease: Lease):
        self.cfg, self.result, self.lease = cfg, result, lease
        self.fragments: list = []
        self.videos: list[pa.Table] = []
        self.n_videos = 0
        self.last = time.monotonic()
        self.start = time.perf_counter()
        self.videos_schema = _videos_schema(cfg)

    def progress(self, bar, n: int) -> None:
        bar.update(n)
        bar.set_postfix_str(f"{self.result.frames / max(1e-9, time.perf_counter() - self.start):.0f} frames/s")

    def add(self, shard: ShardResult) -> None:
        self.fragments.extend(shard.clip_fragments)
        self.videos.append(shard.videos)
        self.n_videos += shard.videos.num_rows
        r = self.result
        r.frames += shard.frames
        r.clips += shard.clips
        r.task_seconds += shard.seconds
        r.task_cpu_seconds += shard.cpu_seconds
        for row in shard.videos.select(["video_id", "status", "error", "node_id"]).to_pylist():
            if row["status"] == STATUS_OK:
                r.ok += 1
                r.node_spread[row["node_id"]] = r.node_spread.get(row["node_id"], 0) + 1
            else:
                r.failed += 1
                r.failures.append((row["video_id"], row["error"]))
        if self.n_videos >= COMMIT_EVERY_VIDEOS or time.monotonic() - self.last >= COMMIT_EVERY_S:
            self.commit()

    def commit(self) -> None:
        if not self.videos:
            return
        try:
            self._commit()
        except Exception as err:
            err.add_note(f"while committing {self.n_videos} video(s) to the clips and videos tables")
            raise

    def _commit(self) -> None:
        cfg, so = self.cfg, self.cfg.storage_options
        self.lease.check()  # a writer whose lease was taken over must not commit
        if self.fragments:
            self.result.versions[CLIPS.name] = commit_fragments(cfg.store_uri, CLIPS.name, self.fragments,
                                                                CLIPS.schema, so)
        videos = pa.concat_tables(self.videos).replace_schema_metadata(self.videos_schema.metadata)
        frags = write_table_fragments(cfg.store_uri, VIDEOS.name, videos, so)
        # Retried videos have a failed row already: replace it in the same commit.
        ds = open_table(cfg.store_uri, VIDEOS.name, so)
        old = row_addresses(ds, ["video_id"], pc.field("video_id").isin(videos.column("video_id")))
        self.result.versions[VIDEOS.name] = commit_replacing(
            cfg.store_uri, VIDEOS.name, old.column("_rowaddr").to_pylist(), frags, so, read_version=ds.version)
        log.debug("committed %d videos", self.n_videos)
        self.fragments, self.videos, self.n_videos, self.last = [], [], 0, time.monotonic()


def _crash_row(e: VideoEntry, config_hash: str, reason: str) -> pa.Table:
    row = videos_row(e, status=STATUS_FAILED, error=reason, config_hash=config_hash, node_id="")
    return pa.Table.from_pylist([row], schema=VIDEOS.schema)


def _run_ray(cfg, shards, workers, settings, config_hash, committer, bar, flow_actors=()) -> None:
    """Keep `workers` shard tasks in flight; a task raising an ordinary error (the store cannot be
    written, say) ends the run after committing what finished, as that would fail every video."""
    import ray

    # The worker process or its node died (or was killed for memory): Ray retried the task already.
    crashes = (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError, ray.exceptions.OutOfMemoryError)
    from hyvid.cluster.resources import task_options

    # One CPU per task (decoding and flow are CPU work: resources never gives extraction a GPU).
    task = ray.remote(_shard_task).options(max_retries=cfg.task_retries, **task_options("extract"))
    fault_spec = faults.resolve(cfg.faults)
    queue = deque(shards)
    inflight: dict = {}
    sent = 0
    while queue or inflight:
        while queue and len(inflight) < workers:
            entries = queue.popleft()
            actor = flow_actors[sent % len(flow_actors)] if flow_actors else None
            ref = task.remote(entries, cfg.store_uri, settings, config_hash, cfg.storage_options, fault_spec, actor)
            inflight[ref] = entries
            sent += 1
        ready, _ = ray.wait(list(inflight), num_returns=1)
        for ref in ready:
            entries = inflight.pop(ref)
            try:
                shard = ray.get(ref)
            except crashes as err:
                if len(entries) > 1:
                    # Retries are spent: find the culprit by extracting its videos one per task.
                    log.warning("a shard of %d videos failed after %d retries (%s); retrying them one by one",
                                len(entries), cfg.task_retries, type(err).__name__)
                    queue.extend([e] for e in entries)
                    continue
                reason = (f"the worker process died {cfg.task_retries + 1} time(s) while extracting this video "
                          f"({type(err).__name__}): the decoder may crash on this file, or memory ran out")
                shard = ShardResult([], _crash_row(entries[0], config_hash, reason), 0, 0, 0.0)
            except Exception as err:  # an ordinary error ends the run: say which videos it met it on
                err.add_note(_videos_note(entries))
                raise
            committer.add(shard)
            committer.progress(bar, shard.videos.num_rows)


def _videos_note(entries: list[VideoEntry]) -> str:
    """The videos a failed task or commit concerned, for the error's one line."""
    more = f" and {len(entries) - 1} more" if len(entries) > 1 else ""
    return f"while extracting {entries[0].video_id}{more}"


def _run_local(cfg, shards, settings, config_hash, committer, bar) -> None:
    for entries in shards:
        shard = extract_shard(entries, cfg.store_uri, settings, config_hash, cfg.storage_options, "local",
                              faults.resolve(cfg.faults), flow_device=cfg.flow_device)
        committer.add(shard)
        committer.progress(bar, len(entries))


def _index_clips(cfg: ExtractConfig) -> None:
    """BTREE on clips.video_id, so reading one video's clips does not scan the whole table."""
    from hyvid.store.indexes import ensure_scalar_index

    if table_exists(cfg.store_uri, CLIPS.name, cfg.storage_options):
        ensure_scalar_index(cfg.store_uri, CLIPS.name, storage_options=cfg.storage_options)


def extract(cfg: ExtractConfig, dataset: Dataset | None = None) -> ExtractResult:
    """Extract every not-yet-extracted video of the dataset into the store (see the module docstring).

    The whole run holds the store's extract lease (`store.lease`): a second extract into the same
    store waits up to `wait_s` for it, then finds the videos committed and skips them.
    """
    t0 = time.perf_counter()
    dataset = dataset or load_dataset(cfg.dataset)
    with Lease(cfg.store_uri, EXTRACT_LEASE, "hyvid extract", wait_s=cfg.wait_s,
               storage_options=cfg.storage_options) as lease:
        result = _extract_leased(cfg, dataset, lease)
    result.seconds = time.perf_counter() - t0
    log.info("extract: %d ok, %d failed, %d skipped, %d retried, %.0f source frames/s", result.ok, result.failed,
             result.skipped, result.retried, result.frames_per_s)
    return result


def _local_cpus(cfg: ExtractConfig) -> int:
    """CPUs a local Ray claims: never more than this machine has unless --local-cpus says so."""
    cores = os.cpu_count() or 1
    if cfg.local_cpus is not None:
        return cfg.local_cpus
    if cfg.workers and cfg.workers > cores:
        log.info("--workers %d > this machine's %d cores: a local Ray gets %d CPUs, the tasks queue "
                 "(--local-cpus N to claim more)", cfg.workers, cores, cores)
    return min(cfg.workers or cores, cores)


def _extract_leased(cfg: ExtractConfig, dataset: Dataset, lease: Lease) -> ExtractResult:
    from tqdm import tqdm

    config_hash = cfg.config_hash()
    result = ExtractResult(total=len(dataset.entries), config_hash=config_hash)
    for name, schema in ((CLIPS.name, CLIPS.schema), (CLASSES.name, CLASSES.schema),
                         (VIDEOS.name, _videos_schema(cfg))):
        _empty_table(cfg, name, schema, truncate=cfg.overwrite)
    _add_new_columns(cfg)
    for name in (VIDEOS.name, CLIPS.name):
        result.fragments_dropped += len(drop_broken(cfg.store_uri, name, cfg.storage_options))
    stored, stored_settings = _store_state(cfg)
    other = {r["extract_config"] for r in stored.values() if r["extract_config"] != config_hash}
    if other:
        raise ValueError(
            f"store {cfg.store_uri!r} already holds {len(stored)} videos extracted with other settings "
            f"(extract_config {', '.join(sorted(other))}"
            + (f": {json.dumps(stored_settings, sort_keys=True)}" if stored_settings else "")
            + f"); this run's settings are {json.dumps(cfg.settings(), sort_keys=True)} ({config_hash}). "
            "Pass --overwrite to re-extract into this store, or use a new --store."
        )
    _write_classes(cfg, dataset)

    pending, relabel = _plan(cfg, dataset.entries, stored, result, _incomplete_videos(cfg, stored))
    if relabel:
        result.versions[VIDEOS.name] = _update_metadata(cfg, relabel)
        result.relabeled = len(relabel)
    result.orphans_deleted = _delete_orphan_clips(cfg, [e.video_id for e in pending])
    if result.skipped:
        log.info("%d of %d videos are already in the store with these settings (%d of them failed, file "
                 "unchanged): skipped", result.skipped, len(dataset.entries), result.skipped_failed)

    if pending:
        if cfg.flow == "tvl1-torch" and not cfg.use_ray:
            resolve_flow_device(cfg.flow_device)  # --flow-device cuda without a GPU: one error, not one per video
        workers = cfg.workers or (os.cpu_count() or 1)
        flow_actors: list = []
        if cfg.use_ray:
            import ray

            from hyvid.cluster.connect import connect

            connect(cfg.address, _local_cpus(cfg))
            flow_actors = _start_flow_actors(cfg)
            result.flow_actors = len(flow_actors)
            # A task waiting on a flow actor lends Ray its CPU: two more per actor keep decoding meanwhile.
            workers = cfg.workers or max(1, int(ray.cluster_resources().get("CPU", 1))) + 2 * len(flow_actors)
        size = _shard_size(cfg, len(pending), workers)
        shards = [pending[i:i + size] for i in range(0, len(pending), size)]
        settings = cfg.settings()
        committer = _Committer(cfg, result, lease)
        with tqdm(total=len(pending), desc="extract", unit="video", disable=None if cfg.progress else True) as bar:
            try:
                if cfg.use_ray:
                    _run_ray(cfg, shards, workers, settings, config_hash, committer, bar, flow_actors)
                else:
                    _run_local(cfg, shards, settings, config_hash, committer, bar)
            finally:
                # Whatever finished is kept, even on Ctrl-C: the next run resumes after it.
                committer.commit()
                result.flow_actor_pairs = _stop_flow_actors(flow_actors)
        _compact_videos(cfg)
        _index_clips(cfg)
    return result


def _compact_videos(cfg: ExtractConfig) -> None:
    """Merge the small per-batch fragments of `videos` (a few KB each) so scans stay fast."""
    ds = open_table(cfg.store_uri, VIDEOS.name, cfg.storage_options)
    if len(ds.get_fragments()) > 16:
        ds.optimize.compact_files()


def ok_video_ids(store_uri: str, storage_options: dict | None = None) -> list[str]:
    """Ids of the successfully extracted videos: readers take clips of these only."""
    ds = open_table(store_uri, VIDEOS.name, storage_options)
    t = ds.to_table(columns=["video_id"], filter=pc.field("status") == STATUS_OK)
    return t["video_id"].to_pylist()


def config_summary(cfg: ExtractConfig) -> str:
    d = asdict(cfg)
    d.pop("storage_options", None)  # may hold credentials
    return json.dumps(d, sort_keys=True, default=str)
