"""Connecting to Ray: an existing cluster by address, or a local one with this machine's cores."""
from __future__ import annotations

import logging
import os

import ray

log = logging.getLogger(__name__)


def connect(address: str | None = None, num_cpus: int | None = None) -> dict:
    """Connect to Ray once per process and return the cluster's resources.

    With no address (and no RAY_ADDRESS), a local Ray starts with `num_cpus` or all cores.
    Inside a Ray job the driver is already attached to the cluster, so "auto" is used.
    """
    if ray.is_initialized():
        return ray.cluster_resources()
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        # address="local": never attach silently to some other cluster left running on this machine.
        ray.init(address="local", num_cpus=num_cpus or os.cpu_count(), include_dashboard=False,
                 log_to_driver=True)
    resources = ray.cluster_resources()
    log.info("Ray resources: %s", resources)
    return resources
