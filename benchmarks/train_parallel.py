"""Benchmark: `hyvid train` fitting its models concurrently vs one after another.

Same models, same data, same Ray cluster, same process: the toy feature store of
tests/test_train.py (two classes told apart by their mean features, two only by the ORDER of
two patterns), every model of `hyvid train` (spatial/motion LSTMs, the fusion net with its
λ2/λ3 Tune grid, fusion_noreg, NN-EF, NN-LF, SVM-EF, SVM-LF), fitted

* concurrently (`TrainConfig(concurrent=True)`, the default): every fit launched at once, Ray's
  scheduler sharing the CPUs among their workers;
* sequentially (`concurrent=False`): each fit starts when the previous one has finished.

ratio = concurrent wall time / sequential wall time; the target is <= 0.65 on 2 cores. The two
modes run alternately (`--repeats` pairs, concurrent first in odd pairs, sequential first in
even ones) so a warmer page cache or a quieter minute does not favour one of them; the JSON
keeps every measurement and the load average, since a shared machine makes them noisy.

    .venv/bin/python benchmarks/train_parallel.py          # writes benchmarks/results/train_parallel.json
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

log = logging.getLogger("bench.train_parallel")
RESULTS = ROOT / "benchmarks" / "results" / "train_parallel.json"
TARGET_RATIO = 0.65


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray cluster (default 2)")
    p.add_argument("--models", default="spatial_lstm,motion_lstm,fusion,baselines")
    p.add_argument("--videos-per-group", type=int, default=4, help="toy store size (4 -> 112 videos)")
    p.add_argument("--lstm-epochs", type=int, default=12)
    p.add_argument("--video-epochs", type=int, default=30)
    p.add_argument("--repeats", type=int, default=1, help="pairs of (concurrent, sequential) runs")
    p.add_argument("--out", default=str(RESULTS))
    return p


def _loadavg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def main(args: argparse.Namespace) -> dict:
    import mlflow
    import ray
    from helpers.toy_store import build_toy_store

    from hyvid.pipelines.train import TrainConfig, train

    root = Path(tempfile.mkdtemp(prefix="bench-train-"))
    store = str(root / "store")
    build_toy_store(store, videos_per_group=args.videos_per_group)
    uri = f"sqlite:///{root}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    models = tuple(m.strip() for m in args.models.split(",") if m.strip())

    runs = []
    try:
        for rep in range(args.repeats):
            order = (True, False) if rep % 2 == 0 else (False, True)
            for concurrent in order:
                name = f"bench-{'concurrent' if concurrent else 'sequential'}-{rep}"
                mlflow.create_experiment(name, artifact_location=str(root / "artifacts" / name))
                cfg = TrainConfig(
                    store_uri=store, tracking_uri=uri, experiment=name, models=models, concurrent=concurrent,
                    lstm_epochs=args.lstm_epochs, lstm_hidden=(32, 16), video_epochs=args.video_epochs,
                    abstraction=32, fusion_units=32, nn_hidden=32, lam2_grid=(0.0, 3e-4), lam3_grid=(0.0,),
                )
                load_before = _loadavg()
                t0 = time.perf_counter()
                res = train(cfg)
                wall = time.perf_counter() - t0
                runs.append({
                    "mode": "concurrent" if concurrent else "sequential", "repeat": rep, "wall_s": round(wall, 2),
                    "per_model_s": {m: round(r.wall_s, 2) for m, r in res.models.items()},
                    "test_accuracy": {m: round(r.metrics.get("test_accuracy", float("nan")), 4)
                                      for m, r in res.models.items()},
                    "loadavg_before": load_before, "loadavg_after": _loadavg(),
                })
                log.info("%s: %.1f s", name, wall)
    finally:
        ray.shutdown()

    conc = [r["wall_s"] for r in runs if r["mode"] == "concurrent"]
    seq = [r["wall_s"] for r in runs if r["mode"] == "sequential"]
    ratio = (sum(conc) / len(conc)) / (sum(seq) / len(seq))
    # One ratio per (concurrent, sequential) pair run back to back: less exposed to a load spike
    # that hits one pair than the ratio of the means.
    pair_ratios = [round(c / s, 3) for c, s in zip(conc, seq, strict=True)]
    out = {
        "benchmark": "train_parallel",
        "claim": ("hyvid train fits its models concurrently: wall time <= 0.65x fitting them one after another "
                  "(2 cores)"),
        "models": list(models),
        "cpus": args.cpus,
        "videos": 28 * args.videos_per_group,
        "lstm_epochs": args.lstm_epochs,
        "video_epochs": args.video_epochs,
        "concurrent_wall_s": conc,
        "sequential_wall_s": seq,
        "ratio": round(ratio, 3),
        "pair_ratios": pair_ratios,
        "median_pair_ratio": round(statistics.median(pair_ratios), 3),
        "target_ratio": TARGET_RATIO,
        "meets_target": ratio <= TARGET_RATIO,
        "runs": runs,
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "note": "the machine is shared: see loadavg_before/after of each run",
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({k: out[k] for k in ("concurrent_wall_s", "sequential_wall_s", "ratio", "pair_ratios",
                                          "meets_target")}))
    return out


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    main(get_args_parser().parse_args())
