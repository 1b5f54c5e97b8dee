"""The `hyvid` command line: argparse subcommands only.

Each subcommand parses its flags into a stage's config dataclass and calls the stage function;
no logic lives here. Defaults come from `cluster.settings` (ray_config.yaml's `metadata.hyvid`
block and the environment); flags override them.

Each command has a section below, delimited by `# === <command> ===` markers.
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable

from cluster.settings import Settings, load_settings

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

# name -> (help, examples, add_arguments(parser, settings), run(args, settings) -> exit code).
# Each section below registers its command as:
#   COMMANDS["extract"] = ("help line", "examples", _extract_args, _extract_run)
COMMANDS: dict[str, tuple[str, str, Callable, Callable]] = {}


def _common(p: argparse.ArgumentParser, s: Settings, *, store: bool = True, split: bool = True,
            experiment: bool = True, address: bool = True) -> None:
    if store:
        p.add_argument("--store", default=s.store_uri, help=f"store URI (default: {s.store_uri})")
    if split:
        p.add_argument("--split", type=int, default=1, choices=(1, 2, 3), help="official split (default 1)")
    if experiment:
        p.add_argument("--experiment", default=s.experiment, help=f"MLflow experiment (default: {s.experiment})")
    if address:
        p.add_argument("--address", default=s.ray_address, help="Ray cluster address (default: start a local Ray)")


# === synth ===
# === extract ===
# === train-cnn ===
# === features ===
# === query ===
# === train ===
# === hybrid ===
# === report ===
# === predict ===
# === run/demo ===
# === jobs ===


def build_parser(settings: Settings | None = None) -> argparse.ArgumentParser:
    settings = settings or load_settings()
    parser = argparse.ArgumentParser(
        prog="hyvid",
        description="Hybrid deep learning framework for video classification on Ray, Lance and MLflow.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (help_, examples, add_args, _) in COMMANDS.items():
        p = sub.add_parser(
            name, help=help_, description=help_, epilog=("examples:\n" + examples) if examples else None,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        add_args(p, settings)
    return parser


def main(argv: list[str] | None = None) -> int:
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
    _, _, _, run = COMMANDS[args.command]
    try:
        return int(run(args, settings) or 0)
    except (ValueError, FileNotFoundError) as e:
        print(f"hyvid {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
