"""What every `hyvid` sub-command shares: the command table, the common flags and default formatting.

Nothing here imports a stage module: `hyvid --help` imports this and the command modules only.
"""
from __future__ import annotations

import argparse
import math
import os
from types import SimpleNamespace
from typing import Any, Callable, NamedTuple, Sequence

from hyvid.cluster.settings import Settings
from hyvid.models.registry import SPLITS


class Command(NamedTuple):
    """One sub-command: its help line, examples, flags, what it runs and (for tests) its config."""

    help: str
    examples: str
    add_arguments: Callable[[argparse.ArgumentParser, Settings], None]
    run: Callable[[argparse.Namespace, Settings], int]
    # args -> the stage's config dataclass, without running anything; None for commands with no config.
    config: Callable[[argparse.Namespace, Settings], Any] | None = None


# name -> Command in the order `hyvid --help` lists them. The command modules add their entries when
# imported, so this module needs none of them (no import cycle with `submit`, which reads the table).
COMMANDS: dict[str, Command] = {}


def command(name: str, help: str, examples: str | Sequence[str], add_arguments: Callable, run: Callable,
            config: Callable | None = None) -> None:
    """Register a sub-command; `examples` is the help's examples block, or its command lines."""
    if not isinstance(examples, str):
        examples = "".join(f"  {e}\n" for e in examples)
    COMMANDS[name] = Command(help, examples, add_arguments, run, config)


def defaults(cls: type | str) -> SimpleNamespace:
    """A config dataclass's field defaults by field name (MISSING for required fields).

    Read from the class, not an instance, so configs with required or checked fields need no dummy values.
    A "module:Class" string is read from the module's source without importing it (`_static`): what
    `--help` uses, so that it never imports a stage.
    """
    from hyvid.pipelines.cli._static import config_defaults, dataclass_defaults

    return config_defaults(cls) if isinstance(cls, str) else SimpleNamespace(**dataclass_defaults(cls))


def shown(value: Any) -> str:
    """A default written the way a user types it on the command line (tuples as a,b,c; floats short)."""
    if isinstance(value, (tuple, list)):
        return ",".join(shown(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def given(**values: Any) -> dict[str, Any]:
    """The keyword arguments the user gave: None means "flag absent", so the config's default applies.

    Never truthiness: 0, "" and False are values the config must see (and may reject).
    """
    return {k: v for k, v in values.items() if v is not None}


# The largest integer any flag takes: counts and sizes beyond it only overflow later (numpy, Lance
# filters, OpenCV) with a traceback. Stages set their own, tighter bounds.
MAX_INT = 2**31 - 1


def integer(text: str) -> int:
    """argparse type of every `type=int` flag: an integer within ±MAX_INT."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if abs(value) > MAX_INT:
        raise argparse.ArgumentTypeError(f"{text} is too large (at most {MAX_INT})")
    return value


def finite_float(text: str) -> float:
    """argparse type of every `type=float` flag: a finite number (NaN and inf are refused here,
    not found out epochs later as a NaN loss or a hung placement)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text} is not a finite number")
    return value


# The checked converters argparse applies in place of the built-in types (see `register_types`).
_CHECKED = {int: integer, float: finite_float}


def register_types(parser: argparse.ArgumentParser) -> None:
    """Make `type=int` and `type=float` flags of `parser` (and its groups) use `integer` and `finite_float`."""
    for kind, checked in _CHECKED.items():
        parser.register("type", kind, checked)


def csv(text: str | None, flag: str = "the list") -> tuple[str, ...] | None:
    """`a,b,c` -> ("a", "b", "c"); None stays None (flag absent). A list with no item (`,`) is an error."""
    if text is None:
        return None
    items = tuple(x.strip() for x in text.split(",") if x.strip())
    if not items:
        raise ValueError(f"{flag} {text!r}: expected comma-separated names, got none")
    return items


def csv_numbers(text: str | None, flag: str, kind: type = float, example: str = "0,1e-4") -> tuple | None:
    """`1,2,3` -> numbers of `kind` (finite, within ±MAX_INT); None stays None. A bad item names the
    flag and the expected form."""
    if text is None:
        return None
    convert = _CHECKED.get(kind, kind)
    try:
        return tuple(convert(x) for x in csv(text, flag))
    except (ValueError, argparse.ArgumentTypeError) as e:
        raise ValueError(f"{flag} {text!r}: expected comma-separated numbers such as {example} ({e})") from None


def store_arg(text: str) -> str:
    """argparse type of --store: a URI, or a local folder (existing or not), never a regular file."""
    if "://" not in text and os.path.isfile(text):
        raise argparse.ArgumentTypeError(f"{text!r} is a file; a store is a folder (or s3://, gs://, az:// URI)")
    return text


def common(p: argparse.ArgumentParser, s: Settings, cfg: type | str | None = None, *, store: bool = True,
           split: bool = True, experiment: bool = True, address: bool = True) -> None:
    """The flags most stages share; settings give the store, experiment and address defaults.

    `cfg` is the stage's config dataclass, whose `split` default the help states (needed with split=True).
    """
    if store:
        p.add_argument("--store", default=s.store_uri, type=store_arg, help=f"store URI (default: {s.store_uri})")
    if split:
        d = defaults(cfg)
        # A config over several splits (`run`) defaults --split to its `splits`.
        default = d.split if hasattr(d, "split") else d.splits
        p.add_argument("--split", type=int, choices=SPLITS, help=f"official split (default {shown(default)})")
    if experiment:
        p.add_argument("--experiment", default=s.experiment, help=f"MLflow experiment (default: {s.experiment})")
        tracking_arg(p)
    if address:
        p.add_argument("--address", default=s.ray_address,
                       help=f"Ray cluster address (default: {s.ray_address or 'start a local Ray'})")


def register_args(p: argparse.ArgumentParser, what: str, several: bool = True) -> None:
    """--register NAME and --alias A: register what a stage logs in MLflow's model registry, with
    tags, a description and a model card (`inference.registration`)."""
    suffix = "; with several models each is NAME-<model>" if several else ""
    p.add_argument("--register", metavar="NAME",
                   help=f"register {what} as MLflow model NAME{suffix}: tags (data, split, metrics with intervals, "
                        "Lance versions), a description and a README.md model card; then load it as "
                        "models:/NAME/<version>")
    p.add_argument("--alias", metavar="A", help="with --register: point alias A at the new version (models:/NAME@A)")


def print_registered(registered: dict[str, str]) -> None:
    """One line per registered model: `registered fusion as models:/NAME/3`."""
    for model, uri in registered.items():
        print(f"registered {model} as {uri}")


def tracking_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else ray_config.yaml, else sqlite:///mlflow.db)")


def tracking_uri(args: argparse.Namespace, s: Settings) -> str:
    """The tracking URI a stage logs to: flag > MLFLOW_TRACKING_URI > settings > sqlite:///mlflow.db."""
    from hyvid.pipelines import tracking

    return tracking.resolve_tracking_uri(args.tracking_uri, s)


def settings_workers(s: Settings, stage: str) -> int | None:
    """`metadata.hyvid.workers.<stage>` from the settings, or None so the stage's own default applies."""
    n = s.workers.get(stage)
    return None if n is None else int(n)


def per_node(counts: dict[str, int]) -> str:
    """`node=count` pairs with short node ids, for the extract/features summaries."""
    return ", ".join(f"{n[:12]}={k}" for n, k in sorted(counts.items()))


# The flags that say where a command works (store, split, MLflow experiment and server, Ray
# cluster): a "next:" hint repeats each one the user gave, so following it stays on the same data.
CONTEXT_FLAGS = ("store", "split", "experiment", "tracking_uri", "address")
GIVEN = "_hyvid_given"  # the namespace attribute listing the flags given on the command line (see cli._CommandParser)


def given_flags(args: argparse.Namespace) -> frozenset[str]:
    """The dests of the flags that were on the command line (not defaults)."""
    return frozenset(getattr(args, GIVEN, ()))


def next_command(args: argparse.Namespace, s: Settings, target: str, *positional: str, **values: Any) -> str:
    """`next: hyvid TARGET ...`: `positional`, then `values` (flag dest -> value; None leaves it out),
    then every context flag the user gave that TARGET takes too, with the same value."""
    import shlex

    probe = argparse.ArgumentParser(add_help=False)
    register_types(probe)
    COMMANDS[target].add_arguments(probe, s)
    takes = {a.dest: a.option_strings[0] for a in probe._actions if a.option_strings}
    flags = dict(values)
    for dest in CONTEXT_FLAGS:
        if dest in given_flags(args) and dest in takes and dest not in flags:
            flags[dest] = getattr(args, dest, None)
    parts = ["hyvid", target, *positional]
    for dest, value in flags.items():
        if value is not None and dest in takes:
            parts += [takes[dest], str(value)]
    return "next: " + " ".join(shlex.quote(p) for p in parts)
