"""Cross-fitted CNNs (`--cross-fit K`): which CNN pair fits on, and later describes, which video.

Without cross-fitting one CNN pair is fitted on a split's training videos and then run over those
same videos, so the second level (LSTMs, fusion net, baselines, the hybrid's weights) trains on
features the CNNs have fitted and is scored on features they have not: the motion CNN gave 0.93 mAP
on its own training videos against 0.60 on validation (issue 21).

With K >= 2 the training videos are dealt into K folds by group (`training.data.group_folds`: one
UCF-101 group never straddles folds), and K CNN pairs are fitted, pair k on the training videos
outside fold k. `hyvid features` then gives each training video the features and CNN scores of the
pair of its own fold, which never saw it. Validation and test videos are dealt to the K pairs by
group too (the "group-disjoint blend": each goes through one pair), so every video of every subset
is described by a CNN that did not train on it, and each video has one set of features in one
table, as without cross-fitting. (The alternative, every val/test video through all K pairs and
each second-level model's scores averaged over the K, costs K times the val/test inference and a
K-view scoring path in every model; the README gives the measured difference.)

Runs of a cross-fitted pair are tagged `hyvid.cross_fit` = K and `hyvid.fold` = k; a plain fit
carries neither tag (or `hyvid.cross_fit` = 0).
"""
from __future__ import annotations

import logging
from typing import Sequence

from hyvid.models.registry import MOTION_CNN, SPATIAL_CNN
from hyvid.pipelines import tracking
from hyvid.pipelines.training.data import deal_groups, group_folds
from hyvid.store.tables import FOLD_ALL

log = logging.getLogger(__name__)

# Cross-fitting is off by default for its cost: K CNN pairs, each on (K-1)/K of the training videos.
# What it buys is not measured yet (benchmarks/cross_fit.py records it; README, cross-fitting).
DEFAULT_CROSS_FIT = 0
CROSS_FIT_HELP = ("fit K CNN pairs, pair k on the training groups outside fold k, so that every training "
                  "video's features and CNN scores come from CNNs that never saw it (val/test videos are "
                  "dealt to the pairs by group); 0: one pair on all training videos")


def check_cross_fit(k: int) -> int:
    """K itself, refused in one line unless 0 (off) or >= 2."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 0 or k == 1:
        raise ValueError(f"cross_fit must be 0 (one CNN pair) or a fold count >= 2, got {k!r}")
    return k


def video_folds(video_ids: Sequence[str], subsets: Sequence[str], groups: Sequence[str | None],
                k: int) -> dict[str, int]:
    """video -> the fold whose CNN pair describes it (FOLD_ALL for every video when k is 0).

    Training videos: their fold of `group_folds` over the training groups (the same folds the CNN
    pairs are fitted on). Val and test videos: dealt by group within each subset (`deal_groups`).
    A video with no group is its own group.
    """
    check_cross_fit(k)
    if k == 0:
        return {v: FOLD_ALL for v in video_ids}
    out: dict[str, int] = {}
    for sub in dict.fromkeys(subsets):
        idx = [i for i, s in enumerate(subsets) if s == sub]
        gs = [str(groups[i] or video_ids[i]) for i in idx]
        folds = group_folds(gs, k).tolist() if sub == "train" else deal_groups(gs, k)
        out.update({video_ids[i]: int(f) for i, f in zip(idx, folds, strict=True)})
    return out


def fold_tags(fold: int, k: int) -> dict[str, str]:
    """The MLflow tags of a CNN run of fold `fold` of a K-fold cross-fit (none for a plain fit)."""
    return {} if k == 0 else {tracking.TAG_CROSS_FIT: str(k), tracking.TAG_FOLD: str(fold)}


def _cross_fit_of(run) -> int:
    return int(run.data.tags.get(tracking.TAG_CROSS_FIT) or 0)


def cnn_pairs(experiment: str, split: int, store_uri: str, k: int, seed: int | None = None,
              ) -> dict[int, tuple[str, str]]:
    """fold -> (spatial run id, motion run id): the newest finished train-cnn pair of each fold.

    k = 0: {FOLD_ALL: the newest plain pair}. `seed`: only runs fitted with that seed.
    FileNotFoundError (naming what is missing) when a fold has no finished run of a stream.
    """
    check_cross_fit(k)
    out: dict[int, list[str]] = {}
    for model in (SPATIAL_CNN, MOTION_CNN):
        runs = [r for r in tracking.finished_runs(experiment, stage=tracking.STAGE_TRAIN_CNN, model=model,
                                                  split=split, store_uri=store_uri,
                                                  tags={tracking.TAG_MODEL_LOGGED: "true"})
                if _cross_fit_of(r) == k and (seed is None or r.data.params.get("seed") == str(seed))]
        folds = range(k) if k else (FOLD_ALL,)
        for f in folds:
            run = next((r for r in runs if k == 0 or r.data.tags.get(tracking.TAG_FOLD) == str(f)), None)
            if run is None:
                what = f"fold {f} of a {k}-fold cross-fit" if k else "a plain (not cross-fitted) fit"
                seeded = f" with seed {seed}" if seed is not None else ""
                raise FileNotFoundError(
                    f"no finished `hyvid train-cnn` run of {model} ({what}{seeded}) for split {split} on store "
                    f"{tracking.store_tag(store_uri)!r} in MLflow experiment {experiment!r}; run `hyvid train-cnn "
                    f"--split {split}{f' --cross-fit {k}' if k else ''}` first or pass its run ids explicitly")
            out.setdefault(f, []).append(run.info.run_id)
    return {f: (s, m) for f, (s, m) in sorted(out.items())}
