"""The paper's three findings, each tested with a paired bootstrap over test videos, and what the
synthetic demo shows (each model's accuracy per kind of class).

`paper_findings` is pure: per-model test scores in, one record per comparison out. The hybrid
stage runs it on the scores it holds and logs the records as the findings.json artifact that
`hyvid report` prints; `findings` runs it on a store's video_scores for `hyvid demo`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Protocol, Sequence

import numpy as np

from hyvid.models import registry as R
from hyvid.pipelines.evaluation.bootstrap import DEFAULT_N_BOOT, paired_difference
from hyvid.pipelines.evaluation.metrics import predictions
from hyvid.pipelines.evaluation.weights import combine

# The store reader and the synth catalogue (torch, OpenCV: ~3 s) are imported by the functions
# that read a store, so `hyvid report` can format findings without them.


def per_kind_accuracy(store_uri: str, split: int, subset: str = "test",
                      storage_options: dict | None = None) -> dict[str, dict[str, float]]:
    """Accuracy of every scored model on each kind of synthetic class (appearance, motion, order).

    This is what the synthetic classes were designed for: each kind needs one of the clues the
    paper models, so the table shows which component sees which clue.
    """
    from hyvid.pipelines.data.synth import KINDS, class_kind
    from hyvid.store.feature_store import FeatureStore

    fs = FeatureStore(store_uri, storage_options=storage_options)
    kinds = np.array([class_kind(n) for n in fs.class_names()])
    out: dict[str, dict[str, float]] = {}
    for model in R.MODEL_NAMES:
        try:
            s = fs.scores(model, split, subset)
        except (FileNotFoundError, ValueError):
            continue
        if len(s.video_ids) == 0:
            continue
        labels = np.asarray(s.labels)
        hit = predictions(np.asarray(s.scores)) == labels
        out[model] = {k: float(hit[kinds[labels] == k].mean()) for k in KINDS if (kinds[labels] == k).any()}
        out[model]["all"] = float(hit.mean())
    return out


def per_kind_markdown(table: dict[str, dict[str, float]]) -> str:
    from hyvid.pipelines.data.synth import KINDS

    cols = [*KINDS, "all"]
    lines = ["| model | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for model, row in table.items():
        lines.append(f"| `{model}` | " + " | ".join(f"{100 * row[c]:.1f}" if c in row else "–" for c in cols) + " |")
    return "\n".join(lines)


SINGLE_MODELS = tuple(m for m in R.MODEL_NAMES if m != R.HYBRID)
# Finding 1 compares the regularized net with Table 2's simple early/late fusions and its λ = 0 twin.
FUSION_BASELINES = (R.NN_EF, R.NN_LF, R.SVM_EF, R.SVM_LF, R.FUSION_NOREG)
# Finding 2: per stream, the CNN+LSTM late average fusion (Table 1) against the CNN alone.
CNN_LSTM = {f"{cnn}+{lstm}": (cnn, lstm) for cnn, lstm in ((R.SPATIAL_CNN, R.SPATIAL_LSTM),
                                                              (R.MOTION_CNN, R.MOTION_LSTM))}
FINDINGS = (
    "regularized fusion beats early/late fusion and the non-regularized net",
    "the LSTMs are complementary to the CNNs (CNN+LSTM beats the CNN alone)",
    "the hybrid beats every single model",
)


class Scored(Protocol):
    """One model's test scores: store.feature_store.ScoreSet, or anything shaped like it."""

    video_ids: list[str]
    scores: np.ndarray
    labels: np.ndarray
    labels_multi: list[list[int]]


@dataclass(frozen=True)
class Scores:
    """A Scored made here: a late fusion's averaged scores."""

    video_ids: list[str]
    scores: np.ndarray
    labels: np.ndarray
    labels_multi: list[list[int]]


def comparisons(present: Sequence[str]) -> list[tuple[str, str, str]]:
    """(finding, A, B) for each "A beats B" the paper claims whose two sides are in `present`."""
    out = [(FINDINGS[0], R.FUSION, b) for b in FUSION_BASELINES]
    out += [(FINDINGS[1], row, cnn) for row, (cnn, _) in CNN_LSTM.items()]
    out += [(FINDINGS[2], R.HYBRID, m) for m in SINGLE_MODELS]
    return [c for c in out if c[1] in present and c[2] in present]


def _align(a: Scored, b: Scored) -> tuple[np.ndarray, np.ndarray, Scored]:
    """Both models' scores on the test videos they share, in one order, and the labels there."""
    pos_a = {v: i for i, v in enumerate(a.video_ids)}
    pos_b = {v: i for i, v in enumerate(b.video_ids)}
    ids = sorted(pos_a.keys() & pos_b.keys())
    ia, ib = np.array([pos_a[v] for v in ids], dtype=np.int64), np.array([pos_b[v] for v in ids], dtype=np.int64)
    labels = np.asarray(a.labels)[ia]
    if not np.array_equal(labels, np.asarray(b.labels)[ib]):
        raise ValueError("two score sets disagree on the labels of their shared videos; "
                         "were they scored on the same store and split?")
    shared = Scores(ids, np.asarray(a.scores)[ia], labels, [list(a.labels_multi[i]) for i in ia])
    return np.asarray(a.scores)[ia], np.asarray(b.scores)[ib], shared


def _late_fusions(sets: Mapping[str, Scored]) -> dict[str, Scored]:
    out: dict[str, Scored] = {}
    for row, (cnn, lstm) in CNN_LSTM.items():
        if cnn in sets and lstm in sets:
            s_cnn, s_lstm, shared = _align(sets[cnn], sets[lstm])
            out[row] = Scores(shared.video_ids, combine([s_cnn, s_lstm], [0.5, 0.5]), shared.labels,
                              shared.labels_multi)
    return out


def paper_findings(sets: Mapping[str, Scored], multilabel: bool, metric: str | None = None,
                   n_boot: int = DEFAULT_N_BOOT, seed: int = 0, units: Mapping[str, str] | None = None) -> list[dict]:
    """Each of the paper's "A beats B" claims whose models are in `sets`, tested by paired bootstrap.

    `sets` maps registry names (the hybrid included) to their test scores; the CNN+LSTM late
    fusions are averaged here. Each record: finding, a, b, metric, diff (A − B), lo, hi (the 95%
    interval of the difference), n_videos (shared by A and B) and verdict (reproduced when the
    interval lies above 0, contradicted below, else inconclusive). The metric is the paper's
    (accuracy, or mAP on multi-label data) unless given. `units` maps a video id to its
    resampling unit (`bootstrap.resampling_units`); without it, videos are resampled.
    """
    metric = metric or R.primary_metric(multilabel)
    all_sets = {**sets, **_late_fusions(sets)}
    out = []
    for finding, a, b in comparisons(list(all_sets)):
        s_a, s_b, shared = _align(all_sets[a], all_sets[b])
        if not shared.video_ids:
            continue
        r = paired_difference(s_a, s_b, shared.labels, shared.labels_multi, multilabel, metric, n_boot=n_boot,
                              seed=seed, groups=None if units is None else [units[v] for v in shared.video_ids])
        out.append({"finding": finding, "a": a, "b": b, "metric": metric, "diff": r.diff, "lo": r.lo, "hi": r.hi,
                    "n_videos": r.n, "verdict": r.verdict})
    return out


def findings_markdown(records: Sequence[dict]) -> list[str]:
    """Markdown lines: each finding, then one bullet per comparison with its difference and verdict."""
    lines: list[str] = []
    for finding in dict.fromkeys(r["finding"] for r in records):
        lines.append(f"- **{finding}**")
        for r in (r for r in records if r["finding"] == finding):
            lines.append(f"  - `{r['a']}` over `{r['b']}`: **{r['verdict']}** ({r['metric']} "
                         f"{100 * r['diff']:+.1f} points, 95% interval [{100 * r['lo']:+.1f}, {100 * r['hi']:+.1f}], "
                         f"{r['n_videos']} test videos)")
    return lines


def findings(store_uri: str, split: int, storage_options: dict | None = None,
             n_boot: int = DEFAULT_N_BOOT, seed: int = 0) -> list[str]:
    """The paper's findings on a store's test scores of one split, as markdown lines (see paper_findings).

    The same paired bootstrap the hybrid stage logs; three-way verdicts (reproduced,
    inconclusive, contradicted) instead of a win or loss on a handful of test videos.
    """
    from hyvid.store.feature_store import FeatureStore

    fs = FeatureStore(store_uri, storage_options=storage_options)
    sets = {}
    for model in R.MODEL_NAMES:
        try:
            sets[model] = fs.scores(model, split, "test")
        except (FileNotFoundError, ValueError):
            continue
    return findings_markdown(paper_findings(sets, fs.is_multilabel(), n_boot=n_boot, seed=seed))
