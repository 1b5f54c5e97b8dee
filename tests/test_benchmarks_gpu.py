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
    sections = r["sections"]
    assert not any("error" in s for s in sections.values()), {k: s.get("error") for k, s in sections.items()}
    # The CNN sections share one synthetic store; every rate they record is a positive number.
    loader = sections["cnn_loader"]
    assert loader["clips"] > 0
    for stream in ("spatial", "motion"):
        assert set(loader["train_cnn"][stream]) >= {"serial", "prefetch"}
        assert all(v["clips_per_s"] > 0 for v in loader["train_cnn"][stream].values())
    for stream in ("spatial", "motion", "both"):
        assert loader["features"][stream]["tasks_1"]["clips_per_s"] > 0
    train = sections["train_cnn"]
    for stream in ("spatial", "motion"):
        assert train[stream]["loader_prefetch_clips_per_s"] > 0
        for by_amp in train[stream]["by_batch"].values():
            assert [by_amp[a]["dtype"] for a in ("off", "on")] == ["fp32", "bfloat16"]  # autocast ran, on the CPU
            assert all(by_amp[a][k] > 0 for a in ("off", "on") for k in ("step_clips_per_s", "with_loader_clips_per_s"))
        assert all(train["paper_geometry"][stream][a]["step_clips_per_s"] > 0 for a in ("off", "on"))
    feats = sections["features"]
    for stream in ("spatial", "motion", "both"):
        assert feats[stream]["loader_1_task_clips_per_s"] > 0
        for a in ("off", "on"):
            keys = ("forward_only_clips_per_s", "with_loader_clips_per_s", "vs_forward_only")
            assert all(feats[stream][a][k] > 0 for k in keys) and feats[stream][a]["met_target"] is None
    assert all(feats[s][a]["from_host_clips_per_s"] > 0 for s in ("spatial", "motion") for a in ("off", "on"))
    assert "skipped" in sections["e2e"]  # a whole `hyvid run` is left to the GPU machine


def test_without_a_gpu_it_says_so_in_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "benchmarks.gpu", "--out", str(tmp_path / "gpu.json")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "--cpu-smoke" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "gpu.json").exists()
