"""Where a `hyvid` command's log records, library warnings and worker output go.

The console shows hyvid's own log lines and errors from anyone. What libraries say below ERROR
(Ray's token-auth notice and "Started a local Ray instance", MLflow's pickle and pip-requirement
warnings, Python warnings such as Lance's fork-safety one) goes to a log file instead, `HYVID_LOG`
or ~/.local/state/hyvid/hyvid.log. `--verbose` puts all of it on the console as well.

Ray workers (tasks, actors, Ray Train workers) print to their own stderr, which Ray forwards to
this console. They are other processes, so they are quietened through the environment they
inherit from the driver that starts the local Ray: no MLflow "Downloading artifacts" bars, no
Lance fork warning, MLflow at ERROR, Ray Train at WARNING (no per-epoch checkpoint lines), and
no ANSI colours in the forwarded lines when the console is not a terminal.
"""
from __future__ import annotations

import importlib.abc
import importlib.machinery
import logging
import logging.handlers
import os
import sys
import time
from pathlib import Path
from typing import Callable

LOG_ENV = "HYVID_LOG"
# The command line a `hyvid` command runs (redacted), for its MLflow runs' `hyvid.command` tag; in the
# environment so that the Ray workers it starts tag their runs with it too.
COMMAND_ENV = "HYVID_COMMAND"
# The hyvid command process that owns the MLflow runs this process (or its Ray workers) opens:
# "host:pid:start" (pipelines.ownership), so its interrupt, or the next command after a SIGKILL, closes them.
OWNER_ENV = "HYVID_RUN_OWNER"
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# Set (if the user has not) in this process's environment, so Ray workers inherit them.
QUIET_ENV = {
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",  # "Downloading artifacts" bars inside Ray tasks
    "MLFLOW_LOGGING_LEVEL": "ERROR",  # workers' MLflow (this process routes its own, see _route)
    "PYTHONWARNINGS": "ignore:lance is not fork-safe:UserWarning",
    "LANCE_LOG": "error",  # Lance's Rust-side WARN lines ("No existing dataset ... will be created")
    "HYVID_RAY_TRAIN_LOG_LEVEL": "WARNING",  # Ray Train's per-epoch lines (see ray_train_logging)
}
# Libraries that give their loggers their own console handler when imported: their records are
# sent to ours instead (right after the import, see _AfterImport).
_SELF_HANDLED = ("ray", "mlflow")


# Progress lines of long work whose output is no terminal (a log file, a CI job): an epoch, fit or
# video-count line at most this often, so a redirected log shows the work moving without flooding.
PROGRESS_EVERY_S = 10.0


class Every:
    """Says when a progress line is due: on the first call, then at most once every `seconds`."""

    def __init__(self, seconds: float = PROGRESS_EVERY_S) -> None:
        self.seconds = float(seconds)
        self._last: float | None = None

    def due(self, force: bool = False) -> bool:
        """Whether to log now (`force`: the last step, always logged); a True starts the next interval."""
        now = time.monotonic()
        if force or self._last is None or now - self._last >= self.seconds:
            self._last = now
            return True
        return False


_LINES: dict[str, Every] = {}  # per fit (or stream): when its last epoch line was logged


def _in_ray_worker() -> bool:
    """Whether this process is a Ray worker (a task, an actor, a Ray Train worker), not a driver."""
    ray = sys.modules.get("ray")
    try:
        from ray._private.worker import WORKER_MODE

        return bool(ray is not None and ray.is_initialized() and ray.get_runtime_context().worker.mode == WORKER_MODE)
    except Exception:  # noqa: BLE001 - another Ray's internals: then it is not one we know
        return False


def worker_console() -> None:
    """hyvid's INFO lines on stderr in a Ray worker, which Ray forwards to the driver's console, so
    that progress lines logged there are seen. No CLI `configure`s a worker's logging, and libraries
    leave a root handler at ERROR there (importing mlflow.pytorch does), so hyvid's records get a
    handler of their own and stop at it. A driver's logging (the CLI's, pytest's) is left alone."""
    pkg = logging.getLogger("hyvid")
    if any(getattr(h, "_hyvid_worker", False) for h in pkg.handlers) or not _in_ray_worker():
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(FORMAT))
    handler._hyvid = True  # type: ignore[attr-defined]
    handler._hyvid_worker = True  # type: ignore[attr-defined]
    pkg.addHandler(handler)
    pkg.setLevel(logging.INFO)
    pkg.propagate = False  # the library's root handler would print it a second time


def epoch_line(logger: logging.Logger, name: str, epoch: int, epochs: int, metrics: dict[str, float]) -> None:
    """`name epoch 3/30: train_loss 0.41, val_accuracy 0.812`, at most every PROGRESS_EVERY_S per
    `name` and always for the last epoch; from a worker too (`worker_console`)."""
    if _LINES.setdefault(name, Every()).due(force=epoch == epochs - 1):
        worker_console()
        shown = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items() if isinstance(v, (int, float)) and k != "epoch")
        logger.info("%s epoch %d/%d: %s", name, epoch + 1, epochs, shown)


def log_file() -> Path:
    """The file library warnings and worker notices go to when not --verbose."""
    if os.environ.get(LOG_ENV):
        return Path(os.environ[LOG_ENV]).expanduser()
    state = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    return state / "hyvid" / "hyvid.log"


def ray_train_logging():
    """A `ray.train.LoggingConfig` for a fit's RunConfig: Ray Train's own lines ("Checkpoint
    successfully created at ...", per epoch) at WARNING under a quiet `hyvid` command, else INFO."""
    from ray.train import LoggingConfig

    return LoggingConfig(log_level=os.environ.get("HYVID_RAY_TRAIN_LOG_LEVEL", "INFO"))


class _Console(logging.Filter):
    """hyvid's own records, and other libraries' from ERROR up (everything with --verbose)."""

    def __init__(self, verbose: bool) -> None:
        super().__init__()
        self.verbose = verbose

    def filter(self, record: logging.LogRecord) -> bool:
        if self.verbose or record.name == "hyvid" or record.name.startswith("hyvid."):
            return True
        return record.levelno >= logging.ERROR


class _ConsoleFormat(logging.Formatter):
    """Without --verbose, another library's record is one line on the console: its message's first
    line and, for a logged exception, that exception's type and message instead of the traceback
    (MLflow logs 80-line SQLAlchemy tracebacks at ERROR before it raises). The log file keeps all."""

    def __init__(self, verbose: bool) -> None:
        super().__init__(FORMAT)
        self.verbose = verbose

    def format(self, record: logging.LogRecord) -> str:
        if self.verbose or record.name == "hyvid" or record.name.startswith("hyvid."):
            return super().format(record)
        lines = record.getMessage().strip().splitlines() or [""]
        short = logging.makeLogRecord({**record.__dict__, "msg": lines[0], "args": None, "exc_info": None,
                                       "exc_text": None, "stack_info": None})
        text = super().format(short)
        if record.exc_info and record.exc_info[1] is not None:
            err = record.exc_info[1]
            detail = " ".join(str(err).split())[:300]
            text += f" ({type(err).__name__}: {detail}; the traceback is in {log_file()})"
        return text


class _AfterImport(importlib.abc.MetaPathFinder):
    """Calls `callback(module)` right after each module in `names` is first imported."""

    def __init__(self, names: tuple[str, ...], callback: Callable[[object], None]) -> None:
        self.pending = set(names)
        self.callback = callback

    def find_spec(self, fullname, path, target=None):
        if fullname not in self.pending:
            return None
        self.pending.discard(fullname)
        spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        run, callback = spec.loader.exec_module, self.callback

        def exec_module(module):
            run(module)
            callback(module)

        spec.loader.exec_module = exec_module  # this spec's own loader instance
        return spec


def _route(module) -> None:
    """Send a self-handled library's records to the root logger's handlers (ours)."""
    logger = logging.getLogger(module.__name__)
    for h in list(logger.handlers):
        logger.removeHandler(h)
    logger.propagate = True
    logger.setLevel(logging.INFO)  # their DEBUG is noise even with --verbose


# The environment as it was before `configure` changed it (name -> value or None), for `restore`.
_saved_env: dict[str, str | None] = {}
_saved_state: dict[str, int] = {}


def progress_bars() -> bool:
    """Whether to draw progress bars: only on a terminal (a redirected log gets none)."""
    return sys.stderr.isatty()


def _setenv(name: str, value: str) -> None:
    if name not in os.environ:
        _saved_env.setdefault(name, None)
        os.environ[name] = value


def _ours(handler: logging.Handler) -> bool:
    return bool(getattr(handler, "_hyvid", False))


def _drop_worker_console() -> None:
    pkg = logging.getLogger("hyvid")
    for h in [h for h in pkg.handlers if getattr(h, "_hyvid_worker", False)]:
        pkg.removeHandler(h)


def restore() -> None:
    """Undo `configure` (a command run in-process, by a test or a notebook, leaves nothing behind)."""
    for name, value in _saved_env.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    _saved_env.clear()
    root = logging.getLogger()
    for h in [h for h in root.handlers if _ours(h)]:
        root.removeHandler(h)
        h.close()
    logging.captureWarnings(False)
    if "root_level" in _saved_state:
        root.setLevel(_saved_state.pop("root_level"))


def set_command_line(argv: list[str]) -> None:
    """Record `hyvid ARGV...` (redacted) as this command's line for its runs (`tracking.command_line`);
    `restore` removes it."""
    import shlex

    from hyvid.cluster.settings import redact

    _saved_env.setdefault(COMMAND_ENV, os.environ.get(COMMAND_ENV))
    os.environ[COMMAND_ENV] = redact(shlex.join(["hyvid", *argv]))


def set_run_owner(owner: str) -> None:
    """Record this command process as the owner of the runs it opens (`tracking.run_tags`); `restore` removes it."""
    _saved_env.setdefault(OWNER_ENV, os.environ.get(OWNER_ENV))
    os.environ[OWNER_ENV] = owner


def configure(verbose: bool = False) -> None:
    """Set up this process's logging for one `hyvid` command (see the module doc)."""
    if not verbose:
        for name, value in QUIET_ENV.items():
            _setenv(name, value)
    if not progress_bars():
        _setenv("RAY_COLOR_PREFIX", "0")  # Ray's "(pid=...)" prefixes on forwarded lines, uncoloured
        _setenv("TQDM_DISABLE", "1")  # bars that do not choose themselves (train's, workers')
    root = logging.getLogger()
    for h in [h for h in root.handlers if _ours(h)]:  # another program's (pytest's) handlers stay
        root.removeHandler(h)
    _drop_worker_console()
    _saved_state.setdefault("root_level", root.level)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    console = logging.StreamHandler()  # writes to whatever sys.stderr is when it writes (main redacts it)
    console.setFormatter(_ConsoleFormat(verbose))
    console.addFilter(_Console(verbose))
    console._hyvid = True  # type: ignore[attr-defined]
    root.addHandler(console)
    if not verbose:
        path = log_file()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # delay: a command that logs nothing below ERROR from a library never opens the file.
            to_file = logging.handlers.RotatingFileHandler(path, maxBytes=5_000_000, backupCount=1, delay=True)
        except OSError:
            to_file = None  # a read-only home: those records are dropped, as they were filtered before
        if to_file is not None:
            to_file.setFormatter(logging.Formatter(FORMAT))
            to_file.setLevel(logging.INFO)
            to_file._hyvid = True  # type: ignore[attr-defined]
            root.addHandler(to_file)
    # Their INFO and DEBUG (SQL statements, HTTP connections, schema migrations) are noise even with --verbose.
    for name in ("urllib3", "botocore", "sqlalchemy", "alembic", "filelock", "matplotlib", "PIL", "fsspec"):
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.captureWarnings(True)  # warnings.warn -> the "py.warnings" logger -> the file (or console)
    for name in _SELF_HANDLED:
        if name in sys.modules:
            _route(sys.modules[name])
    missing = tuple(n for n in _SELF_HANDLED if n not in sys.modules)
    if missing and not any(isinstance(f, _AfterImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterImport(missing, _route))
