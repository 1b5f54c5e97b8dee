"""ray_config.yaml is a valid Ray cluster-launcher config and the home of hyvid's per-cluster settings."""
from __future__ import annotations

import copy
import re

import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from hyvid.cluster.settings import DEFAULT_CONFIG, load_settings


@pytest.fixture(scope="module")
def config() -> dict:
    with open(DEFAULT_CONFIG) as f:
        return yaml.safe_load(f)


def _write(tmp_path, doc: dict):
    path = tmp_path / "ray_config.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.fixture
def clean_env(monkeypatch):
    for var in ("HYVID_CONFIG", "HYVID_STORE", "MLFLOW_TRACKING_URI", "RAY_ADDRESS", "HYVID_EXPERIMENT",
                "HYVID_DASHBOARD"):
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


def test_validates_against_the_launcher_schema(config):
    # Ray's own check: jsonschema against ray/autoscaler/ray-schema.json (top level has
    # additionalProperties: false, so a stray key fails here).
    validate_config(config)
    # ...and after the launcher merges in the provider defaults, as `ray up` does.
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    assert prepared["available_node_types"]["head"]["max_workers"] == 0


def test_schema_rejects_a_stray_top_level_key(config):
    # Guards the test above: the validator really is strict about the top level.
    bad = dict(config, hyvid={"store_uri": "x"})
    with pytest.raises(Exception, match="hyvid"):
        validate_config(bad)


def test_node_types_head_cpu_and_gpu(config):
    types = config["available_node_types"]
    assert config["head_node_type"] in types
    gpu = [n for n, t in types.items() if t.get("resources", {}).get("GPU", 0) >= 1]
    cpu = [n for n, t in types.items() if n != config["head_node_type"]
           and t.get("resources", {}).get("CPU", 0) >= 1 and not t["resources"].get("GPU")]
    assert gpu and cpu, f"need a GPU and a CPU worker type, got {sorted(types)}"
    for name in gpu + cpu:
        assert types[name]["max_workers"] >= 1 and "node_config" in types[name]
    assert sum(types[n]["max_workers"] for n in gpu + cpu) >= config["max_workers"] >= 1
    assert config["provider"]["type"] in {"aws", "gcp", "azure", "local"}


def test_setup_installs_hyvid_and_ships_the_repo(config):
    setup = " ".join(config["setup_commands"])
    assert re.search(r"pip install .*~/hyvid", setup), setup
    assert config["file_mounts"]["~/hyvid"] == "."
    # The local venv and stores never travel to the nodes.
    for junk in (".venv", "*.lance", "mlruns"):
        assert junk in config["rsync_exclude"]


def test_token_auth_on_and_dashboard_not_public(config):
    starts = config["head_start_ray_commands"] + config["worker_start_ray_commands"]
    ray_starts = [c for c in starts if "ray start" in c]
    assert len(ray_starts) == 2 and all("RAY_AUTH_MODE=token" in c for c in ray_starts)
    assert not any("0.0.0.0" in c or "RAY_AUTH_MODE=disabled" in c for c in starts)
    # The head binds its dashboard where the file says, and says loopback explicitly.
    head = next(c for c in config["head_start_ray_commands"] if "ray start" in c)
    assert "--dashboard-host=127.0.0.1" in head
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"


def test_committed_settings_are_local(config, clean_env):
    block = config["metadata"]["hyvid"]
    assert "://" not in block["store_uri"]
    assert block["tracking_uri"].startswith("sqlite:///")
    s = load_settings()
    assert (s.store_uri, s.tracking_uri, s.experiment) == (block["store_uri"], block["tracking_uri"], "hyvid")
    assert s.workers_for("extract", 99) == block["workers"]["extract"]
    assert s.workers_for("no-such-stage", 7) == 7


def test_no_literal_credentials_in_the_file():
    text = DEFAULT_CONFIG.read_text()
    assert not re.search(r"AKIA[0-9A-Z]{16}", text)  # AWS access key ids
    for line in text.splitlines():
        m = re.match(r"\s*#?\s*(aws_secret_access_key|aws_access_key_id|aws_session_token):\s*(\S+)", line)
        if m:
            assert re.fullmatch(r"\$\{[A-Z_][A-Z0-9_]*\}", m.group(2)), line


def test_settings_block_read_and_env_overrides(tmp_path, config, clean_env):
    doc = copy.deepcopy(config)
    doc["metadata"]["hyvid"].update(
        store_uri="s3://bucket/hyvid", tracking_uri="http://head:5000", experiment="ucf",
        workers={"extract": 96}, dashboard_address="http://head:8265",
        storage_options={"region": "us-west-2", "aws_access_key_id": "${TEST_KEY_ID}",
                         "aws_secret_access_key": "${TEST_SECRET}"},
    )
    path = _write(tmp_path, doc)
    validate_config(yaml.safe_load(path.read_text()))  # the cluster values keep it a launcher config
    clean_env.setenv("HYVID_CONFIG", str(path))
    s = load_settings()
    assert (s.store_uri, s.tracking_uri, s.experiment) == ("s3://bucket/hyvid", "http://head:5000", "ucf")
    assert s.workers_for("extract", 2) == 96 and s.dashboard_address == "http://head:8265"

    clean_env.setenv("HYVID_STORE", "/mnt/shared/store")
    clean_env.setenv("MLFLOW_TRACKING_URI", "http://other:5000")
    s = load_settings()
    assert (s.store_uri, s.tracking_uri) == ("/mnt/shared/store", "http://other:5000")

    # Credentials stay references until a stage resolves them from the environment.
    assert s.storage_options["aws_secret_access_key"] == "${TEST_SECRET}"
    with pytest.raises(ValueError, match="TEST_KEY_ID"):
        s.resolved_storage_options()
    clean_env.setenv("TEST_KEY_ID", "id-123")
    clean_env.setenv("TEST_SECRET", "s3cr3t")
    assert s.resolved_storage_options() == {
        "region": "us-west-2", "aws_access_key_id": "id-123", "aws_secret_access_key": "s3cr3t"}
    assert "s3cr3t" not in repr(s)


def test_literal_secret_and_unknown_keys_rejected(tmp_path, config, clean_env):
    doc = copy.deepcopy(config)
    doc["metadata"]["hyvid"]["storage_options"] = {"aws_secret_access_key": "wJalrXUtnFEMI"}
    with pytest.raises(ValueError, match="aws_secret_access_key.*literal secret"):
        load_settings(_write(tmp_path, doc))
    doc["metadata"]["hyvid"] = {"store_uri": "x", "stor_uri": "typo"}
    with pytest.raises(ValueError, match="stor_uri"):
        load_settings(_write(tmp_path, doc))
    doc["metadata"]["hyvid"] = {"workers": {"extract": 0}}
    with pytest.raises(ValueError, match="workers.extract"):
        load_settings(_write(tmp_path, doc))
