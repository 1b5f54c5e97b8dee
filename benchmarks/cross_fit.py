"""What cross-fitted CNNs (`--cross-fit K`) cost and buy: `hyvid run` on one synthetic store, K = 0 and K >= 2.

    python -m benchmarks.cross_fit --work /tmp/cf --folds 0,2 [--multilabel] --out benchmarks/results/cross_fit.json

Both runs share one extracted store (extraction is skipped the second time) and write to their own
MLflow experiment. For each K it records the stage seconds, every model's test figure with its 95%
interval over test groups and the video count, and the in-sample bias: each CNN's (and the hybrid
components') figure on the training videos (their out-of-fold scores for the second level) against
validation. For K >= 2 it also compares the two ways to describe val/test videos (training.folds):
the group-disjoint blend the store holds (each video through its fold's pair), and every val/test
video through all K pairs with the second-level scores averaged, using a logistic regression on the
time-averaged, standardized, concatenated features (the issue's reference model) as the second level.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from pathlib import Path

import numpy as np


def _load(fs, split: int, subset: str):
    vf = fs.video_features(split, subset)
    x = np.concatenate([vf.features["spatial"], vf.features["motion"]], axis=1)
    return vf.video_ids, x, vf.labels, vf.labels_multi


def _primary(scores: np.ndarray, labels, multi, multilabel: bool) -> float:
    from hyvid.pipelines.evaluation.metrics import evaluate

    m = evaluate(scores, np.asarray(labels), multi, multilabel)
    return float(m["map" if multilabel else "accuracy"])


def _views_vs_blend(store: str, tracking_uri: str, split: int, multilabel: bool) -> dict:
    """Logistic regression on the store's (blend) features vs the same regression averaged over K views."""
    import pyarrow.compute as pc
    import torch
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.preprocessing import StandardScaler

    from hyvid.pipelines.data.clips import decode_rows
    from hyvid.pipelines.inference.cnn import cnn_forward, load_cnn_pair
    from hyvid.store.feature_store import FeatureStore
    from hyvid.store.tables import CLIPS

    fs = FeatureStore(store)
    pairs = fs.cnn_runs(split)
    _, xtr, ytr, mtr = _load(fs, split, "train")
    scaler = StandardScaler().fit(xtr)
    n_classes = len(fs.class_names())
    if multilabel:
        y = np.zeros((len(mtr), n_classes), np.int64)
        for i, ls in enumerate(mtr):
            y[i, ls] = 1
        clf = OneVsRestClassifier(LogisticRegression(max_iter=2000, C=0.1)).fit(scaler.transform(xtr), y)
    else:
        clf = LogisticRegression(max_iter=2000, C=0.1).fit(scaler.transform(xtr), ytr)
    out: dict = {"n_pairs": len(pairs), "model": "logistic regression (C=0.1) on standardized time-averaged "
                 "concatenated features"}
    for subset in ("val", "test"):
        ids, x, labels, multi = _load(fs, split, subset)
        blend = clf.predict_proba(scaler.transform(x))
        rows = fs.table(CLIPS.name).to_table(filter=pc.field("video_id").isin(ids))
        rows = rows.sort_by([("video_id", "ascending"), ("position", "ascending")])
        vid = np.asarray(rows.column("video_id").to_pylist(), dtype=object)
        frames, flows = decode_rows(rows, "spatial"), decode_rows(rows, "motion")
        views = []
        for s_run, m_run in pairs:
            spatial, motion = load_cnn_pair(tracking_uri, s_run, m_run, torch.device("cpu"))
            sf, mf, _, _ = cnn_forward(spatial, motion, frames, flows, 64)
            feats = np.concatenate([sf, mf], axis=1)
            xv = np.stack([feats[vid == v].mean(0) for v in ids])
            views.append(clf.predict_proba(scaler.transform(xv)))
        out[subset] = {"n_videos": len(ids), "blend": _primary(blend, labels, multi, multilabel),
                       "k_view_average": _primary(np.mean(views, axis=0), labels, multi, multilabel)}
    return out


def _in_sample_gap(store: str, split: int, multilabel: bool, models: list[str]) -> dict:
    """model -> its figure on the training videos' stored scores (CNNs: the features stage's; the rest:
    their out-of-fold scores) and on validation."""
    from hyvid.store.feature_store import FeatureStore

    fs = FeatureStore(store)
    out = {}
    for model in models:
        try:
            s = fs.scores(model, split)
        except FileNotFoundError:
            continue
        sub = np.asarray(s.subsets, dtype=object)
        row = {}
        for name in ("train", "val"):
            keep = np.flatnonzero(sub == name)
            if len(keep):
                row[name] = _primary(s.scores[keep], s.labels[keep], [s.labels_multi[i] for i in keep], multilabel)
                row[f"n_{name}"] = int(len(keep))
        out[model] = row
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--work", required=True)
    p.add_argument("--folds", default="0,2")
    p.add_argument("--multilabel", action="store_true")
    p.add_argument("--videos-per-class", type=int, default=20)  # the demo's
    p.add_argument("--cnn-epochs", type=int, default=6)  # the run's default
    p.add_argument("--out", required=True)
    args = p.parse_args()

    from hyvid.models.registry import MODEL_NAMES
    from hyvid.pipelines.report import ReportConfig, collect, to_json
    from hyvid.pipelines.run import RunConfig, run

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if args.multilabel:
        from hyvid.pipelines.data.synth import MultiLabelConfig, synth_multilabel

        dataset = str(synth_multilabel(MultiLabelConfig(out=work / "data")).manifest)
    else:
        from hyvid.pipelines.data.synth import SynthConfig, synth

        synth(SynthConfig(out=work / "data", videos_per_class=args.videos_per_class))
        dataset = str(work / "data")
    store, uri = str(work / "store"), f"sqlite:///{work}/mlflow.db"
    results: dict = {"dataset": "hyvid synth --multilabel" if args.multilabel else
                     f"hyvid synth, {args.videos_per_class} videos per class (the demo's)",
                     "load_before": os.getloadavg(), "nproc": os.cpu_count(), "runs": {}}
    for k in (int(x) for x in args.folds.split(",")):
        exp = f"cross-fit-{k}"
        t0 = time.perf_counter()
        res = run(RunConfig(dataset=dataset, store_uri=store, experiment=exp, tracking_uri=uri, cross_fit=k,
                            cnn_epochs=args.cnn_epochs, allow_failures=True))
        entry = {"seconds": res.seconds, "wall_s": round(time.perf_counter() - t0, 1), "load_after": os.getloadavg(),
                 "test": to_json(collect(ReportConfig(experiment=exp, tracking_uri=uri)))}
        # the report's rows include hybrid combinations ("a+b"), which store no scores of their own
        entry["train_vs_val"] = _in_sample_gap(store, 1, args.multilabel,
                                               [m for m in entry["test"] if m in MODEL_NAMES])
        if k >= 2:
            entry["views_vs_blend"] = _views_vs_blend(store, uri, 1, args.multilabel)
        results["runs"][str(k)] = entry
        Path(args.out).write_text(json.dumps(results, indent=1, default=float))
        print(json.dumps({k: entry["wall_s"]}), flush=True)
    results["git"] = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    Path(args.out).write_text(json.dumps(results, indent=1, default=float))


if __name__ == "__main__":
    main()
