"""Run a function in several spawned processes at once (Lance is not fork-safe), for concurrency tests."""
from __future__ import annotations

import multiprocessing as mp
from typing import Any, Callable


def run_concurrently(target: Callable[..., Any], args: tuple, n: int) -> list[int | None]:
    """Start `n` spawned processes of `target(*args)` together, wait for all; their exit codes."""
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=target, args=args) for _ in range(n)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    return [p.exitcode for p in procs]
