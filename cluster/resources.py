"""Where work runs: CPU/GPU requests for Ray tasks and Ray Train workers.

One rule for every stage: ask for CPUs always, and for an accelerator only when the cluster has
one, so the same command runs on a laptop, a CPU-only cluster and a GPU pool. The accelerator is
"GPU" in real use; tests (and clusters with other accelerators) name a custom resource instead,
which Ray schedules exactly like GPUs.

Functions take the cluster's resources as an argument (`ray.cluster_resources()` when omitted) so
callers that already hold them, and tests, need no second look-up.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:
    from ray.train import ScalingConfig

GPU = "GPU"

# Whether each kind of work benefits from an accelerator (CNN/LSTM forward and backward passes),
# or is CPU-bound (decoding and optical flow, classic baselines).
ACCELERATED = {
    "extract": False,
    "flow": True,  # extract's tvl1-torch flow actors (decoding stays in the CPU "extract" tasks)
    "baselines": False,
    "features": True,
    "train-cnn": True,
    "train": True,
    "predict": True,
}


def _resources(cluster: Mapping[str, float] | None) -> Mapping[str, float]:
    if cluster is not None:
        return cluster
    import ray

    if not ray.is_initialized():
        raise RuntimeError("Ray is not connected; call cluster.connect.connect() first")
    resources: dict[str, float] = ray.cluster_resources()
    return resources


def accelerator_count(accelerator: str = GPU, cluster: Mapping[str, float] | None = None) -> float:
    """How many units of `accelerator` the whole cluster has (0 when none)."""
    return float(_resources(cluster).get(accelerator, 0) or 0)


def cluster_has_gpus(accelerator: str = GPU, cluster: Mapping[str, float] | None = None) -> bool:
    return accelerator_count(accelerator, cluster) > 0


def _use_accelerator(kind: str, use_gpu: bool | None, accelerator: str, cluster: Mapping[str, float]) -> bool:
    if kind not in ACCELERATED:
        raise ValueError(f"unknown kind of work {kind!r}; expected one of {sorted(ACCELERATED)}")
    have = accelerator_count(accelerator, cluster) > 0
    if use_gpu and not have:
        raise ValueError(f"use_gpu=True but the Ray cluster has no {accelerator}; leave it unset (auto)")
    return ACCELERATED[kind] and have if use_gpu is None else bool(use_gpu)


def _fmt(res: Mapping[str, float]) -> str:
    return ", ".join(f"{float(v):g} {k}" for k, v in sorted(res.items()))


def _fits(request: Mapping[str, float], have: Mapping[str, float]) -> bool:
    return all(float(have.get(k, 0) or 0) >= float(v) for k, v in request.items() if v)


def check_feasible(request: Mapping[str, float], what: str, cluster: Mapping[str, float] | None = None) -> None:
    """ValueError, at once, when no node could ever hold `request` (one task or worker).

    Ray would queue such a request forever: `train-cnn --cpus-per-worker 100000` waited with no
    message. A local Ray this process started is all there will be; a cluster it joined may
    still scale up, so a request that fits one of ray_config.yaml's node types passes there.
    """
    have = _resources(cluster)
    if _fits(request, have):
        return
    from hyvid.cluster.connect import started_local
    from hyvid.cluster.settings import node_type_resources

    if not started_local() and any(_fits(request, node) for node in node_type_resources()):
        return
    has = {k: float(have.get(k, 0) or 0) for k in request}
    raise ValueError(
        f"{what} asks for {_fmt(request)}, more than the Ray cluster has ({_fmt(has)}"
        f"{'' if started_local() else ', and no node type in ray_config.yaml has that much'}); "
        "ask for less (--cpus-per-worker, --workers) or run on a bigger cluster (--address)"
    )


def task_options(
    kind: str,
    resources: Mapping[str, float] | None = None,
    *,
    in_flight: int = 1,
    num_cpus: float = 1,
    use_gpu: bool | None = None,
    accelerator: str = GPU,
    cluster: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """`ray.remote(...).options(**task_options(kind))` for one task of a stage.

    `in_flight` tasks at a time share the accelerators: each asks for min(1, units / in_flight),
    so 8 feature tasks on 2 GPUs take a quarter GPU each instead of queueing behind each other.
    `resources` adds custom resources (e.g. {"highmem": 1}) on top.
    """
    if in_flight < 1 or num_cpus < 0:
        raise ValueError(f"in_flight must be >= 1 and num_cpus >= 0, got {in_flight}, {num_cpus}")
    cluster = _resources(cluster)
    opts: dict[str, Any] = {"num_cpus": num_cpus}
    custom = dict(resources or {})
    if _use_accelerator(kind, use_gpu, accelerator, cluster):
        share = min(1.0, accelerator_count(accelerator, cluster) / in_flight)
        if accelerator == GPU:
            opts["num_gpus"] = share
        else:
            custom[accelerator] = share
    if custom:
        opts["resources"] = custom
    request = {"CPU": float(num_cpus), **({GPU: float(opts["num_gpus"])} if "num_gpus" in opts else {}), **custom}
    check_feasible(request, f"one {kind} task", cluster)
    return opts


# tvl1-torch flow actors per accelerator: two request streams, so that one's host copies and
# Python overlap the other's kernels. Each also takes a little CPU for that host side.
FLOW_ACTORS_PER_GPU = 2
FLOW_ACTOR_CPUS = 0.5


def flow_actor_options(accelerator: str = GPU, cluster: Mapping[str, float] | None = None,
                       use_gpu: bool | None = None) -> tuple[int, dict[str, Any]]:
    """(how many, Ray options of each) for extract's GPU flow actors: FLOW_ACTORS_PER_GPU per
    accelerator unit, each a fractional share of one; (0, {}) on a cluster without accelerators."""
    cluster = _resources(cluster)
    if not _use_accelerator("flow", use_gpu, accelerator, cluster):
        return 0, {}
    n = max(1, math.ceil(accelerator_count(accelerator, cluster) * FLOW_ACTORS_PER_GPU))
    return n, task_options("flow", in_flight=n, num_cpus=FLOW_ACTOR_CPUS, use_gpu=True, accelerator=accelerator,
                           cluster=cluster)


def scaling_config(
    num_workers: int,
    resources: Mapping[str, float] | None = None,
    *,
    kind: str = "train",
    cpus_per_worker: float = 1,
    use_gpu: bool | None = None,
    accelerator: str = GPU,
    cluster: Mapping[str, float] | None = None,
    sharing: int | None = None,
) -> ScalingConfig:
    """A Ray Train ScalingConfig: `num_workers` workers, each on an accelerator when there is one.

    `sharing` is how many workers (of this and concurrent fits) share the accelerators: each asks
    for min(1, units / sharing); default `num_workers`.
    """
    from ray.train import ScalingConfig

    if num_workers < 1:
        raise ValueError(f"num_workers must be >= 1, got {num_workers}")
    sharing = num_workers if sharing is None else sharing
    if sharing < 1:
        raise ValueError(f"sharing must be >= 1, got {sharing}")
    cluster = _resources(cluster)
    per_worker: dict[str, float] = {"CPU": cpus_per_worker, **dict(resources or {})}
    accelerated = _use_accelerator(kind, use_gpu, accelerator, cluster)
    if accelerated:
        per_worker[accelerator] = min(1.0, accelerator_count(accelerator, cluster) / sharing)
    check_feasible(per_worker, f"one {kind} worker", cluster)
    # use_gpu is Ray Train's switch for CUDA devices; a custom accelerator is a plain resource.
    return ScalingConfig(num_workers=num_workers, use_gpu=accelerated and accelerator == GPU,
                         resources_per_worker=per_worker)


def split_resources(n_models: int, total_cpus: float, total_gpus: float = 0.0) -> list[dict[str, float]]:
    """Share a cluster among `n_models` fits that run at once: task options for each.

    CPUs are split in whole cores as evenly as possible (the first fits take the remainder);
    with more fits than cores each takes one and Ray queues the rest. GPUs are split in equal
    fractions when there are fewer than fits, else in whole GPUs.
    """
    if n_models < 1:
        raise ValueError(f"n_models must be >= 1, got {n_models}")
    if total_cpus < 1:
        raise ValueError(f"total_cpus must be >= 1, got {total_cpus}")
    cores = int(total_cpus)
    base, extra = divmod(cores, n_models) if cores >= n_models else (1, 0)
    out = []
    for i in range(n_models):
        opts: dict[str, float] = {"num_cpus": float(base + (1 if i < extra else 0))}
        if total_gpus > 0:
            opts["num_gpus"] = float(total_gpus // n_models) if total_gpus >= n_models else total_gpus / n_models
        out.append(opts)
    return out
