"""`hyvid query`, `hyvid similar` and `hyvid doctor`: read stored features, search them, check the store."""
from __future__ import annotations

import argparse
import sys

from hyvid.cluster.settings import Settings
from hyvid.models.registry import SPLITS
from hyvid.pipelines.cli._common import command, common, given, tracking_arg
from hyvid.pipelines.cli._static import constant


def _positions(text: str | None) -> tuple[int, int | None]:
    """`A:B` -> [A, B); `A:` / `:B` open-ended; `A` -> just position A."""
    if not text:
        return 0, None
    try:
        if ":" not in text:
            return int(text), int(text) + 1
        a, b = text.split(":", 1)
        return (int(a) if a else 0), (int(b) if b else None)
    except ValueError:
        raise ValueError(f"--frames {text!r}: expected A:B, A:, :B or A (sampled positions)") from None


def _print_rows(table, vector_cols: tuple[str, ...], n_values: int = 4) -> None:
    """A readable terminal table: scalar columns, then the first values of each vector + its dim."""
    cols = [c for c in table.column_names if c not in vector_cols and not c.endswith("_run_id")]
    header = list(cols)
    cells = [[("%.3f" % v if isinstance(v, float) else str(v)) for v in (r[c] for c in cols)]
             for r in table.to_pylist()]
    for vc in (c for c in vector_cols if c in table.column_names):
        header.append(f"{vc}[{table.schema.field(vc).type.list_size}]")
        for row, vec in zip(cells, table.column(vc).to_pylist(), strict=True):
            row.append(" ".join(f"{x:+.3f}" for x in vec[:n_values]) + (" ..." if len(vec) > n_values else ""))
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(header)]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    for r in cells:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)))


def _emit(table, fmt: str, out: str | None, vector_cols: tuple[str, ...]) -> None:
    """Print or write rows as a readable table, JSON, or a Parquet file."""
    import json

    if fmt == "parquet":
        import pyarrow.parquet as pq

        if not out:
            raise ValueError("--format parquet writes a file: give --out FILE.parquet")
        pq.write_table(table, out)
        print(f"wrote {table.num_rows} rows to {out}")
    elif fmt == "json":
        text = json.dumps(table.to_pylist())
        if out:
            with open(out, "w") as f:
                f.write(text)
        else:
            print(text)
    else:
        _print_rows(table, vector_cols)


def _query_args(p: argparse.ArgumentParser, s: Settings) -> None:
    common(p, s, split=False, experiment=False, address=False)
    p.add_argument("--video", required=True, help="video id (quotes and any characters are fine)")
    p.add_argument("--frames", help="sampled positions A:B (half-open), A:, :B or A (default: all)")
    p.add_argument("--format", choices=("table", "json", "parquet"), default="table",
                   help="table: readable summary; json: full rows; parquet: write --out")
    p.add_argument("--out", help="output file (required for parquet; optional for json)")


def _query_run(args: argparse.Namespace, s: Settings) -> int:
    from hyvid.models.registry import STREAMS
    from hyvid.store.feature_store import FeatureStore

    start, stop = _positions(args.frames)
    rows = FeatureStore(args.store, s.resolved_storage_options()).frame_features(args.video, start, stop)
    if rows.num_rows == 0:
        raise ValueError(f"no frame_features rows for video {args.video!r} positions {args.frames or 'all'} "
                         f"in {args.store!r}; list ids with FeatureStore(...).videos()")
    _emit(rows, args.format, args.out, STREAMS)
    return 0


def _similar_args(p: argparse.ArgumentParser, s: Settings) -> None:
    from hyvid.models.registry import STREAMS
    from hyvid.pipelines.cli._static import signature_defaults

    # No config dataclass: the method's defaults, read from source (importing the store loads Lance).
    d = signature_defaults("hyvid.store.feature_store:FeatureStore.similar")
    common(p, s, split=False, experiment=False, address=False)
    p.add_argument("--video", required=True, help="video id of the query frame")
    p.add_argument("--frame", type=int, required=True,
                   help="sampled position of the query frame (as in query --frames)")
    p.add_argument("-k", "--k", type=int,
                   help=f"neighbours to return (default {d['k']}; the frame itself is first)")
    p.add_argument("--column", choices=STREAMS, default=d["column"],
                   help="feature stream to compare (default %(default)s)")
    p.add_argument("--format", choices=("table", "json"), default="table")


def _similar_run(args: argparse.Namespace, s: Settings) -> int:
    from hyvid.store.feature_store import FeatureStore

    fs = FeatureStore(args.store, s.resolved_storage_options())
    row = fs.frame_features(args.video, args.frame, args.frame + 1, columns=[args.column])
    if row.num_rows == 0:
        raise ValueError(f"video {args.video!r} has no stored frame at position {args.frame} in {args.store!r}")
    hits = fs.similar(row.column(args.column)[0].values.to_numpy(), column=args.column, **given(k=args.k))
    _emit(hits, args.format, None, ())
    return 0


command("query", "print one video's stored per-frame features",
        "  hyvid query --store store --video 'ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01' --frames 0:5\n"
        "  hyvid query --store store --video 'Basketball/v_Basketball_g01_c01' --format json > rows.json\n"
        "  hyvid query --store s3://bucket/store --video 'Basketball/v_Basketball_g01_c01' \\\n"
        "      --format parquet --out v.parquet\n",
        _query_args, _query_run)
command("similar", "find the stored frames nearest to one frame's features",
        "  hyvid similar --store store --video 'Basketball/v_Basketball_g01_c01' --frame 3 -k 10\n"
        "  hyvid similar --store store --video 'Basketball/v_Basketball_g01_c01' --frame 0 -k 5 \\\n"
        "      --column motion --format json\n",
        _similar_args, _similar_run)


def _videos_args(p: argparse.ArgumentParser, s: Settings) -> None:
    subsets = constant("hyvid.store.feature_store:VIDEO_SUBSETS")
    common(p, s, split=False, experiment=False, address=False)
    p.add_argument("--split", type=int, choices=SPLITS, help="only videos of this official split")
    p.add_argument("--subset", choices=subsets,
                   help="with --split: only its train, val (carved from train by group), test or trainval videos")
    p.add_argument("--class", dest="class_name", metavar="CLASS", help="only videos with this class (label)")
    p.add_argument("--status", choices=("ok", "failed", "all"), default="ok",
                   help="extracted videos (ok, the default), failed ones, or all")
    p.add_argument("--format", choices=("ids", "table", "json"), default="ids",
                   help="ids: one video id a line (for xargs, `hyvid query --video`); table: id, class, subset, "
                        "status; json: those as a list of objects")


def _videos_run(args: argparse.Namespace, s: Settings) -> int:
    import json
    import os

    from hyvid.store.feature_store import FeatureStore

    if args.subset is not None and args.split is None:
        raise ValueError(f"--subset {args.subset} needs --split (1, 2 or 3): subsets belong to a split")
    fs = FeatureStore(args.store, s.resolved_storage_options())
    t = fs.videos(split=args.split, subset=args.subset, class_name=args.class_name,
                  status=None if args.status == "all" else args.status)
    cols = [c for c in ("video_id", "class_name", "subset", "status") if c in t.column_names]
    rows = t.select(cols).to_pylist()
    try:
        if args.format == "json":
            print(json.dumps(rows))
        elif args.format == "table":
            _print_rows(t.select(cols), ())
        else:
            for r in rows:
                print(r["video_id"])
            sys.stdout.flush()
    except BrokenPipeError:  # `| head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    if not rows:
        print(f"hyvid videos: no video of {args.store!r} matches", file=sys.stderr)
    return 0


command("videos", "list a store's video ids, of one split, subset, class or status",
        ("hyvid videos --store store", "hyvid videos --store store --split 1 --subset test --class MotionUp",
         "hyvid videos --store store --status failed --format table",
         "hyvid videos --store store --split 1 --subset val | head -3 | xargs -I{} hyvid query --store store "
         "--video {} --frames 0:2"),
        _videos_args, _videos_run)


def _doctor_args(p: argparse.ArgumentParser, s: Settings) -> None:
    common(p, s, split=False, experiment=False, address=False)
    p.add_argument("--repair", action="store_true",
                   help="mend damage (remove data files no version names; take a table that cannot be opened back "
                        "to its newest readable version; drop unreadable fragments, whose videos the next "
                        "extract/features redo) and delete duplicate rows, keeping one per key (one commit per "
                        "table; fails at once while another command writes the store)")
    p.add_argument("--versions", type=int, default=5, help="commits of each table to list (default %(default)s)")
    # Talking to MLflow is what ends the runs a killed command left RUNNING (pipelines/ownership.py).
    tracking_arg(p)


def _print_report(report) -> None:
    print(f"store {report.store_uri}")
    for t in report.tables.values():
        dup = f"{t.duplicate_rows} duplicate rows" + (f" (e.g. {t.duplicate_examples})" if t.duplicate_rows else "")
        orphans = f"; {t.orphan_rows} orphan rows (videos unknown, e.g. {t.orphan_examples})" if t.orphan_rows else ""
        print(f"  {t.name}: {t.rows} rows, {t.keys} keys, {dup}{orphans}")
        for v in t.lineage:
            print(f"    v{v.version} {v.timestamp} {v.operation} -> {v.rows} rows")
    for name, (holder, stale) in report.leases.items():
        print(f"  lease {name}: {'stale, ' if stale else ''}held by {holder.describe()}")


def _print_damage(report, store_arg: str) -> None:
    for table, damage in report.damage.items():
        for line in damage.describe():
            print(f"  {table}: DAMAGED: {line}")
    if report.incomplete_videos:
        n = len(report.incomplete_videos)
        print(f"  {n} ok video(s) have lost clip rows (e.g. {', '.join(report.incomplete_videos[:3])}): "
              "the next `hyvid extract` extracts them again")


def _doctor_run(args: argparse.Namespace, s: Settings) -> int:
    from hyvid.store.doctor import diagnose, repair, repair_damage
    from hyvid.store.lance_io import canonical_store_uri

    if args.versions < 0 or args.versions > 10_000:
        raise ValueError(f"--versions must be between 0 and 10000, got {args.versions}")
    store, so = canonical_store_uri(args.store), s.resolved_storage_options()
    report = diagnose(store, so, args.versions)
    if not report.tables and not report.damage:
        raise FileNotFoundError(f"store {store!r} holds no hyvid table; check --store")
    _print_report(report)
    _print_damage(report, args.store)
    if args.repair and report.damaged:
        for line in repair_damage(store, report, so):
            print(f"repaired: {line}")
        report = diagnose(store, so, 0)
        _print_damage(report, args.store)
    if args.repair and report.duplicate_rows:
        removed = repair(store, so)
        print("repaired: removed " + ", ".join(f"{n} from {t}" for t, n in removed.items() if n))
        report = diagnose(store, so, 0)
    if report.damaged:
        print(f"damaged: {', '.join(report.damage)}: run `hyvid doctor --store {args.store} --repair`",
              file=sys.stderr)
        return 1
    if report.duplicate_rows:
        print(f"{report.duplicate_rows} duplicate rows: run `hyvid doctor --store {args.store} --repair`",
              file=sys.stderr)
        return 1
    print("no damage, no duplicate rows" + (
        f"; {report.orphan_rows} orphan rows (the next extract/features run removes orphan clips and features "
        "of videos it writes again)" if report.orphan_rows else ""))
    return 0


command("doctor", "check a store: damage, duplicate keys, orphan rows, each table's version lineage (--repair)",
        ("hyvid doctor --store store", "hyvid doctor --store s3://bucket/store --repair --versions 20"),
        _doctor_args, _doctor_run)
