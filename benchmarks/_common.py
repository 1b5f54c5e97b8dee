"""What the benchmark modules share: their command line's common flags and where results go."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def arg_parser(doc: str | None, results: str | None = None) -> argparse.ArgumentParser:
    """A parser whose --help shows the benchmark module's docstring as written; with `results` (a
    name), an --out flag defaulting to benchmarks/results/<results>.json."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    if results is not None:
        p.add_argument("--out", default=str(RESULTS_DIR / f"{results}.json"), help="where the JSON goes")
    return p


def add_scratch_args(p: argparse.ArgumentParser, workdir: str) -> None:
    """--workdir (scratch data, deleted afterwards) and --keep (keep it)."""
    p.add_argument("--workdir", default=workdir, help="scratch folder (deleted afterwards)")
    p.add_argument("--keep", action="store_true", help="keep the scratch data")


def write_json(out: str | Path, result: dict, end: str = "") -> None:
    """Write `result` as indented JSON to `out`, creating its folder."""
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(result, indent=2) + end)
