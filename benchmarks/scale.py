"""Benchmark: hyvid at the paper's scale, stage by stage: wall time and peak memory.

Two parts, each a set of real `hyvid` commands run as subprocesses whose whole process tree
(driver and every Ray process) is sampled for memory (benchmarks/_measure.py):

* **e2e**: `hyvid synth` writes one tenth of UCF-101 (101 classes x 13 videos = 1,313 real encoded
  videos, appearance, motion and order classes), then one `hyvid run` goes through extract,
  train-cnn, features, train and hybrid on it, and `hyvid report` prints the tables. Stages are
  timed from `hyvid run`'s own "== stage ==" lines.
* **feature_scale**: a `frame_features` table of UCF-101's full size (13,320 videos x 25
  positions = 333,000 rows of 1,024 + 1,024 float32), class-structured
  (`hyvid.pipelines.data.feature_synth`), with consistent `videos`/`classes` tables and split 1's
  9,537 / 3,783 train/test sizes; then `hyvid train` and `hyvid hybrid` on it, with each model's
  wall time, time split and its worker's peak memory from MLflow.

From the measured throughputs it extrapolates to full UCF-101 and to a Kinetics-400-sized set on
1, 8 and 64 nodes like this one, naming what scales out with Ray and what stays on one node.

    .venv/bin/python -m benchmarks.scale                 # both parts (about an hour on 2 cores)
    .venv/bin/python -m benchmarks.scale --only feature_scale
    .venv/bin/python -m benchmarks.scale --tiny --out /tmp/scale.json   # minutes: the test's size
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from ._common import RESULTS_DIR, add_scratch_args, arg_parser, write_json
from ._measure import machine, run_measured

HYVID = [sys.executable, "-m", "hyvid.pipelines.cli"]
STAGE_RE = r"^== ([a-z-]+)(?: split \d+)?(?::| ==)"  # hyvid run's "== train split 1 ==" lines
E2E_STAGES = ("extract", "train-cnn", "features", "train", "hybrid")

# The end-to-end part runs `hyvid run`'s defaults (every epoch count as a user gets it), so its
# per-model accuracies are what a user of 101 classes sees. The feature-scale part cuts epochs so it
# fits on 2 cores: at UCF-101's size one LSTM epoch (7.4K videos, batch 10) takes ~10 CPU-minutes;
# every fit's compute time and epochs are in MLflow (time_compute_s, epochs), so the defaults' cost
# follows by multiplication, and memory does not depend on the epoch count.
FULL = {"e2e": {"classes": 101, "videos_per_class": 13, "run_args": []},
        "feature_scale": {"videos": 13_320, "classes": 101, "positions": 25, "dim": 1024, "test_videos": 3_783,
                          "train_args": ["--lstm-epochs", "1", "--video-epochs", "5"]}}
TINY = {"e2e": {"classes": 4, "videos_per_class": 4, "frames": 40, "run_args": [
            "--cnn-epochs", "1", "--lstm-epochs", "2", "--video-epochs", "3", "--frames", "6", "--stack", "4"]},
        "feature_scale": {"videos": 240, "classes": 8, "positions": 10, "dim": 64, "test_videos": 70,
                          "train_args": ["--lstm-epochs", "2", "--video-epochs", "3"]}}

# Full UCF-101 and a Kinetics-400-sized set, for the extrapolation (mean source frames per video:
# UCF-101's clips average 7.2 s at 25 fps; Kinetics-400's are 10 s clips, ~25 fps).
TARGETS = {"ucf101": {"videos": 13_320, "frames_per_video": 180, "train_videos": 9_537},
           "kinetics400": {"videos": 240_000, "frames_per_video": 250, "train_videos": 220_000}}
NODES = (1, 8, 64)


def _tracking(work: Path) -> str:
    return f"sqlite:///{work / 'mlflow.db'}"


def _mlflow_runs(work: Path, experiment: str) -> list:
    import mlflow

    mlflow.set_tracking_uri(_tracking(work))
    exp = mlflow.get_experiment_by_name(experiment)
    if exp is None:
        return []
    return mlflow.search_runs([exp.experiment_id], output_format="list", order_by=["attributes.start_time DESC"])


def _model_accuracies(work: Path, experiment: str) -> dict:
    """model -> its latest top-level run's test accuracy, 95% group-bootstrap interval and test videos."""
    out: dict = {}
    for r in _mlflow_runs(work, experiment):
        tags, m = r.data.tags, r.data.metrics
        model = tags.get("hyvid.model")
        if not model or model in out or "mlflow.parentRunId" in tags or "test_accuracy" not in m:
            continue
        out[model] = {"stage": tags.get("hyvid.stage"), "test_accuracy": round(m["test_accuracy"], 4),
                      "ci95": [round(m[k], 4) if k in m else None
                               for k in ("test_accuracy_ci_low", "test_accuracy_ci_high")],
                      "n_test_videos": int(m["test_n_videos"]) if "test_n_videos" in m else None}
    return out


def _check(m, what: str) -> None:
    if m.returncode != 0:
        raise RuntimeError(f"{what} exited {m.returncode}; its output ends with:\n{m.output[-3000:]}")


def e2e(work: Path, size: dict) -> dict:
    """Synth, then `hyvid run` through every stage, then `hyvid report`."""
    from hyvid.store.feature_store import FeatureStore

    data, store, exp = work / "data", work / "store", "scale-e2e"
    frames = ["--frames", str(size["frames"])] if "frames" in size else []
    synth = run_measured([*HYVID, "synth", str(data), "--classes", str(size["classes"]), "--videos-per-class",
                          str(size["videos_per_class"]), *frames], work / "logs" / "synth.log")
    _check(synth, "hyvid synth")
    run = run_measured([*HYVID, "run", str(data), "--store", str(store), "--experiment", exp, "--tracking-uri",
                        _tracking(work), "--plots", str(work / "plots"), *size.get("run_args", [])],
                       work / "logs" / "run.log", stage_re=STAGE_RE)
    _check(run, "hyvid run")
    report = run_measured([*HYVID, "report", "--experiment", exp, "--tracking-uri", _tracking(work)],
                          work / "logs" / "report.log")
    _check(report, "hyvid report")
    fs = FeatureStore(str(store))
    videos = fs.videos()
    stages = {s: run.stages[s].to_json() for s in E2E_STAGES if s in run.stages}
    stages["report"] = report.to_json()
    hybrid = next((r for r in _mlflow_runs(work, exp) if r.data.tags.get("hyvid.stage") == "hybrid"), None)
    n_frames = sum(videos.column("n_frames").to_pylist())
    clips = fs.table("clips").count_rows()
    return {
        "videos": videos.num_rows, "classes": len(fs.class_names()), "source_frames": n_frames, "clips": clips,
        "synth": synth.to_json(), "run": run.to_json(), "stages": stages,
        "hybrid_test_accuracy": hybrid.data.metrics.get("test_accuracy") if hybrid else None,
        "n_test_videos": int(hybrid.data.params.get("n_test", 0)) if hybrid else None,
        "models": _model_accuracies(work, exp),
        "throughput_per_core": _e2e_throughput(stages, n_frames, clips), "run_args": size.get("run_args", []),
    }


def _e2e_throughput(stages: dict, frames: int, clips: int) -> dict:
    cores = machine()["cpus"] or 1
    per = {}
    if "extract" in stages:
        per["extract_frames_per_s"] = round(frames / stages["extract"]["seconds"] / cores, 1)
    if "features" in stages:
        per["features_clips_per_s"] = round(clips / stages["features"]["seconds"] / cores, 2)
    if "train-cnn" in stages:
        per["train_cnn_clips_per_s"] = round(clips / stages["train-cnn"]["seconds"] / cores, 2)
    return per


def feature_scale(work: Path, size: dict) -> dict:
    """A UCF-101-sized frame_features table, then `hyvid train` and `hyvid hybrid` on it."""
    from hyvid.pipelines.data.feature_synth import FeatureSynthConfig, write_feature_store

    store, exp = work / "feature_store", "scale-features"
    t0 = time.perf_counter()
    written = write_feature_store(FeatureSynthConfig(
        store_uri=str(store), videos=size["videos"], classes=size["classes"], positions=size["positions"],
        spatial_dim=size["dim"], motion_dim=size["dim"], test_videos=size["test_videos"]))
    write_s = time.perf_counter() - t0
    common = ["--store", str(store), "--experiment", exp, "--tracking-uri", _tracking(work)]
    train = run_measured([*HYVID, "train", *common, *size.get("train_args", [])], work / "logs" / "train.log")
    _check(train, "hyvid train")
    hybrid = run_measured([*HYVID, "hybrid", *common, "--out", str(work / "plots")], work / "logs" / "hybrid.log")
    _check(hybrid, "hyvid hybrid")
    models = {}
    hybrid_acc = None
    for r in _mlflow_runs(work, exp):
        tags, m = r.data.tags, r.data.metrics
        if tags.get("hyvid.stage") == "hybrid" and hybrid_acc is None:
            hybrid_acc = m.get("test_accuracy")
        if tags.get("hyvid.stage") != "train" or "mlflow.parentRunId" in tags or tags["hyvid.model"] in models:
            continue
        wall = (r.info.end_time - r.info.start_time) / 1000 if r.info.end_time else None
        models[tags["hyvid.model"]] = {
            "run_seconds": round(wall, 1) if wall else None,
            **{k: round(m[f"time_{k}"], 1) for k in ("load_s", "compute_s", "log_s") if f"time_{k}" in m},
            "peak_rss_gb": round(m["peak_rss_gb"], 2) if "peak_rss_gb" in m else None,
            "test_accuracy": round(m["test_accuracy"], 4) if "test_accuracy" in m else None,
            "epochs": int(r.data.params["epochs"]) if "epochs" in r.data.params else None,
        }
    from .learning import logreg_references

    return {
        # The floor every fusion model must clear, on the same store (C chosen on val).
        "references": logreg_references(str(store)),
        "videos": written.videos, "classes": written.classes, "frame_rows": written.frame_rows,
        "dims": [size["dim"], size["dim"]], "train_videos": written.train_videos, "test_videos": written.test_videos,
        "write": {"seconds": round(write_s, 1)},
        "stages": {"train": train.to_json(), "hybrid": hybrid.to_json()},
        "models": models, "hybrid_test_accuracy": hybrid_acc, "train_args": size.get("train_args", []),
    }


def extrapolate(result: dict) -> dict:
    """Hours per stage for full UCF-101 and Kinetics-400 on 1, 8 and 64 nodes like this one."""
    cores = machine()["cpus"] or 1
    out: dict = {"assumptions": (
        f"nodes like this one ({cores} cores); extract, train-cnn and features scale with cores (Ray tasks and "
        "Train workers on every node) from the per-core rates measured in e2e (at its epochs: run_args); train is "
        "the feature-scale measurement (at its epochs: train_args) scaled by training videos, and runs as many "
        "fits at once as there are cores but no faster than its longest fit (one LSTM); hybrid and the driver's "
        "commits stay on one node. train_default_epochs: the same with each fit's compute scaled to the defaults' "
        "30 LSTM and 60 video-level epochs")}
    e2e, fsc = result.get("e2e"), result.get("feature_scale")
    if not e2e or not fsc:
        return out
    per = e2e["throughput_per_core"]
    models = fsc["models"]
    fit_total = sum((m.get("compute_s") or 0) + (m.get("load_s") or 0) + (m.get("log_s") or 0) for m in models.values())
    longest = max(((m.get("compute_s") or 0) + (m.get("load_s") or 0) for m in models.values()), default=0.0)
    hybrid_s = fsc["stages"]["hybrid"]["seconds"]
    clips_per_video = e2e["clips"] / max(1, e2e["videos"])
    train_cnn_epochs_factor = 1.0  # the same epochs as the e2e run
    def default_epochs(m: str, v: dict) -> float:
        per_epoch = ((v.get("compute_s") or 0) / v["epochs"]) if v.get("epochs") and not m.startswith("svm") else 0
        return (v.get("compute_s") or 0) + per_epoch * ((30 if m.endswith("lstm") else 60) - (v.get("epochs") or 0))

    trials = 6 * (models.get("fusion", {}).get("compute_s") or 0)  # the λ trials: like the final fit each
    default_total = sum(default_epochs(m, v) for m, v in models.items()) + trials * 12
    default_longest = max((default_epochs(m, v) for m, v in models.items()), default=0.0)
    for name, t in TARGETS.items():
        row = {}
        scale = t["train_videos"] / max(1, fsc["train_videos"])
        for n in NODES:
            c = cores * n
            clips = t["videos"] * clips_per_video
            stages = {
                "extract": t["videos"] * t["frames_per_video"] / (per["extract_frames_per_s"] * c),
                "train-cnn": clips * train_cnn_epochs_factor / (per["train_cnn_clips_per_s"] * c),
                "features": clips / (per["features_clips_per_s"] * c),
                "train": max(longest * scale, fit_total * scale / c),
                "hybrid": hybrid_s * t["videos"] / max(1, fsc["videos"]),
            }
            row[f"{n}_nodes"] = {k: round(v / 3600, 2) for k, v in stages.items()} | {
                "total_hours": round(sum(stages.values()) / 3600, 2),
                "train_default_epochs": round(max(default_longest * scale, default_total * scale / c) / 3600, 2)}
        out[name] = row
    return out


def markdown(result: dict) -> str:
    """The README's tables from a scale.json."""
    lines = []
    e2e, fsc = result.get("e2e"), result.get("feature_scale")
    if e2e:
        lines += [f"End to end, {e2e['videos']:,} videos of {e2e['classes']} classes ({e2e['clips']:,} clips; "
                  f"`hyvid run` {' '.join(e2e.get('run_args', []))}):", "",
                  "| stage | seconds | peak memory (GB) |", "|---|---|---|"]
        lines += [f"| {s} | {v['seconds']:,.0f} | {v['peak_rss_gb']:.1f} |" for s, v in e2e["stages"].items()]
        lines.append("")
        if e2e.get("models"):
            lines += ["| model | test accuracy [95% interval] | test videos |", "|---|---|---|"]
            for m, v in e2e["models"].items():
                lo, hi = v.get("ci95") or (None, None)
                ci = f" [{100 * lo:.1f}, {100 * hi:.1f}]" if lo is not None and hi is not None else ""
                lines.append(f"| {m} | {100 * v['test_accuracy']:.1f}{ci} | {v.get('n_test_videos') or ''} |")
            lines.append("")
    if fsc:
        args = " ".join(fsc.get("train_args", []))
        lines += [f"Feature level, {fsc['videos']:,} videos x {fsc['frame_rows'] // fsc['videos']} = "
                  f"{fsc['frame_rows']:,} frame rows of {fsc['dims'][0]:,} + {fsc['dims'][1]:,} float32 "
                  f"(`hyvid train {args}`):",
                  "", "| stage / model | seconds | peak memory (GB) | test accuracy |", "|---|---|---|---|"]
        lines += [f"| `hyvid {s}` | {v['seconds']:,.0f} | {v['peak_rss_gb']:.1f} | "
                  f"{(fsc.get('hybrid_test_accuracy') or 0) * 100:.1f} |" if s == "hybrid" else
                  f"| `hyvid {s}` | {v['seconds']:,.0f} | {v['peak_rss_gb']:.1f} | |" for s, v in fsc["stages"].items()]
        for m, v in fsc["models"].items():
            epochs = "" if m.startswith("svm") else f" ({v.get('epochs')} epochs)"
            lines.append(f"| {m}{epochs} | {v['run_seconds']:,.0f} (compute {v.get('compute_s', 0):,.0f}) | "
                         f"{v['peak_rss_gb']:.1f} (its worker) | {100 * (v['test_accuracy'] or 0):.1f} |")
        lines.append("")
    ex = result.get("extrapolation") or {}
    for name in ("ucf101", "kinetics400"):
        if name not in ex:
            continue
        lines += [f"Extrapolated hours, {name}:", "",
                  "| nodes | extract | train-cnn | features | train | hybrid | total | train at default epochs |",
                  "|---|---|---|---|---|---|---|---|"]
        for n, row in ex[name].items():
            lines.append(f"| {n.split('_')[0]} | " + " | ".join(
                f"{row[k]:.2f}" for k in ("extract", "train-cnn", "features", "train", "hybrid", "total_hours",
                                          "train_default_epochs")) + " |")
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    p = arg_parser(__doc__)
    p.add_argument("--only", choices=("e2e", "feature_scale"), help="run one part (the other is kept from --out)")
    p.add_argument("--tiny", action="store_true", help="a few videos and a few thousand rows (the test's size)")
    p.add_argument("--out", default=str(RESULTS_DIR / "scale.json"))
    p.add_argument("--markdown", action="store_true", help="print the README's tables from --out and exit")
    p.add_argument("--extrapolate", action="store_true", help="recompute --out's extrapolation and exit")
    add_scratch_args(p, "/tmp/hyvid-scale")
    args = p.parse_args()
    if args.extrapolate:
        result = json.loads(Path(args.out).read_text())
        result["extrapolation"] = extrapolate(result)
        write_json(args.out, result, end="\n")
        return 0
    if args.markdown:
        print(markdown(json.loads(Path(args.out).read_text())))
        return 0
    sizes = TINY if args.tiny else FULL
    out = Path(args.out)
    result = json.loads(out.read_text()) if args.only and out.exists() else {}
    result.setdefault("e2e", None)
    result.setdefault("feature_scale", None)
    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    result["machine_before"] = machine()
    try:
        for part, fn in (("e2e", e2e), ("feature_scale", feature_scale)):
            if args.only in (None, part):
                result[part] = fn(work / part, sizes[part]) | {"measured_at": time.strftime("%Y-%m-%d %H:%M")}
                write_json(out, result)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    result["machine_after"] = machine()
    result["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                      cwd=Path(__file__).parent).stdout.strip()
    result["memory_method"] = ("peak_rss_gb: peak of the summed PSS of the command's process tree (driver and "
                               "Ray processes, shared pages counted once), sampled every 0.5 s")
    result["extrapolation"] = extrapolate(result)
    write_json(out, result, end="\n")
    print(json.dumps({k: result[k] for k in ("e2e", "feature_scale") if result[k]}, indent=2)[:4000])
    return 0


if __name__ == "__main__":
    sys.exit(main())
