"""Which hyvid command owns a RUNNING MLflow run, and closing the runs a command leaves open.

MLflow knows no owner: a run stays RUNNING until someone ends it. A command that is interrupted
(Ctrl-C, SIGTERM), fails outside a run's `with`, or is killed outright leaves behind the runs it
opened through the client API: a search's parent, its trials, the out-of-fold children, a CNN run
waiting for its fit. So every run hyvid opens carries the owning command process as a tag
(`tracking.TAG_OWNER`, "host:pid:start", start being the process's start time in clock ticks so a
reused pid is not mistaken for the owner), set by the CLI and inherited by its Ray workers
(`logs.OWNER_ENV`, and the fit configs for workers on other nodes). Then:

- `close_owned_runs`: the CLI, when a command ends on an interrupt or an error, ends every run it
  still owns, as KILLED or FAILED;
- `close_orphaned_runs`: the next command that talks to the tracking server ends the RUNNING runs
  of owners on this host that are gone (a SIGKILL, a lost node's driver), as KILLED.

Runs of owners on other hosts are left alone: whether their process lives cannot be told from here.
Status filters hold only MLflow's constants; owners are compared in Python.
"""
from __future__ import annotations

import logging
import os
import socket
from typing import Any

log = logging.getLogger(__name__)

# `process_owner` runs for every command, `hyvid --help` included: MLflow is imported only to close runs.

KILLED, FAILED = "KILLED", "FAILED"
_RUNNING = "RUNNING"
_PAGE = 1000


def _start_ticks(pid: int) -> str | None:
    """The process's start time (clock ticks since boot, /proc/PID/stat field 22); None where there is no /proc."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            stat = f.read()
    except FileNotFoundError:
        return "" if os.path.isdir("/proc/self") else None  # "": there is a /proc and no such process
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: fields count from its last ")".
    fields = stat[stat.rfind(")") + 2:].split()
    return fields[19] if len(fields) > 19 else None


def process_owner(pid: int | None = None) -> str:
    """This process (or `pid`) as a run owner: "host:pid:start"."""
    pid = os.getpid() if pid is None else pid
    return f"{socket.gethostname()}:{pid}:{_start_ticks(pid) or 0}"


def owner_alive(owner: str) -> bool | None:
    """Whether the owner process still runs: None when it ran on another host (or the tag is not ours)."""
    try:
        host, pid_text, start = owner.rsplit(":", 2)
        pid = int(pid_text)
    except ValueError:
        return None
    if host != socket.gethostname() or pid <= 0:
        return None
    ticks = _start_ticks(pid)
    if ticks == "":  # /proc exists and has no such process
        return False
    if ticks is not None:
        return start in ("0", ticks)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _running_runs(client: Any) -> list:
    experiments = [e.experiment_id for e in client.search_experiments()]
    if not experiments:
        return []
    return list(client.search_runs(experiments, filter_string=f"attributes.status = '{_RUNNING}'",
                                   max_results=_PAGE))


def _end(client: Any, run: Any, status: str, why: str) -> None:
    from hyvid.pipelines import tracking

    client.set_tag(run.info.run_id, tracking.TAG_CLOSED_BY, why)
    client.set_terminated(run.info.run_id, status)


def close_owned_runs(tracking_uri: str, owner: str, status: str, why: str) -> int:
    """End every RUNNING run `owner` opened (the fluent stack of this process first); how many were ended.

    Best effort: the command's own error is the one to report, so a tracking failure here is logged.
    """
    import mlflow
    from mlflow import MlflowClient

    from hyvid.cluster.settings import redact
    from hyvid.pipelines import tracking

    ended = 0
    try:
        while mlflow.active_run() is not None:
            mlflow.end_run(status=status)
            ended += 1
        client = MlflowClient(tracking_uri)
        for run in _running_runs(client):
            if run.data.tags.get(tracking.TAG_OWNER) == owner:
                _end(client, run, status, why)
                ended += 1
    except Exception as e:  # noqa: BLE001
        first = (redact(str(e)).strip().splitlines() or [type(e).__name__])[0]
        log.warning("could not mark this command's MLflow runs %s: %s", status, first)
    if ended:
        log.debug("marked %d MLflow run(s) of this command %s (%s)", ended, status, why)
    return ended


def close_orphaned_runs(tracking_uri: str) -> list[str]:
    """End, as KILLED, the RUNNING runs whose owner ran on this host and is gone; their ids."""
    from mlflow import MlflowClient

    from hyvid.pipelines import tracking

    client = MlflowClient(tracking_uri)
    closed = []
    for run in _running_runs(client):
        owner = run.data.tags.get(tracking.TAG_OWNER)
        if owner and owner_alive(owner) is False:
            _end(client, run, KILLED, f"owner {owner} is gone (killed, or lost with its node)")
            closed.append(run.info.run_id)
    if closed:
        log.warning("closed %d MLflow run(s) left RUNNING by hyvid commands that no longer run, as KILLED: %s",
                    len(closed), ", ".join(closed[:5]) + (" ..." if len(closed) > 5 else ""))
    return closed
