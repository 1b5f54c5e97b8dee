"""Processes the tests start and must clean up: free ports, whole process sessions, and servers.

Servers under test (`ray start --head`, moto's S3, `mlflow server`, the multi-node scenario) run
as session leaders, so teardown kills exactly their processes, never another Ray on the machine.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path

import requests


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def session_pids(sid: int) -> list[int]:
    """Processes whose session id is `sid`."""
    pids = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = Path(f"/proc/{d}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[3]) == sid:
            pids.append(int(d))
    return pids


def kill_session(sid: int, grace_s: float = 5.0) -> None:
    """SIGTERM every process of session `sid`, wait up to `grace_s` for them, then SIGKILL."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in session_pids(sid):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and any(
            Path(f"/proc/{p}/stat").exists() and " Z " not in Path(f"/proc/{p}/stat").read_text()
            for p in session_pids(sid)
        ):
            time.sleep(0.2)


def _is_200(r: requests.Response) -> bool:
    return r.status_code == 200


@contextmanager
def serve(
    cmd: Sequence[str],
    health_url: str,
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
    log: str | Path | None = None,
    timeout: float = 60.0,
    headers: Mapping[str, str] | None = None,
    healthy: Callable[[requests.Response], bool] = _is_200,
    grace_s: float = 10.0,
) -> Iterator[subprocess.Popen]:
    """Run `cmd` as the leader of a new process session; yield once GET `health_url` is `healthy`.

    Polls until the server answers (connection refused, timeouts and other request errors mean "not
    yet"), up to `timeout` seconds; if the process exits first or time runs out, raises RuntimeError
    with the tail of `log` (where stdout and stderr go; nowhere if None). At the end, whatever
    happened, every process of the session gets SIGTERM, then SIGKILL after `grace_s`.
    """
    name = Path(cmd[0]).name
    with open(log, "w") if log is not None else nullcontext(subprocess.DEVNULL) as out:
        proc = subprocess.Popen(list(cmd), env=None if env is None else dict(env), cwd=cwd, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if healthy(requests.get(health_url, timeout=5, headers=dict(headers or {}))):
                    break
            except requests.RequestException:  # not listening yet, or still importing (slow start)
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                why = f"exited {proc.returncode}" if proc.poll() is not None else f"not up after {timeout:.0f} s"
                tail = Path(log).read_text()[-3000:] if log is not None else ""
                raise RuntimeError(f"{name} ({health_url}) {why}:\n{tail}")
            time.sleep(0.5)
        yield proc
    finally:
        kill_session(proc.pid, grace_s=grace_s)
        proc.wait(timeout=grace_s)
