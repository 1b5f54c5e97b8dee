"""`python -m benchmarks.scale --tiny` runs end to end, so the scale benchmark cannot rot.

The tiny sizes run every stage of both parts (synth -> `hyvid run` -> report; a feature-level
store -> `hyvid train` -> `hyvid hybrid`) on a few videos and a few thousand rows.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.benchmark
def test_scale_benchmark_tiny_writes_every_stage(tmp_path):
    out = tmp_path / "scale.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.scale", "--tiny", "--out", str(out), "--workdir", str(tmp_path / "work")],
        cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r = json.loads(out.read_text())
    e2e, fsc = r["e2e"], r["feature_scale"]
    assert e2e["videos"] == 16 and e2e["classes"] == 4
    for stage in ("extract", "train-cnn", "features", "train", "hybrid"):
        s = e2e["stages"][stage]
        assert s["seconds"] > 0 and s["peak_rss_gb"] > 0.05, (stage, s)
    # Every model of the end-to-end run with its test accuracy and how many test videos it rests on.
    assert {"spatial_lstm", "motion_lstm", "fusion", "hybrid"} <= set(e2e["models"]), e2e["models"]
    assert all(0 <= m["test_accuracy"] <= 1 and m["n_test_videos"] for m in e2e["models"].values())
    assert fsc["videos"] == 240 and fsc["frame_rows"] == 240 * 10
    for stage in ("train", "hybrid"):
        assert fsc["stages"][stage]["seconds"] > 0 and fsc["stages"][stage]["peak_rss_gb"] > 0.05
    assert {"spatial_lstm", "motion_lstm", "fusion", "svm_ef"} <= set(fsc["models"])
    assert all(m["peak_rss_gb"] and m["peak_rss_gb"] > 0.05 for m in fsc["models"].values())
    assert set(r["extrapolation"]["ucf101"]) == {"1_nodes", "8_nodes", "64_nodes"}
    # More nodes never make the parallel stages slower.
    one, many = r["extrapolation"]["ucf101"]["1_nodes"], r["extrapolation"]["ucf101"]["64_nodes"]
    assert many["extract"] < one["extract"] and many["features"] < one["features"]
