"""How each family of temporal and video-level model is built, stepped and scored.

The LSTMs (Sec. 3.2), the regularized fusion network and its λ=0 twin (Sec. 3.3, Algorithm 1)
and the NN-EF / NN-LF baselines, as functions of a fit's config dict (see
`pipelines.train.fit_config` for its keys). The SVM baselines are in `training.sklearn_fit`.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from hyvid.models import registry as R
from hyvid.pipelines.training.data import LSTM_STREAM, Subset, target_matrix
from hyvid.pipelines.training.distributed import average_gradients, shard_indices

VIDEO_LEVEL_MODELS = (R.FUSION, R.FUSION_NOREG, R.NN_EF, R.NN_LF)
SKLEARN_MODELS = (R.SVM_EF, R.SVM_LF)
FUSION_NETS = (R.FUSION, R.FUSION_NOREG)
TORCH_MODELS = (*LSTM_STREAM, *VIDEO_LEVEL_MODELS)
CPU = torch.device("cpu")


def build_model(config: dict, data: dict[str, Subset]) -> torch.nn.Module:
    """The untrained model of ``config["model"]``, sized from the data."""
    model, c, multilabel = config["model"], int(config["num_classes"]), bool(config["multilabel"])
    if model in LSTM_STREAM:
        from hyvid.models.lstm import StreamLSTM

        stream = LSTM_STREAM[model]
        dim = data["train"].inputs.dims()[stream]
        net = StreamLSTM(dim, c, hidden=tuple(config["lstm_hidden"]), pooling=config["lstm_pooling"],
                         peephole=bool(config["lstm_peephole"]))
        net.fit_input_stats(torch.from_numpy(np.concatenate(data["train"].inputs.features[stream])))
        return net
    dims = [x.shape[1] for x in data["train"].inputs]
    if model in FUSION_NETS:
        from hyvid.models.fusion import RegularizedFusionNet

        net = RegularizedFusionNet(dims, c, abstraction=int(config["abstraction"]), fusion=int(config["fusion_units"]))
        net.fit_input_stats(data["train"].inputs)
        return net
    from hyvid.models.baselines import EarlyFusionMLP, LateFusionMLP

    if model == R.NN_EF:
        return EarlyFusionMLP(dims, c, hidden=(int(config["nn_hidden"]),), multilabel=multilabel)
    if model == R.NN_LF:
        return LateFusionMLP(dims, c, hidden=(int(config["nn_hidden"]),), multilabel=multilabel)
    raise ValueError(f"{model!r} is not a torch model; torch fits are {list(TORCH_MODELS)}")


def build_optimizer(config: dict, model: torch.nn.Module) -> torch.optim.Optimizer:
    name = config["model"]
    if name in LSTM_STREAM:
        from hyvid.models.lstm import make_optimizer

        return make_optimizer(model.parameters(), name=config["lstm_optimizer"], lr=float(config["lstm_lr"]),
                              momentum=float(config["lstm_momentum"]))
    if name in FUSION_NETS:
        # Algorithm 1: plain gradient steps W <- W - ηG (no momentum).
        return torch.optim.SGD(model.parameters(), lr=float(config["fusion_lr"]))
    return torch.optim.SGD(model.parameters(), lr=float(config["nn_lr"]), momentum=0.9)


@torch.no_grad()
def predict(config: dict, model: torch.nn.Module, subset: Subset, device: torch.device = CPU) -> np.ndarray:
    """Per-video class scores [N, C] of a subset, in the subset's video order.

    Softmax probabilities (sigmoid for multi-label data) for the LSTMs and NN baselines; the
    fusion nets' per-class logistic outputs (Sec. 3.3), which are in [0, 1] already.
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
    # RegularizedFusionNet and the NN baselines return scores from forward().
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
            # models.lstm.sequence_loss's default (the loss on the pooled video prediction, Sec. 3.2),
            # computed here from one forward so the same logits also give the training accuracy.
            video = model.pool(model(xs[stream].to(device), lengths), lengths)
            if multilabel:
                target = target_matrix(labels.numpy(), labels_multi, c, True).to(device)
                loss = F.binary_cross_entropy_with_logits(video, target)
            else:
                loss = F.cross_entropy(video, labels.to(device))
            loss.backward()
            average_gradients(model, world)
            opt.step()
            losses.append(float(loss.detach()))
            hits += int((video.detach().argmax(1).cpu() == labels).sum())
            seen += len(labels)
        return float(np.mean(losses)), hits / max(seen, 1)

    bs = int(config["fusion_batch_size"] if name in FUSION_NETS else config["nn_batch_size"])
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
            loss = fusion_objective(model, xs, y_all[i], float(config["lam1"]))
            loss.backward()
            average_gradients(model, world)
            opt.step()
            proximal_step(model, opt.param_groups[0]["lr"], float(config["lam2"]), float(config["lam3"]))
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

def val_loss(config: dict, scores: np.ndarray, subset: Subset) -> float:
    """Squared distance of the val scores to the targets: a tie-breaker between equal accuracies."""
    y = target_matrix(subset.labels, subset.labels_multi, int(config["num_classes"]), bool(config["multilabel"]))
    return float(((torch.from_numpy(scores) - y) ** 2).sum(dim=1).mean())


def evaluate(config: dict, scores: np.ndarray, subset: Subset) -> dict[str, float]:
    """The paper's metrics of one subset (accuracy, mean class accuracy, top-5, mAP)."""
    from hyvid.pipelines.evaluation.metrics import evaluate as evaluate_scores

    return evaluate_scores(scores, subset.labels, subset.labels_multi, multilabel=bool(config["multilabel"]))
