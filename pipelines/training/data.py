"""What one temporal or video-level fit reads: its train/val/test subsets, from the store.

LSTMs read per-video feature sequences, the fusion nets and baselines the frame-averaged features
(both through `store.feature_store.FeatureStore`), pinned to the Lance versions seen first so a
fit's subsets and its logged lineage agree even if a writer commits meanwhile.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from hyvid.models import registry as R
from hyvid.store.tables import FRAME_FEATURES_NAME, VIDEOS

LINEAGE_TABLES = [VIDEOS.name, FRAME_FEATURES_NAME]  # what a fit reads in its worker
LSTM_STREAM = {R.SPATIAL_LSTM: "spatial", R.MOTION_LSTM: "motion"}


@dataclass
class Subset:
    """One subset's inputs, labels and ids, ready for a model (tensors in memory)."""

    video_ids: list[str]
    inputs: Any  # list of [N, D] tensors (video-level) or a SequenceDataset (LSTM)
    labels: np.ndarray  # int64 [N]
    labels_multi: list[list[int]]

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


def load_subsets(config: dict) -> tuple[dict[str, Subset], dict[str, int]]:
    """Read train/val/test (or train/val for CV trials) for one fit through the FeatureStore.

    Returns the subsets and the Lance version of each table read (the fit's lineage): the store
    is pinned at first use, so every subset comes from the same versions even if a writer commits
    meanwhile.
    """
    from hyvid.store.feature_store import FeatureStore

    fs = FeatureStore(config["store_uri"], config.get("storage_options"), follow_latest=False)
    versions = {t: v for t, v in fs.versions().items() if t in LINEAGE_TABLES}  # pins them
    split, model = int(config["split"]), config["model"]
    subsets = ("train", "val") if config.get("cv_only") else ("train", "val", "test")
    out = {}
    for sub in subsets:
        if model in LSTM_STREAM:
            ds = fs.sequences(split, sub, streams=(LSTM_STREAM[model],))
            out[sub] = Subset(ds.video_ids, ds, np.asarray(ds.labels, dtype=np.int64), ds.labels_multi)
            continue
        key = (fs.uri, split, sub, tuple(sorted(versions.items())))
        if key not in _VIDEO_LEVEL_CACHE:
            vf = fs.video_features(split, sub, streams=R.STREAMS)
            xs = [torch.from_numpy(np.ascontiguousarray(vf.features[s])) for s in R.STREAMS]
            _VIDEO_LEVEL_CACHE[key] = Subset(vf.video_ids, xs, vf.labels, vf.labels_multi)
            while len(_VIDEO_LEVEL_CACHE) > _CACHE_ENTRIES:
                _VIDEO_LEVEL_CACHE.popitem(last=False)
        _VIDEO_LEVEL_CACHE.move_to_end(key)
        out[sub] = _VIDEO_LEVEL_CACHE[key]
    return out, versions
