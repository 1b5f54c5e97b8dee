"""The paper's findings as paired-bootstrap comparisons (pipelines.evaluation.findings), on constructed
scores and on a store's video_scores."""
from __future__ import annotations

import numpy as np
import pytest

from hyvid.models import registry as R
from hyvid.pipelines.evaluation import findings as F

C = 4


def _sets(n: int = 200, seed: int = 0) -> dict[str, F.Scores]:
    """Test scores whose signal strength orders the models: hybrid > fusion > the rest; fusion_noreg = fusion.

    Each CNN and LSTM has its own noise, so their average (the late fusion) is cleaner than either.
    """
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, C, n)
    t = np.eye(C)[labels]
    ids = [f"v{i:03d}" for i in range(n)]
    signal = {R.HYBRID: 4.0, R.FUSION: 1.5, R.NN_EF: 0.5, R.NN_LF: 0.5, R.SVM_EF: 0.5, R.SVM_LF: 0.5,
              R.SPATIAL_CNN: 0.6, R.SPATIAL_LSTM: 0.6, R.MOTION_CNN: 0.6, R.MOTION_LSTM: 0.6}
    out = {m: F.Scores(ids, t * s + rng.normal(size=(n, C)), labels, [[int(v)] for v in labels])
           for m, s in signal.items()}
    out[R.FUSION_NOREG] = out[R.FUSION]
    return out


def test_paper_findings_test_each_claim_with_a_paired_bootstrap():
    sets = _sets()
    recs = F.paper_findings(sets, multilabel=False, n_boot=400)
    pairs = {(r["a"], r["b"]): r for r in recs}
    assert [r["finding"] for r in recs] == sorted((r["finding"] for r in recs), key=F.FINDINGS.index)
    assert {b for a, b in pairs if a == R.FUSION} == set(F.FUSION_BASELINES)
    assert {(a, b) for a, b in pairs if b in (R.SPATIAL_CNN, R.MOTION_CNN) and a != R.HYBRID} == {
        ("spatial_cnn+spatial_lstm", R.SPATIAL_CNN), ("motion_cnn+motion_lstm", R.MOTION_CNN)}
    assert {b for a, b in pairs if a == R.HYBRID} == set(sets) - {R.HYBRID}
    for r in recs:
        assert set(r) == {"finding", "a", "b", "metric", "diff", "lo", "hi", "n_videos", "verdict"}
        assert r["metric"] == "accuracy" and r["n_videos"] == 200 and r["lo"] <= r["diff"] <= r["hi"]
    assert pairs[(R.FUSION, R.SVM_EF)]["verdict"] == "reproduced"
    assert pairs[(R.HYBRID, R.FUSION)]["verdict"] == "reproduced"
    same = pairs[(R.FUSION, R.FUSION_NOREG)]  # the same fit: no difference, no verdict either way
    assert (same["diff"], same["lo"], same["hi"], same["verdict"]) == (0.0, 0.0, 0.0, "inconclusive")
    flipped = F.paper_findings({R.HYBRID: sets[R.NN_EF], R.FUSION: sets[R.HYBRID]}, False, n_boot=400)
    assert [(r["a"], r["b"], r["verdict"]) for r in flipped] == [(R.HYBRID, R.FUSION, "contradicted")]
    lines = F.findings_markdown(recs)
    assert lines[0] == f"- **{F.FINDINGS[0]}**"
    assert any(line.startswith("  - `fusion` over `fusion_noreg`: **inconclusive** (accuracy +0.0 points")
               for line in lines)


def test_paper_findings_pair_only_shared_videos_and_skip_missing_models():
    sets = _sets()
    h = sets[R.HYBRID]
    sets[R.HYBRID] = F.Scores(h.video_ids[50:], h.scores[50:], h.labels[50:], h.labels_multi[50:])
    recs = F.paper_findings({R.HYBRID: sets[R.HYBRID], R.FUSION: sets[R.FUSION]}, False, n_boot=200)
    assert [(r["a"], r["b"], r["n_videos"]) for r in recs] == [(R.HYBRID, R.FUSION, 150)]
    assert F.paper_findings({R.FUSION: sets[R.FUSION]}, False) == []
    bad = F.Scores(h.video_ids, h.scores, (h.labels + 1) % C, h.labels_multi)
    with pytest.raises(ValueError, match="disagree on the labels"):
        F.paper_findings({R.HYBRID: bad, R.FUSION: sets[R.FUSION]}, False)


def test_multilabel_findings_use_map():
    rng = np.random.default_rng(1)
    n = 150
    lm = [sorted(rng.choice(6, 2, replace=False).tolist()) for _ in range(n)]
    y = np.zeros((n, 6))
    for i, ls in enumerate(lm):
        y[i, ls] = 1
    ids = [str(i) for i in range(n)]
    sets = {m: F.Scores(ids, y * s + rng.normal(size=y.shape), np.array([ls[0] for ls in lm]), lm)
            for m, s in ((R.HYBRID, 3.0), (R.FUSION, 0.3))}
    (r,) = F.paper_findings(sets, multilabel=True, n_boot=300)
    assert r["metric"] == "map" and r["verdict"] == "reproduced"


def test_findings_read_a_stores_test_scores(tmp_path):
    import pyarrow as pa

    from hyvid.store.lance_io import append_rows
    from hyvid.store.scores import upsert_video_scores
    from hyvid.store.tables import VIDEOS

    sets = _sets(n=120)
    some = sets[R.HYBRID]
    store = str(tmp_path / "store")
    append_rows(store, VIDEOS.name, pa.Table.from_pylist(
        [{"video_id": v, "class_name": f"c{lab}", "label": int(lab), "labels": [int(lab)], "group": "g01",
          "status": "ok"} for v, lab in zip(some.video_ids, some.labels, strict=True)], schema=VIDEOS.schema))
    for m in (R.HYBRID, R.FUSION, R.SVM_EF, R.SPATIAL_CNN, R.SPATIAL_LSTM):
        s = sets[m]
        upsert_video_scores(store, m, 1, f"run_{m}", s.video_ids, ["test"] * len(s.video_ids),
                            s.scores.astype(np.float32), s.labels.tolist())
    lines = F.findings(store, 1, n_boot=300)
    assert lines[0] == f"- **{F.FINDINGS[0]}**"
    assert "  - `fusion` over `svm_ef`: **reproduced**" in lines[1] and "120 test videos" in lines[1]
    assert any("`spatial_cnn+spatial_lstm` over `spatial_cnn`" in line for line in lines)
    assert sum(line.startswith("  - `hybrid` over") for line in lines) == 4
    assert F.findings(store, 2) == []  # no scores for split 2: nothing to claim
