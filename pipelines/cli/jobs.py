"""`hyvid submit|jobs|logs|stop`: run any hyvid command as a Ray job on a cluster, and manage the jobs."""
from __future__ import annotations

import argparse
import sys

from hyvid.cluster.settings import Settings
from hyvid.pipelines.cli._common import COMMANDS, command, defaults, given

JOB_COMMANDS = ("submit", "jobs", "logs", "stop")


def _job_address(p: argparse.ArgumentParser, s: Settings) -> None:
    p.add_argument("--address", default=s.dashboard_address,
                   help=f"Ray dashboard / Jobs API address (default: {s.dashboard_address}; "
                        "metadata.hyvid.dashboard_address or HYVID_DASHBOARD)")


def _submit_args(p: argparse.ArgumentParser, s: Settings) -> None:
    d = defaults("hyvid.cluster.jobs:SubmitConfig")
    _job_address(p, s)
    p.add_argument("--working-dir", help="project directory shipped with the job (default: this hyvid checkout)")
    p.add_argument("--no-working-dir", action="store_true",
                   help="ship nothing: hyvid is installed on the cluster (ray_config.yaml setup_commands)")
    p.add_argument("--pip", action="append", metavar="PKG", help="extra pip package for this job only (repeatable)")
    p.add_argument("--env", action="append", default=[], metavar="NAME[=VALUE]",
                   help="non-secret environment variable for the job, e.g. HYVID_STORE=s3://b/hyvid "
                        "(NAME alone copies it from here; repeatable)")
    p.add_argument("--python", help=f"interpreter on the cluster (default: {d.python})")
    p.add_argument("--submission-id", help="job id to use (default: generated)")
    p.add_argument("--wait", action="store_true",
                   help="follow the job's logs until it ends; exit 0 only if it succeeded")
    p.add_argument("stage_args", nargs=argparse.REMAINDER, metavar="-- COMMAND ...",
                   help="the hyvid command and its arguments, after --")


def _env(items: list[str]) -> dict[str, str]:
    """`NAME=VALUE` pairs; a bare NAME copies its value from this environment."""
    import os

    env = {}
    for item in items:
        name, eq, value = item.partition("=")
        if not eq:
            if name not in os.environ:
                raise ValueError(f"--env {name}: not set here; give NAME=VALUE")
            value = os.environ[name]
        env[name] = value
    return env


def _submit_config(args: argparse.Namespace, s: Settings):
    from pathlib import Path

    from hyvid.cluster import jobs

    command = list(args.stage_args)
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        raise ValueError("nothing to submit: add `-- COMMAND ARGS`, e.g. `hyvid submit -- extract data/ucf101`")
    if command[0] not in COMMANDS or command[0] in JOB_COMMANDS:
        runnable = sorted(set(COMMANDS) - set(JOB_COMMANDS))
        raise ValueError(f"{command[0]!r} is not a hyvid stage to submit; choose one of {runnable}")
    if args.no_working_dir:
        working_dir = None
    else:
        working_dir = str(Path(args.working_dir).resolve()) if args.working_dir else str(jobs.default_working_dir())
    return jobs.SubmitConfig(address=args.address, args=tuple(command), working_dir=working_dir, env=_env(args.env),
                             **given(pip=tuple(args.pip) if args.pip is not None else None, python=args.python,
                                     submission_id=args.submission_id))


def _submit_run(args: argparse.Namespace, s: Settings) -> int:
    from hyvid.cluster import jobs

    cfg = _submit_config(args, s)
    probe = argparse.ArgumentParser(add_help=False)
    COMMANDS[cfg.args[0]].add_arguments(probe, s)
    if probe.get_default("store") is not None:  # the stage reads a store: warn about relative paths
        for warning in jobs.relative_path_warnings(cfg.args, s.store_uri):
            print(f"hyvid submit: warning: {warning}", file=sys.stderr)
    try:
        job_id = jobs.submit(cfg)
    except ConnectionError as e:
        print(f"hyvid submit: error: {e}", file=sys.stderr)
        return 2
    print(f"submitted {job_id}: {cfg.entrypoint()}")
    if not args.wait:
        print(f"  hyvid logs {job_id} --follow   |   hyvid stop {job_id}")
        return 0
    for chunk in jobs.follow_logs(args.address, job_id):
        print(chunk, end="", flush=True)
    final = jobs.wait(args.address, job_id)
    print(f"job {job_id}: {final}")
    return 0 if final == "SUCCEEDED" else 1


def _jobs_run(args: argparse.Namespace, s: Settings) -> int:
    import datetime

    from hyvid.cluster import jobs

    rows = [("SUBMISSION ID", "STATUS", "STARTED", "ENTRYPOINT")]
    for j in jobs.list_jobs(args.address):
        started = datetime.datetime.fromtimestamp(j.start_time / 1000).strftime("%Y-%m-%d %H:%M:%S") \
            if j.start_time else "-"
        rows.append((j.submission_id or j.job_id or "-", str(j.status.value), started, j.entrypoint))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for r in rows:
        print("  ".join(v.ljust(w) for v, w in zip(r[:3], widths, strict=True)) + "  " + r[3])
    return 0


def _job_arg(p: argparse.ArgumentParser, s: Settings) -> None:
    _job_address(p, s)
    p.add_argument("job", help="submission id (see `hyvid jobs`)")


def _logs_args(p: argparse.ArgumentParser, s: Settings) -> None:
    _job_arg(p, s)
    p.add_argument("--follow", "-f", action="store_true", help="keep printing until the job ends")


def _logs_run(args: argparse.Namespace, s: Settings) -> int:
    from hyvid.cluster import jobs

    if args.follow:
        for chunk in jobs.follow_logs(args.address, args.job):
            print(chunk, end="", flush=True)
    else:
        print(jobs.logs(args.address, args.job), end="")
    return 0


def _stop_run(args: argparse.Namespace, s: Settings) -> int:
    from hyvid.cluster import jobs

    stopped = jobs.stop(args.address, args.job)
    print(f"{args.job}: {'stop requested' if stopped else 'already ended'} ({jobs.status(args.address, args.job)})")
    return 0


command("submit", "run any hyvid command as a Ray job on a cluster",
        "  hyvid submit -- extract s3://bucket/ucf101 --store s3://bucket/hyvid\n"
        "  hyvid submit --address http://127.0.0.1:8265 --wait -- features --store s3://bucket/hyvid\n"
        "  hyvid submit --env HYVID_STORE=s3://bucket/hyvid -- train --models fusion\n",
        _submit_args, _submit_run, _submit_config)
command("jobs", "list the cluster's Ray jobs", "  hyvid jobs\n  hyvid jobs --address http://head:8265\n",
        _job_address, _jobs_run)
command("logs", "print (or --follow) a job's output", "  hyvid logs raysubmit_XYZ --follow\n",
        _logs_args, _logs_run)
command("stop", "stop a running job", "  hyvid stop raysubmit_XYZ\n", _job_arg, _stop_run)
