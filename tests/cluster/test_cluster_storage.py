"""A store on S3: Lance two-phase writes and `hyvid extract` against a local S3 server (moto) on 127.0.0.1.

Credentials reach Lance only through `${VAR}` references in ray_config.yaml's settings block,
expanded from the environment; they must not appear in output, logs or MLflow params.
"""
from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import pyarrow as pa
import pytest
import yaml
from helpers.servers import free_port, serve
from helpers.videos import DOWN, RIGHT, SquareClip, write_square_dataset

from hyvid.cluster.settings import DEFAULT_CONFIG, load_settings
from hyvid.store import lance_io

BUCKET = "hyvid-test"
# Fake, but treated as real secrets: they must never show up anywhere.
KEY_ID = "AKIAHYVIDTESTKEY0001"
SECRET = "hyvid-moto-secret-d41d8cd98f00"


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory):
    """moto's S3 server on 127.0.0.1:<free port> with one bucket; killed at the end."""
    import boto3

    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    cmd = [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)]
    # Up as soon as it answers at all.
    with serve(cmd, endpoint, log=tmp_path_factory.mktemp("moto") / "moto.log", healthy=lambda r: True):
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=KEY_ID,
                     aws_secret_access_key=SECRET).create_bucket(Bucket=BUCKET)
        yield endpoint


@pytest.fixture
def s3_settings(s3_endpoint, tmp_path, monkeypatch):
    """A ray_config.yaml whose settings point at the bucket, credentials as ${VAR} references."""
    with open(DEFAULT_CONFIG) as f:
        doc = yaml.safe_load(f)
    doc = copy.deepcopy(doc)
    doc["metadata"]["hyvid"].update(
        store_uri=f"s3://{BUCKET}/{tmp_path.name}",
        storage_options={
            "aws_access_key_id": "${AWS_ACCESS_KEY_ID}",
            "aws_secret_access_key": "${AWS_SECRET_ACCESS_KEY}",
            "aws_endpoint": "${HYVID_S3_ENDPOINT}",
            "aws_region": "us-east-1",
            "allow_http": "true",  # moto speaks plain http on 127.0.0.1
        },
    )
    path = tmp_path / "ray_config.yaml"
    path.write_text(yaml.safe_dump(doc))
    for var in ("HYVID_STORE", "MLFLOW_TRACKING_URI", "HYVID_EXPERIMENT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HYVID_CONFIG", str(path))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("HYVID_S3_ENDPOINT", s3_endpoint)
    s = load_settings()
    assert SECRET not in path.read_text() and SECRET not in repr(s)
    return s


def test_two_phase_lance_writes_on_s3(s3_settings):
    store, so = s3_settings.store_uri, s3_settings.resolved_storage_options()
    assert so["aws_secret_access_key"] == SECRET and store.startswith("s3://")
    schema = pa.schema([("video_id", pa.string()), ("x", pa.int32())])
    # Two "workers" write fragments; nothing is visible until the driver commits them at once.
    f1 = lance_io.write_table_fragments(store, "t", pa.table({"video_id": ["a", "b"], "x": [1, 2]}, schema), so)
    f2 = lance_io.write_table_fragments(store, "t", pa.table({"video_id": ["c"], "x": [3]}, schema), so)
    assert not lance_io.table_exists(store, "t", so)
    v1 = lance_io.commit_fragments(store, "t", f1 + f2, schema, so)
    assert lance_io.open_table(store, "t", so).to_table().column("video_id").to_pylist() == ["a", "b", "c"]
    v2 = lance_io.append_rows(store, "t", pa.table({"video_id": ["d"], "x": [4]}, schema), so)
    assert v2 == v1 + 1 and lance_io.table_versions(store, ["t", "missing"], so) == {"t": v2}
    # Time travel works on the object store too.
    assert lance_io.open_table(store, "t", so, version=v1).count_rows() == 3
    # Without the credentials' endpoint the store is simply not there (no silent local fallback).
    assert not lance_io.table_exists(store, "t", {**so, "aws_endpoint": "http://127.0.0.1:9"})


def _tiny_manifest(root: Path) -> Path:
    moves = {"right": ((6, 10), RIGHT), "down": ((10, 4), DOWN)}  # the square's start and step
    classes = ["right", "down", "right", "down"]
    return write_square_dataset(root, [SquareClip(f"{c}_{i}.avi", c, "train" if i < 2 else "test", f"g{i}",
                                                  50 + 20 * i, *moves[c]) for i, c in enumerate(classes)],
                                n_frames=14, colour=220)


@pytest.mark.slow
@pytest.mark.integration
def test_extract_into_s3_via_settings(ray_session, s3_settings, tmp_path, capsys, caplog):
    """`hyvid extract` with the store and credentials from the settings file: rows land on S3 once."""
    import logging

    import mlflow
    import pyarrow.compute as pc

    from hyvid.pipelines import cli, tracking
    from hyvid.store.tables import CLIPS, STATUS_OK, VIDEOS

    caplog.set_level(logging.DEBUG)
    manifest = _tiny_manifest(tmp_path / "data")
    args = ["extract", str(manifest), "--frames", "3", "--stack", "2", "--size", "64", "--workers", "2"]
    assert cli.main(args) == 0  # no --store: it comes from the settings block
    assert cli.main(args) == 0  # idempotent on S3 as on disk
    out = capsys.readouterr().out
    assert "extracted 4 videos, 0 failed" in out and "0 videos, 0 failed, 4 skipped" in out

    store, so = s3_settings.store_uri, s3_settings.resolved_storage_options()
    videos = lance_io.open_table(store, VIDEOS.name, so).to_table()
    assert sorted(videos.column("video_id").to_pylist()) == sorted(set(videos.column("video_id").to_pylist()))
    assert videos.num_rows == 4 and pc.all(pc.equal(videos.column("status"), STATUS_OK)).as_py()
    assert lance_io.open_table(store, CLIPS.name, so).count_rows() == 4 * 3
    assert not Path(store.removeprefix("s3://")).exists()  # nothing went to a local path of that name

    # Lineage of a run over the S3 store, and the settings as params: no credential in MLflow.
    tracking.setup(f"sqlite:///{tmp_path}/mlflow.db", "s3-test")
    with tracking.start_run("spatial_cnn", "test", split=1, store_uri=store) as run:
        tracking.log_lineage(store, [VIDEOS.name, CLIPS.name], so)
        tracking.log_params_safe({f"storage.{k}": v for k, v in so.items()})
    params = mlflow.get_run(run.info.run_id).data.params
    assert params["lineage.videos.version"] and params["lineage.store_uri"] == store
    assert "storage.aws_secret_access_key" not in params and "storage.aws_access_key_id" not in params
    dumped = repr(params) + repr(mlflow.get_run(run.info.run_id).data.tags)
    assert SECRET not in dumped and KEY_ID not in dumped

    # Never printed or logged in full either.
    everything = out + capsys.readouterr().err + "\n".join(r.getMessage() for r in caplog.records)
    assert SECRET not in everything and KEY_ID not in everything


def test_query_and_similar_open_the_store_with_its_storage_options(s3_settings, capsys):
    """`query` and `similar` reach an S3 store only through the settings' storage options."""
    from hyvid.pipelines import cli
    from hyvid.store.tables import FRAME_FEATURES_NAME, frame_features_schema

    store, so = s3_settings.store_uri, s3_settings.resolved_storage_options()
    rows = pa.table({
        "video_id": ["v"] * 3 + ["w"] * 3, "position": [0, 1, 2] * 2, "frame_index": [0, 5, 10] * 2,
        "timestamp": [0.0, 0.5, 1.0] * 2, "split": [1] * 6, "fold": [-1] * 6,
        "spatial": [[float(i), 0.0, 1.0, 2.0] for i in range(6)],
        "motion": [[0.0, float(i), 1.0] for i in range(6)], "spatial_run_id": ["r"] * 6, "motion_run_id": ["r"] * 6,
    }, frame_features_schema(4, 3))
    lance_io.append_rows(store, FRAME_FEATURES_NAME, rows, so)
    capsys.readouterr()
    assert cli.main(["query", "--video", "v", "--frames", "1:3", "--format", "json"]) == 0  # store from settings
    got = json.loads(capsys.readouterr().out)
    assert [r["position"] for r in got] == [1, 2] and got[0]["spatial"] == [1.0, 0.0, 1.0, 2.0]
    assert cli.main(["similar", "--video", "w", "--frame", "0", "-k", "2", "--format", "json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert (hits[0]["video_id"], hits[0]["position"]) == ("w", 0) and len(hits) == 2
