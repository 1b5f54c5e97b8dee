"""Connecting to Ray: an existing cluster by address, or a local one with this machine's cores.

A local Ray that hyvid starts is private to the command that started it:

- it listens on loopback only (127.0.0.1): its GCS, raylet, object manager, workers and agents
  serve this machine's processes and nobody else, and the dashboard is not started;
- the driver and every worker address it explicitly (RAY_ADDRESS is set to its GCS), so code
  that looks Ray up by "auto" (Ray Train's placement-group cleaner, the state API) never finds
  another Ray running on the same machine ("Found multiple active Ray instances");
- `disconnect()` (called by the CLI in a `finally`, and by Ray at exit) stops it with every
  process it started.

Ray 2.60 binds its gRPC servers to 127.0.0.1 only when the node's IP is 127.0.0.1, and
`ray.init(_node_ip_address="127.0.0.1")` turns that back into the machine's external address
(`services.resolve_ip_for_localhost`). The one switch that keeps a Linux node on loopback is the
one Ray uses on laptops: RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (local-only Ray). It is set for the
processes the local Ray starts, never for a driver that joins a cluster.

An existing cluster (`--address`) is probed first: an address nobody answers at fails within
`connect_timeout_s` (ray_config.yaml's metadata.hyvid, HYVID_CONNECT_TIMEOUT; 30 s) instead of
Ray's minutes of retries.
"""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
from typing import Any, Iterator

import ray
from ray._private import ray_constants

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
# Ray's "this is a one-machine Ray" switch (ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR): with it
# off, a node's IP is the loopback address and its servers bind there.
_LOCAL_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
_ADDRESS_ENV = "RAY_ADDRESS"

# What this process changed to start (or join) Ray, so that disconnect() can undo it. `owned`: Ray
# was initialised here, not by a caller (a test's session Ray, an embedding program) left alone.
_state: dict[str, Any] = {"local": False, "owned": False, "env": {}}


def connect(address: str | None = None, num_cpus: int | None = None,
            timeout_s: float | None = None) -> dict[str, float]:
    """Connect to Ray once per process and return the cluster's resources.

    With no address (and no RAY_ADDRESS), a private local Ray starts (see the module docstring)
    with `num_cpus` or all cores. Inside a Ray job the driver is already attached to the cluster,
    through the RAY_ADDRESS Ray sets. `timeout_s` bounds the wait for an existing cluster
    (default: the settings' connect_timeout_s).
    """
    resources: dict[str, float]
    if ray.is_initialized():
        resources = ray.cluster_resources()
        return resources
    address = address or os.environ.get(_ADDRESS_ENV)
    if address:
        if timeout_s is None:
            from hyvid.cluster.settings import load_settings

            timeout_s = load_settings().connect_timeout_s
        probe(address, timeout_s)
        with _keeping_sigterm_handler():
            ray.init(address=address, log_to_driver=True)
        _state.update(local=False, owned=True)
    else:
        _start_local(num_cpus)
    resources = ray.cluster_resources()
    log.info("Ray resources: %s", resources)
    return resources


def _start_local(num_cpus: int | None) -> None:
    """A local Ray on loopback, addressed by its own GCS address from then on."""
    _setenv(_LOCAL_ONLY_ENV, "0")  # inherited by the GCS, raylet and, through it, every worker
    # This process imported Ray already, which read the switch at import.
    was = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        # address="local": never attach silently to some other cluster left running on this machine.
        with _keeping_sigterm_handler():
            ray.init(address="local", num_cpus=num_cpus or os.cpu_count(), include_dashboard=False,
                     log_to_driver=True,
                     runtime_env={"worker_process_setup_hook": "hyvid.cluster.connect.setup_worker"})
    except BaseException:
        disconnect()
        raise
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = was
    _state.update(local=True, owned=True)
    # Anything in this process (or started by it) that looks Ray up finds this one.
    _setenv(_ADDRESS_ENV, ray.get_runtime_context().gcs_address)


@contextlib.contextmanager
def _keeping_sigterm_handler() -> Iterator[None]:
    """`ray.init` replaces the process's SIGTERM handler (with `sys.exit`, or a local node's
    kill-and-exit that dumps a stack). A driver that chose its own (the CLI's: unwind as an
    interrupt, end the MLflow runs, then stop Ray) keeps it; a default one is left to Ray."""
    main = threading.current_thread() is threading.main_thread()
    before = signal.getsignal(signal.SIGTERM) if main else None
    try:
        yield
    finally:
        if main and callable(before):
            signal.signal(signal.SIGTERM, before)


def _setenv(name: str, value: str) -> None:
    _state["env"].setdefault(name, os.environ.get(name))
    os.environ[name] = value


def started_local() -> bool:
    """Whether this process is connected to a Ray it started itself (not a cluster it joined)."""
    return bool(_state["local"]) and bool(_state["owned"]) and ray.is_initialized()


def disconnect() -> None:
    """Leave the Ray `connect` started or joined; a local one stops with every process it started.

    Undoes what `connect` set in the environment, so a later `connect` starts afresh. A Ray that
    was initialised by someone else (connect found it running) is left as it is.
    """
    if _state["owned"] and ray.is_initialized():
        ray.shutdown()
    for name, value in _state["env"].items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    _state.update(env={}, local=False, owned=False)


def probe(address: str, timeout_s: float) -> None:
    """ConnectionError (one line: the address and the fix) when nothing answers at a Ray address.

    Only `host:port` addresses are probed ("auto", "local" and ray:// client addresses are Ray's
    own business). Refused connections fail at once, unreachable hosts after `timeout_s`.
    """
    if "://" in address or address in ("auto", "local"):
        return
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError(f"--address {address!r}: expected HOST:PORT (the head's GCS, e.g. 10.0.0.1:6379), "
                         "auto, or ray://HOST:10001")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            pass
    except OSError as e:
        why = "timed out" if isinstance(e, TimeoutError) else (e.strerror or type(e).__name__)
        raise ConnectionError(
            f"no Ray cluster answers at --address {address} ({why} after at most {timeout_s:g} s); check that "
            "the head is up (`ray status` on it) and the port is its GCS port, or omit --address to run locally"
        ) from None


# Loggers of Ray internals that only warn about the missing dashboard on a local Ray.
_DASHBOARDLESS_NOISE = ("ray.train.v2._internal.execution.controller.placement_group_cleaner",)


def setup_worker() -> None:
    """Worker setup hook of the local Ray `connect` starts.

    Points the worker at its own Ray (RAY_ADDRESS): Ray Train's placement-group cleaner and
    the state API otherwise look Ray up by "auto", which fails or picks the wrong instance
    when another Ray runs on the machine.

    Without the dashboard (not started locally: it costs startup time and a port) Ray's state
    API is unavailable, and Ray Train's placement-group cleaner warns about it every few seconds
    for every fit. Its job, removing a dead controller's placement groups, does not arise when
    the whole Ray ends with the driver, so those warnings are raised to ERROR.
    """
    os.environ[_ADDRESS_ENV] = ray.get_runtime_context().gcs_address
    for name in _DASHBOARDLESS_NOISE:
        logging.getLogger(name).setLevel(logging.ERROR)
