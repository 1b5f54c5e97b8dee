"""UCF-101's groups and splits for a synth dataset: which group and clip each of a class's videos gets."""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from hyvid.store.splits import val_groups

UCF_GROUPS = 25  # g01..g25, as UCF-101
UCF_SPLITS = (1, 2, 3)


def official_subset(group: int, split: int) -> str:
    """UCF-101: split k tests groups 7(k-1)+1..7k; the other groups train."""
    return "test" if 7 * (split - 1) < group <= 7 * split else "train"


@lru_cache(maxsize=None)  # asked thousands of times per plan, for 25 x 3 answers
def _subset(group: int, split: int) -> str:
    sub = official_subset(group, split)
    if sub == "test":
        return "test"
    train = [f"g{g:02d}" for g in range(1, UCF_GROUPS + 1) if official_subset(g, split) == "train"]
    return "val" if f"g{group:02d}" in val_groups(train) else "train"


def assign_groups(n: int) -> list[tuple[int, int]]:
    """(group, clip) for a class's n videos, spread so each split has train, val and test videos.

    Candidates are evenly spaced over g01..g25 at several phases; the chosen one covers every
    (split, subset) cell and keeps each split's train/val/test counts nearest UCF-101's
    proportions. Too few videos for any evenly spaced set to cover: a greedy cover instead. The
    same for every class, so the classes stay balanced in every subset.
    """
    cells = {g: {(k, _subset(g, k)) for k in UCF_SPLITS} for g in range(1, UCF_GROUPS + 1)}
    expected = {(k, s): sum(_subset(g, k) == s for g in cells) * n / UCF_GROUPS
                for k in UCF_SPLITS for s in ("train", "val", "test")}

    def score(groups: list[int]) -> tuple[int, float]:
        count = {c: 0 for c in expected}
        for g in groups:
            for c in cells[g]:
                count[c] += 1
        missing = sum(v == 0 for v in count.values())
        return missing, sum((count[c] - expected[c]) ** 2 for c in expected)

    candidates = [[int((i + phase) * UCF_GROUPS / n) + 1 for i in range(n)]
                  for phase in np.linspace(0.0, 1.0, 40, endpoint=False)]
    candidates.append(_greedy_cover(n, cells))
    best = min(candidates, key=score)
    out, clips = [], {}
    for g in sorted(best):
        clips[g] = clips.get(g, 0) + 1
        out.append((g, clips[g]))
    return out


def _greedy_cover(n: int, cells: dict[int, set]) -> list[int]:
    """Each pick covers the most uncovered (split, subset) cells, far from earlier picks."""
    uncovered = {c for cs in cells.values() for c in cs}
    chosen: list[int] = []
    while len(chosen) < n:
        g = max(cells, key=lambda g: (-chosen.count(g), len(cells[g] & uncovered),
                                      min((abs(g - c) for c in chosen), default=UCF_GROUPS), -g))
        uncovered -= cells[g]
        chosen.append(g)
    return chosen


def min_videos_for_coverage() -> int:
    """The fewest videos per class with which every split has train, val and test videos."""
    for n in range(1, UCF_GROUPS + 1):
        got = {(k, _subset(g, k)) for g, _ in assign_groups(n) for k in UCF_SPLITS}
        if len(got) == 9:
            return n
    return UCF_GROUPS
