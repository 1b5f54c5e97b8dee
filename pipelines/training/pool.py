"""A pool of long-lived Ray actors that run fits from a queue: start-up paid once per worker.

`hyvid train` fits about fifteen small models (two LSTMs, the fusion net's λ2/λ3 trials and
final fit, its λ=0 twin, the NN and SVM baselines). Started as one Ray Train / Tune / task
process each, every fit paid for a process, its imports (torch, Ray Train, MLflow) and Ray's
polling, and on two cores the raylet starts only two worker processes at a time: most of the
stage was start-up. Here a few `FitWorker` actors (one per CPU share, spread over the nodes)
import everything once and take fits from the driver's queue, longest first; a worker keeps the
video-level features it read, so the fits after the first read nothing again.

Fault tolerance is the driver's: a worker that dies (its node went away, or it was killed) is
replaced, and its fit goes back to the queue; the fit resumes from its last checkpoint
(`training.checkpoint.FileSession` under the storage path, which must be shared storage on a
multi-node cluster) in the same MLflow run, at most `max_failures` times.
"""
from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Iterable

log = logging.getLogger(__name__)


class FitWorker:
    """One long-lived process that runs fits (`run`) one after another; see the module doc."""

    def __init__(self, threads: int) -> None:
        # The fit code, MLflow's model flavour and the store's readers and writers, imported now
        # rather than in the first fit. (skops, which logs the SVMs, costs ~5 s to import: only
        # the workers that fit an SVM pay for it.)
        import mlflow.pytorch  # noqa: F401
        import torch

        import hyvid.pipelines.training.loops  # noqa: F401
        import hyvid.pipelines.training.sklearn_fit  # noqa: F401
        import hyvid.store.feature_store  # noqa: F401
        import hyvid.store.scores  # noqa: F401

        self.threads = max(1, int(threads))
        torch.set_num_threads(self.threads)

    def run(self, config: dict) -> dict:
        """Run one fit (a torch model or an SVM baseline) described by a fit config dict."""
        import ray
        import torch

        from hyvid.pipelines.training.checkpoint import FileSession, NullSession
        from hyvid.pipelines.training.families import CPU, SKLEARN_MODELS
        from hyvid.pipelines.training.loops import fit_loop
        from hyvid.pipelines.training.sklearn_fit import sklearn_fit

        config = {**config, "torch_threads": self.threads}
        device = torch.device("cuda") if torch.cuda.is_available() and ray.get_gpu_ids() else CPU
        with _PeakRSS() as peak:
            if config["model"] in SKLEARN_MODELS:
                out = sklearn_fit(config)
            elif not config.get("checkpoint", True):  # a λ trial: short, rerun rather than resumed
                out = fit_loop(config, NullSession(), device=device)
            else:
                session = FileSession(config["storage_path"], config["fit_id"], config.get("storage_options"))
                if config.get("kind") == "cnn":  # a stream CNN of train-cnn, whose checkpoints stay for --resume
                    from hyvid.pipelines.training.cnn_loop import cnn_fit

                    cnn_fit(config, session, device=device)
                    out = {}
                else:
                    out = fit_loop(config, session, device=device)
                    if not config.get("keep_checkpoints"):
                        session.clear()  # the model lives in MLflow now
        return {**out, "peak_rss_gb": peak.gb}


class _PeakRSS:
    """The highest resident memory of this process while a block runs (sampled every 0.2 s),
    in GB: what one fit costs its worker, including data that worker keeps from earlier fits."""

    def __enter__(self) -> "_PeakRSS":
        import threading

        import psutil

        self._proc = psutil.Process()
        self.peak = self._proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.2):
            self.peak = max(self.peak, self._proc.memory_info().rss)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)

    @property
    def gb(self) -> float:
        return self.peak / 1e9


@dataclass
class FitOutcome:
    """What became of one fit: its result (or error), and where its wall time went."""

    config: dict
    result: dict | None = None
    error: BaseException | None = None
    submitted: float = 0.0  # driver clock (time.time) when first handed to a worker
    finished: float = 0.0
    attempts: int = 0

    @property
    def wall_s(self) -> float:
        return self.finished - self.submitted

    def time_split(self) -> dict[str, float]:
        """Seconds of start-up (a new worker's spawn and imports, Ray calls), loading, compute and logging."""
        inside = dict((self.result or {}).get("seconds") or {})
        own = sum(inside.values())
        return {"startup": max(0.0, self.wall_s - own), **inside}


def run_fits(
    configs: Iterable[dict],
    *,
    size: int,
    actor_options: dict,
    threads: int,
    max_failures: int = 2,
    on_result: Callable[[FitOutcome], list[dict]] | None = None,
    on_done: Callable[[FitOutcome], None] | None = None,
    cost: Callable[[dict], float] = lambda c: 0.0,
) -> dict[str, FitOutcome]:
    """Run fit configs on a pool of `size` FitWorker actors; returns fit_id -> outcome.

    Fits start longest first (`cost`). `on_result(outcome)`, for every finished fit (its `error` set
    if it failed), may return new configs to queue (the
    fusion net's final fit once its λ trials are in); `on_done` hears of every finished fit,
    failed or not. A fit whose worker died is retried on a fresh worker up to `max_failures` times.
    """
    import ray

    remote_cls = ray.remote(FitWorker)
    queue: deque[dict] = deque(sorted(configs, key=cost, reverse=True))
    outcomes: dict[str, FitOutcome] = {}
    workers: list[Any] = []  # actor handles

    def new_worker() -> Any:
        w = remote_cls.options(max_restarts=0, max_task_retries=0, **actor_options).remote(threads)
        workers.append(w)
        return w

    # Never more workers than the cluster can place at once: a pending actor would hold a fit that
    # the idle workers can never take over, and the pool would wait for it forever.
    size = min(size, _placeable(actor_options))
    idle: deque[Any] = deque(new_worker() for _ in range(max(1, min(size, len(queue)))))
    running: dict[Any, tuple[Any, dict]] = {}
    try:
        while queue or running:
            while queue and idle:
                w, config = idle.popleft(), queue.popleft()
                out = outcomes.setdefault(config["fit_id"], FitOutcome(config, submitted=time.time()))
                out.attempts += 1
                running[w.run.remote(config)] = (w, config)
            if not running:
                idle.append(new_worker())  # every worker died with work still queued
                continue
            done, _ = ray.wait(list(running), num_returns=1)
            w, config = running.pop(done[0])
            out = outcomes[config["fit_id"]]
            try:
                out.result = ray.get(done[0])
            except ray.exceptions.RayActorError as e:
                log.warning("the worker running %s died (%s); %s", config["fit_id"], type(e).__name__,
                            "retrying on a new worker" if out.attempts <= max_failures else "giving up")
                _forget(workers, w)
                idle.append(new_worker())
                if out.attempts <= max_failures:
                    queue.appendleft(config)
                    continue
                out.error = e
            except Exception as e:  # noqa: BLE001 - the fit's own error, reported with its name
                out.error = e
                idle.append(w)
            else:
                idle.append(w)
            out.finished = time.time()
            if on_result is not None:
                queue.extend(sorted(on_result(out), key=cost, reverse=True))
            if on_done is not None:
                on_done(out)
    finally:
        for w in workers:
            ray.kill(w, no_restart=True)
    return outcomes


def _placeable(actor_options: dict) -> int:
    """How many actors of `actor_options` the cluster's CPUs and GPUs hold at once (at least 1)."""
    import ray

    have = ray.cluster_resources()
    counts = [int(float(have.get(key, 0.0)) / float(need) + 1e-9)
              for key, need in (("CPU", actor_options.get("num_cpus", 1)), ("GPU", actor_options.get("num_gpus", 0)))
              if need]
    return max(1, min(counts, default=1))


def _forget(workers: list[Any], dead: Any) -> None:
    import ray

    workers.remove(dead)
    try:
        ray.kill(dead, no_restart=True)
    except Exception:  # noqa: BLE001 - it is gone already
        pass
