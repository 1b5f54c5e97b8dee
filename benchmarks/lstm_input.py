"""Benchmark: what each LSTM step reads (`--lstm-input features|deviation|both`), judged on validation
alone, on stores of real CNN features: standalone (each LSTM's val figure) and in the hybrid (its val
figure with its weights searched out of fold).

    python -m benchmarks.lstm_input --store cf=/tmp/cf/store --store cfm=/tmp/cfm/store --work /tmp/lstmq

Each `--store NAME=PATH` is a store `hyvid run` (or `benchmarks.cross_fit`) has filled: frame
features of both CNNs and their video scores. For each input it runs `hyvid train` (every default
model, `--lstm-input X`) and then `hyvid hybrid` into its own MLflow experiment, and records the
LSTMs' and the hybrid's validation figures (accuracy, or mAP for a multi-label store). No test
figure enters the result. `--collect-only` reads the figures of runs already made in `--work`.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from ._common import arg_parser, write_json
from ._measure import machine

INPUTS = ("features", "deviation", "both")
MODELS = ("spatial_lstm", "motion_lstm", "hybrid")


def _hyvid(*args: str, log: Path) -> None:
    with open(log, "a") as f:
        subprocess.run([sys.executable, "-m", "hyvid.pipelines.cli", *args], stdout=f, stderr=subprocess.STDOUT,
                       check=True)


def _val_figures(tracking_uri: str, experiment: str) -> dict:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    out: dict = {}
    if exp is None:
        return out
    for run in client.search_runs([exp.experiment_id], filter_string="tags.`mlflow.parentRunId` IS NULL",
                                  order_by=["attributes.start_time DESC"]):
        model = run.data.tags.get("hyvid.model") or run.info.run_name.split("-")[0]
        m = run.data.metrics
        if model in MODELS and model not in out:
            out[model] = {k: round(m[k], 4) for k in ("val_accuracy", "val_map") if k in m}
    return out


def main() -> int:
    p = arg_parser(__doc__, "lstm_input")
    p.add_argument("--store", action="append", required=True, metavar="NAME=PATH")
    p.add_argument("--work", required=True, help="folder of the MLflow database and the logs")
    p.add_argument("--collect-only", action="store_true", help="only read the figures of runs already made")
    args = p.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{work.resolve()}/mlflow.db"
    result: dict = {"benchmark": "lstm_input", "machine": machine(), "load_before": os.getloadavg(), "stores": {}}
    for spec in args.store:
        name, path = spec.split("=", 1)
        for inp in INPUTS:
            exp = f"lstm-input-{name}-{inp}"
            if not args.collect_only:
                log = work / f"{exp}.log"
                _hyvid("train", "--store", path, "--lstm-input", inp, "--experiment", exp, "--tracking-uri", uri,
                       log=log)
                _hyvid("hybrid", "--store", path, "--experiment", exp, "--tracking-uri", uri, log=log)
            result["stores"].setdefault(name, {"path": path})[inp] = _val_figures(uri, exp)
    result["load_after"] = os.getloadavg()
    write_json(args.out, result, end="\n")
    print(result["stores"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
