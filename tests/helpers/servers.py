"""Processes the tests start and must clean up: free ports, and whole process sessions.

Servers under test (`ray start --head`, the multi-node scenario) run as session leaders, so
teardown can kill exactly their processes, never another Ray on the machine.
"""
from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path


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
