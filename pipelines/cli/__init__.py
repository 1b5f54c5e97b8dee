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
import logging
import sys
from typing import Callable

from hyvid.cluster.settings import Settings, load_settings

# Importing a command module registers its commands; `hyvid --help` lists them in this (pipeline) order.
from hyvid.pipelines.cli import data, cnn, fit, results, store, chain, jobs  # noqa: F401  # isort: skip
from hyvid.pipelines.cli._common import COMMANDS, Command

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

    def _complete(self) -> None:
        if self._add_arguments is not None:
            add, self._add_arguments = self._add_arguments, None
            add(self)

    def parse_known_args(self, args=None, namespace=None):
        self._complete()
        return super().parse_known_args(args, namespace)

    def format_help(self) -> str:
        self._complete()
        return super().format_help()

    def format_usage(self) -> str:
        self._complete()
        return super().format_usage()

    def get_default(self, dest: str):
        self._complete()
        return super().get_default(dest)


def build_parser(settings: Settings | None = None) -> argparse.ArgumentParser:
    """The `hyvid` argument parser; each sub-command's flags (and stage imports) come when it is parsed."""
    settings = settings or load_settings()
    parser = argparse.ArgumentParser(
        prog="hyvid",
        description="Hybrid deep learning framework for video classification on Ray, Lance and MLflow.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_CommandParser)
    for name, cmd in COMMANDS.items():
        sub.add_parser(
            name, help=cmd.help, description=cmd.help,
            epilog=("examples:\n" + cmd.examples) if cmd.examples else None,
            formatter_class=argparse.RawDescriptionHelpFormatter,
            add_arguments=lambda p, add=cmd.add_arguments: add(p, settings),
        )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one `hyvid` command; returns its exit code (2 for a bad flag value or a missing input)."""
    settings = load_settings()
    parser = build_parser(settings)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.command:
        parser.print_help()
        return 2
    try:
        return int(COMMANDS[args.command].run(args, settings) or 0)
    except (ValueError, FileNotFoundError) as e:
        print(f"hyvid {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
