"""What the synthetic demo shows: each model's accuracy per kind of class, and the paper's
findings checked on it (reproduced / NOT reproduced), for `hyvid demo`'s report."""
from __future__ import annotations

import numpy as np

from hyvid.models import registry as R
from hyvid.pipelines.data.synth import KINDS, class_kind
from hyvid.pipelines.evaluation.metrics import predictions
from hyvid.store.feature_store import FeatureStore


def per_kind_accuracy(store_uri: str, split: int, subset: str = "test",
                      storage_options: dict | None = None) -> dict[str, dict[str, float]]:
    """Accuracy of every scored model on each kind of synthetic class (appearance, motion, order).

    This is what the synthetic classes were designed for: each kind needs one of the clues the
    paper models, so the table shows which component sees which clue.
    """
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
    cols = [*KINDS, "all"]
    lines = ["| model | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for model, row in table.items():
        lines.append(f"| `{model}` | " + " | ".join(f"{100 * row[c]:.1f}" if c in row else "–" for c in cols) + " |")
    return "\n".join(lines)


SINGLE_MODELS = tuple(m for m in R.MODEL_NAMES if m != R.HYBRID)
FUSION_BASELINES = tuple(m for m in R.BASELINE_MODELS if m != R.FUSION_NOREG)  # Table 2's early/late fusions


def findings(table: dict[str, dict[str, float]]) -> list[str]:
    """The paper's three claims, each checked on a per-kind accuracy table: one line each.

    Ties count as not reproduced: on a few dozen test videos one video decides them.
    """
    def acc(model: str, kind: str = "all") -> float | None:
        return table.get(model, {}).get(kind)

    def verdict(ok: bool) -> str:
        return "reproduced" if ok else "NOT reproduced"

    out = []
    lstm, cnn = (max((acc(m, "order") for m in ms if acc(m, "order") is not None), default=None)
                 for ms in ((R.SPATIAL_LSTM, R.MOTION_LSTM), (R.SPATIAL_CNN, R.MOTION_CNN)))
    if lstm is not None and cnn is not None:
        out.append(f"- LSTMs beat the CNNs on the order classes: {verdict(lstm > cnn)} "
                   f"(best LSTM {100 * lstm:.1f}, best CNN {100 * cnn:.1f})")
    fus, noreg = acc(R.FUSION), acc(R.FUSION_NOREG)
    base = [m for m in FUSION_BASELINES if acc(m) is not None]
    if fus is not None and noreg is not None and base:
        best = max(base, key=acc)
        out.append(f"- the regularized fusion net beats the non-regularized one: {verdict(fus > noreg)} "
                   f"({100 * fus:.1f} against {100 * noreg:.1f})")
        out.append(f"- the regularized fusion net beats the early/late fusion baselines: {verdict(fus > acc(best))} "
                   f"({100 * fus:.1f} against {100 * acc(best):.1f} for `{best}`)")
    hyb = acc(R.HYBRID)
    singles = [m for m in SINGLE_MODELS if acc(m) is not None]
    if hyb is not None and singles:
        best = max(singles, key=acc)
        out.append(f"- the hybrid beats every single model: {verdict(hyb > acc(best))} "
                   f"({100 * hyb:.1f} against {100 * acc(best):.1f} for `{best}`)")
    return out
