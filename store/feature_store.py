"""The query API over a store: videos, clips, per-frame features, sequences, scores, similar frames.

Every later stage (LSTMs, fusion, hybrid, reports) and the `hyvid query` CLI reads through
`FeatureStore`, so the rules about reading live here once:

* User values (video ids, class names, model names) are never pasted into Lance SQL filter
  strings; filters are `pyarrow.compute` expressions, which Lance receives as typed literals.
* One video's rows are found through the scalar (BTREE) index on `video_id` when
  `store.indexes.ensure_scalar_index` has built it, so a lookup does not grow with the store.
* Opened tables are cached (index and metadata caches stay warm between queries). By default
  each read first checks for a newer commit (a cheap listing of `_versions/`) so a store that
  is being written to is always read at its latest version; `follow_latest=False` pins the
  versions seen at first use (call `refresh()` to move on), which also saves that listing on
  object stores.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterable, Sequence

import lance
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torch.utils.data import Dataset

from hyvid.models.registry import STREAMS, check_model_names
from hyvid.store.indexes import VECTOR_METRIC, vector_index_name
from hyvid.store.lance_io import open_table, table_exists
from hyvid.store.splits import subset_of, val_groups
from hyvid.store.tables import (
    CLASSES,
    CLIPS,
    FRAME_FEATURES_NAME,
    FRAME_FEATURES_PROVENANCE,
    STATUS_OK,
    SUBSETS,
    TABLE_NAMES,
    VIDEO_SCORES,
    VIDEOS,
)

log = logging.getLogger(__name__)

TRAINVAL = "trainval"  # the official training list, before validation is carved out of it
VIDEO_SUBSETS = (*SUBSETS, TRAINVAL)
# Which stage creates each table, for errors on a store that is not built that far yet.
_CREATED_BY = {
    VIDEOS.name: "hyvid extract",
    CLASSES.name: "hyvid extract",
    CLIPS.name: "hyvid extract",
    FRAME_FEATURES_NAME: "hyvid features",
    VIDEO_SCORES.name: "hyvid features (CNN scores) or hyvid train / hybrid",
}
# Frame-level nearest-neighbour search uses the metric the vector indexes are built with.
SIMILAR_METRIC = VECTOR_METRIC


@dataclass(frozen=True)
class VideoFeatures:
    """Video-level features: the mean over a video's frames of each stream (the fusion net's input)."""

    video_ids: list[str]
    features: dict[str, np.ndarray]  # stream -> float32 [N, D]
    labels: np.ndarray  # int64 [N], the first (or only) label
    labels_multi: list[list[int]]  # all labels per video (multi-label datasets)


@dataclass(frozen=True)
class ScoreSet:
    """One model's class scores for the videos of a split, as stored in `video_scores`."""

    video_ids: list[str]
    scores: np.ndarray  # float32 [N, C]
    labels: np.ndarray  # int64 [N]
    labels_multi: list[list[int]]
    subsets: list[str]
    run_id: str  # MLflow run id; comma-joined and sorted when rows come from several runs


class SequenceDataset(Dataset[tuple[dict[str, torch.Tensor], int, list[int], str]]):
    """Per-video feature sequences held in memory: item = (stream -> [T, D], label, labels, video_id)."""

    def __init__(
        self,
        video_ids: list[str],
        features: dict[str, list[np.ndarray]],
        labels: Sequence[int],
        labels_multi: list[list[int]],
    ) -> None:
        n = len(video_ids)
        if any(len(v) != n for v in features.values()) or len(labels) != n or len(labels_multi) != n:
            raise ValueError("video_ids, every stream's sequences, labels and labels_multi must align")
        self.video_ids = list(video_ids)
        self.features = features
        self.labels = [int(x) for x in labels]
        self.labels_multi = [list(map(int, x)) for x in labels_multi]
        self.streams = tuple(features)

    def __len__(self) -> int:
        return len(self.video_ids)

    def __getitem__(self, i: int) -> tuple[dict[str, torch.Tensor], int, list[int], str]:
        feats = {s: torch.from_numpy(self.features[s][i]) for s in self.streams}
        return feats, self.labels[i], self.labels_multi[i], self.video_ids[i]

    def dims(self) -> dict[str, int]:
        """Feature dimension of each stream."""
        return {s: int(self.features[s][0].shape[1]) if self.video_ids else 0 for s in self.streams}


def collate_sequences(
    batch: list[tuple[dict[str, torch.Tensor], int, list[int], str]],
) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor, list[list[int]], list[str]]:
    """DataLoader collate for SequenceDataset: zero-pads each stream to the longest sequence.

    Returns (stream -> [B, Tmax, D], lengths [B], labels [B], labels_multi, video_ids).
    """
    if not batch:
        raise ValueError("collate_sequences got an empty batch")
    streams = list(batch[0][0])
    lengths = torch.tensor([item[0][streams[0]].shape[0] for item in batch], dtype=torch.long)
    t_max = int(lengths.max())
    out: dict[str, torch.Tensor] = {}
    for s in streams:
        dim = batch[0][0][s].shape[1]
        padded = torch.zeros(len(batch), t_max, dim, dtype=torch.float32)
        for b, item in enumerate(batch):
            x = item[0][s]
            padded[b, : x.shape[0]] = x
        out[s] = padded
    labels = torch.tensor([item[1] for item in batch], dtype=torch.long)
    return out, lengths, labels, [item[2] for item in batch], [item[3] for item in batch]


def _all_labels(labels: list[int] | None, label: int | None) -> list[int]:
    """A video's class indices: its `labels` list (empty for a multi-label video with no positive
    label), or, for rows written without one, its first label when that is known (>= 0)."""
    if labels is not None:
        return [int(x) for x in labels]
    return [int(label)] if label is not None and label >= 0 else []


def _vectors(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A fixed_size_list<float32>[D] column as a writable float32 [N, D] array (torch wants writable)."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    dim = arr.type.list_size
    if len(arr) == 0:
        return np.zeros((0, dim), dtype=np.float32)
    return np.array(arr.flatten().to_numpy(zero_copy_only=False), dtype=np.float32).reshape(len(arr), dim)


def _check_streams(streams: Iterable[str]) -> tuple[str, ...]:
    streams = tuple(streams)
    bad = [s for s in streams if s not in STREAMS]
    if not streams or bad:
        raise ValueError(f"unknown stream(s) {bad or streams!r}; choose from {list(STREAMS)}")
    return streams


# `position` and `split` are int32 columns: a bound past it reached the user as an Arrow/Substrait
# error (stop=2**31) or an OverflowError (start=10**18), and floats and bools were truncated silently.
_INT32_MAX = 2**31 - 1


def _position_bound(name: str, value: object) -> int:
    """`value` as a query bound in [0, 2**31 - 1]; anything else refused in one line naming it."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    if not 0 <= int(value) <= _INT32_MAX:
        raise ValueError(f"{name}={value} is out of range: need 0 <= {name} <= {_INT32_MAX}")
    return int(value)


class FeatureStore:
    """Read access to a hyvid store (a folder or s3:// prefix of Lance tables)."""

    def __init__(self, uri: str, storage_options: dict[str, str] | None = None, *,
                 follow_latest: bool = True) -> None:
        self.uri = str(uri)
        self.storage_options = storage_options
        self.follow_latest = follow_latest
        self._open: dict[str, lance.LanceDataset] = {}

    def __repr__(self) -> str:
        return f"FeatureStore({self.uri!r})"

    # -- tables -------------------------------------------------------------------------------
    def table(self, name: str) -> lance.LanceDataset:
        """The Lance dataset of one table (cached); FileNotFoundError names the stage that makes it."""
        ds = self._open.get(name)
        if ds is None:
            try:
                ds = open_table(self.uri, name, self.storage_options)
            except FileNotFoundError as e:
                stage = _CREATED_BY.get(name, "the stage that writes it")
                raise FileNotFoundError(f"{e}; table {name!r} is created by `{stage}`") from None
            self._open[name] = ds
        elif self.follow_latest and ds.latest_version != ds.version:
            ds.checkout_latest()
        return ds

    def refresh(self) -> None:
        """Forget opened tables so the next read sees the latest commit of each."""
        self._open.clear()

    def versions(self) -> dict[str, int]:
        """Lance version of every existing table, as this store reads them (lineage for MLflow)."""
        out = {}
        for name in TABLE_NAMES:
            if name in self._open or table_exists(self.uri, name, self.storage_options):
                out[name] = self.table(name).version
        return out

    # -- videos and classes -------------------------------------------------------------------
    def videos(
        self,
        split: int | None = None,
        subset: str | None = None,
        class_name: str | None = None,
        status: str | None = STATUS_OK,
    ) -> pa.Table:
        """Videos, sorted by id, optionally of one split/subset, one class and one status.

        With `split`, only videos in that official split are kept and a `subset` column says
        train / val / test (val carved from the official train by group, see store.splits).
        `subset="trainval"` is the official training list. A multi-label row "A|B" matches
        class_name A and class_name B. `status=None` keeps failed videos too.
        """
        if subset is not None and split is None:
            raise ValueError(f"subset={subset!r} needs a split (1, 2 or 3)")
        if subset is not None and subset not in VIDEO_SUBSETS:
            raise ValueError(f"unknown subset {subset!r}; choose from {list(VIDEO_SUBSETS)}")
        table = self.table(VIDEOS.name).to_table()
        if split is not None:
            table = self._with_subset(table, int(split))
            if subset == TRAINVAL:
                table = table.filter(pc.is_in(table["subset"], pa.array(["train", "val"])))
            elif subset is not None:
                table = table.filter(pc.equal(table["subset"], subset))
        if status is not None:
            table = table.filter(pc.equal(table["status"], status))
        if class_name is not None:
            names = table.column("class_name").to_pylist()
            known = {c for n in names if n for c in n.split("|")}
            if class_name not in known and class_name not in self._all_class_names():
                raise ValueError(f"unknown class {class_name!r}; see FeatureStore.class_names()")
            mask = [bool(n) and class_name in n.split("|") for n in names]
            table = table.filter(pa.array(mask, pa.bool_()))
        return table.sort_by("video_id")

    def _all_class_names(self) -> set[str]:
        names = set(self.class_names()) if table_exists(self.uri, CLASSES.name, self.storage_options) else set()
        for n in self.table(VIDEOS.name).to_table(columns=["class_name"]).column("class_name").to_pylist():
            names.update(n.split("|") if n else ())
        return names

    def _with_subset(self, table: pa.Table, split: int) -> pa.Table:
        """Keep the videos of `split` and add their train/val/test subset."""
        official = []
        for entries in table.column("splits").to_pylist():
            sub = None
            for e in entries or ():
                if e["split"] == split:
                    sub = e["subset"]
            official.append(sub)
        groups = table.column("group").to_pylist()
        # The carve uses every officially-training video, whatever its status, so one video
        # failing to decode never moves a whole group between train and val.
        train_groups = [g for g, o in zip(groups, official, strict=True) if o == "train"]
        if not train_groups and not any(official):
            raise ValueError(f"no video of the store {self.uri!r} belongs to split {split}")
        val = val_groups(train_groups) if train_groups else set()
        subsets = [subset_of(o, g, val) for o, g in zip(official, groups, strict=True)]
        table = table.append_column("subset", pa.array(subsets, pa.string()))
        return table.filter(pc.is_valid(table["subset"]))

    def class_names(self) -> list[str]:
        """Class names in label order (from the `classes` table)."""
        t = self.table(CLASSES.name).to_table().sort_by("label")
        return [str(n) for n in t.column("class_name").to_pylist()]

    def groups(self, video_ids: Sequence[str]) -> list[str]:
        """Each video's group (UCF-101's gXX; the bootstrap's resampling unit), its own id where it has none."""
        t = self.table(VIDEOS.name).to_table(columns=["video_id", "group"])
        group = dict(zip(t.column("video_id").to_pylist(), t.column("group").to_pylist(), strict=True))
        return [str(group.get(v) or v) for v in video_ids]

    def is_multilabel(self) -> bool:
        """True when any ok video carries several labels or none (CCV-like datasets)."""
        t = self.table(VIDEOS.name).to_table(columns=["labels"], filter=pc.field("status") == STATUS_OK)
        lengths = pc.list_value_length(t.column("labels")).drop_null().to_numpy()
        return bool(len(lengths) and (lengths != 1).any())

    # -- per-video rows -----------------------------------------------------------------------
    def _one_video(self, table: str, video_id: str, columns: list[str] | None, start: int = 0,
                   stop: int | None = None, split: int | None = None) -> pa.Table:
        if not isinstance(video_id, str):
            raise TypeError(f"video_id must be a str, got {type(video_id).__name__}")
        flt = pc.field("video_id") == video_id
        if split is not None:
            flt &= pc.field("split") == int(split)
        if start:
            flt &= pc.field("position") >= int(start)
        if stop is not None:
            flt &= pc.field("position") < int(stop)
        if columns is not None and "position" not in columns:
            columns = [*columns, "position"]
        # Late materialization: find the few matching rows by index first, then read their
        # (large) vector columns, instead of decoding vectors of rows the filter drops.
        t = self.table(table).scanner(columns=columns, filter=flt, late_materialization=True).to_table()
        pos = t.column("position").to_numpy()
        if "split" in t.column_names and len(set(t.column("split").to_pylist())) > 1:  # several splits' rows
            return t.sort_by([("split", "ascending"), ("position", "ascending")])
        if len(pos) > 1 and not (pos[1:] >= pos[:-1]).all():  # rows usually come in write order already
            t = t.sort_by("position")
        return t

    def clips(self, video_id: str, columns: list[str] | None = None) -> pa.Table:
        """One video's stored frames and flow stacks, ordered by position (all columns by default)."""
        return self._one_video(CLIPS.name, video_id, columns)

    def frame_features(self, video_id: str, start: int = 0, stop: int | None = None,
                       columns: list[str] | None = None, split: int | None = None) -> pa.Table:
        """One video's per-frame features in frame order; positions in [start, stop).

        Each split's CNNs made their own rows (`split` column): `split` keeps one split's, None
        returns every split's, ordered by split, then position.
        """
        start = _position_bound("start", start)
        stop = None if stop is None else _position_bound("stop", stop)
        split = None if split is None else _position_bound("split", split)
        if stop is not None and stop < start:
            raise ValueError(f"bad position slice [{start}, {stop}): need 0 <= start <= stop")
        return self._one_video(FRAME_FEATURES_NAME, video_id, columns, start, stop, split)

    # -- which CNNs made the features ------------------------------------------------------------
    def _features_table(self) -> lance.LanceDataset:
        """`frame_features`, refused in one line when it predates the provenance columns."""
        ds = self.table(FRAME_FEATURES_NAME)
        missing = [c for c in FRAME_FEATURES_PROVENANCE if c not in ds.schema.names]
        if missing:
            raise ValueError(
                f"frame_features of store {self.uri!r} has the old layout (rows keyed by video alone, no "
                f"{', '.join(missing)} column); re-run `hyvid features --split N` for each split to rebuild it")
        return ds

    def feature_runs(self, split: int) -> dict[int, set[tuple[str, str]]]:
        """fold -> the (spatial_run_id, motion_run_id) pairs whose rows `split` holds (see tables.FOLD_ALL)."""
        t = self._features_table().to_table(columns=["fold", "spatial_run_id", "motion_run_id"],
                                            filter=pc.field("split") == int(split))
        pairs = t.group_by(["fold", "spatial_run_id", "motion_run_id"]).aggregate([])
        out: dict[int, set[tuple[str, str]]] = {}
        for f, sr, mr in zip(*(pairs.column(c).to_pylist() for c in ("fold", "spatial_run_id", "motion_run_id")),
                             strict=True):
            out.setdefault(int(f), set()).add((str(sr), str(mr)))
        return out

    def cnn_runs(self, split: int) -> list[tuple[str, str]]:
        """The CNN pairs behind `split`'s features, one per fold (sorted by fold).

        ValueError when a fold holds rows of two pairs (an interrupted `hyvid features` with new
        CNNs): a model must not train on features of two CNNs, so the split must be finished first.
        """
        runs = self.feature_runs(split)
        mixed = {f: sorted(p) for f, p in runs.items() if len(p) > 1}
        if mixed:
            raise ValueError(f"frame_features of split {split} in {self.uri!r} mixes CNN pairs {mixed}; "
                             f"finish `hyvid features --split {split}` so that every video has the same CNNs' rows")
        return [next(iter(runs[f])) for f in sorted(runs)]

    # -- splits as training data ---------------------------------------------------------------
    # Both readers below stream `frame_features` in record batches of the columns they need, so a
    # subset of UCF-101's size (9.5K videos x 25 frames x 1,024 floats = 1 GB per stream) costs
    # its own size once more at most while it is read, not three copies of it.
    def _subset_videos(self, split: int, subset: str | None) -> pa.Table:
        vids = self.videos(split=split, subset=subset)
        if vids.num_rows == 0:
            raise ValueError(f"no ok video in split {split} subset {subset!r} of store {self.uri!r}")
        return vids

    def _subset_ids(self, split: int, subset: str | None, streams: Sequence[str]
                    ) -> tuple[tuple[str, ...], pa.Table, list[str], pa.Array]:
        """Checked streams, the subset's videos, their ids, and the ids as an Arrow lookup set."""
        vids = self._subset_videos(split, subset)
        ids = [str(v) for v in vids.column("video_id").to_pylist()]
        return _check_streams(streams), vids, ids, pa.array(ids, pa.string())

    def _feature_batches(self, ids: list[str], columns: list[str], split: int,
                         cnn_runs: Sequence[tuple[str, str]] | None) -> Iterable[pa.RecordBatch]:
        """The rows of `ids` that `split`'s CNNs made, from the pairs `cnn_runs` (None: the split's, checked)."""
        ds = self._features_table()
        known = self.cnn_runs(split)
        pairs = known if cnn_runs is None else [(str(a), str(b)) for a, b in cnn_runs]
        absent = sorted(set(pairs) - set(known))
        if absent or not pairs:
            raise FileNotFoundError(
                f"no frame_features rows of split {split} from CNN runs {absent or 'of that split'} in {self.uri!r} "
                f"(the split holds {known or 'none'}); run `hyvid features --split {split}`")
        # One scan for all videos (typed isin filters, index-assisted), in batches.
        flt = (pc.field("video_id").isin(ids) & (pc.field("split") == int(split))
               & pc.field("spatial_run_id").isin([a for a, _ in pairs])
               & pc.field("motion_run_id").isin([b for _, b in pairs]))
        return ds.scanner(columns=["video_id", *columns], filter=flt, batch_size=8192).to_batches()

    def _kept(self, split: int, subset: str | None, ids: list[str], found: np.ndarray) -> list[int]:
        """Indices of `ids` that have feature rows; warns about (or refuses) the ones without."""
        missing = [v for v, ok in zip(ids, found, strict=True) if not ok]
        if missing:
            log.warning("%d of %d videos of split %s subset %r have no frame_features (e.g. %r); "
                        "they are left out — run `hyvid features` to complete the table",
                        len(missing), len(ids), split, subset, missing[:3])
        keep = [i for i, ok in enumerate(found) if ok]
        if not keep:
            raise FileNotFoundError(
                f"no frame_features rows for split {split} subset {subset!r} in {self.uri!r}; run `hyvid features`")
        return keep

    @staticmethod
    def _labels(vids: pa.Table, keep: list[int]) -> tuple[list[int], list[list[int]]]:
        labels = vids.column("label").to_pylist()
        multi = vids.column("labels").to_pylist()
        return [labels[i] for i in keep], [_all_labels(multi[i], labels[i]) for i in keep]

    def sequences(self, split: int, subset: str | None, streams: Sequence[str] = STREAMS,
                  cnn_runs: Sequence[tuple[str, str]] | None = None) -> SequenceDataset:
        """A torch Dataset of per-video feature sequences (T x D per stream) with labels.

        Only rows that `split`'s own CNNs made are read; `cnn_runs` (spatial, motion) pairs narrow
        them to those CNNs (None: the split's pairs, one per cross-fitting fold, see `cnn_runs()`).
        """
        streams, vids, ids, id_set = self._subset_ids(split, subset, streams)
        keys: list[np.ndarray] = []
        positions: list[np.ndarray] = []
        parts: dict[str, list[np.ndarray]] = {s: [] for s in streams}
        for batch in self._feature_batches(ids, ["position", *streams], split, cnn_runs):
            keys.append(pc.index_in(batch.column("video_id"), value_set=id_set).to_numpy(zero_copy_only=False))
            positions.append(batch.column("position").to_numpy(zero_copy_only=False))
            for s in streams:
                parts[s].append(_vectors(batch.column(s)))
        key = np.concatenate(keys) if keys else np.zeros(0, np.int64)
        pos = np.concatenate(positions) if positions else np.zeros(0, np.int32)
        order = np.lexsort((pos, key))  # rows by (video, position)
        counts = np.bincount(key, minlength=len(ids))
        keep = self._kept(split, subset, ids, counts > 0)
        arrays = {}
        for s in streams:
            dim = parts[s][0].shape[1] if parts[s] else self.table(FRAME_FEATURES_NAME).schema.field(s).type.list_size
            out = np.empty((len(key), dim), dtype=np.float32)
            dest = np.empty(len(key), dtype=np.int64)
            dest[order] = np.arange(len(key))  # where each read row goes once sorted
            start = 0
            while parts[s]:
                part = parts[s].pop(0)  # freed as soon as it is placed
                out[dest[start:start + len(part)]] = part
                start += len(part)
            arrays[s] = out
        ends = np.cumsum(counts)
        spans = [(int(ends[i] - counts[i]), int(ends[i])) for i in keep]
        labels, labels_multi = self._labels(vids, keep)
        feats = {s: [arrays[s][a:b] for a, b in spans] for s in streams}
        return SequenceDataset([ids[i] for i in keep], feats, labels, labels_multi)

    def video_features(self, split: int, subset: str | None, streams: Sequence[str] = STREAMS,
                       cnn_runs: Sequence[tuple[str, str]] | None = None) -> VideoFeatures:
        """Each video's features averaged over its frames (the fusion network's input); rows as `sequences`."""
        streams, vids, ids, id_set = self._subset_ids(split, subset, streams)
        counts = np.zeros(len(ids), dtype=np.int64)
        sums: dict[str, np.ndarray] = {}
        for batch in self._feature_batches(ids, list(streams), split, cnn_runs):
            key = pc.index_in(batch.column("video_id"), value_set=id_set).to_numpy(zero_copy_only=False)
            order = np.argsort(key, kind="stable")
            uniq, starts = np.unique(key[order], return_index=True)
            counts += np.bincount(key, minlength=len(ids))
            for s in streams:
                x = _vectors(batch.column(s))
                acc = sums.setdefault(s, np.zeros((len(ids), x.shape[1]), dtype=np.float64))
                # Rows of one video are contiguous once sorted: reduceat sums each in one pass.
                acc[uniq] += np.add.reduceat(x[order].astype(np.float64), starts, axis=0)
        keep = self._kept(split, subset, ids, counts > 0)
        feats = {s: (sums[s][keep] / counts[keep, None]).astype(np.float32) for s in streams}
        labels, labels_multi = self._labels(vids, keep)
        return VideoFeatures([ids[i] for i in keep], feats, np.asarray(labels, dtype=np.int64), labels_multi)

    # -- similarity search --------------------------------------------------------------------
    def similar(self, vector: Sequence[float] | np.ndarray, k: int = 10, column: str = "spatial",
                *, nprobes: int = 20, refine_factor: int = 5) -> pa.Table:
        """The k stored frames nearest to `vector` (L2), nearest first.

        Uses the Lance vector index on `column` when `store.indexes.ensure_vector_index` has
        built one (IVF, `nprobes` partitions probed, the top k*refine_factor re-ranked on
        exact distances so an exact match ranks first); otherwise Lance does a flat search.
        Returns video_id, position, frame_index, _distance.
        """
        column = _check_streams([column])[0]
        # 2.5 would be truncated by Lance and True taken for 1: a k that is not a whole count is a mistake.
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be an integer >= 1, got {k!r}")
        ds = self.table(FRAME_FEATURES_NAME)
        dim = ds.schema.field(column).type.list_size
        q = np.asarray(vector, dtype=np.float32).reshape(-1)
        if q.shape[0] != dim:
            raise ValueError(f"query vector has {q.shape[0]} values but column {column!r} has dim {dim}")
        bad = int((~np.isfinite(q)).sum())
        if bad:  # Lance answers a NaN query with no rows, which reads as "nothing is similar"
            raise ValueError(f"query vector has {bad} NaN or infinite value(s) of {dim}; every value must be finite")
        nearest = {"column": column, "q": q, "k": int(k), "metric": SIMILAR_METRIC,
                   "minimum_nprobes": int(nprobes), "refine_factor": int(refine_factor)}
        t = ds.scanner(columns=["video_id", "position", "frame_index", "_distance"],
                       nearest=nearest, disable_scoring_autoprojection=True).to_table()
        return t.sort_by([("_distance", "ascending"), ("video_id", "ascending"), ("position", "ascending")])

    def has_vector_index(self, column: str = "spatial") -> bool:
        """Whether `frame_features.<column>` has a vector index (else similar() is a flat scan)."""
        ds = self.table(FRAME_FEATURES_NAME)
        return any(d.name == vector_index_name(column) for d in ds.describe_indices())

    # -- model scores -------------------------------------------------------------------------
    def scores(self, model: str, split: int, subset: str | None = None) -> ScoreSet:
        """A model's stored class scores for one split (optionally one subset), sorted by video id."""
        check_model_names([model])
        if subset is not None and subset not in SUBSETS:
            raise ValueError(f"unknown subset {subset!r}; choose from {list(SUBSETS)}")
        flt = (pc.field("model") == model) & (pc.field("split") == int(split))
        if subset is not None:
            flt &= pc.field("subset") == subset
        t = self.table(VIDEO_SCORES.name).scanner(filter=flt).to_table().sort_by("video_id")
        if t.num_rows == 0:
            raise FileNotFoundError(
                f"no scores of model {model!r} for split {split} subset {subset!r} in {self.uri!r}; "
                f"run the stage that fits {model!r} first (`{_CREATED_BY[VIDEO_SCORES.name]}`)")
        score_lists = t.column("scores").to_pylist()
        n_classes = {len(s) for s in score_lists}
        if len(n_classes) != 1:
            raise ValueError(f"scores of model {model!r} split {split} have mixed class counts {n_classes}")
        run_ids = sorted(set(t.column("run_id").to_pylist()) - {None})
        labels = t.column("label").to_pylist()
        labels_multi = [_all_labels(m, lab) for m, lab in zip(t.column("labels").to_pylist(), labels, strict=True)]
        return ScoreSet(
            video_ids=t.column("video_id").to_pylist(),
            scores=np.asarray(score_lists, dtype=np.float32),
            labels=np.asarray(labels, dtype=np.int64),
            labels_multi=labels_multi,
            subsets=t.column("subset").to_pylist(),
            run_id=",".join(run_ids),
        )
