"""What `predict` and `evaluate` read and print: video inputs given as files, folders or lists,
and strict JSON.

A command line names videos the way a user has them: single files, a folder of them (walked,
as a UCF-101-layout folder is), a manifest CSV (`path,labels,...`, the format `extract` reads),
or a text list of paths (one a line, as UCF-101's `testlist01.txt`; a trailing class index is
ignored).
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Iterable

from hyvid.pipelines.data.datasets import UCF_LISTS_DIR, VIDEO_EXTENSIONS, load_manifest

LIST_SUFFIXES = (".txt", ".lst", ".list")


def _walk(folder: Path) -> list[str]:
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != UCF_LISTS_DIR)
        found += [str(Path(root) / f) for f in sorted(files) if f.lower().endswith(VIDEO_EXTENSIONS)]
    if not found:
        raise ValueError(f"folder {str(folder)!r} holds no video files ({', '.join(VIDEO_EXTENSIONS)}); give video "
                         "files, a folder of them, a manifest .csv or a .txt list of paths")
    return found


def _read_list(path: Path) -> list[str]:
    # UCF-101's lists name videos relative to the dataset root, the folder above ucfTrainTestlist/.
    base = path.parent.parent if path.parent.name.lower() == UCF_LISTS_DIR.lower() else path.parent
    out = []
    for line in path.read_text(encoding="utf-8-sig").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        head, _, tail = line.rpartition(" ")
        if head and tail.isdigit() and not (base / line).exists():  # `<path> <class index>` (trainlist)
            line = head.strip()
        p = Path(line)
        out.append(str(p if p.is_absolute() else base / p))
    if not out:
        raise ValueError(f"list {str(path)!r} names no video; write one path per line")
    return out


def expand_videos(items: Iterable[str | os.PathLike]) -> list[str]:
    """Video paths from files, folders (walked, sorted), manifest CSVs and text lists, in order.

    A path that does not exist is kept as it is: classifying it gives that file's own error,
    the way a broken file does, instead of stopping the others.
    """
    out: list[str] = []
    for item in items:
        p = Path(os.fspath(item))
        if p.is_dir():
            out += _walk(p)
        elif p.is_file() and p.suffix.lower() == ".csv":
            out += [e.path for e in load_manifest(p).entries]
        elif p.is_file() and p.suffix.lower() in LIST_SUFFIXES:
            out += _read_list(p)
        else:
            out.append(str(p))
    return out


def strict(obj: Any) -> Any:
    """`obj` with every NaN or infinite float made None (JSON null), through dicts, lists and tuples."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalars
        return strict(obj.item())
    return obj


def dumps(obj: Any, **kwargs: Any) -> str:
    """Strict JSON (RFC 8259): NaN and infinities become null, never the bare `NaN` Python writes."""
    return json.dumps(strict(obj), allow_nan=False, **kwargs)
