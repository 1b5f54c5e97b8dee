"""How each family of temporal and video-level model is built, stepped and scored.

The LSTMs (Sec. 3.2), the regularized fusion network and its λ=0 twin (Sec. 3.3, Algorithm 1),
RDNN (the fusion net with the tr(W Ω⁻¹ Wᵀ) regularizer, `models.rdnn`) and the NN-EF / NN-LF
baselines, as functions of a fit's config dict (see `pipelines.train.fit_config` for its keys;
the keys of the newer rows are read with defaults from here). The estimator baselines (the SVMs,
SVM-MKL and M-DBM) are fitted by `training.sklearn_fit`.
"""
from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch

from hyvid.models import registry as R
from hyvid.pipelines.training.data import LSTM_STREAM, Subset, target_matrix
from hyvid.pipelines.training.distributed import average_gradients, shard_indices

VIDEO_LEVEL_MODELS = (R.FUSION, R.FUSION_NOREG, R.RDNN, R.NN_EF, R.NN_LF)
# Fitted in one call by training.sklearn_fit (no epochs): fit(xs, y, num_classes) / predict_scores(xs).
ESTIMATOR_MODELS = (R.SVM_EF, R.SVM_LF, R.SPATIAL_SVM, R.MOTION_SVM, R.SVM_MKL, R.M_DBM)
SKLEARN_MODELS = ESTIMATOR_MODELS  # the older name, kept for its importers
# The streams each estimator reads (its model picks them itself from the list of every stream).
ESTIMATOR_STREAMS = {R.SVM_EF: R.STREAMS, R.SVM_LF: R.STREAMS, R.SPATIAL_SVM: ("spatial",),
                     R.MOTION_SVM: ("motion",), R.SVM_MKL: R.STREAMS, R.M_DBM: R.STREAMS}
FUSION_NETS = (R.FUSION, R.FUSION_NOREG)
TORCH_MODELS = (*LSTM_STREAM, *VIDEO_LEVEL_MODELS)
CPU = torch.device("cpu")

# RDNN's config keys and their defaults. The regularizer weight (its main hyperparameter) is chosen
# on validation by the stage. This default: on a demo-like synthetic feature store (200 videos, 10
# classes, 1024-d streams, 109 train / 31 val videos, 60 epochs at fusion lr 0.3) val accuracy at
# rdnn_lam 1e-6 / 1e-5 / 3e-5 / 5e-5 / 1e-4 / 1e-3 was 0.94 / 0.94 / 0.90 / 0.90 / 0.42 / 0.10, and
# 1e-2 diverged (the explicit step on the penalty is stable only while 2·lr·λ·max eig(Ω⁻¹) < 2); 1e-5
# is the strongest that ties the best. The penalty is ~‖W_E‖_*², hundreds to thousands at init, so
# useful values sit far below the fusion net's λ2/λ3. Ω is updated once an epoch (RDNN_OMEGA_EVERY):
# Wu et al. 2014 alternate "W given Ω" (many SGD steps) with "Ω given W", and an O(D³)
# eigendecomposition every step would cost more than the step itself (~30-100 ms against ~0.2 ms for
# the prox at D = 400 on the demo's widths).
RDNN_LAM = 1e-5
SGD = "sgd"
ADAM = "adam"
OPTIMIZERS = (SGD, ADAM)
RDNN_OMEGA_EVERY = "epoch"
RDNN_OMEGA_MODES = ("epoch", "step")


def build_model(config: dict, data: dict[str, Subset]) -> torch.nn.Module:
    """The untrained model of ``config["model"]``, sized from the data."""
    model, c, multilabel = config["model"], int(config["num_classes"]), bool(config["multilabel"])
    if model in LSTM_STREAM:
        from hyvid.models.lstm import StreamLSTM

        stream = LSTM_STREAM[model]
        dim = data["train"].inputs.dims()[stream]
        net = StreamLSTM(dim, c, hidden=tuple(config["lstm_hidden"]), pooling=config["lstm_pooling"],
                         peephole=bool(config["lstm_peephole"]),
                         input_dropout=float(config.get("lstm_input_dropout", 0.0)),
                         temporal_input=config.get("lstm_temporal_input", "features"))
        net.fit_input_stats(torch.from_numpy(np.concatenate(data["train"].inputs.features[stream])))
        return net
    dims = [x.shape[1] for x in data["train"].inputs]
    if model in (*FUSION_NETS, R.RDNN):
        from hyvid.models.fusion import RegularizedFusionNet
        from hyvid.models.rdnn import RDNNFusionNet

        cls = RDNNFusionNet if model == R.RDNN else RegularizedFusionNet
        net = cls(dims, c, abstraction=int(config["abstraction"]), fusion=int(config["fusion_units"]),
                  input_dropout=float(config.get("fusion_input_dropout", 0.0)), multilabel=multilabel)
        net.fit_input_stats(data["train"].inputs)
        return net
    from hyvid.models.baselines import EarlyFusionMLP, LateFusionMLP

    if model in (R.NN_EF, R.NN_LF):
        cls = EarlyFusionMLP if model == R.NN_EF else LateFusionMLP
        mlp = cls(dims, c, hidden=(int(config["nn_hidden"]),), multilabel=multilabel,
                  input_dropout=float(config.get("nn_input_dropout", 0.0)))
        # Equal terms: the same input standardization as the fusion net (issue 13).
        mlp.fit_input_stats(data["train"].inputs)
        return mlp
    raise ValueError(f"{model!r} is not a torch model; torch fits are {list(TORCH_MODELS)}")


def build_optimizer(config: dict, model: torch.nn.Module) -> torch.optim.Optimizer:
    name = config["model"]
    if name in LSTM_STREAM:
        from hyvid.models.lstm import make_optimizer

        return make_optimizer(model.parameters(), name=config["lstm_optimizer"], lr=float(config["lstm_lr"]),
                              momentum=float(config["lstm_momentum"]))
    if name in (*FUSION_NETS, R.RDNN):
        # Algorithm 1 with "sgd": plain gradient steps W <- W - ηG (no momentum); RDNN takes the same steps.
        return video_optimizer(config.get("fusion_optimizer", SGD), model, float(config["fusion_lr"]), momentum=0.0)
    return video_optimizer(config.get("nn_optimizer", SGD), model, float(config["nn_lr"]), momentum=0.9)


def video_optimizer(name: str, model: torch.nn.Module, lr: float, momentum: float) -> torch.optim.Optimizer:
    """The optimizer of a video-level net: "sgd" (with ``momentum``) or "adam"."""
    if name == SGD:
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    if name == ADAM:
        return torch.optim.Adam(model.parameters(), lr=lr)
    raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")


@torch.no_grad()
def predict(config: dict, model: torch.nn.Module, subset: Subset, device: torch.device = CPU) -> np.ndarray:
    """Per-video class scores [N, C] of a subset, in the subset's video order.

    Probabilities for every model: softmax over classes, per-class sigmoids for multi-label data.
    """
    model.eval()
    multilabel = bool(config["multilabel"])
    name = config["model"]
    if name in LSTM_STREAM:
        from torch.utils.data import DataLoader

        from hyvid.store.feature_store import collate_sequences

        stream = LSTM_STREAM[name]
        out = []
        for xs, lengths, *_ in DataLoader(subset.inputs, batch_size=64, shuffle=False, collate_fn=collate_sequences):
            logits = model.video_logits(xs[stream].to(device), lengths)
            out.append((torch.sigmoid(logits) if multilabel else torch.softmax(logits, dim=1)).cpu())
        return torch.cat(out).numpy()
    # RegularizedFusionNet and the NN baselines return probabilities from forward().
    return model([x.to(device) for x in subset.inputs]).cpu().numpy()


def train_epoch(config: dict, model: torch.nn.Module, opt: torch.optim.Optimizer, subset: Subset,
                epoch: int, rank: int = 0, world: int = 1, device: torch.device = CPU) -> tuple[float, float]:
    """One pass over this rank's share of the training subset; returns (mean loss, accuracy)."""
    model.train()
    name, multilabel, c = config["model"], bool(config["multilabel"]), int(config["num_classes"])
    idx = shard_indices(len(subset), epoch, int(config["seed"]), rank, world)
    losses, hits, seen = [], 0, 0
    if name in LSTM_STREAM:
        from hyvid.store.feature_store import collate_sequences

        stream, bs = LSTM_STREAM[name], int(config["lstm_batch_size"])
        for b in range(0, len(idx), bs):
            xs, lengths, labels, labels_multi, _ = collate_sequences([subset.inputs[i] for i in idx[b:b + bs]])
            opt.zero_grad(set_to_none=True)
            # models.lstm.sequence_loss (on the pooled video prediction, or with lstm_step_loss on every
            # step's, Sec. 3.2), from one forward so the same logits also give the training accuracy.
            from hyvid.models.lstm import steps_loss

            steps = model(xs[stream].to(device), lengths)
            target = target_matrix(labels.numpy(), labels_multi, c, True) if multilabel else labels
            loss = steps_loss(model, steps, lengths, target.to(device), multilabel, bool(config.get("lstm_step_loss")))
            video = model.pool(steps, lengths).detach()
            loss.backward()
            average_gradients(model, world)
            opt.step()
            losses.append(float(loss.detach()))
            hits += int((video.argmax(1).cpu() == labels).sum())
            seen += len(labels)
        return float(np.mean(losses)), hits / max(seen, 1)

    bs = int(config["fusion_batch_size"] if name in (*FUSION_NETS, R.RDNN) else config["nn_batch_size"])
    omega_every = rdnn_omega_every(config) if name == R.RDNN else None
    if omega_every == "epoch":
        model.refresh_omega()
    y_all = target_matrix(subset.labels, subset.labels_multi, c, multilabel).to(device)
    labels_all = torch.as_tensor(subset.labels)
    inputs = [x.to(device) for x in subset.inputs]
    for b in range(0, len(idx), bs):
        i = torch.as_tensor(idx[b:b + bs])
        xs = [x[i.to(device)] for x in inputs]
        opt.zero_grad(set_to_none=True)
        if name in FUSION_NETS:
            from hyvid.models.fusion import fusion_objective, proximal_step

            # Algorithm 1: a gradient step on the smooth part of Eq. 3 for every layer, then
            # Eq. 4's prox on W_E (thresholds scaled by the learning rate inside proximal_step).
            loss = fusion_objective(model, xs, y_all[i], float(config["lam1"]), fusion_loss(config))
            loss.backward()
            average_gradients(model, world)
            opt.step()
            proximal_step(model, opt.param_groups[0]["lr"], float(config["lam2"]), float(config["lam3"]))
        elif name == R.RDNN:
            from hyvid.models.rdnn import rdnn_objective

            if omega_every == "step":
                model.refresh_omega()
            # The smooth part of Eq. 3 plus λ_r·tr(W_E Ω⁻¹ W_Eᵀ), Ω fixed: a plain gradient step, no prox.
            lam_r = float(config.get("rdnn_lam", RDNN_LAM))
            loss = rdnn_objective(model, xs, y_all[i], float(config["lam1"]), lam_r, fusion_loss(config))
            if not torch.isfinite(loss):
                raise FloatingPointError(_rdnn_divergence(config, model, lam_r, opt.param_groups[0]["lr"]))
            loss.backward()
            average_gradients(model, world)
            opt.step()
        else:
            from hyvid.models.baselines import mlp_loss

            loss = mlp_loss(model, xs, y_all[i] if multilabel else labels_all[i])
            loss.backward()
            average_gradients(model, world)
            opt.step()
        with torch.no_grad():
            out = model(xs)
        losses.append(float(loss.detach()))
        hits += int((out.argmax(1).cpu() == labels_all[i]).sum())
        seen += len(i)
    return float(np.mean(losses)), hits / max(seen, 1)


def fusion_loss(config: dict) -> str:
    """The fusion nets' (and RDNN's) data loss: models.fusion.FUSION_LOSSES."""
    from hyvid.models.fusion import SQUARED

    return str(config.get("fusion_loss", SQUARED))


def rdnn_omega_every(config: dict) -> str:
    """How often RDNN's Ω is recomputed from W_E: "epoch" (the default) or "step"."""
    every = str(config.get("rdnn_omega_every", RDNN_OMEGA_EVERY))
    if every not in RDNN_OMEGA_MODES:
        raise ValueError(f"rdnn_omega_every must be one of {RDNN_OMEGA_MODES}, got {every!r}")
    return every


def _rdnn_divergence(config: dict, model: torch.nn.Module, lam_r: float, lr: float) -> str:
    """Why an RDNN fit diverged: the gradient step on λ·tr(W Ω⁻¹ Wᵀ) is stable only below a bound."""
    top = float(torch.linalg.eigvalsh(model.omega_inv.double()).max())
    return (f"rdnn diverged at rdnn_lam={lam_r:g}: a gradient step on its regularizer is stable only while "
            f"2·lr·rdnn_lam·max eig(Ω⁻¹) < 2, here {2 * lr * lam_r * top:.3g}; use a smaller rdnn_lam or fusion_lr")


def _median_ms(fn: Callable[[], object], reps: int = 7) -> float:
    fn()  # warm-up: first-call allocation and dispatch
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1e3 * float(np.median(times))


@torch.no_grad()
def fit_extras(config: dict, model: torch.nn.Module) -> dict[str, float]:
    """The final metrics a fit adds beyond val/test scores, by model family.

    Fusion nets: how sparse the prox left W_E (``fusion_zero_row_fraction``, ``fusion_zero_weight_fraction``)
    and the time of one Eq. 4 prox step on it (``step_prox_ms``). RDNN: the time of one Ω update
    (``step_omega_ms``, an O(D³) eigendecomposition) beside that of one prox step on a W_E of the same shape
    (``step_prox_ms``, O(P·D)): the paper's efficiency argument, measured on the fitted weights.
    """
    name = config["model"]
    if name not in (*FUSION_NETS, R.RDNN):
        return {}
    from hyvid.models.fusion import prox_l21_l11, zero_row_fraction, zero_weight_fraction

    W = model.fusion_weight.detach().cpu()
    # Thresholds of the same order as the λ grid's; the prox's cost does not depend on them.
    prox_ms = _median_ms(lambda: prox_l21_l11(W, 1e-4, 1e-4))
    if name == R.RDNN:
        from hyvid.models.rdnn import update_omega

        return {"step_omega_ms": _median_ms(lambda: update_omega(W)), "step_prox_ms": prox_ms}
    # The ℓ2,1 term at work: fusion neurons (rows of W_E) that no feature uses any more.
    return {"fusion_zero_row_fraction": zero_row_fraction(model), "fusion_zero_weight_fraction":
            zero_weight_fraction(model), "step_prox_ms": prox_ms}


@torch.no_grad()
def val_loss(config: dict, model: torch.nn.Module, scores: np.ndarray, subset: Subset,
             device: torch.device = CPU) -> float:
    """The fit's data loss on a held-out subset, as its training loss measures it (so the curves compare):
    Eq. 1's squared loss of the per-class sigmoids for a fusion net trained with it, else the negative
    log-likelihood of the scores (softmax probabilities; per-class BCE for multi-label data)."""
    multilabel = bool(config["multilabel"])
    y = target_matrix(subset.labels, subset.labels_multi, int(config["num_classes"]), multilabel)
    if config["model"] in (*FUSION_NETS, R.RDNN) and fusion_loss(config) == "squared":
        model.eval()
        sig = torch.sigmoid(model.logits([x.to(device) for x in subset.inputs])).cpu()
        return float(((sig - y) ** 2).sum(dim=1).mean())
    p = torch.from_numpy(np.asarray(scores, dtype=np.float64)).clamp(1e-7, 1 - 1e-7)
    if multilabel:
        return float(-(y * p.log() + (1 - y) * (1 - p).log()).mean())
    return float(-(y * p.log()).sum(dim=1).mean())


def evaluate(config: dict, scores: np.ndarray, subset: Subset) -> dict[str, float]:
    """The paper's metrics of one subset (accuracy, mean class accuracy, top-5, mAP)."""
    from hyvid.pipelines.evaluation.metrics import evaluate as evaluate_scores

    return evaluate_scores(scores, subset.labels, subset.labels_multi, multilabel=bool(config["multilabel"]))
