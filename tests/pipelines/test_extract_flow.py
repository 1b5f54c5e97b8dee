"""`hyvid extract --flow tvl1-torch` end to end: the torch TV-L1 on the tasks' CPUs beside OpenCV's,
the GPU flow-actor path on a local Ray that declares a GPU (the actors then solve on their CPU),
and the errors of a device that is not there.

The actor scenario runs in a subprocess (this file run as a script): Ray can be initialised once
per process, and the session's `ray_session` (no GPU) must not be disturbed.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from helpers.servers import kill_session
from helpers.videos import translating_photo_frames, write_manifest, write_video

from hyvid.pipelines.cli import main as cli_main
from hyvid.pipelines.data.video import dequantize_flow, extract_clip_arrays, plan_sampling
from hyvid.pipelines.extract import ExtractConfig, extract
from hyvid.store.clips import decode_flow_stack
from hyvid.store.lance_io import open_table
from hyvid.store.tables import CLIPS

TESTS = Path(__file__).resolve().parents[1]
REPO = TESTS.parent
VELOCITIES = {"a": (0.8, -0.4), "b": (-0.5, 0.6)}  # pixels per frame, the true flow of each video
P, L, FRAMES, MARGIN = 3, 2, 8, 8


def _dataset(root: Path) -> Path:
    rows = []
    for i, (name, v) in enumerate(VELOCITIES.items()):
        write_video(root / f"{name}.avi", translating_photo_frames(FRAMES, v, seed=i))
        rows.append({"path": f"{name}.avi", "labels": name, "subset": "train", "group": f"g{i}"})
    return write_manifest(root / "manifest.csv", rows)


def _cfg(dataset: Path, store: Path, **kw) -> ExtractConfig:
    return ExtractConfig(dataset=str(dataset), store_uri=str(store), frames=P, stack=L, size=48, progress=False, **kw)


def _flows(store) -> dict[str, np.ndarray]:
    """video_id -> its dequantized flow stacks [P, L, H, W, 2]."""
    t = open_table(str(store), CLIPS.name).to_table(columns=["video_id", "position", "flow_stack", "height", "width"])
    out: dict[str, list] = {}
    for r in sorted(t.to_pylist(), key=lambda r: (r["video_id"], r["position"])):
        s = dequantize_flow(decode_flow_stack(r["flow_stack"], L, r["height"], r["width"]))  # [2L, H, W]
        out.setdefault(r["video_id"], []).append(s.reshape(L, 2, r["height"], r["width"]).transpose(0, 2, 3, 1))
    return {k: np.stack(v) for k, v in out.items()}


def _epe(flow: np.ndarray, target) -> float:
    inner = (slice(None),) * (flow.ndim - 3) + (slice(MARGIN, -MARGIN), slice(MARGIN, -MARGIN))
    t = np.asarray(target, np.float32)
    d = flow[inner] - (t if t.ndim == 1 else t[inner])
    return float(np.sqrt((d ** 2).sum(-1)).mean())


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return _dataset(tmp_path_factory.mktemp("photos"))


def test_tvl1_torch_stores_the_flow_opencv_tvl1_stores(dataset, tmp_path, ray_session, capsys):
    code = cli_main(["extract", str(dataset), "--store", str(tmp_path / "torch"), "--flow", "tvl1-torch",
                     "--frames", str(P), "--stack", str(L), "--size", "48", "--workers", "2"])
    assert code == 0 and "extracted 2 videos, 0 failed" in capsys.readouterr().out
    r = extract(_cfg(dataset, tmp_path / "opencv", flow="tvl1", workers=2))
    assert r.ok == 2 and r.flow_actors == 0
    ours, theirs = _flows(tmp_path / "torch"), _flows(tmp_path / "opencv")
    assert set(ours) == set(theirs) == set(VELOCITIES)
    for vid, v in VELOCITIES.items():
        assert ours[vid].shape == (P, L, 48, 64, 2)
        assert _epe(ours[vid], theirs[vid]) < 0.05  # mostly the same uint8 step (0.16 px)
        assert _epe(ours[vid], v) <= max(0.15, 1.3 * _epe(theirs[vid], v)), (vid, _epe(ours[vid], v))


def test_a_device_that_is_not_there_is_one_error(dataset, tmp_path, ray_session, capsys):
    code = cli_main(["extract", str(dataset), "--store", str(tmp_path / "s"), "--flow", "tvl1-torch",
                     "--flow-device", "gpu"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "'gpu'" in err and "auto, cpu, cuda" in err
    with pytest.raises(ValueError, match="the Ray cluster has no GPU"):  # ray_session has none
        extract(_cfg(dataset, tmp_path / "t", flow="tvl1-torch", flow_device="cuda"))
    with pytest.raises(ValueError, match="torch sees no CUDA GPU"):
        extract(_cfg(dataset, tmp_path / "u", flow="tvl1-torch", flow_device="cuda", use_ray=False))


# --- the GPU actor path, on a local Ray that declares one GPU --------------------------------------

def _scenario(work: Path) -> dict:
    import ray

    ray.init(address="local", num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False)
    try:
        r = extract(_cfg(_dataset(work / "data"), work / "store", flow="tvl1-torch"))
        return {"ok": r.ok, "failed": r.failed, "flow_actors": r.flow_actors, "pairs": r.flow_actor_pairs}
    finally:
        ray.shutdown()


@pytest.mark.integration
def test_flows_go_to_gpu_actors_where_the_cluster_has_gpus(tmp_path):
    ray_tmp = tempfile.mkdtemp(prefix="hvf", dir="/tmp")  # short: Ray's unix sockets live under it
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=os.urandom(16).hex(), RAY_USAGE_STATS_ENABLED="0",
               PYTHONPATH=os.pathsep.join([str(REPO), str(TESTS), env.get("PYTHONPATH", "")]), RAY_TMPDIR=ray_tmp)
    proc = subprocess.Popen([sys.executable, __file__, str(tmp_path)], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        stdout, stderr = "", "scenario timed out after 300 s"
    finally:
        kill_session(proc.pid, grace_s=0.0)
        proc.wait()
        import shutil

        shutil.rmtree(ray_tmp, ignore_errors=True)
    result = tmp_path / "result.json"
    assert proc.returncode == 0 and result.exists(), f"scenario failed:\n{stdout[-3000:]}\n{stderr[-6000:]}"
    r = json.loads(result.read_text())
    # Two actors share the declared GPU, and solved every flow the stacks need.
    needed = len(np.unique(plan_sampling(FRAMES, P, L).flow_indices))
    assert r == {"ok": 2, "failed": 0, "flow_actors": 2, "pairs": 2 * needed}
    stored = _flows(tmp_path / "store")
    for vid in VELOCITIES:  # what the CPU path computes for the same video, here in this process
        ca = extract_clip_arrays(str(tmp_path / "data" / f"{vid}.avi"), P, L, 48, "tvl1-torch", flow_device="cpu")
        here = dequantize_flow(ca.flow_stacks).reshape(P, L, 2, 48, 64).transpose(0, 1, 3, 4, 2)
        assert _epe(stored[vid], here) < 0.02  # the same solver, in batches of other sizes


if __name__ == "__main__":
    work_dir = Path(sys.argv[1])
    (work_dir / "result.json").write_text(json.dumps(_scenario(work_dir)))
