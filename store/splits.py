"""Which subset (train / val / test) a video is in for a split.

The official lists give train and test. Validation is carved out of the official training set
by *group* (UCF-101's gXX), so clips of one group never sit on both sides; models are selected
on val and reported on test. "trainval" is the official training set before the carve.
"""
from __future__ import annotations

from typing import Iterable

VAL_FRACTION = 0.2


def val_groups(train_groups: Iterable[str], val_fraction: float = VAL_FRACTION) -> set[str]:
    """Evenly spaced groups of the sorted training groups: deterministic, no RNG to seed."""
    groups = sorted(set(train_groups))
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if len(groups) < 2:
        raise ValueError(
            f"need at least 2 training groups to carve a validation set by group, got {groups}; "
            "give videos groups (UCF names _gXX_, or a manifest 'group' column)"
        )
    n_val = min(len(groups) - 1, max(1, round(len(groups) * val_fraction)))
    step = len(groups) / n_val
    return {groups[int(i * step + step / 2)] for i in range(n_val)}


def subset_of(official: str | None, group: str, val: set[str]) -> str | None:
    """Map an official membership ("train"/"test"/None) to train/val/test."""
    if official == "train":
        return "val" if group in val else "train"
    return official
