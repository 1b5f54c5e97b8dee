"""The one checkpoint/resume path of every torch fit (train-cnn's CNNs, train's LSTMs, fusion
nets and NN baselines): a state dict saved as one file, restored when the fit starts again.

Where the file lives depends on what runs the fit, behind one small interface (`FitSession`):
- `RayTrainSession`: inside a Ray Train worker group, the file travels in a `ray.train.Checkpoint`
  reported with the epoch's metrics, and Ray Train hands it back when it restarts the group;
- `FileSession`: a fit run by one long-lived worker (`training.pool`) writes it to
  `<storage>/<fit id>/state.pt` (local or any pyarrow file system URI, e.g. s3://), so whichever
  worker picks the fit up again resumes from it;
- `NullSession`: no checkpoints (the λ cross-validation trials are short and simply rerun).
"""
from __future__ import annotations

import io
import logging
import os
import tempfile
import time
from typing import Any, Callable

import torch

from hyvid.pipelines.training.distributed import agree_on

log = logging.getLogger(__name__)

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
    due = force or epoch == epochs - 1 or time.monotonic() - last_report >= float(every_s)
    return agree_on(due, world)


class FitSession:
    """What a fit loop needs from whatever runs it: resume state, reports, durable checkpoints."""

    def restore(self) -> dict | None:
        """The state of the last checkpoint of this fit, or None to start from scratch."""
        return None

    def report(self, metrics: dict, state: dict | None) -> None:
        """An epoch's metrics, with a state to checkpoint (rank 0) or None."""

    def wait_committed(self) -> None:
        """Block until the last reported checkpoint is durable (before a fault fires)."""


class NullSession(FitSession):
    """No checkpoints: nothing to restore, reports go nowhere (the fit logs its metrics to MLflow itself)."""


class RayTrainSession(FitSession):
    """Inside a Ray Train worker: `ray.train.report` with a Checkpoint, `ray.train.get_checkpoint`."""

    def restore(self) -> dict | None:
        import ray.train

        return load_checkpoint(ray.train.get_checkpoint())

    def report(self, metrics: dict, state: dict | None) -> None:
        import ray.train

        report_with_checkpoint(ray.train.report, metrics, state)

    def wait_committed(self) -> None:
        # A report is only taken at the controller's next poll: wait until it is registered.
        import ray.train
        from ray.train import CheckpointConsistencyMode

        ray.train.get_all_reported_checkpoints(consistency_mode=CheckpointConsistencyMode.COMMITTED, timeout_s=120)


class FileSession(FitSession):
    """Checkpoints as `<storage>/<fit_id>/state.pt`, written atomically (temp file, then rename
    on local disks; object stores publish a whole object at once)."""

    def __init__(self, storage: str, fit_id: str, storage_options: dict | None = None) -> None:
        import pyarrow.fs as pafs

        if not fit_id or "/" in fit_id:
            raise ValueError(f"fit_id must be a non-empty name without '/', got {fit_id!r}")
        self.fs, root = pafs.FileSystem.from_uri(storage)
        self.dir = f"{root.rstrip('/')}/{fit_id}"
        self.path = f"{self.dir}/{CHECKPOINT_FILE}"
        self.local = isinstance(self.fs, pafs.LocalFileSystem)

    def restore(self) -> dict | None:
        import pyarrow.fs as pafs

        if self.fs.get_file_info(self.path).type != pafs.FileType.File:
            return None
        with self.fs.open_input_stream(self.path) as f:
            return torch.load(io.BytesIO(f.read()), map_location="cpu", weights_only=False)

    def report(self, metrics: dict, state: dict | None) -> None:
        if state is None:
            return
        buf = io.BytesIO()
        torch.save(state, buf)
        self.fs.create_dir(self.dir, recursive=True)
        target = f"{self.path}.tmp" if self.local else self.path
        with self.fs.open_output_stream(target) as f:
            f.write(buf.getvalue())
        if self.local:
            self.fs.move(target, self.path)

    def clear(self) -> None:
        """Remove this fit's checkpoints (its model lives in MLflow once it finished)."""
        try:
            self.fs.delete_dir(self.dir)
        except (FileNotFoundError, OSError) as e:
            log.debug("no checkpoints to remove at %s: %s", self.dir, e)
