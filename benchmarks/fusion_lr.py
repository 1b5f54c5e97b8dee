"""Benchmark: the fusion net's SGD learning rate, chosen on validation accuracy only.

`TrainConfig.fusion_lr` (the demo default) must be justified by validation numbers, never by
test ones (issue 13). This fits the regularized fusion net (λ2 = λ3 = 0, so the learning rate is
the only thing that varies) at each learning rate and seed on one store, through the real
`hyvid train` path, and records each fit's best validation accuracy (its epoch is chosen on val
too). No test metric is read or written here.

    .venv/bin/python -m benchmarks.fusion_lr --store demo_out/store    # a store `make demo` made
    .venv/bin/python -m benchmarks.fusion_lr                            # a demo-sized synthetic store

Writes benchmarks/results/fusion_lr.json: per lr, the val accuracies per seed, their mean, min
and sd, and how many validation videos they rest on.
"""
from __future__ import annotations

import json
import shutil
import statistics
import sys
import time
from pathlib import Path

from ._common import add_scratch_args, arg_parser, write_json
from ._measure import machine


def main() -> int:
    p = arg_parser(__doc__, "fusion_lr")
    p.add_argument("--store", help="an existing store with frame_features (default: a synthetic one)")
    p.add_argument("--lrs", default="0.1,0.3,0.7")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--epochs", type=int, default=60)
    add_scratch_args(p, "/tmp/hyvid_bench_fusion_lr")
    args = p.parse_args()

    from hyvid.models import registry as R
    from hyvid.pipelines.train import TrainConfig, train
    from hyvid.store.feature_store import FeatureStore

    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    store = args.store
    if store is None:
        from hyvid.pipelines.data.feature_synth import FeatureSynthConfig, write_feature_store

        store = str(work / "store")
        write_feature_store(FeatureSynthConfig(store_uri=store, videos=200, classes=10, test_videos=60))
    uri = f"sqlite:///{work / 'mlflow.db'}"
    n_val = len(FeatureStore(store).videos(split=1, subset="val"))
    lrs = [float(x) for x in args.lrs.split(",")]
    val: dict[str, list[float]] = {}
    try:
        for lr in lrs:
            for seed in range(args.seeds):
                # cv_only-style: a one-point λ grid and no folds, so only the final fit runs; we read its
                # best_val-equivalent, the val accuracy of the epoch chosen on val.
                res = train(TrainConfig(store_uri=store, models=(R.FUSION,), fusion_lr=lr, seed=seed,
                                        lam2_grid=(0.0,), lam3_grid=(0.0,), cv_folds=0, video_epochs=args.epochs,
                                        tracking_uri=uri, experiment=f"lr{lr:g}"))
                val.setdefault(f"{lr:g}", []).append(round(res.models[R.FUSION].metrics["val_accuracy"], 4))
                print(f"lr {lr:g} seed {seed}: val accuracy {val[f'{lr:g}'][-1]:.3f}", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    out = {
        "benchmark": "fusion_lr",
        "claim": "the fusion net's default lr is the one with the best mean validation accuracy over seeds",
        "store": "synthetic (feature_synth, 200 videos)" if args.store is None else args.store,
        "val_videos": n_val, "epochs": args.epochs,
        "val_accuracy": val,
        "summary": {lr: {"mean": round(statistics.mean(v), 4), "min": min(v),
                         "sd": round(statistics.stdev(v), 4) if len(v) > 1 else 0.0} for lr, v in val.items()},
        "machine": machine(), "measured_at": time.strftime("%Y-%m-%d %H:%M"),
    }
    write_json(args.out, out, end="\n")
    print(json.dumps(out["summary"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
