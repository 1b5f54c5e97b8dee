"""Connecting to Ray: an existing cluster by address, or a local one with this machine's cores."""
from __future__ import annotations

import logging
import os

import ray

log = logging.getLogger(__name__)


def connect(address: str | None = None, num_cpus: int | None = None) -> dict[str, float]:
    """Connect to Ray once per process and return the cluster's resources.

    With no address (and no RAY_ADDRESS), a local Ray starts with `num_cpus` or all cores.
    Inside a Ray job the driver is already attached to the cluster, so "auto" is used.
    """
    resources: dict[str, float]
    if ray.is_initialized():
        resources = ray.cluster_resources()
        return resources
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        # address="local": never attach silently to some other cluster left running on this machine.
        ray.init(address="local", num_cpus=num_cpus or os.cpu_count(), include_dashboard=False,
                 log_to_driver=True,
                 runtime_env={"worker_process_setup_hook": "hyvid.cluster.connect.quiet_worker_logs"})
    resources = ray.cluster_resources()
    log.info("Ray resources: %s", resources)
    return resources


# Loggers of Ray internals that only warn about the missing dashboard on a local Ray.
_DASHBOARDLESS_NOISE = ("ray.train.v2._internal.execution.controller.placement_group_cleaner",)


def quiet_worker_logs() -> None:
    """Worker setup hook of the local Ray `connect` starts.

    Without the dashboard (not started locally: it costs startup time and a port) Ray's state
    API is unavailable, and Ray Train's placement-group cleaner warns about it every few seconds
    for every fit. Its job, removing a dead controller's placement groups, does not arise when
    the whole Ray ends with the driver, so those warnings are raised to ERROR.
    """
    for name in _DASHBOARDLESS_NOISE:
        logging.getLogger(name).setLevel(logging.ERROR)
