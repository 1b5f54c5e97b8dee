"""What one temporal or video-level fit reads: its train/val/test subsets, from the store.

LSTMs read per-video feature sequences, the fusion nets and baselines the frame-averaged features
(both through `store.feature_store.FeatureStore`), pinned to the Lance versions seen first so a
fit's subsets and its logged lineage agree even if a writer commits meanwhile.
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from hyvid.models import registry as R
from hyvid.store.tables import FRAME_FEATURES_NAME, VIDEOS

log = logging.getLogger(__name__)

LINEAGE_TABLES = [VIDEOS.name, FRAME_FEATURES_NAME]  # what a fit reads in its worker
LSTM_STREAM = {R.SPATIAL_LSTM: "spatial", R.MOTION_LSTM: "motion"}


@dataclass
class Subset:
    """One subset's inputs, labels and ids, ready for a model (tensors in memory)."""

    video_ids: list[str]
    inputs: Any  # list of [N, D] tensors (video-level) or a SequenceDataset (LSTM)
    labels: np.ndarray  # int64 [N]
    labels_multi: list[list[int]]
    groups: list[str] | None = None  # each video's group: the bootstrap resamples them whole

    def __len__(self) -> int:
        return len(self.video_ids)


def target_matrix(labels: np.ndarray, labels_multi: list[list[int]], num_classes: int,
                  multilabel: bool) -> torch.Tensor:
    """One-hot (single-label) or multi-hot (multi-label) float targets [N, C]."""
    y = torch.zeros(len(labels), num_classes)
    if multilabel:
        for i, ls in enumerate(labels_multi):
            y[i, list(ls)] = 1.0
    else:
        y[torch.arange(len(labels)), torch.as_tensor(labels, dtype=torch.long)] = 1.0
    return y


# Video-level subsets read by this process, newest last: a long-lived fit worker runs the fusion
# net's CV trials, its final fit, its λ=0 twin and the NN and SVM baselines on the same features,
# so it reads them once. Keyed by the Lance versions read, so a newer commit is read afresh.
# (LSTM sequences are read by one fit each and are large: not kept.)
_VIDEO_LEVEL_CACHE: OrderedDict[tuple, Subset] = OrderedDict()
_CACHE_ENTRIES = 6  # train/val/test of two stores or splits


def deal_groups(groups: Sequence[str], k: int) -> list[int]:
    """Fold (0..k-1) of each item, whole groups to one fold, the largest group first to the emptiest fold.

    Deterministic (no RNG). Unlike `group_folds` it accepts fewer groups than folds (a small val set):
    some folds then get none.
    """
    sizes: dict[str, int] = {}
    for g in groups:
        sizes[g] = sizes.get(g, 0) + 1
    load = [0] * k
    fold_of: dict[str, int] = {}
    for g in sorted(sizes, key=lambda g: (-sizes[g], g)):
        f = min(range(k), key=lambda i: (load[i], i))
        fold_of[g] = f
        load[f] += sizes[g]
    return [fold_of[g] for g in groups]


def group_folds(groups: list[str], k: int) -> np.ndarray:
    """Fold index (0..k-1) of each video, whole groups to one fold, folds balanced by video count
    (`deal_groups`), so videos of one group (UCF-101's gXX: clips cut from one long video) never
    straddle folds; every fold gets at least one group.
    """
    if k < 2:
        raise ValueError(f"cross-validation needs at least 2 folds, got {k}")
    n_groups = len(set(groups))
    if n_groups < k:
        raise ValueError(f"{k} folds by group need at least {k} groups among the training videos, found "
                         f"{n_groups}; lower --cv-folds or give the videos groups")
    return np.array(deal_groups(groups, k), dtype=np.int64)


def take(subset: Subset, idx: np.ndarray) -> Subset:
    """The videos ``idx`` of a subset (either kind of inputs), in that order."""
    from hyvid.store.feature_store import SequenceDataset

    idx = np.asarray(idx, dtype=np.int64)
    ids = [subset.video_ids[i] for i in idx]
    multi = [subset.labels_multi[i] for i in idx]
    labels = np.asarray(subset.labels)[idx]
    groups = None if subset.groups is None else [subset.groups[i] for i in idx]
    if isinstance(subset.inputs, SequenceDataset):
        ds = subset.inputs
        inputs: Any = SequenceDataset(ids, {s: [ds.features[s][i] for i in idx] for s in ds.streams},
                                      labels.tolist(), multi)
    else:
        t = torch.as_tensor(idx)
        inputs = [x[t] for x in subset.inputs]
    return Subset(ids, inputs, labels, multi, groups)


def concat(a: Subset, b: Subset) -> Subset:
    """Two subsets as one (train + val for a refit)."""
    from hyvid.store.feature_store import SequenceDataset

    ids, multi = a.video_ids + b.video_ids, a.labels_multi + b.labels_multi
    groups = None if a.groups is None or b.groups is None else a.groups + b.groups
    labels = np.concatenate([np.asarray(a.labels), np.asarray(b.labels)])
    if isinstance(a.inputs, SequenceDataset):
        inputs: Any = SequenceDataset(ids, {s: a.inputs.features[s] + b.inputs.features[s] for s in a.inputs.streams},
                                      labels.tolist(), multi)
    else:
        inputs = [torch.cat([x, y]) for x, y in zip(a.inputs, b.inputs, strict=True)]
    return Subset(ids, inputs, labels, multi, groups)


def load_subsets(config: dict) -> tuple[dict[str, Subset], dict[str, int]]:
    """Read the subsets one fit needs through the FeatureStore.

    * a final fit: train, val (selects the epoch) and test;
    * a search trial (``cv_only``): train and val;
    * a refit (``refit``): train + val as "train", and test;
    * an out-of-fold fit (``fold`` = [k, K]): the train subset without fold k as "train", fold k
      as "val" (folds by group, `group_folds`); its "val" scores are the hybrid's training scores.

    Returns the subsets and the Lance version of each table read (the fit's lineage): the store
    is pinned at first use, so every subset comes from the same versions even if a writer commits
    meanwhile.
    """
    from hyvid.store.feature_store import FeatureStore
    from hyvid.store.tables import FOLD_ALL

    fs = FeatureStore(config["store_uri"], config.get("storage_options"), follow_latest=False)
    versions = {t: v for t, v in fs.versions().items() if t in LINEAGE_TABLES}  # pins them
    split, model = int(config["split"]), config["model"]
    # Only the rows this split's CNNs made (frame_features' `split`), from one pair per cross-fitting fold.
    cnn_runs = fs.cnn_runs(split)
    fold = config.get("fold")
    if fold is not None:
        subsets: tuple[str, ...] = ("train",)
    elif config.get("cv_only"):
        subsets = ("train", "val")
    else:
        subsets = ("train", "val", "test")
    out = {}
    for sub in subsets:
        if model in LSTM_STREAM:
            ds = fs.sequences(split, sub, streams=(LSTM_STREAM[model],), cnn_runs=cnn_runs)
            out[sub] = Subset(ds.video_ids, ds, np.asarray(ds.labels, dtype=np.int64), ds.labels_multi,
                              fs.groups(ds.video_ids))
            continue
        key = (fs.uri, split, sub, tuple(sorted(versions.items())), tuple(cnn_runs))
        if key not in _VIDEO_LEVEL_CACHE:
            vf = fs.video_features(split, sub, streams=R.STREAMS, cnn_runs=cnn_runs)
            xs = [torch.from_numpy(np.ascontiguousarray(vf.features[s])) for s in R.STREAMS]
            _VIDEO_LEVEL_CACHE[key] = Subset(vf.video_ids, xs, vf.labels, vf.labels_multi, fs.groups(vf.video_ids))
            while len(_VIDEO_LEVEL_CACHE) > _CACHE_ENTRIES:
                _VIDEO_LEVEL_CACHE.popitem(last=False)
        _VIDEO_LEVEL_CACHE.move_to_end(key)
        out[sub] = _VIDEO_LEVEL_CACHE[key]
    if fold is not None:
        k, n_folds = int(fold[0]), int(fold[1])
        assign = group_folds(out["train"].groups or out["train"].video_ids, n_folds)
        return {"train": take(out["train"], np.flatnonzero(assign != k)),
                "val": take(out["train"], np.flatnonzero(assign == k))}, versions
    if config.get("refit"):
        if set(fs.feature_runs(split)) == {FOLD_ALL}:
            # One CNN pair fitted on the training videos: their features are in-sample, val's are not, and
            # a refit on train + val learns from both kinds at once. Cross-fitted CNNs make both out of sample.
            log.warning("%s refit on train + val of split %d mixes in-sample (train) and out-of-sample (val) "
                        "CNN features; cross-fit the CNNs (`--cross-fit K`) so that both are out of sample",
                        model, split)
        return {"train": concat(out["train"], out["val"]), "test": out["test"]}, versions
    return out, versions
