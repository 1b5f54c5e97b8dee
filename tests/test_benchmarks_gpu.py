"""`python -m benchmarks.gpu --cpu-smoke` runs every section end to end, so the device benchmark
cannot rot on machines without a GPU (its figures come from a GPU machine only)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_device_benchmark_runs_on_the_cpu_in_smoke_mode(tmp_path):
    out = tmp_path / "gpu.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.gpu", "--cpu-smoke", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["smoke"] and r["machine"]["device"] == "cpu"
    f = r["sections"]["flow"]
    assert f["tvl1_torch_frames_per_s"] > 0 and set(f["tvl1_torch_frames_per_s_by_batch"]) == {"2", "4"}
    assert all(f["opencv_cpu_all_cores"][m]["frames_per_s"] > 0 for m in ("tvl1", "dis"))
    assert f["epe_tvl1_torch_vs_opencv_px"] < 0.05 and f["met_target"] is None


def test_without_a_gpu_it_says_so_in_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "benchmarks.gpu", "--out", str(tmp_path / "gpu.json")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "--cpu-smoke" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "gpu.json").exists()
