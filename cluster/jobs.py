"""Run any hyvid stage on a Ray cluster as a Ray job: submit, list, logs, stop.

A job ships the project as its `runtime_env.working_dir`, and hyvid's four packages as the
`hyvid` package in `runtime_env.py_modules` (staged at submit time, since the checkout's folders
install under the `hyvid.` prefix), and runs `python -m hyvid.pipelines.cli ...` there. So the
cluster needs only Ray and the dependencies (ray_config.yaml's setup_commands install both), not
this exact checkout, and the job runs the code it was submitted with. The job's driver runs on the head node and
attaches to the cluster through the RAY_ADDRESS that Ray sets for it, so stages need no --address.

Ray's token authentication stays on: requests carry `Authorization: Bearer <token>`, with the
token found where Ray itself looks (RAY_AUTH_TOKEN, then RAY_AUTH_TOKEN_PATH, then
~/.ray/auth_token). The token is never logged or printed.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shlex
import shutil
import tempfile
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, cast

from hyvid.cluster.settings import REPO_ROOT, SECRET_KEY_RE

if TYPE_CHECKING:
    from ray.job_submission import JobDetails, JobSubmissionClient

log = logging.getLogger(__name__)

# Never uploaded with the working dir (Ray also honours .gitignore and .rayignore): local
# environments, stores, tracking data and caches are big and belong to this machine only.
WORKING_DIR_EXCLUDES = (
    ".venv", "venv", ".git", "**/__pycache__", "*.pyc", ".pytest_cache", "*.egg-info", "build",
    "*.lance", "hyvid_store", "demo_out", "mlruns", "mlartifacts", "mlflow.db", ".bench",
    "benchmarks/results", "data",
)
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
PACKAGES = ("cluster", "pipelines", "models", "store")  # the checkout's folders, installed as hyvid.<name>
CLI_MODULE = "hyvid.pipelines.cli"


def auth_token() -> str | None:
    """The Ray auth token, from the same places and in the same order Ray reads it."""
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
        return None
    if os.environ.get("RAY_AUTH_TOKEN"):
        return os.environ["RAY_AUTH_TOKEN"].strip()
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if path:
        text = Path(path).expanduser().read_text().strip() if Path(path).expanduser().exists() else ""
        if not text:
            # Ray treats this as fatal too: a wrong path must not silently fall back.
            raise ValueError(f"RAY_AUTH_TOKEN_PATH={path} does not exist or is empty; fix or unset it")
        return text
    default = Path.home() / ".ray" / "auth_token"
    if default.exists():
        return default.read_text().strip() or None
    return None


def auth_headers() -> dict[str, str]:
    token = auth_token()
    return {"Authorization": f"Bearer {token}"} if token else {}


def client(address: str) -> JobSubmissionClient:
    """A JobSubmissionClient for the dashboard at `address` (http://HEAD:8265), authenticated."""
    from ray.job_submission import JobSubmissionClient

    if not address.startswith(("http://", "https://")):
        raise ValueError(
            f"job address {address!r} must be the dashboard's http://HOST:8265 (not the GCS host:6379); "
            "forward it with `ray dashboard ray_config.yaml` and use http://127.0.0.1:8265"
        )
    try:
        return JobSubmissionClient(address, headers=auth_headers())
    except ConnectionError as e:
        raise ConnectionError(
            f"no Ray Jobs API at {address}: {e}. Is the cluster up (`ray up ray_config.yaml`) and the "
            "dashboard forwarded (`ray dashboard ray_config.yaml`)?"
        ) from None


def default_working_dir() -> Path:
    """The hyvid checkout this code runs from (what a job should ship)."""
    if _is_checkout(REPO_ROOT):
        return REPO_ROOT
    raise ValueError(
        f"{REPO_ROOT} is not a hyvid checkout; pass --working-dir with one, or --no-working-dir "
        "if hyvid is installed on the cluster"
    )


def _is_checkout(path: str | Path) -> bool:
    return Path(path, "pyproject.toml").exists() and Path(path, "pipelines", "cli", "__init__.py").exists()


@contextlib.contextmanager
def staged_package(checkout: str | Path) -> Iterator[str]:
    """A temporary `hyvid/` folder holding the checkout's four packages (and its ray_config.yaml),
    for `runtime_env.py_modules`: Ray makes a shipped folder importable under its own name."""
    tmp = tempfile.mkdtemp(prefix="hyvid-job-")
    try:
        root = Path(tmp, "hyvid")
        root.mkdir()
        (root / "__init__.py").write_text('"""hyvid, as shipped with a Ray job by `hyvid submit`."""\n')
        for name in PACKAGES:
            shutil.copytree(Path(checkout, name), root / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        if Path(checkout, "ray_config.yaml").exists():
            shutil.copy2(Path(checkout, "ray_config.yaml"), root / "ray_config.yaml")
        yield str(root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@dataclass(frozen=True)
class SubmitConfig:
    """One hyvid command to run as a Ray job."""

    address: str
    args: tuple[str, ...]  # the hyvid command and its arguments, e.g. ("extract", "s3://...", ...)
    working_dir: str | None = None  # None: hyvid is installed on the cluster
    pip: tuple[str, ...] = ()  # extra packages installed for this job only
    env: dict[str, str] = field(default_factory=dict)  # non-secret env vars for the job
    python: str = "python"  # the cluster's interpreter (the one with Ray)
    submission_id: str | None = None
    excludes: tuple[str, ...] = WORKING_DIR_EXCLUDES

    def __post_init__(self) -> None:
        if not self.args:
            raise ValueError(
                "nothing to submit: give the hyvid command after `--`, e.g. `hyvid submit -- extract DATA`")
        if self.working_dir is not None and not _is_checkout(self.working_dir):
            raise ValueError(f"working dir {self.working_dir!r} has no pipelines/cli/ package; pass the hyvid checkout")
        for name in self.env:
            if SECRET_KEY_RE.search(name):
                # runtime_env is stored with the job and shown by the dashboard.
                raise ValueError(
                    f"--env {name}: credentials must not travel in the job's runtime_env (the dashboard "
                    "shows it); give the nodes an instance profile or set the variable in ray_config.yaml's "
                    "start commands"
                )

    def entrypoint(self) -> str:
        return f"{shlex.quote(self.python)} -m {CLI_MODULE} {shlex.join(self.args)}"

    def runtime_env(self, package_dir: str | None = None) -> dict[str, Any]:
        """The job's runtime_env; `package_dir` is the staged `hyvid` package (see staged_package)."""
        env: dict[str, Any] = {}
        if self.working_dir is not None:
            env["working_dir"] = str(self.working_dir)
            env["excludes"] = list(self.excludes)
        if package_dir is not None:
            env["py_modules"] = [package_dir]
        if self.pip:
            env["pip"] = list(self.pip)
        if self.env:
            env["env_vars"] = dict(self.env)
        return env


def relative_path_warnings(args: tuple[str, ...] | list[str], default_store: str) -> list[str]:
    """Warnings for paths a job would resolve inside its temporary copy of the working dir.

    A job runs in a fresh directory on the head, so a relative store (the local default
    `hyvid_store`, say) would be written there and vanish with the job.
    """
    out = []
    args = list(args)
    store = default_store
    for i, a in enumerate(args):
        if a == "--store" and i + 1 < len(args):
            store = args[i + 1]
        elif a.startswith("--store="):
            store = a.split("=", 1)[1]
    if "://" not in store and not store.startswith("/"):
        out.append(
            f"the store {store!r} is a relative path: on the cluster it would land in the job's temporary "
            "working dir. Use --store s3://bucket/prefix (or an absolute path on a shared filesystem), "
            "or set store_uri in ray_config.yaml's metadata.hyvid"
        )
    return out


def submit(cfg: SubmitConfig, agent_wait_s: float = 60.0) -> str:
    """Submit the command; returns the job's submission id.

    Right after `ray up` (or `ray start`) the dashboard answers before the node's job agent is
    ready, and Ray refuses with "No available agent": that case is retried for `agent_wait_s`.
    """
    c = client(cfg.address)
    deadline = time.monotonic() + agent_wait_s
    with contextlib.ExitStack() as stack:
        package = stack.enter_context(staged_package(cfg.working_dir)) if cfg.working_dir is not None else None
        while True:
            try:
                job_id = c.submit_job(
                    entrypoint=cfg.entrypoint(),
                    runtime_env=cfg.runtime_env(package),
                    submission_id=cfg.submission_id,
                    metadata={"hyvid.command": cfg.args[0]},
                )
                break
            except RuntimeError as e:
                if "No available agent" not in str(e) or time.monotonic() > deadline:
                    raise
                log.info("the cluster's job agent is not ready yet; retrying")
                time.sleep(2.0)
    log.info("submitted %s as %s to %s", cfg.args[0], job_id, cfg.address)
    return job_id


def list_jobs(address: str) -> list[JobDetails]:
    """Every job the cluster knows, oldest first (ray JobDetails)."""
    return sorted(client(address).list_jobs(), key=lambda j: j.start_time or 0)


def status(address: str, job_id: str) -> str:
    return str(client(address).get_job_status(job_id).value)


def logs(address: str, job_id: str) -> str:
    return client(address).get_job_logs(job_id)


def follow_logs(address: str, job_id: str) -> Iterator[str]:
    """Chunks of the job's output as it runs, until the job ends."""
    c = client(address)
    agen = cast(AsyncGenerator[str, None], c.tail_job_logs(job_id))  # an async generator: it has aclose()
    loop = asyncio.new_event_loop()
    try:
        while True:
            try:
                yield loop.run_until_complete(agen.__anext__())
            except StopAsyncIteration:
                return
    finally:
        loop.run_until_complete(agen.aclose())
        loop.close()


def wait(address: str, job_id: str, timeout_s: float = 3600.0, poll_s: float = 1.0) -> str:
    """Block until the job ends; returns SUCCEEDED, FAILED or STOPPED."""
    c = client(address)
    deadline = time.monotonic() + timeout_s
    while True:
        st = str(c.get_job_status(job_id).value)
        if st in TERMINAL:
            return st
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} still {st} after {timeout_s:.0f} s; see `hyvid logs {job_id}`")
        time.sleep(poll_s)


def stop(address: str, job_id: str) -> bool:
    """Ask the cluster to stop the job; False when it had already ended."""
    return bool(client(address).stop_job(job_id))
