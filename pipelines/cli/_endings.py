"""How a `hyvid` command ends: SIGTERM unwinds as an interrupt, the exit code says which signal
came, and the MLflow runs a failed or interrupted command opened are closed (`pipelines.ownership`),
as are those a killed one left behind."""
from __future__ import annotations

import logging
import os
import signal
import traceback

from hyvid.pipelines import ownership


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the command is, so it unwinds as an interrupt does: the store's leases
    released, MLflow runs ended, Ray stopped (Python's default would end the process on the spot,
    and Ray's own handler exits through `sys.exit` with a stack dump)."""


received: list[int] = []  # the signals that interrupted this command


def on_sigterm(signum, frame) -> None:
    received.append(signum)
    raise Terminated()


def exit_interrupted() -> int:
    """128 + the signal, as shells report it. The signal is remembered rather than read off the
    exception: code between the handler and `main` (Ray's `get`, a pool's cleanup) may re-raise a
    plain KeyboardInterrupt."""
    return 128 + (signal.SIGTERM if signal.SIGTERM in received else signal.SIGINT)


def database_fault(e: BaseException, tracking_uri: str | None) -> str | None:
    """The tracking database's own fault (read-only, corrupt, locked) named in one line, if that is
    what the error comes down to: MLflow reports it as an autoflush or an OperationalError."""
    if tracking_uri is None:
        return None
    from hyvid.pipelines import tracking

    return tracking.database_fault("".join(traceback.format_exception(e)), tracking_uri)


def _no_database(tracking_uri: str) -> bool:
    """A sqlite URI whose file does not exist: no run to close, and looking would create the database."""
    from hyvid.pipelines import tracking

    path = tracking.sqlite_path(tracking_uri)
    return path is not None and not os.path.exists(path)


def close_runs(tracking_uri: str | None, error: BaseException | None) -> None:
    """A command that ends on an interrupt or an error leaves none of its MLflow runs RUNNING."""
    if tracking_uri is None or error is None or _no_database(tracking_uri):
        return
    if database_fault(error, tracking_uri) is not None:
        return  # the database itself failed: closing runs in it would fail again, in more lines
    interrupted = isinstance(error, KeyboardInterrupt)
    ownership.close_owned_runs(tracking_uri, ownership.process_owner(),
                               ownership.KILLED if interrupted else ownership.FAILED,
                               "interrupted" if interrupted else f"the command failed: {type(error).__name__}")


def close_orphans(tracking_uri: str) -> None:
    """Runs left RUNNING by a killed hyvid command on this host are ended before this one adds its own."""
    if _no_database(tracking_uri):
        return
    try:
        ownership.close_orphaned_runs(tracking_uri)
    except Exception as e:  # noqa: BLE001 - the command itself reports a tracking server that fails
        logging.getLogger(__name__).debug("orphaned runs not checked: %s", e)
