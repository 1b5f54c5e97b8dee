"""Placement (CPU/GPU requests) and multi-node behaviour on a real 3-node `ray.cluster_utils.Cluster`.

The multi-node part runs in a subprocess (this file run as a script): Ray can be initialised once
per process, and the session's `ray_session` must not be disturbed. The subprocess's cluster
uses token authentication with its own token and its own temp dir, and is shut down by it.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from helpers.servers import kill_session
from helpers.videos import DOWN, RIGHT, SquareClip, write_square_dataset

from hyvid.cluster.resources import (
    FLOW_ACTORS_PER_GPU,
    cluster_has_gpus,
    flow_actor_options,
    scaling_config,
    split_resources,
    task_options,
)

TESTS = Path(__file__).resolve().parents[1]  # on the scenario's PYTHONPATH: it imports helpers
REPO = TESTS.parent
FAKE = "GPU_fake"  # a custom resource standing in for GPUs: Ray schedules it the same way


# --- placement rules, no Ray needed ---------------------------------------------------------------

def test_flow_actors_share_each_gpu_and_none_start_without_one():
    assert flow_actor_options(cluster={"CPU": 8.0}) == (0, {})
    n, opts = flow_actor_options(cluster={"CPU": 16.0, "GPU": 2.0})
    assert n == 2 * FLOW_ACTORS_PER_GPU and opts["num_gpus"] == 1 / FLOW_ACTORS_PER_GPU and 0 < opts["num_cpus"] < 1
    n, opts = flow_actor_options(accelerator=FAKE, cluster={"CPU": 2.0, FAKE: 1.0})
    assert n == FLOW_ACTORS_PER_GPU and opts["resources"] == {FAKE: 1 / FLOW_ACTORS_PER_GPU}
    assert flow_actor_options(use_gpu=False, cluster={"CPU": 8.0, "GPU": 1.0}) == (0, {})


def test_gpus_asked_for_only_when_the_cluster_has_them():
    cpu_only, gpus = {"CPU": 8.0}, {"CPU": 8.0, "GPU": 2.0}
    assert not cluster_has_gpus(cluster=cpu_only) and cluster_has_gpus(cluster=gpus)
    assert task_options("features", cluster=cpu_only) == {"num_cpus": 1}
    assert task_options("features", cluster=gpus) == {"num_cpus": 1, "num_gpus": 1.0}
    # Eight tasks in flight share the two GPUs instead of queueing.
    assert task_options("features", in_flight=8, cluster=gpus)["num_gpus"] == 0.25
    # CPU-bound stages never hold a GPU, even where there are some...
    assert "num_gpus" not in task_options("extract", cluster=gpus)
    # ...unless asked, and asking for one that is not there is an error that says so.
    assert task_options("extract", use_gpu=True, cluster=gpus)["num_gpus"] == 1.0
    with pytest.raises(ValueError, match="no GPU"):
        task_options("features", use_gpu=True, cluster=cpu_only)
    with pytest.raises(ValueError, match="unknown kind"):
        task_options("extrakt", cluster=gpus)


def test_custom_accelerator_and_extra_resources():
    cluster = {"CPU": 4.0, FAKE: 1.0, "highmem": 2.0}
    assert cluster_has_gpus(FAKE, cluster=cluster) and not cluster_has_gpus(cluster=cluster)
    assert task_options("train", {"highmem": 1}, accelerator=FAKE, cluster=cluster) == {
        "num_cpus": 1, "resources": {"highmem": 1, FAKE: 1.0}}
    assert task_options("baselines", accelerator=FAKE, cluster=cluster) == {"num_cpus": 1}


def test_scaling_config():
    sc = scaling_config(2, cluster={"CPU": 8.0, "GPU": 4.0}, cpus_per_worker=2)
    assert sc.num_workers == 2 and sc.use_gpu and sc.resources_per_worker == {"CPU": 2, "GPU": 1.0}
    sc = scaling_config(2, cluster={"CPU": 8.0})
    assert not sc.use_gpu and sc.resources_per_worker == {"CPU": 1}
    sc = scaling_config(2, accelerator=FAKE, cluster={"CPU": 8.0, FAKE: 1.0})
    assert not sc.use_gpu and sc.resources_per_worker == {"CPU": 1, FAKE: 0.5}


# Long enough that the node is removed mid-fit: a pool worker runs a toy LSTM epoch in ~50 ms.
CLUSTER_LSTM_EPOCHS = 150

@pytest.mark.parametrize(
    "n, cpus, gpus, want_cpus, want_gpus",
    [
        (3, 8, 0, [3, 3, 2], None),
        (4, 2, 0, [1, 1, 1, 1], None),  # more fits than cores: one each, Ray queues the rest
        (2, 16, 1, [8, 8], 0.5),
        (2, 4, 5, [2, 2], 2.0),
    ],
)
def test_split_resources(n, cpus, gpus, want_cpus, want_gpus):
    parts = split_resources(n, cpus, gpus)
    assert [p["num_cpus"] for p in parts] == want_cpus
    if cpus >= n:
        assert sum(p["num_cpus"] for p in parts) == cpus
    assert all(p.get("num_gpus") == want_gpus for p in parts)
    if gpus:
        assert sum(p["num_gpus"] for p in parts) <= gpus


def test_split_resources_rejects_nonsense():
    with pytest.raises(ValueError, match="n_models"):
        split_resources(0, 4)
    with pytest.raises(ValueError, match="total_cpus"):
        split_resources(2, 0)


# --- a real 3-node cluster ------------------------------------------------------------------------

def _tiny_dataset(root: Path, n: int) -> Path:
    moves = {"right": ((8, 8), RIGHT), "down": ((8, 4), DOWN)}  # the square's start and step
    classes = [("right", "down")[i % 2] for i in range(n)]
    return write_square_dataset(root, [SquareClip(f"{c}/{c}_{i}.avi", c, "train", f"g{i}", 30 + 10 * i, *moves[c])
                                       for i, c in enumerate(classes)])


def _make_probe(marker: str, head_id: str):
    """Wraps extract's shard task: the first task to finish on a worker node writes its clips
    fragments, announces itself in `marker`, and hangs, so the test kills its node at the worst
    moment: fragments on disk, result not yet back to the driver."""
    from hyvid.pipelines import extract as ex

    original = ex._shard_task

    def probe(*args):
        import os
        import time

        import ray

        node = ray.get_runtime_context().get_node_id()
        result = original(*args)
        if node != head_id:
            try:
                fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                return result
            os.write(fd, node.encode())
            os.close(fd)
            time.sleep(600)
        return result

    return probe


def _scenario(work: Path) -> dict:
    """Runs in the subprocess: placement on a fake-GPU node, a trainer there, and extract losing a node."""
    import threading

    import ray
    from ray.cluster_utils import Cluster

    from hyvid.pipelines import extract as ex
    from hyvid.store.lance_io import open_table
    from hyvid.store.tables import CLIPS, VIDEOS

    out: dict = {}
    t_start = time.perf_counter()
    # RAY_TMPDIR (set by the fixture) keeps the sessions and the "current cluster" address file
    # out of /tmp/ray, where another process's ray.init() would find this cluster and join it.
    temp_dir = os.path.join(os.environ["RAY_TMPDIR"], "ray")
    common = {"temp_dir": temp_dir, "object_store_memory": 80 * 1024 * 1024}
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False, **common})
    try:
        gpu_node = cluster.add_node(num_cpus=1, resources={FAKE: 1}, **common)
        cluster.add_node(num_cpus=1, **common)
        ray.init(address=cluster.address, log_to_driver=False)
        out["startup_s"] = time.perf_counter() - t_start
        head_id = cluster.head_node.node_id
        out.update(head=head_id, gpu_node=gpu_node.node_id,
                   nodes=sorted(n["NodeID"] for n in ray.nodes() if n["Alive"]))

        # 1. Placement: accelerated work goes where the accelerator is; CPU work anywhere.
        @ray.remote
        def where() -> str:
            return ray.get_runtime_context().get_node_id()

        out["has_fake"] = cluster_has_gpus(FAKE)
        out["has_gpu"] = cluster_has_gpus()
        opts = task_options("features", in_flight=2, accelerator=FAKE)
        out["features_opts"] = opts
        out["features_nodes"] = ray.get([where.options(**opts).remote() for _ in range(6)])
        out["extract_opts"] = task_options("extract", accelerator=FAKE)

        # 2. Trainer workers: Ray Train reserves one bundle of `resources_per_worker` per worker
        #    in a placement group; reserve the same bundles and see where they land.
        from ray.util.placement_group import placement_group, remove_placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        sc = scaling_config(2, accelerator=FAKE, cpus_per_worker=0.5)  # the node has 1 CPU
        out["trainer_bundle"] = sc.resources_per_worker
        pg = placement_group([sc.resources_per_worker] * sc.num_workers, strategy="PACK")
        ray.get(pg.ready(), timeout=120)
        out["trainer_nodes"] = ray.get([
            where.options(num_cpus=0, scheduling_strategy=PlacementGroupSchedulingStrategy(pg, i)).remote()
            for i in range(sc.num_workers)])
        remove_placement_group(pg)

        # 3. Extract over the cluster; a worker node dies holding written, uncommitted fragments.
        manifest = _tiny_dataset(work / "data", 9)
        store = str(work / "store")
        marker = str(work / "victim")
        ex._shard_task = _make_probe(marker, head_id)
        cfg = ex.ExtractConfig(dataset=str(manifest), store_uri=store, frames=4, stack=2, size=64,
                               address=cluster.address, workers=3, shard_size=1, progress=False)
        box: dict = {}

        def run_extract() -> None:
            try:
                box["result"] = ex.extract(cfg)
            except BaseException as e:  # noqa: BLE001 - surfaced below, with the scenario's other output
                box["error"] = repr(e)

        runner = threading.Thread(target=run_extract, daemon=True)
        t0 = time.perf_counter()
        runner.start()
        while not os.path.exists(marker) and runner.is_alive():
            time.sleep(0.1)
        time.sleep(0.2)  # the marker's node id is written just after the file appears
        victim_id = Path(marker).read_text() if os.path.exists(marker) else None
        out["victim"] = victim_id
        victim = [n for n in cluster.worker_nodes if n.node_id == victim_id]
        if victim:
            cluster.remove_node(victim[0], allow_graceful=False)
        runner.join(timeout=240)
        out["extract_s"] = time.perf_counter() - t0
        if "result" not in box:
            raise RuntimeError(f"extract did not finish: {box.get('error', 'still running after 240 s')}")
        r = box["result"]
        out["extract"] = {"ok": r.ok, "failed": r.failed, "total": r.total, "node_spread": r.node_spread}
        videos = open_table(store, VIDEOS.name).to_table(columns=["video_id", "status", "n_positions", "node_id"])
        clips = open_table(store, CLIPS.name).to_table(columns=["video_id", "position"])
        out["videos"] = videos.to_pylist()
        out["clips"] = sorted([c["video_id"], c["position"]] for c in clips.to_pylist())
        data_dir = Path(store) / f"{CLIPS.name}.lance" / "data"
        out["clip_files_on_disk"] = len(list(data_dir.glob("*.lance")))
        out["clip_fragments_committed"] = len(open_table(store, CLIPS.name).get_fragments())

        # 4. A replacement node joins; the CNNs are fitted and `features` spreads over all three.
        new_node = cluster.add_node(num_cpus=1, **common)
        cluster.wait_for_nodes()
        out["nodes_after_join"] = sorted(n["NodeID"] for n in ray.nodes() if n["Alive"])
        out["new_node"] = new_node.node_id
        tracking_uri = f"sqlite:///{work / 'mlflow.db'}"
        out.update(_cnns_and_features(store, tracking_uri, cluster.address))

        # 5. A train fit loses the node of its pool worker after a checkpoint and resumes elsewhere.
        out["train"] = _train_loses_its_node(cluster, work, tracking_uri, head_id)
    finally:
        ray.shutdown()
        cluster.shutdown()
    return out


def _cnns_and_features(store: str, tracking_uri: str, address: str) -> dict:
    from hyvid.pipelines.features import FeaturesConfig, extract_features
    from hyvid.pipelines.train_cnn import TrainCNNConfig, train_cnn
    from hyvid.store.lance_io import open_table

    t0 = time.perf_counter()
    cnn = train_cnn(TrainCNNConfig(store_uri=store, stream="both", epochs=1, batch_size=8, crop=32, workers=1,
                                   cpus_per_worker=1, experiment="cluster", tracking_uri=tracking_uri,
                                   address=address))
    f = extract_features(FeaturesConfig(store_uri=store, experiment="cluster", tracking_uri=tracking_uri,
                                        address=address, workers=3, videos_per_task=1, commit_every=1,
                                        progress=False))
    ff = open_table(store, "frame_features").to_table(columns=["video_id", "position"]).to_pylist()
    return {"cnn_runs": cnn.run_ids, "features_node_tasks": f.node_tasks, "features_written": f.n_features_written,
            "feature_rows": sorted([r["video_id"], r["position"]] for r in ff), "features_s": time.perf_counter() - t0}


def _train_loses_its_node(cluster, work: Path, tracking_uri: str, head_id: str) -> dict:
    """Fit the spatial LSTM on a toy store with the head's CPU held, so its one worker lands on a
    worker node; remove that node (no graceful shutdown) as soon as the first checkpoint is on disk."""
    import threading

    import mlflow
    import ray
    from helpers.toy_store import build_toy_store
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from hyvid.pipelines.tracking import TAG_NODES
    from hyvid.pipelines.train import TrainConfig, train

    toy = str(work / "toy")
    build_toy_store(toy)

    @ray.remote(num_cpus=1)
    class HoldCPU:
        def ready(self) -> bool:
            return True

    holder = HoldCPU.options(scheduling_strategy=NodeAffinitySchedulingStrategy(head_id, soft=False)).remote()
    ray.get(holder.ready.remote(), timeout=60)
    ckpt_root = work / "train_ckpt"
    # cv_folds=0: this test is about one fit resuming on another node; its out-of-fold fits would only add runs.
    cfg = TrainConfig(store_uri=toy, models=("spatial_lstm",), cv_folds=0, lstm_epochs=CLUSTER_LSTM_EPOCHS,
                      lstm_patience=0,
                      lstm_hidden=(32, 16),
                      lstm_optimizer="adam", lstm_lr=0.01, cpus_per_worker=1, checkpoint_every_s=0.0,
                      storage_path=str(ckpt_root), keep_checkpoints=True, experiment="cluster-train",
                      tracking_uri=tracking_uri, address=cluster.address)
    box: dict = {}

    def run_train() -> None:
        try:
            box["result"] = train(cfg)
        except BaseException as e:  # noqa: BLE001 - surfaced below
            box["error"] = repr(e)

    out: dict = {}
    t0 = time.perf_counter()
    runner = threading.Thread(target=run_train, daemon=True)
    runner.start()
    # The fit pool writes each checkpoint atomically as <storage>/<fit id>/state.pt.
    def registered() -> bool:
        return any(ckpt_root.glob("*/state.pt"))

    while runner.is_alive() and not registered():
        time.sleep(0.1)
    client = mlflow.MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name("cluster-train")
    runs = client.search_runs([exp.experiment_id]) if exp else []
    nodes_before = runs[0].data.tags.get(TAG_NODES, "") if runs else ""
    victim_id = nodes_before.split(",")[-1] if nodes_before else None
    out["victim"] = victim_id
    out["checkpoint_seen_s"] = time.perf_counter() - t0
    victim = [n for n in cluster.worker_nodes if n.node_id == victim_id]
    if victim:
        cluster.remove_node(victim[0], allow_graceful=False)
    runner.join(timeout=300)
    out["train_s"] = time.perf_counter() - t0
    ray.kill(holder)
    if "result" not in box:
        raise RuntimeError(f"train did not finish: {box.get('error', 'still running after 300 s')}")
    res = box["result"].models["spatial_lstm"]
    run = client.get_run(res.run_id)
    out.update(run_id=res.run_id, status=run.info.status, tags=dict(run.data.tags),
               metrics={k: float(v) for k, v in res.metrics.items()},
               epochs_logged=sorted({m.step for m in client.get_metric_history(res.run_id, "train_loss")}),
               n_runs=len(client.search_runs([exp.experiment_id])))
    return out


@pytest.fixture(scope="module")
def cluster_run(tmp_path_factory):
    import shutil

    work = tmp_path_factory.mktemp("cluster")
    ray_tmp = tempfile.mkdtemp(prefix="hvc", dir="/tmp")  # short: Ray's unix sockets live under it
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=os.urandom(16).hex(), RAY_USAGE_STATS_ENABLED="0",
               PYTHONPATH=os.pathsep.join([str(REPO), str(TESTS), env.get("PYTHONPATH", "")]), RAY_DEDUP_LOGS="0",
               RAY_TMPDIR=ray_tmp)
    proc = subprocess.Popen([sys.executable, __file__, str(work)], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=720)
    except subprocess.TimeoutExpired:
        stdout, stderr = "", "scenario timed out after 720 s"
    finally:
        # Whatever the scenario left (it shuts its cluster down, but may have died first): every
        # process of its session, by id.
        kill_session(proc.pid, grace_s=0.0)
        proc.wait()
        shutil.rmtree(ray_tmp, ignore_errors=True)
    out_file = work / "result.json"
    assert proc.returncode == 0 and out_file.exists(), f"scenario failed:\n{stdout[-3000:]}\n{stderr[-6000:]}"
    return json.loads(out_file.read_text())


@pytest.mark.slow
@pytest.mark.integration
def test_accelerated_tasks_and_trainers_land_on_the_accelerator_node(cluster_run):
    r = cluster_run
    assert len(r["nodes"]) == 3
    assert r["has_fake"] and not r["has_gpu"]
    assert r["features_opts"] == {"num_cpus": 1, "resources": {FAKE: 0.5}}
    assert set(r["features_nodes"]) == {r["gpu_node"]}
    assert r["extract_opts"] == {"num_cpus": 1}
    # Two trainer workers share the one fake GPU (half each) and both sit on its node.
    assert r["trainer_bundle"] == {"CPU": 0.5, FAKE: 0.5}
    assert r["trainer_nodes"] == [r["gpu_node"]] * 2


@pytest.mark.slow
@pytest.mark.integration
def test_extract_survives_a_worker_node_dying_mid_stage(cluster_run):
    r = cluster_run
    victim = r["victim"]
    assert victim and victim != r["head"], "no extraction task ran on a worker node"
    ex = r["extract"]
    assert (ex["ok"], ex["failed"], ex["total"]) == (9, 0, 9)
    # Every video exactly once, every clip position exactly once.
    ids = [v["video_id"] for v in r["videos"]]
    assert len(ids) == 9 == len(set(ids)) and all(v["status"] == "ok" for v in r["videos"])
    want = sorted([v["video_id"], p] for v in r["videos"] for p in range(v["n_positions"]))
    assert r["clips"] == want
    # The dead node's fragments were written but never committed: atomic commits left them out.
    assert r["clip_files_on_disk"] > r["clip_fragments_committed"]
    # The work was spread over the surviving nodes, and none of it is credited to the dead one.
    spread = ex["node_spread"]
    assert victim not in spread and len(spread) == 2 and sum(spread.values()) == 9
    assert {v["node_id"] for v in r["videos"]} == set(spread)


@pytest.mark.slow
@pytest.mark.integration
def test_features_spread_over_the_nodes_and_write_every_clip_once(cluster_run):
    r = cluster_run
    alive = set(r["nodes_after_join"])
    assert len(alive) == 3 and r["new_node"] in alive and r["victim"] not in alive
    spread = r["features_node_tasks"]
    # One video per task, three in flight: SPREAD scheduling puts them on every node.
    assert sum(spread.values()) == 9 and set(spread) <= alive and len(spread) >= 2, spread
    assert r["features_written"] == 9
    assert r["feature_rows"] == r["clips"]  # one feature row per stored clip, none twice


@pytest.mark.slow
@pytest.mark.integration
def test_train_fit_resumes_from_its_checkpoint_after_its_node_dies(cluster_run):
    t = cluster_run["train"]
    head = cluster_run["head"]
    assert t["victim"] and t["victim"] != head, "the LSTM's worker was not on a worker node"
    nodes = t["tags"]["hyvid.nodes"].split(",")
    # First attempt on the node that was removed, then a new attempt on a surviving worker node.
    assert nodes[0] == t["victim"] and len(nodes) >= 2 and nodes[-1] not in (t["victim"], head), nodes
    resumed = int(t["tags"]["hyvid.resumed_from_epoch"])
    assert 0 <= resumed < CLUSTER_LSTM_EPOCHS - 1  # killed mid-fit, not after it
    assert t["status"] == "FINISHED" and t["n_runs"] == 1  # the same MLflow run, continued
    assert t["epochs_logged"] == list(range(CLUSTER_LSTM_EPOCHS))
    # The resumed fit still learns the toy store (chance is 0.25 over its four classes).
    assert t["metrics"]["test_accuracy"] >= 0.5, t["metrics"]


if __name__ == "__main__":
    import logging

    logging.basicConfig(level=logging.WARNING)
    work_dir = Path(sys.argv[1])
    result = _scenario(work_dir)
    (work_dir / "result.json").write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k not in ("videos", "clips")}, indent=2))


def test_impossible_requests_fail_at_once_naming_the_request_and_the_cluster(monkeypatch):
    monkeypatch.delenv("HYVID_CONFIG", raising=False)  # the repo's ray_config.yaml: 16-CPU and 8-CPU+GPU node types
    with pytest.raises(ValueError, match=r"one train-cnn worker asks for 100000 CPU, more than the Ray "
                                         r"cluster has \(2 CPU, and no node type in ray_config.yaml"):
        scaling_config(1, kind="train-cnn", cluster={"CPU": 2.0}, cpus_per_worker=100000)
    with pytest.raises(ValueError, match=r"one extract task asks for 1 CPU, 1 highmem, more"):
        task_options("extract", {"highmem": 1}, cluster={"CPU": 2.0})
    # A cluster this process joined may still scale up: what one of its node types holds is feasible.
    assert scaling_config(1, kind="train-cnn", cluster={"CPU": 0.0}, cpus_per_worker=8).resources_per_worker == {
        "CPU": 8}
