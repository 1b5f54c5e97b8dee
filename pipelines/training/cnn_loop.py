"""The Ray Train loop of `hyvid train-cnn`: one stream CNN fitted on the stored clips.

Runs on every worker of a TorchTrainer: reads the `clips` table in place (pinned version), trains
with SGD (momentum, weight decay, one step-down of the learning rate), evaluates on val videos
(a video's score is the mean of its clips' softmax scores, as at test time), and reports and
checkpoints every epoch through `training.checkpoint`. With a frozen spatial backbone
(`finetune="head"`) the backbone runs once per clip and view, and the head trains on its cached
pooled output (see the train_cnn stage's docstring).

On multi-label data (`config["multilabel"]`, CCV) every clip is trained with binary cross-entropy
(sigmoid per class) against the multi-hot labels of its video, a video's score is the mean of its
clips' sigmoid scores, and the epoch whose val mAP is best is kept (`best` in the checkpoint
state: its epoch, val mAP and weights). Single-label fits keep the paper's softmax classifier, report val accuracy
and keep their last epoch, as they always did.
"""
from __future__ import annotations

import logging
import math
import time
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from hyvid.models.cnn import build_stream_cnn, random_crop_flip, stream_input, view_crops
from hyvid.pipelines import logs
from hyvid.pipelines.data.clips import ClipsDataset, iter_batches
from hyvid.pipelines.precision import autocast, channels_last, grad_scaler, resolve_amp, to_device
from hyvid.pipelines.training.checkpoint import FitSession, RayTrainSession
from hyvid.pipelines.training.distributed import allreduce_sum, average_gradients

log = logging.getLogger(__name__)


def lr_milestones(epochs: int) -> list[int]:
    """Epochs at which the learning rate drops 10x: once, at ~70% of the fit (3+ epochs)."""
    return [max(1, int(round(0.7 * epochs)))] if epochs >= 3 else []


# Two-stream training's iteration schedules (Sec. 4.1.2): the learning rate drops 10x at these
# iterations. The paper gives the steps, not the end: the last phase runs as long as the one before
# it (spatial 20K -> 26K, motion 200K -> 300K), so PAPER_CNN_ITERS is our reading, said as such.
PAPER_LR_STEPS = {"spatial": (14_000, 20_000), "motion": (100_000, 200_000)}
PAPER_CNN_ITERS = {"spatial": 26_000, "motion": 300_000}


def iteration_milestones(stream: str, iters: int) -> list[int]:
    """Iterations at which the lr drops 10x in an `iters`-step fit: the paper's steps for `stream`,
    scaled from its schedule's length (PAPER_CNN_ITERS) to `iters` (at PAPER_CNN_ITERS: the paper's)."""
    total = PAPER_CNN_ITERS[stream]
    steps = {max(1, int(round(m * iters / total))) for m in PAPER_LR_STEPS[stream]}
    return sorted(m for m in steps if m < iters)  # a drop at the last step would never be used


def _centre(stream: str, x: np.ndarray, crop: tuple[int, int]) -> np.ndarray:
    """The centre crop at the training size: val sees the geometry `features` and test see."""
    return view_crops(x, crop, "frames" if stream == "spatial" else "flow", 1)[0]


def _evaluate(model: nn.Module, stream: str, data, video_order: list[np.ndarray], batch_size: int,
              num_classes: int, device: torch.device, crop: tuple[int, int] = (0, 0),
              amp: torch.dtype | None = None) -> tuple[float, float, float]:
    """(video-level correct, clip-level correct, n videos) on this worker's share of val videos.

    A video's score is the mean of its clips' softmax scores (centre crops), as at test time.
    """
    model.eval()
    if not video_order:
        return 0.0, 0.0, 0.0
    idx = np.concatenate(video_order)
    probs = np.zeros((len(idx), num_classes), np.float32)
    labels = np.zeros(len(idx), np.int64)
    pos = 0
    with torch.no_grad():
        for x, y, _ in iter_batches(data, idx, batch_size):
            with autocast(device, amp):
                logits = model(_input(stream, _centre(stream, x, crop), device))
            p = logits.float().softmax(1).cpu().numpy()
            probs[pos:pos + len(p)] = p
            labels[pos:pos + len(p)] = y
            pos += len(p)
    return _video_hits(probs, labels, video_order)


def _input(stream: str, x: np.ndarray, device: torch.device) -> torch.Tensor:
    """A uint8 batch as its CNN's input on `device`: pinned, copied without blocking, NHWC on CUDA."""
    t = to_device(stream_input(stream, x), device)
    return channels_last(t) if device.type == "cuda" else t


def _clip_scores(model: nn.Module, stream: str, data, video_order: list[np.ndarray], batch_size: int,
                 num_classes: int, device: torch.device, crop: tuple[int, int] = (0, 0),
                 amp: torch.dtype | None = None) -> np.ndarray:
    """Class scores (`model.scores`: sigmoid on multi-label data) of the clips of `video_order`, in order."""
    model.eval()
    idx = np.concatenate(video_order) if video_order else np.zeros(0, np.int64)
    out = np.zeros((len(idx), num_classes), np.float32)
    pos = 0
    with torch.no_grad():
        for x, _, _ in iter_batches(data, idx, batch_size):
            with autocast(device, amp):
                logits = model(_input(stream, _centre(stream, x, crop), device))
            p = model.scores(logits.float()).cpu().numpy()
            out[pos:pos + len(p)] = p
            pos += len(p)
    return out


def _video_map(probs: np.ndarray, video_order: list[np.ndarray], targets: np.ndarray, rank: int, world: int,
               n_videos: int, device: torch.device) -> dict[str, float]:
    """Val mAP and hit@1 of multi-label video scores (the mean of each video's clip scores).

    `targets` holds this worker's videos' multi-hot rows; each worker holds videos rank::world, so
    the whole val set is put together by one sum over the workers before scoring (mAP, unlike a
    hit count, is not a sum of per-worker parts).
    """
    from hyvid.pipelines.evaluation.metrics import mean_average_precision, multilabel_hit_at_k

    c = targets.shape[1] if targets.ndim == 2 else probs.shape[1]
    scores = np.zeros((n_videos, c), np.float64)
    y = np.zeros((n_videos, c), np.float64)
    start = 0
    for k, rows in enumerate(video_order):
        scores[rank + k * world] = probs[start:start + len(rows)].mean(0)
        y[rank + k * world] = targets[k]
        start += len(rows)
    if world > 1:
        flat = allreduce_sum([*scores.reshape(-1).tolist(), *y.reshape(-1).tolist()], device)
        scores = np.asarray(flat[:scores.size]).reshape(scores.shape)
        y = np.asarray(flat[scores.size:]).reshape(y.shape)
    y = y.astype(np.int8)
    return {"val_map": mean_average_precision(scores, y), "val_accuracy": multilabel_hit_at_k(scores, y, 1)}


def _multi_hot(video_ids: np.ndarray, targets: dict[str, list[int]], num_classes: int) -> np.ndarray:
    """float32 [N, C]: row i is the multi-hot label set of video_ids[i] (all zeros for a video with none)."""
    y = np.zeros((len(video_ids), num_classes), np.float32)
    for i, v in enumerate(video_ids.tolist()):
        y[i, targets[v]] = 1.0
    return y


def _video_hits(probs: np.ndarray, labels: np.ndarray, video_order: list[np.ndarray]) -> tuple[float, float, float]:
    clip_correct = float((probs.argmax(1) == labels).sum())
    video_correct, start = 0.0, 0
    for rows in video_order:
        sl = slice(start, start + len(rows))
        video_correct += float(probs[sl].mean(0).argmax() == labels[sl][0])
        start += len(rows)
    return video_correct, clip_correct, float(len(video_order))


@torch.no_grad()
def _evaluate_pooled(core: nn.Module, pooled: torch.Tensor | None, data, video_order: list[np.ndarray],
                     num_classes: int, device: torch.device) -> tuple[float, float, float]:
    """`_evaluate` on cached backbone outputs (rows in `video_order`'s concatenated order)."""
    if pooled is None or not video_order:
        return 0.0, 0.0, 0.0
    core.eval()
    probs = core.head(pooled.to(device))[1].softmax(1).cpu().numpy()
    labels = data.labels[np.concatenate(video_order)]
    return _video_hits(probs, labels, video_order)


@torch.no_grad()
def _cache_pooled(core: nn.Module, data, indices: np.ndarray, batch_size: int, device: torch.device,
                  crop: tuple[int, int] | None = None, rng: np.random.Generator | None = None,
                  flip: bool = True, amp: torch.dtype | None = None) -> torch.Tensor:
    """The frozen backbone's pooled output [len(indices), 1280] for clips `indices`, in that order.

    With `crop` and `rng`, each clip is randomly cropped and flipped first (training views); with
    `crop` alone, centre-cropped (val: the view inference takes); with neither, the whole frame.
    """
    core.eval()
    out = []
    for x, _, _ in iter_batches(data, indices, batch_size):
        if crop is not None:
            x = random_crop_flip(x, crop, rng, "frames", flip) if rng is not None else _centre("spatial", x, crop)
        with autocast(device, amp):
            pooled = core.pooled(_input("spatial", x, device))
        out.append(pooled.float().cpu())
    return torch.cat(out) if out else torch.zeros((0, 0))


def train_step(forward: Callable[[torch.Tensor], torch.Tensor], loss_fn: nn.Module, opt: torch.optim.Optimizer,
               scaler: torch.amp.GradScaler, x: torch.Tensor, y: torch.Tensor, device: torch.device,
               amp: torch.dtype | None = None, after_backward: Callable[[], None] | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """One SGD step on a batch: (the loss, fp32, and the logits, in autocast's dtype), both detached.

    The forward runs under autocast of `amp` (None: fp32) and the loss in fp32; the scaler (enabled
    for fp16 on CUDA, `precision.grad_scaler`) scales the loss, and gradients are unscaled before
    `after_backward` (the head's hand-averaged gradients) sees them.
    """
    xt, yt = to_device(x, device), to_device(y, device)
    if device.type == "cuda" and xt.dim() == 4:
        xt = channels_last(xt)
    with autocast(device, amp):
        logits = forward(xt)
    loss = loss_fn(logits.float(), yt)
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if after_backward is not None:
        scaler.unscale_(opt)
        after_backward()
    scaler.step(opt)
    scaler.update()
    return loss.detach(), logits.detach()


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train worker (several workers per stream): `cnn_fit` under Ray Train's session and DDP."""
    import ray.train
    import ray.train.torch

    ctx = ray.train.get_context()
    cnn_fit(config, RayTrainSession(), ctx.get_world_rank(), ctx.get_world_size(), ray.train.torch.get_device(),
            prepare=ray.train.torch.prepare_model)


def cnn_fit(config: dict[str, Any], session: FitSession, rank: int = 0, world: int = 1,
            device: torch.device | None = None, prepare: Callable[[nn.Module], nn.Module] | None = None) -> None:
    """Fit one stream's CNN for `epochs`, reporting and checkpointing (through `session`) every epoch.

    `prepare` wraps the model for data parallelism (Ray Train's DDP); one worker needs none.
    """
    stream = config["stream"]
    torch.set_num_threads(max(1, int(config["cpus_per_worker"])))
    torch.manual_seed(config["seed"] + rank)
    device = device or torch.device("cpu")

    train_data = ClipsDataset(config["store_uri"], config["train_labels"], stream,
                              version=config["clips_version"], storage_options=config["storage_options"])
    val_data = (ClipsDataset(config["store_uri"], config["val_labels"], stream,
                             version=config["clips_version"], storage_options=config["storage_options"])
                if config["val_labels"] else None)
    if len(train_data) == 0:
        raise ValueError(f"no clips of the training videos in {config['store_uri']} (clips version "
                         f"{config['clips_version']}); run `hyvid extract` first")

    multilabel = bool(config.get("multilabel", False))
    model = build_stream_cnn(stream, config["num_classes"], config["stack"], config["feature_dim"],
                             config["dropout"], config["finetune"], pretrained=True, multilabel=multilabel)
    if device.type == "cuda":  # NHWC before DDP wraps it: cuDNN's tensor-core convolutions want it
        model = model.to(device).to(memory_format=torch.channels_last)
    model = prepare(model) if prepare is not None else model.to(device)
    core = model.module if hasattr(model, "module") else model
    params = [p for p in core.parameters() if p.requires_grad]
    amp = resolve_amp(config.get("amp", "off"), device)
    scaler = grad_scaler(device, amp)
    opt = torch.optim.SGD(params, lr=config["lr"], momentum=config["momentum"],
                          weight_decay=config["weight_decay"])
    # Iteration-based (`iters`: two-stream's schedule, stepped every batch) or epoch-based (stepped every epoch).
    iters = config.get("iters")
    milestones = iteration_milestones(stream, int(iters)) if iters else lr_milestones(config["epochs"])
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones, gamma=0.1)
    step = 0  # SGD steps taken (iteration-based fits stop at `iters`)
    history: list[dict[str, float]] = []
    start_epoch = 0
    # Multi-label fits keep their best val-mAP epoch: {"epoch", "value", "model"} (see the module doc).
    best: dict[str, Any] = {"epoch": -1, "value": -np.inf, "model": None}

    state = session.restore()
    if state is not None:
        core.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        history = list(state["history"])
        start_epoch = int(state["epoch"]) + 1
        step = int(state.get("step", 0))
        best = state.get("best", best)
        log.info("%s: resuming from the checkpoint of epoch %d", stream, start_epoch - 1)

    # Val videos are split among workers whole, so each can average its videos' clip scores.
    val_videos: list[np.ndarray] = []
    all_val: list[np.ndarray] = []
    if val_data is not None and len(val_data):
        rows_of: dict[str, list[int]] = {}
        for i, v in enumerate(val_data.video_ids.tolist()):
            rows_of.setdefault(v, []).append(i)
        all_val = [np.asarray(r, dtype=np.int64) for r in rows_of.values()]
        val_videos = all_val[rank::world]
    n_val_videos = len(all_val)

    crop = (config["crop"], config["crop"])
    num_classes = int(config["num_classes"])
    bs = config["batch_size"]
    epochs = int(config["epochs"])
    if iters:  # as many epochs as `iters` steps take, each worker stepping len(share) / bs times
        share_size = len(train_data) // world if len(train_data) >= world else len(train_data)
        epochs = math.ceil(int(iters) / max(1, math.ceil(share_size / bs)))
    if multilabel:
        # Each clip's target is its video's multi-hot labels; a video with no label is all zeros.
        loss_fn: nn.Module = nn.BCEWithLogitsLoss()
        train_multi = torch.from_numpy(_multi_hot(train_data.video_ids, config["train_targets"], num_classes))
        val_targets = (_multi_hot(np.asarray([val_data.video_ids[r[0]] for r in val_videos], dtype=object),
                                  config["val_targets"], num_classes) if val_videos else np.zeros((0, num_classes)))
    else:
        loss_fn = nn.CrossEntropyLoss()
    cached = stream == "spatial" and config["finetune"] == "head"
    if cached and start_epoch < epochs:
        t0 = time.perf_counter()
        n_views = int(config.get("head_views", 1))
        views = [_cache_pooled(core, train_data, np.arange(len(train_data)), config["batch_size"], device, crop,
                               np.random.default_rng(config["seed"] * 7919 + v), config.get("flip", True), amp)
                 for v in range(n_views)]
        val_rows = np.concatenate(val_videos) if val_videos else np.zeros(0, np.int64)
        val_pooled = (_cache_pooled(core, val_data, val_rows, config["batch_size"], device, crop, amp=amp)
                      if len(val_rows) else None)
        train_y = train_multi if multilabel else torch.from_numpy(train_data.labels)
        log.info("spatial: cached the frozen backbone's output of %d train clip(s) x %d view(s) and %d val "
                 "clip(s) in %.1f s", len(train_data), n_views, len(val_rows), time.perf_counter() - t0)
    for epoch in range(start_epoch, epochs):
        t0 = time.perf_counter()
        rng = np.random.default_rng(config["seed"] * 1000 + epoch)
        perm = rng.permutation(len(train_data))
        # Every worker gets the same number of batches (DDP steps in lock-step).
        share = perm[: len(perm) // world * world][rank::world] if len(perm) >= world else perm
        aug_rng = np.random.default_rng(config["seed"] * 1000 + epoch * 97 + rank)
        model.train()
        loss_sum = correct = seen = labelled = 0.0
        if cached:
            pooled = views[epoch % len(views)]
            batches = ((pooled[i], train_y[i]) for i in (torch.from_numpy(share[b:b + bs])
                                                           for b in range(0, len(share), bs)))
            forward = lambda x: core.head(x)[1]  # noqa: E731
        else:
            kind = "frames" if stream == "spatial" else "flow"
            flip = bool(config.get("flip", True))
            batches = ((stream_input(stream, random_crop_flip(x, crop, aug_rng, kind, flip)),
                        train_multi[torch.from_numpy(c)] if multilabel else torch.from_numpy(y))
                       for x, y, c in iter_batches(train_data, share, bs))
            forward = model
        # The head is called directly, past DDP's hooks: its gradients are averaged by hand.
        by_hand = (lambda: average_gradients(params, world)) if cached else None  # noqa: E731
        lr = opt.param_groups[0]["lr"]
        for xb, yb in batches:
            if iters and step >= int(iters):
                break
            loss, logits = train_step(forward, loss_fn, opt, scaler, xb, yb, device, amp, by_hand)
            yt = yb.to(device)
            step += 1
            if iters:
                sched.step()
            loss_sum += float(loss) * len(yb)
            seen += len(yb)
            if multilabel:  # hit@1 over the clips of labelled videos, as metrics.evaluate reads accuracy
                correct += float(yt.gather(1, logits.detach().argmax(1, keepdim=True)).sum())
                labelled += float((yt.sum(1) > 0).sum())
            else:
                correct += float((logits.argmax(1) == yt).sum())
                labelled += len(yb)
        if not iters:
            sched.step()
        if multilabel:
            if cached:
                with torch.no_grad():
                    core.eval()
                    probs = (core.scores(core.head(val_pooled.to(device))[1]).cpu().numpy()
                             if val_pooled is not None else np.zeros((0, num_classes), np.float32))
            else:
                probs = _clip_scores(core, stream, val_data, val_videos, config["batch_size"], num_classes, device,
                                     crop, amp)
            val_metrics = _video_map(probs, val_videos, val_targets, rank, world, n_val_videos, device) \
                if n_val_videos else {}
            v_correct = v_clip_correct = v_videos = 0.0
        elif cached:
            v_correct, v_clip_correct, v_videos = _evaluate_pooled(
                core, val_pooled, val_data, val_videos, config["num_classes"], device)
        else:
            v_correct, v_clip_correct, v_videos = _evaluate(
                core, stream, val_data, val_videos, config["batch_size"], config["num_classes"], device, crop, amp)
        n_val_clips = float(sum(len(v) for v in val_videos))
        loss_sum, correct, seen, labelled, v_correct, v_clip_correct, v_videos, n_val_clips = allreduce_sum(
            [loss_sum, correct, seen, labelled, v_correct, v_clip_correct, v_videos, n_val_clips], device)
        seconds = time.perf_counter() - t0
        metrics = {
            "epoch": epoch,
            "train_loss": loss_sum / max(seen, 1.0),
            "train_accuracy": correct / max(labelled, 1.0),
            "lr": lr,  # at the epoch's start
            "iterations": float(step),
            "epoch_seconds": seconds,
            "train_clips_per_s": seen / max(seconds, 1e-9),
        }
        if v_videos:
            metrics["val_accuracy"] = v_correct / v_videos
            metrics["val_clip_accuracy"] = v_clip_correct / max(n_val_clips, 1.0)
        if multilabel:
            metrics.update({k: v for k, v in val_metrics.items() if np.isfinite(v)})
        if multilabel and "val_map" in metrics:  # without val videos the last epoch is kept
            if best["model"] is None or metrics["val_map"] > best["value"]:  # ties keep the earlier epoch
                best = {"epoch": epoch, "value": metrics["val_map"],
                        "model": {k: v.detach().clone() for k, v in core.state_dict().items()}}
            metrics["best_epoch"] = float(best["epoch"])
        history.append(metrics)
        if rank == 0:
            logs.epoch_line(log, f"{stream} CNN", epoch, epochs, metrics)
        session.report(metrics, {
            "model": core.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
            "epoch": epoch, "step": step, "history": history,
            **({"best": best} if multilabel else {})} if rank == 0 else None)
