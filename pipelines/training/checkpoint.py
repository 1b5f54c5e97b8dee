"""The one checkpoint/resume path of every torch fit (train-cnn's CNNs, train's LSTMs, fusion
nets and NN baselines): a state dict saved as one file in a Ray Train `Checkpoint`, reported
with the epoch's metrics, and restored from the checkpoint Ray Train hands back on a restart.
"""
from __future__ import annotations

import os
import tempfile
import time
from typing import Any, Callable

import torch

CHECKPOINT_FILE = "state.pt"


def report_with_checkpoint(report: Callable[..., Any], metrics: dict, state: dict | None) -> None:
    """`report(metrics, checkpoint=...)` with `state` saved in a checkpoint (rank 0 passes the
    state, the other ranks None: Ray Train keeps rank 0's). The temporary files go once reported."""
    if state is None:
        report(metrics, checkpoint=None)
        return
    from ray.train import Checkpoint

    with tempfile.TemporaryDirectory(prefix="hyvid-ckpt-") as tmp:
        torch.save(state, os.path.join(tmp, CHECKPOINT_FILE))
        report(metrics, checkpoint=Checkpoint.from_directory(tmp))


def load_checkpoint(checkpoint: Any, map_location: Any = None, weights_only: bool = False) -> dict | None:
    """The state saved by `report_with_checkpoint` in a Ray Train checkpoint (None: no checkpoint)."""
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as d:
        return torch.load(os.path.join(d, CHECKPOINT_FILE), map_location=map_location, weights_only=weights_only)


def report_due(every_s: float, epoch: int, epochs: int, last_report: float, world: int, force: bool) -> bool:
    """Whether to report (and checkpoint) after this epoch: the last one, or `every_s` seconds later.

    Ray Train's controller takes one report per poll (about every 2 s), and a report waits for
    the previous one to be taken, so reporting every epoch of a small model would spend most of
    its time waiting. Per-epoch metrics go to MLflow directly, so reports only carry checkpoints:
    a killed worker loses at most `every_s` of work. Rank 0's clock decides for all ranks, since
    every rank must report equally often.
    """
    from hyvid.pipelines.training.distributed import agree_on

    due = force or epoch == epochs - 1 or time.monotonic() - last_report >= float(every_s)
    return agree_on(due, world)
