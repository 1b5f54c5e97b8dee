"""Run a command and measure it: wall time and peak memory of its whole process tree (the driver
and every Ray process it starts: GCS, raylet, workers), per stage when it prints stage markers.

Memory is the sum over the tree of each process's proportional set size (PSS, from
/proc/PID/smaps_rollup): resident memory with shared pages (torch's libraries mapped by twenty
workers, Ray's object store) counted once. The plain sum of RSS counts them once per process and
is kept beside it as `peak_rss_naive_sum_gb`. Sampled every `interval` seconds.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil


def _pss_bytes(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def tree_memory(root: psutil.Process) -> tuple[int, int]:
    """(summed PSS, summed RSS) in bytes of `root` and all its descendants."""
    pss = rss = 0
    try:
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0, 0
    for p in procs:
        try:
            r = p.memory_info().rss
        except psutil.Error:
            continue
        rss += r
        s = _pss_bytes(p.pid)
        pss += s if s is not None else r
    return pss, rss


@dataclass
class Stage:
    name: str
    start: float
    end: float = 0.0
    peak_pss: int = 0
    peak_rss: int = 0

    def to_json(self) -> dict:
        return {"seconds": round(self.end - self.start, 1), "peak_rss_gb": round(self.peak_pss / 1e9, 2),
                "peak_rss_naive_sum_gb": round(self.peak_rss / 1e9, 2)}


@dataclass
class Measured:
    returncode: int
    seconds: float
    peak_pss: int
    peak_rss: int
    stages: dict[str, Stage] = field(default_factory=dict)
    output: str = ""

    def to_json(self) -> dict:
        return {"seconds": round(self.seconds, 1), "peak_rss_gb": round(self.peak_pss / 1e9, 2),
                "peak_rss_naive_sum_gb": round(self.peak_rss / 1e9, 2)}


def run_measured(cmd: list[str], log_path: Path, *, stage_re: str | None = None, env: dict | None = None,
                 interval: float = 0.5, echo: bool = True) -> Measured:
    """Run `cmd`, tee its output to `log_path`, and sample its process tree's memory.

    With `stage_re` (a regex with one group, matched against each output line), a matching line
    starts a stage named by the group (and ends the previous one).
    """
    env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
    t0 = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True, bufsize=1)
    root = psutil.Process(proc.pid)
    peak = [0, 0]
    stages: dict[str, Stage] = {}
    current: list[Stage] = []
    lock = threading.Lock()
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            pss, rss = tree_memory(root)
            with lock:
                peak[0], peak[1] = max(peak[0], pss), max(peak[1], rss)
                if current:
                    current[0].peak_pss = max(current[0].peak_pss, pss)
                    current[0].peak_rss = max(current[0].peak_rss, rss)
            done.wait(interval)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    pattern = re.compile(stage_re) if stage_re else None
    lines: list[str] = []
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            lines.append(line)
            if echo:
                sys.stdout.write(line)
            m = pattern.search(line) if pattern else None
            if m:
                now = time.time()
                with lock:
                    if current:
                        current[0].end = now
                    stage = Stage(m.group(1), now)
                    stages[stage.name] = stage
                    current[:] = [stage]
    rc = proc.wait()
    done.set()
    sampler.join()
    end = time.time()
    if current:
        current[0].end = end
    return Measured(rc, end - t0, peak[0], peak[1], stages, "".join(lines[-200:]))


def machine() -> dict:
    """What the numbers were measured on, and how busy it was."""
    return {"cpus": os.cpu_count(), "memory_gb": round(psutil.virtual_memory().total / 1e9, 1),
            "loadavg_1_5_15": [round(x, 2) for x in os.getloadavg()]}


def best_seconds(fn, repeats: int) -> float:
    """Seconds of the fastest of `repeats` calls of fn(), after one warm-up call (caches, lazy init)."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best
