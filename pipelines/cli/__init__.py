"""The `hyvid` command line: one sub-command per stage, each parsing its flags into the stage's config.

Each command lives in a small module (data, cnn, fit, results, store, chain, jobs): its flags,
the config they build and what it prints. Defaults and their help text come from the stage's
config dataclass, or from `cluster.settings` (ray_config.yaml's `metadata.hyvid` block and the
environment) for the store, experiment, tracking URI, Ray address and workers; flags override them.

A sub-command's flags are added only when that sub-command is parsed: flags read their defaults
from the stage's config, and importing every stage (torch, MLflow, Ray) would make `hyvid --help`
take seconds.
"""
from __future__ import annotations

import argparse
import re
import signal
import sys
import threading
import traceback
from typing import Callable

from hyvid.cluster.settings import Settings, load_settings, redact
from hyvid.pipelines import logs, ownership
from hyvid.pipelines.cli import _endings

# Importing a command module registers its commands; `hyvid --help` lists them in this (pipeline) order.
from hyvid.pipelines.cli import data, cnn, fit, results, store, chain, jobs  # noqa: F401  # isort: skip
from hyvid.pipelines.cli._common import COMMANDS, GIVEN, Command, register_types

__all__ = ["COMMANDS", "Command", "build_parser", "main"]

EPILOG = """examples:
  hyvid demo --out demo_out
  hyvid synth data/synth --classes 6 --videos-per-class 8
  hyvid extract data/synth --store store --flow dis --frames 25 --stack 10
  hyvid train-cnn --store store --stream both --epochs 2
  hyvid features --store store
  hyvid train --store store --models spatial_lstm,motion_lstm,fusion,baselines
  hyvid hybrid --store store
  hyvid report --experiment hyvid
  hyvid query --store store --video 'ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01' --frames 0:5
"""


class _CommandParser(argparse.ArgumentParser):
    """A sub-command's parser that adds its flags the first time it parses, prints help or is asked a default."""

    def __init__(self, *args, add_arguments: Callable[[argparse.ArgumentParser], None] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._add_arguments = add_arguments
        register_types(self)

    def _complete(self) -> None:
        if self._add_arguments is not None:
            add, self._add_arguments = self._add_arguments, None
            add(self)

    def parse_known_args(self, args=None, namespace=None):
        self._complete()
        ns, extra = super().parse_known_args(args, namespace)
        # Which flags the user typed (not defaults): "next:" hints repeat them (_common.next_command).
        typed = {a.split("=", 1)[0] for a in (args or []) if a.startswith("-")}
        setattr(ns, GIVEN, frozenset(act.dest for act in self._actions if any(
            o == t or (t.startswith("--") and o.startswith(t)) for o in act.option_strings for t in typed)))
        return ns, extra

    def format_help(self) -> str:
        self._complete()
        return super().format_help()

    def format_usage(self) -> str:
        self._complete()
        return super().format_usage()

    def get_default(self, dest: str):
        self._complete()
        return super().get_default(dest)


def _version() -> str:
    """The installed hyvid's version (its package metadata), or "unknown" when run from a bare checkout."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("hyvid")
    except PackageNotFoundError:
        return "unknown"


def build_parser(settings: Settings | None = None) -> argparse.ArgumentParser:
    """The `hyvid` argument parser; each sub-command's flags (and stage imports) come when it is parsed."""
    settings = settings or load_settings()
    parser = argparse.ArgumentParser(
        prog="hyvid",
        description="Hybrid deep learning framework for video classification on Ray, Lance and MLflow.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="debug logging, library warnings and worker output, tracebacks")
    parser.add_argument("-V", "--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_CommandParser)
    for name, cmd in COMMANDS.items():
        sub.add_parser(
            name, help=cmd.help, description=cmd.help,
            epilog=("examples:\n" + cmd.examples) if cmd.examples else None,
            formatter_class=argparse.RawDescriptionHelpFormatter,
            add_arguments=lambda p, add=cmd.add_arguments: add(p, settings),
        )
    return parser


# Errors that are the user's to fix (a bad value, a missing input, an unreachable service): one
# line, exit 2. Anything else is one line too, exit 1, with the traceback under --verbose.
USER_ERRORS = (ValueError, OSError, LookupError)


class _Redacted:
    """A text stream that passes everything written to it through `redact` (see `main`)."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text: str) -> int:
        self._stream.write(redact(text))
        return len(text)

    def flush(self) -> None:
        self._stream.flush()

    def __getattr__(self, name: str):  # fileno, isatty, encoding...: the real stream's
        return getattr(self._stream, name)


# Lance's errors end with the Rust source line that raised them (", /home/runner/.../writer.rs:254:9"):
# of no use to the user, and it pushes the cause off the line.
_RUST_LOCATION = re.compile(r",?\s*/\S+\.rs:\d+:\d+")


def _one_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    return _RUST_LOCATION.sub("", lines[0]) if lines else type(e).__name__


def _task_root_cause(e: BaseException) -> BaseException | None:
    """The innermost error of a failed Ray task (None for any other error).

    Ray re-raises a task's error as a RayTaskError whose text starts with the task's name
    (`ray::_features_task() (pid=...)`); the cause the user can act on (`No space left on device`)
    is its `cause`, possibly a task error of a nested task in turn. Matched by name, so the CLI
    needs no Ray import.
    """
    root = None
    while type(e).__name__.startswith("RayTaskError") and isinstance(getattr(e, "cause", None), BaseException):
        root = e = e.cause
    return root


def _context(e: BaseException) -> str:
    """What the stage was doing when it met the error (the video or table), from the notes it added."""
    notes = [str(n) for n in getattr(e, "__notes__", ()) if str(n).startswith("while ")]
    return f", {notes[0]}" if notes else ""


def _error_line(e: BaseException, with_type: bool) -> str:
    root = _task_root_cause(e)
    if root is not None:
        return f"{type(root).__name__}: {_one_line(root)} (in a Ray task{_context(e)})"
    line = f"{type(e).__name__}: {_one_line(e)}" if with_type else _one_line(e)
    return line + (f" ({_context(e)[2:]})" if _context(e) else "")


def main(argv: list[str] | None = None) -> int:
    """Run one `hyvid` command; returns its exit code (2 for a bad flag value or a missing input).

    Everything the command prints or logs goes through `cluster.settings.redact`, errors are one
    line, and a Ray the command started is stopped (with its processes) before it returns.
    """
    streams = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _Redacted(sys.stdout), _Redacted(sys.stderr)
    name = "hyvid"
    verbose = "-v" in (argv or sys.argv[1:]) or "--verbose" in (argv or sys.argv[1:])
    in_main_thread = threading.current_thread() is threading.main_thread()
    _endings.received.clear()
    sigterm = signal.signal(signal.SIGTERM, _endings.on_sigterm) if in_main_thread else None
    tracking_uri: str | None = None  # set once the server answered: the runs to close on failure live there
    database_uri: str | None = None  # set as soon as it is known: a database's own fault is named in the error
    error: BaseException | None = None
    try:
        settings = load_settings()
        parser = build_parser(settings)
        args = parser.parse_args(argv)
        verbose = args.verbose
        logs.configure(args.verbose)  # library warnings to a log file unless --verbose
        logs.set_command_line(list(sys.argv[1:] if argv is None else argv))  # the runs' hyvid.command tag
        logs.set_run_owner(ownership.process_owner())  # the runs' hyvid.owner tag, workers' included
        if not args.command:
            parser.print_help()
            return 2
        name = f"hyvid {args.command}"
        if hasattr(args, "tracking_uri"):  # a command that talks to MLflow: is the server there, before Ray
            from hyvid.pipelines import tracking

            uri = database_uri = tracking.resolve_tracking_uri(args.tracking_uri, settings)
            tracking.check_tracking_server(uri, settings.tracking_timeout_s)
            tracking_uri = uri  # a server that answers: the runs this command opens are closed there if it fails
            _endings.close_orphans(tracking_uri)
        return int(COMMANDS[args.command].run(args, settings) or 0)
    except USER_ERRORS as e:
        error = e
        if verbose:
            traceback.print_exc()
        print(f"{name}: error: {_error_line(e, with_type=False)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        error = e
        print(f"{name}: interrupted", file=sys.stderr)
        return _endings.exit_interrupted()
    except Exception as e:  # noqa: BLE001  # a library's own error (MLflow, Lance, Ray): one line, redacted
        error = e
        if verbose:
            traceback.print_exc()
        fault = _endings.database_fault(e, database_uri)
        if fault is not None:
            print(f"{name}: error: {fault}", file=sys.stderr)
            return 2
        hint = "" if verbose else " (run with --verbose for the traceback)"
        print(f"{name}: error: {_error_line(e, with_type=True)}{hint}", file=sys.stderr)
        return 1
    finally:
        try:
            # Ray first: its workers must not open or log runs after they are closed.
            connect = sys.modules.get("hyvid.cluster.connect")  # imported only by commands that use Ray
            if connect is not None:
                connect.disconnect()
            _endings.close_runs(tracking_uri, error)
        finally:
            if sigterm is not None:
                signal.signal(signal.SIGTERM, sigterm)
            logs.restore()
            sys.stdout.flush()
            sys.stderr.flush()
            sys.stdout, sys.stderr = streams


if __name__ == "__main__":
    sys.exit(main())
