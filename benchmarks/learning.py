"""Benchmark: do the train stage's defaults learn at 101 classes? The held-out check, on stores made here.

For each synthetic feature-level store (`hyvid.pipelines.data.feature_synth`: UCF-101 split-1
groups, 512 + 512 dims, 101 classes; "dense" needs both streams and 20 classes need order,
"sparse" has per-stream prototypes) this runs what a user runs, as subprocesses:

    hyvid train --store S      (every default)
    hyvid hybrid --store S
    hyvid report --store S --format json

and beside it, on the same store, the floor every fusion model must clear: a scikit-learn
logistic regression on the time-averaged, standardized, concatenated features, and the same
given first-half and second-half averages (its C chosen on validation). It records every model's
test accuracy with its interval, the references' test accuracies, the checks of issue 21 (every
model >= 10x chance; the regularized fusion net within 2 points of the regression; the hybrid >=
every model and within 3 points of the halves regression), and the train stage's wall time with
the machine's load. Test figures are only reported here; nothing is chosen from them.

    .venv/bin/python -m benchmarks.learning                          # both stores (~1 h on 2 quiet cores)
    .venv/bin/python -m benchmarks.learning --stores dense --seed 5  # another draw of the generator
    .venv/bin/python -m benchmarks.learning --videos 200 --classes 10 --stores sparse   # the 90-s check's size

Writes benchmarks/results/learning.json (merged: one entry per store, size and seed).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from ._common import RESULTS_DIR, add_scratch_args, arg_parser, write_json
from ._measure import machine

HYVID = [sys.executable, "-m", "hyvid.pipelines.cli"]
STORES = {
    "dense": {"codes": "dense", "signal": 0.1, "noise": 0.3, "video_noise": 0.5},
    "sparse": {},
}


def logreg_references(store: str) -> dict:
    """Test accuracy of a logistic regression on time averages and on half averages (C chosen on val)."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from hyvid.store.feature_store import FeatureStore

    fs = FeatureStore(store)
    out = {}
    data = {sub: fs.sequences(1, sub) for sub in ("train", "val", "test")}
    for name, halves in (("logreg_mean", False), ("logreg_halves", True)):
        xy = {}
        for sub, ds in data.items():
            rows = []
            for i in range(len(ds)):
                x = ds[i][0]
                parts = ([x[s][: len(x[s]) // 2].mean(0) for s in x] + [x[s][len(x[s]) // 2:].mean(0) for s in x]
                         if halves else [x[s].mean(0) for s in x])
                rows.append(np.concatenate([np.asarray(p) for p in parts]))
            xy[sub] = (np.stack(rows), np.asarray(ds.labels))
        scaler = StandardScaler().fit(xy["train"][0])
        fits = {c: LogisticRegression(C=c, max_iter=500).fit(scaler.transform(xy["train"][0]), xy["train"][1])
                for c in (0.01, 0.1, 1.0)}
        val = {c: float(m.score(scaler.transform(xy["val"][0]), xy["val"][1])) for c, m in fits.items()}
        c = max(val, key=val.get)
        out[name] = {"C": c, "val_accuracy": round(val[c], 4),
                     "test_accuracy": round(float(fits[c].score(scaler.transform(xy["test"][0]), xy["test"][1])), 4)}
    return out


def checks(report: dict, refs: dict, classes: int) -> dict:
    """Issue 21's checks on one run's report and references."""
    acc = {m: v["accuracy"] for m, v in report.items() if isinstance(v, dict) and v.get("accuracy") is not None}
    models = {m: a for m, a in acc.items() if m != "hybrid" and "+" not in m and not m.endswith("_cnn")}
    hybrid = acc.get("hybrid")
    chance = 1.0 / classes
    return {
        "every_model_10x_chance": all(a >= 10 * chance for a in models.values()),
        "below_10x_chance": sorted(m for m, a in models.items() if a < 10 * chance),
        "fusion_minus_logreg_mean": round(acc["fusion"] - refs["logreg_mean"]["test_accuracy"], 4)
        if "fusion" in acc else None,
        "fusion_within_2_points": "fusion" in acc and acc["fusion"] >= refs["logreg_mean"]["test_accuracy"] - 0.02,
        "hybrid_minus_best_model": round(hybrid - max(models.values()), 4) if hybrid is not None else None,
        "hybrid_ge_every_model": hybrid is not None and all(hybrid >= a for a in models.values()),
        "hybrid_minus_logreg_halves": round(hybrid - refs["logreg_halves"]["test_accuracy"], 4)
        if hybrid is not None else None,
        "hybrid_within_3_points": hybrid is not None and hybrid >= refs["logreg_halves"]["test_accuracy"] - 0.03,
    }


def _run(cmd: list[str], log: Path) -> float:
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with open(log, "w") as f:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, "HYVID_LOG": str(log) + ".lib"})
    if rc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[2:4])} exited {rc.returncode}; see {log}")
    return time.perf_counter() - t0


def main() -> int:
    p = arg_parser(__doc__)
    p.add_argument("--out", default=str(RESULTS_DIR / "learning.json"), help="where the JSON goes (merged)")
    p.add_argument("--stores", default="dense,sparse", help=f"comma-separated of {list(STORES)}")
    p.add_argument("--videos", type=int, default=3030)
    p.add_argument("--classes", type=int, default=101)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--seed", type=int, default=0, help="the generator's seed")
    p.add_argument("--train-args", default="", help="extra `hyvid train` flags, space-separated")
    add_scratch_args(p, "/tmp/hyvid_bench_learning")
    args = p.parse_args()

    from hyvid.pipelines.data.feature_synth import (
        UCF101_TEST_VIDEOS,
        UCF101_VIDEOS,
        FeatureSynthConfig,
        write_feature_store,
    )

    out_path = Path(args.out)
    result = json.loads(out_path.read_text()) if out_path.exists() else {"runs": {}}
    work = Path(args.workdir)
    try:
        for name in args.stores.split(","):
            key = f"{name}-{args.classes}c-{args.videos}v-seed{args.seed}"
            store, tracking = work / key / "store", f"sqlite:///{work / key / 'mlflow.db'}"
            shutil.rmtree(work / key, ignore_errors=True)
            test_videos = round(args.videos * UCF101_TEST_VIDEOS / UCF101_VIDEOS)
            write_feature_store(FeatureSynthConfig(
                store_uri=str(store), videos=args.videos, classes=args.classes, spatial_dim=args.dim,
                motion_dim=args.dim, test_videos=test_videos, seed=args.seed, **STORES[name]))
            refs = logreg_references(str(store))
            print(key, json.dumps(refs), flush=True)
            common = ["--store", str(store), "--tracking-uri", tracking]
            load_before = os.getloadavg()
            train_s = _run([*HYVID, "train", *common, "--plots", str(work / key / "plots"),
                            *args.train_args.split()], work / key / "train.log")
            load_after = os.getloadavg()
            hybrid_s = _run([*HYVID, "hybrid", *common, "--out", str(work / key / "plots")], work / key / "hybrid.log")
            rep = subprocess.run([*HYVID, "report", "--tracking-uri", tracking, "--format", "json"],
                                 capture_output=True, text=True, check=True)
            report = json.loads(rep.stdout)
            models = {m: {"accuracy": v.get("accuracy"), "accuracy_ci": v.get("accuracy_ci")}
                      for m, v in report.items() if isinstance(v, dict) and "accuracy" in v}
            entry = {
                "store": {"codes": name, "videos": args.videos, "classes": args.classes, "dims": [args.dim] * 2,
                          "seed": args.seed, "test_videos": test_videos, **STORES[name]},
                "references": refs, "models": models, "checks": checks(report, refs, args.classes),
                "train_seconds": round(train_s, 1), "hybrid_seconds": round(hybrid_s, 1),
                "load_average_before_after": [round(load_before[0], 2), round(load_after[0], 2)],
                "train_args": args.train_args.split(), "measured_at": time.strftime("%Y-%m-%d %H:%M"),
            }
            result["runs"][key] = entry
            print(json.dumps(entry["checks"]), f"train {train_s:.0f} s", flush=True)
            write_json(out_path, {**result, "benchmark": "learning", "machine": machine()}, end="\n")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
