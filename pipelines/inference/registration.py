"""Registering a logged model: a registry version with a description, tags and a model card.

`hyvid train-cnn`, `hyvid train` and `hyvid hybrid` take `--register NAME [--alias A]` and call
`register_runs` with the runs they finished. Each model version gets

- tags: the model, stage, split and store (the data), the run, the Lance version of every table
  its run read, the command line, and each test (and val) metric with its 95% interval and the
  number of videos it rests on (`test_accuracy: 0.8125 [0.7000, 0.9167] n=48`);
- a description: the model card, also written as `README.md` beside the model's `MLmodel`
  (so `mlflow artifacts download -u models:/NAME/1` brings it along);
- the alias, when one is given (`models:/NAME@A`).

Everything is read back from the run, so a model registered later (`register_model`) gets the
same card as one registered by its stage.
"""
from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hyvid.models import registry as R
from hyvid.pipelines import tracking

log = logging.getLogger(__name__)

CARD_FILE = "README.md"
# What each model is, for its card: the paper's section and how hyvid builds it.
WHAT = {
    R.SPATIAL_CNN: "the spatial stream CNN (Sec. 3.1): EfficientNet-Lite0 on RGB frames, fc1 and a classifier",
    R.MOTION_CNN: "the motion stream CNN (Sec. 3.1): a CNN-M-like net on stacks of L optical flows",
    R.SPATIAL_LSTM: "the spatial LSTM (Sec. 3.2) over a video's per-frame spatial CNN features",
    R.MOTION_LSTM: "the motion LSTM (Sec. 3.2) over a video's per-frame motion CNN features",
    R.FUSION: "the regularized feature fusion network (Sec. 3.3) of both streams' frame-averaged features",
    R.FUSION_NOREG: "the fusion network without its l2,1/l1,1 regularizer (Table 2)",
    R.NN_EF: "NN-EF (Table 2): one MLP on the concatenated streams", R.NN_LF: "NN-LF (Table 2): one MLP per stream",
    R.SVM_EF: "SVM-EF (Table 2): chi2-kernel SVMs on both streams' kernels averaged",
    R.SVM_LF: "SVM-LF (Table 2): one chi2-kernel SVM per stream, scores averaged",
    R.SPATIAL_SVM: "the spatial SVM (Table 2): a chi2-kernel SVM on the spatial stream",
    R.MOTION_SVM: "the motion SVM (Table 2): a chi2-kernel SVM on the motion stream",
    R.SVM_MKL: "SVM-MKL (Table 2): lp-norm multiple kernel learning over the streams' chi2 kernels",
    R.M_DBM: "M-DBM (Table 2): a multimodal deep Boltzmann machine", R.RDNN: "RDNN (Table 2)",
    R.HYBRID: "the hybrid framework (Sec. 4.2.3): CNNs, LSTMs and the fusion network, linearly fused, "
              "classifying video files end to end",
}


@dataclass(frozen=True)
class Registered:
    """One registered model version."""

    name: str
    version: str
    alias: str | None = None

    @property
    def uri(self) -> str:
        return f"models:/{self.name}@{self.alias}" if self.alias else f"models:/{self.name}/{self.version}"


def check_register(name: str | None, alias: str | None) -> None:
    """Refuse a registered model name or alias MLflow's URIs cannot hold, and an alias without a name."""
    if alias is not None and not name:
        raise ValueError(f"register_alias {alias!r} needs register_as: --alias A goes with --register NAME")
    for what, value in (("register_as (--register)", name), ("register_alias (--alias)", alias)):
        if value is not None and (not value.strip() or any(c in value for c in "/:@ ")):
            raise ValueError(f"{what} {value!r}: give a name without '/', ':', '@' or spaces, e.g. hyvid-fusion")
    if alias is not None and alias.lower() == "latest":
        raise ValueError("register_alias 'latest' is reserved by MLflow; choose another, e.g. champion")


def registered_names(name: str, models: list[str]) -> dict[str, str]:
    """The registry name of each model a stage registers: NAME for one, NAME-<model> for several."""
    check_register(name, None)
    return {models[0]: name} if len(models) == 1 else {m: f"{name}-{m}" for m in models}


def register_runs(run_ids: dict[str, str], name: str, alias: str | None = None) -> dict[str, Registered]:
    """Register the model each run logged under its registry name (see `registered_names`)."""
    names = registered_names(name, list(run_ids))
    return {m: register_model(tracking.model_uri(run_ids[m], m), names[m], alias) for m in run_ids}


def _metric_tags(metrics: dict[str, float]) -> dict[str, str]:
    """`test_accuracy: 0.8125 [0.7000, 0.9167] n=48` per metric with an interval, plain val_* values."""
    out = {}
    n = metrics.get(tracking.metric_name("test", tracking.N_VIDEOS_METRIC))
    for m in R.METRICS:
        test = tracking.metric_name("test", m)
        lo, hi = (metrics.get(k) for k in tracking.ci_metric_names("test", m))
        if test in metrics:
            ci = f" [{lo:.4f}, {hi:.4f}]" if lo is not None and hi is not None else ""
            out[test] = f"{metrics[test]:.4f}{ci}" + (f" n={int(n)}" if n is not None else "")
        val = tracking.metric_name("val", m)
        if val in metrics:
            out[val] = f"{metrics[val]:.4f}"
    return out


def model_card(name: str, run: Any, model_dir: str | None = None) -> str:
    """The markdown card of a registered model: what it is, what it reads, its data, numbers and origin."""
    tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
    model = tags.get(tracking.TAG_MODEL, "?")
    lines = [f"# {name}", "", f"`{model}` of hyvid: {WHAT.get(model, model)}.", ""]
    inputs = _inputs_text(model_dir)
    if inputs:
        lines += ["## Inputs and outputs", "", inputs, ""]
    lines += ["## Data", ""]
    store = params.get(f"{tracking.LINEAGE_PREFIX}store_uri") or tags.get(tracking.TAG_STORE)
    if store:
        lines.append(f"- store: `{store}`")
    if tags.get(tracking.TAG_SPLIT):
        lines.append(f"- split: {tags[tracking.TAG_SPLIT]} (validation carved from the official training list by "
                     "group; test only reported)")
    versions = _lineage(params)
    if versions:
        lines.append("- Lance tables read: " + ", ".join(f"`{t}` v{v}" for t, v in versions.items()))
    lines += ["", "## Metrics", ""]
    shown = _metric_tags(metrics)
    if shown:
        lines += [f"- {k}: {v}" for k, v in shown.items()]
        lines.append("- intervals: 95% bootstrap over the test videos; n: the test videos they rest on")
    else:
        lines.append("- none logged yet (CNNs get their video-level figures from `hyvid features`)")
    lines += ["", "## Origin", "", f"- MLflow run `{run.info.run_id}` ({run.info.run_name}), stage "
              f"`{tags.get(tracking.TAG_STAGE, '?')}`"]
    if tags.get(tracking.TAG_COMMAND):
        lines.append(f"- command: `{tags[tracking.TAG_COMMAND]}`")
    if tags.get(tracking.TAG_GIT_COMMIT):
        lines.append(f"- hyvid commit: `{tags[tracking.TAG_GIT_COMMIT]}`")
    lines += ["", "## Use", "", "```python", "import mlflow",
              f'model = mlflow.pyfunc.load_model("models:/{name}/<version>")   # or models:/{name}@<alias>',
              "model.predict(model.input_example)", "```", "",
              "Serve it: `mlflow models serve -m models:/" + name + "/<version> --env-manager local "
              "-h 127.0.0.1 -p 5001` (with the environment's bin/ on PATH)."]
    return "\n".join(lines) + "\n"


def _lineage(params: dict[str, str]) -> dict[str, str]:
    pre, post = tracking.LINEAGE_PREFIX, ".version"
    return {k[len(pre):-len(post)]: v for k, v in sorted(params.items()) if k.startswith(pre) and k.endswith(post)}


def _inputs_text(model_dir: str | None) -> str:
    if model_dir is None:
        return ""
    import yaml

    try:
        meta = yaml.safe_load((Path(model_dir) / "MLmodel").read_text()).get("metadata") or {}
    except (OSError, yaml.YAMLError):
        return ""
    if meta.get("inputs"):
        return f"{meta['inputs']}; out: class scores [rows, C] in the order of `class_names` (the model's metadata)."
    if meta.get("class_names") is not None:  # the hybrid
        return ("video files: paths, or base64 file contents in a `video` column; out: one row per video with "
                "`class`, `score`, `top` (a list of {class, score}), `scores` and `error`.")
    return ""


def register_model(model_uri: str, name: str, alias: str | None = None) -> Registered:
    """Register `model_uri` (a run's logged model) as a new version of `name`, with its tags,
    description and card (see the module doc)."""
    import mlflow
    from mlflow import MlflowClient

    client = MlflowClient()
    run_id = model_uri.removeprefix("runs:/").split("/")[0] if model_uri.startswith("runs:/") else None
    with tempfile.TemporaryDirectory(prefix="hyvid_register_") as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(artifact_uri=f"{model_uri}/MLmodel", dst_path=tmp)
            model_dir: str | None = str(Path(local).parent)
        except Exception:  # noqa: BLE001 - the card is written without its inputs line
            model_dir = None
        with contextlib.redirect_stderr(io.StringIO()):  # its "Successfully registered" lines: logged below
            mv = mlflow.register_model(model_uri, name)
        run = client.get_run(run_id or mv.run_id)
        card = model_card(name, run, model_dir)
        tags = {tracking.TAG_MODEL: run.data.tags.get(tracking.TAG_MODEL, ""),
                tracking.TAG_STAGE: run.data.tags.get(tracking.TAG_STAGE, ""), "run_id": run.info.run_id,
                **{k: v for k in (tracking.TAG_SPLIT, tracking.TAG_STORE, tracking.TAG_COMMAND)
                   if (v := run.data.tags.get(k))},
                **{f"{tracking.LINEAGE_PREFIX}{t}.version": v for t, v in _lineage(run.data.params).items()},
                **_metric_tags(run.data.metrics)}
        for k, v in tags.items():
            client.set_model_version_tag(name, mv.version, k, v)
        client.update_model_version(name, mv.version, description=card)
        if not client.get_registered_model(name).description:
            client.update_registered_model(name, description=f"hyvid `{tags[tracking.TAG_MODEL]}`: "
                                           f"{WHAT.get(tags[tracking.TAG_MODEL], '')}")
        # MLflow 3 registers the run's logged model: its source is models:/<model id>.
        model_id = getattr(mv, "model_id", None) or (str(mv.source).removeprefix("models:/")
                                                     if str(mv.source or "").startswith("models:/m-") else None)
        if model_id:
            path = Path(tmp) / CARD_FILE
            path.write_text(card)
            client.log_model_artifact(model_id, str(path))
    if alias:
        client.set_registered_model_alias(name, alias, mv.version)
    log.info("registered %s as models:/%s/%s%s", model_uri, name, mv.version, f" (@{alias})" if alias else "")
    return Registered(name, str(mv.version), alias)
