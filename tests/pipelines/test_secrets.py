"""Secrets never reach the user or a log: one redaction (`cluster.settings.redact`, also
`tracking.redact`) for URIs and exception texts, and literal secrets refused in the settings file.

The command tests run `hyvid` as a subprocess, as a user would, and search everything it wrote
(stdout and stderr, with and without --verbose's traceback) for the password.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml
from helpers.servers import free_port

from hyvid.cluster.settings import DEFAULT_CONFIG, redact, register_secret
from hyvid.pipelines import tracking

PASSWORD = "pw-0f8e7d6c5b4a"  # a value that appears nowhere else


def test_redact_masks_uri_credentials_query_secrets_and_secret_values(monkeypatch):
    assert tracking.redact is redact  # one function
    text = f"API request to http://admin:{PASSWORD}@mlflow.internal:5000/api failed; retry s3://bucket/x"
    assert redact(text) == "API request to http://***@mlflow.internal:5000/api failed; retry s3://bucket/x"
    assert redact("https://token@host/p") == "https://***@host/p"
    assert redact("https://h/o?X-Amz-Signature=abcdef&a=1&sas_token=xyz") == \
        "https://h/o?X-Amz-Signature=***&a=1&sas_token=***"
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT_KEY", "azure-literal-value-123")
    assert redact("open failed with key azure-literal-value-123") == "open failed with key ***"
    register_secret("a-storage-option-value")  # what resolved_storage_options does for secret keys
    assert redact(ValueError("bad a-storage-option-value")) == "bad ***"
    assert redact(None) == "" and redact("plain text, no secret") == "plain text, no secret"


def _settings_with(tmp_path, **hyvid) -> str:
    with open(DEFAULT_CONFIG) as f:
        doc = yaml.safe_load(f)
    doc["metadata"]["hyvid"].update(hyvid)
    path = tmp_path / "ray_config.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def _hyvid(args: list[str], env: dict[str, str], cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hyvid.pipelines.cli", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("args", [
    ["runs"], ["report"], ["predict", "clip.avi"],
    ["--verbose", "runs"], ["--verbose", "report"], ["--verbose", "predict", "clip.avi"],
])
def test_password_in_the_tracking_uri_is_never_printed(args, tmp_path):
    (tmp_path / "clip.avi").write_bytes(b"")
    env = {k: v for k, v in os.environ.items() if k not in ("HYVID_CONFIG", "RAY_ADDRESS")}
    # Nothing listens there: the commands fail on the tracking server, quoting its URI.
    env["MLFLOW_TRACKING_URI"] = f"http://admin:{PASSWORD}@127.0.0.1:{free_port()}"
    env["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    env["MLFLOW_HTTP_REQUEST_TIMEOUT"] = "10"
    proc = _hyvid(args, env, tmp_path)
    everything = proc.stdout + proc.stderr
    assert proc.returncode != 0, everything
    assert PASSWORD not in everything
    assert "http://***@127.0.0.1" in everything  # the URI is still there to say what failed
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"hyvid {args[-2] if args[-1] == 'clip.avi' else args[-1]}: error: "), last
    if "--verbose" not in args:
        assert "Traceback" not in everything


@pytest.mark.parametrize("key", [
    "aws_secret_access_key", "aws_session_token", "azure_storage_account_key", "azure_storage_sas_key",
    "azure_client_secret", "google_service_account_key", "service_account_key",
])
def test_literal_secrets_in_the_settings_are_refused_on_one_line(key, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["HYVID_CONFIG"] = _settings_with(tmp_path, storage_options={key: PASSWORD})
    proc = _hyvid(["runs"], env, tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"hyvid: error: {env['HYVID_CONFIG']}: metadata.hyvid.storage_options.{key} "
                                   'holds a literal secret; write it as "${SOME_ENV_VAR}" and export the variable '
                                   "instead"), proc.stderr
    assert PASSWORD not in proc.stdout + proc.stderr


def test_secret_references_and_plain_options_are_accepted(tmp_path, monkeypatch):
    from hyvid.cluster.settings import load_settings

    monkeypatch.setenv("HYVID_CONFIG", _settings_with(tmp_path, storage_options={
        "azure_storage_account_key": "${AZ_KEY}", "google_service_account_key": "${GCS_KEY}", "region": "eu"}))
    monkeypatch.setenv("AZ_KEY", "az-" + PASSWORD)
    monkeypatch.setenv("GCS_KEY", "gcs-" + PASSWORD)
    so = load_settings().resolved_storage_options()
    assert so["azure_storage_account_key"] == "az-" + PASSWORD and so["region"] == "eu"
    # Once read, the values are masked wherever they would be printed (AZ_KEY's name says nothing).
    assert redact(f"failed with {so['azure_storage_account_key']}") == "failed with ***"
