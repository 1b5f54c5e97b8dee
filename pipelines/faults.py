"""Fault injection: named crash points that make a worker die as a preempted node would.

hyvid promises that a dying worker loses no committed work and duplicates nothing: extraction
retries a shard, then its videos one by one, and records a poison file as failed; a training
fit resumes from its last checkpoint in the same MLflow run. The fault tests (and anyone who
wants to see it happen on their own cluster) trigger those paths through this module, never
through hooks hidden in the stages.

A fault spec is a JSON list of faults, given as the `faults` field of a stage's config or the
`HYVID_FAULTS` environment variable (the config wins; a stage hands the spec to its workers):

    HYVID_FAULTS='[{"point": "extract.video", "target": "Walk/v_Walk_g01_c01", "once": "/tmp/flag"}]'
    HYVID_FAULTS='[{"point": "train.after_epoch", "target": "motion_lstm", "epoch": 3}]'

Points:
- `extract.video`: the extraction worker about to decode video `target` exits with code 137 (as
  when the kernel kills it). With `"once": FLAG_FILE` it dies only if that file does not exist yet,
  creating it first, so the retry succeeds; without it, it dies every time (a poison file).
- `train.after_epoch`: the worker fitting model `target` exits with code 1 right after epoch
  `epoch`'s checkpoint is committed, on its first attempt only (a resumed fit goes on).
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from typing import NoReturn

log = logging.getLogger(__name__)

ENV = "HYVID_FAULTS"
EXTRACT_VIDEO = "extract.video"
TRAIN_AFTER_EPOCH = "train.after_epoch"
POINTS = (EXTRACT_VIDEO, TRAIN_AFTER_EPOCH)
EXIT_KILLED = 137  # what a process killed by SIGKILL (OOM killer, preemption) exits with
EXIT_FAILED = 1


@dataclass(frozen=True)
class Fault:
    """One crash point: where (`point`), for what (`target`: a video id or a model name), when."""

    point: str
    target: str
    epoch: int | None = None  # train.after_epoch: after which epoch
    once: str | None = None  # extract.video: a flag file; die only while it does not exist

    def __post_init__(self) -> None:
        if self.point not in POINTS:
            raise ValueError(f"unknown fault point {self.point!r}; points are {list(POINTS)}")
        if not self.target:
            raise ValueError(f"fault {self.point}: give a target (a video id or a model name)")
        if self.point == TRAIN_AFTER_EPOCH and (self.epoch is None or self.epoch < 0):
            raise ValueError(f"fault {self.point} for {self.target!r} needs an epoch >= 0, got {self.epoch!r}")


def spec(*faults: Fault) -> str:
    """The JSON spec of some faults (for a config's `faults` field or HYVID_FAULTS)."""
    return json.dumps([{k: v for k, v in asdict(f).items() if v is not None} for f in faults])


def parse(text: str | None) -> tuple[Fault, ...]:
    """The faults of a JSON spec; ValueError names what is wrong with it."""
    if not text:
        return ()
    try:
        items = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"fault spec {text!r} is not JSON ({e}); see hyvid.pipelines.faults") from None
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise ValueError(f"fault spec {text!r} must be a JSON list of objects; see hyvid.pipelines.faults")
    try:
        return tuple(Fault(**i) for i in items)
    except TypeError as e:
        raise ValueError(f"fault spec {text!r}: {e}; fields are point, target, epoch, once") from None


def resolve(configured: str | None) -> str | None:
    """The spec a stage runs with: its config's, else HYVID_FAULTS (validated), else None."""
    text = configured or os.environ.get(ENV) or None
    parse(text)
    return text


def _die(fault: Fault, code: int) -> NoReturn:
    log.warning("fault injection: %s on %s, exiting with %d", fault.point, fault.target, code)
    os._exit(code)


def at_video(video_id: str, text: str | None) -> None:
    """The `extract.video` crash point: call before extracting each video."""
    for f in parse(text):
        if f.point != EXTRACT_VIDEO or f.target != video_id:
            continue
        if f.once is not None:
            if os.path.exists(f.once):
                continue
            open(f.once, "w").close()
        _die(f, EXIT_KILLED)


def due_after_epoch(model: str, epoch: int, text: str | None) -> bool:
    """Whether the `train.after_epoch` point fires for this model and epoch."""
    return any(f.point == TRAIN_AFTER_EPOCH and f.target == model and f.epoch == epoch for f in parse(text))


def after_epoch(model: str, epoch: int) -> NoReturn:
    """Fire `train.after_epoch` (the caller checked `due_after_epoch` and committed its checkpoint)."""
    _die(Fault(TRAIN_AFTER_EPOCH, model, epoch=epoch), EXIT_FAILED)


def targets(text: str | None, point: str) -> set[str]:
    """The targets of one point in a spec (configs check they name things that exist)."""
    return {f.target for f in parse(text) if f.point == point}
