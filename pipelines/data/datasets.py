"""Dataset discovery: which videos a dataset holds, their classes, groups and split membership.

Two inputs are understood:
- a **UCF-101 layout** directory, `ROOT/<Class>/<video>.avi` plus `ROOT/ucfTrainTestlist/`
  (`classInd.txt`, `trainlist0{1,2,3}.txt`, `testlist0{1,2,3}.txt`). The official files' quirks are
  handled: classInd is 1-based (labels here are 0-based), test lists carry no label (the class
  comes from the folder), and list paths are matched to files case-insensitively because the
  official lists and folders disagree on case (`HandstandPushups` vs `HandStandPushups`).
  Without `ucfTrainTestlist/` the class folders still define the classes, and no split is known.
- a **manifest CSV** with a header `path,labels[,subset][,group]`: paths relative to the CSV's
  folder (or absolute), `labels` one class name or several joined by `|` (multi-label), `subset`
  `train`/`test` (membership of split 1), `group` (videos of one group never straddle train/val).
  In a multi-label manifest (one where some video has several labels) an empty `labels` cell is a
  video with no positive label, as CCV has: `labels=()` and `label=NO_LABEL` (-1). A manifest
  whose videos all have one label or none is single-label, and an empty cell there is refused.
"""
from __future__ import annotations

import csv
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".avi", ".mp4", ".mkv", ".mov", ".webm", ".mpg", ".mpeg", ".m4v", ".wmv", ".flv")
UCF_LISTS_DIR = "ucfTrainTestlist"
UCF_SPLITS = (1, 2, 3)
OFFICIAL_SUBSETS = ("train", "test")
_GROUP_RE = re.compile(r"_(g\d+)_", re.IGNORECASE)
# `label` of a video with no positive label (multi-label data only; the store's `label` column
# holds -1 for "unknown" too, and every reader that takes first labels skips negative ones).
NO_LABEL = -1


@dataclass(frozen=True)
class VideoEntry:
    """One video of a dataset, before extraction."""

    video_id: str  # relative path without extension (with it beside a same-stem file), POSIX separators
    path: str  # absolute path of the file
    class_name: str  # "A|B" for multi-label videos
    label: int  # first (or only) class index, 0-based; NO_LABEL for a multi-label video with none
    labels: tuple[int, ...]  # () for a multi-label video with no positive label
    group: str  # UCF-101 "gXX"; the manifest's group; else the video_id itself
    splits: tuple[tuple[int, str], ...] = ()  # ((split, "train" | "test"), ...)


@dataclass(frozen=True)
class Dataset:
    """The videos of a dataset and its classes (index = label)."""

    source: str
    kind: str  # "ucf101" | "manifest"
    classes: tuple[str, ...]
    entries: tuple[VideoEntry, ...] = field(default_factory=tuple)

    @property
    def multi_label(self) -> bool:
        """Multi-label data: some video has several labels, or none (CCV)."""
        return any(len(e.labels) != 1 for e in self.entries)


def group_of(name: str, default: str) -> str:
    """UCF-101 group of a file name (`v_X_g08_c01` -> `g08`), or `default` when it has none."""
    m = _GROUP_RE.search(name)
    return m.group(1).lower() if m else default


def load_dataset(source: str | os.PathLike) -> Dataset:
    """Discover a dataset: a manifest CSV file or a UCF-101-layout directory."""
    p = Path(source)
    if p.is_file() and p.suffix.lower() == ".csv":
        return load_manifest(p)
    if p.is_dir():
        return load_ucf101(p)
    if p.is_file():
        raise ValueError(f"{source}: a dataset is a UCF-101-layout directory or a manifest .csv file")
    raise FileNotFoundError(f"dataset {str(source)!r} does not exist")


# --- UCF-101 -------------------------------------------------------------------------------------


def _read_lines(path: Path) -> list[str]:
    with open(path, encoding="utf-8-sig") as f:  # utf-8-sig: tolerate a BOM
        return [ln.strip() for ln in f if ln.strip()]


def _read_class_ind(path: Path) -> list[str]:
    """classInd.txt: `<1-based index> <ClassName>` per line -> class names in label order."""
    by_index: dict[int, str] = {}
    for n, line in enumerate(_read_lines(path), 1):
        parts = line.split()
        if len(parts) != 2 or not parts[0].isdigit():
            raise ValueError(f"{path}:{n}: expected '<index> <ClassName>', got {line!r}")
        by_index[int(parts[0])] = parts[1]
    expected = list(range(1, len(by_index) + 1))
    if sorted(by_index) != expected:
        raise ValueError(f"{path}: class indices must run 1..{len(by_index)} (1-based), got {sorted(by_index)}")
    return [by_index[i] for i in expected]


def load_ucf101(root: str | os.PathLike) -> Dataset:
    """Discover a UCF-101-layout dataset (see the module docstring for the quirks handled)."""
    root = Path(root).resolve()
    class_dirs = sorted(
        d for d in root.iterdir() if d.is_dir() and d.name != UCF_LISTS_DIR and not d.name.startswith("."))
    lists = root / UCF_LISTS_DIR
    class_ind = lists / "classInd.txt"
    if class_ind.exists():
        classes = _read_class_ind(class_ind)
    else:
        log.warning("%s has no %s/classInd.txt: classes are the sorted folder names and no split is known",
                    root, UCF_LISTS_DIR)
        classes = [d.name for d in class_dirs]
    label_of = {c.lower(): i for i, c in enumerate(classes)}

    # Files on disk, keyed case-insensitively by relative path: the lists' spelling may differ.
    files: dict[str, tuple[str, Path, int]] = {}
    unknown_dirs = []
    for d in class_dirs:
        if d.name.lower() not in label_of:
            unknown_dirs.append(d.name)
            continue
        for f in sorted(d.iterdir()):
            if f.is_file() and f.suffix.lower() in VIDEO_EXTENSIONS:
                rel = f"{d.name}/{f.name}"
                if rel.lower() in files:
                    # Case variants (V_Run_G01_C01.avi beside v_Run_g01_c01.avi, or Walk/ beside walk/):
                    # the lists match names case-insensitively, so which file a line means is unknowable.
                    raise ValueError(
                        f"{root}: {files[rel.lower()][0]!r} and {rel!r} differ only in case; the split lists "
                        "match names case-insensitively, so rename or remove one of them")
                files[rel.lower()] = (rel, f, label_of[d.name.lower()])
    if unknown_dirs:
        log.warning("%s: folders not in classInd.txt are ignored: %s", root, ", ".join(unknown_dirs[:10]))
    if not files:
        raise ValueError(
            f"{root}: no video files found in class folders (expected ROOT/<Class>/<video>.avi, "
            f"extensions {', '.join(VIDEO_EXTENSIONS)})"
        )

    membership: dict[str, list[tuple[int, str]]] = {k: [] for k in files}
    missing: list[str] = []
    for split in UCF_SPLITS:
        for subset in OFFICIAL_SUBSETS:
            lst = lists / f"{subset}list0{split}.txt"
            if not lst.exists():
                continue
            for line in _read_lines(lst):
                # trainlists: "<Class>/<file> <1-based label>"; testlists: "<Class>/<file>" only.
                rel = line.split()[0].replace("\\", "/")
                key = rel.lower()
                if key in files:
                    membership[key].append((split, subset))
                else:
                    missing.append(rel)
    if missing:
        log.warning("%d listed video(s) are not on disk under %s (first: %s)", len(missing), root, missing[:3])
    for key, member in membership.items():
        for split in UCF_SPLITS:
            if {(split, "train"), (split, "test")} <= set(member):
                # A test video that was also trained on would inflate every test number of the split.
                raise ValueError(f"{root}: {files[key][0]!r} is in both trainlist0{split}.txt and "
                                 f"testlist0{split}.txt; a video belongs to one subset of a split")

    ids = _video_ids([rel for rel, _, _ in files.values()])
    entries = []
    for key, (rel, f, label) in files.items():
        vid = ids[rel]
        entries.append(
            VideoEntry(
                video_id=vid,
                path=str(f),
                class_name=classes[label],
                label=label,
                labels=(label,),
                group=group_of(f.stem, vid),
                splits=tuple(sorted(set(membership[key]))),
            )
        )
    entries.sort(key=lambda e: e.video_id)
    return Dataset(str(root), "ucf101", tuple(classes), tuple(entries))


def _video_ids(rels: list[str]) -> dict[str, str]:
    """Video id of each file (relative POSIX path): the path without its extension, unless another
    file of the folder has the same stem (`x.avi` beside `x.mp4`); then both keep their extension,
    so no two files share an id. Stems are compared case-insensitively, as the split lists are."""
    by_stem: dict[str, list[str]] = {}
    for rel in rels:
        by_stem.setdefault(str(PurePosixPath(rel).with_suffix("")).lower(), []).append(rel)
    ids: dict[str, str] = {}
    for same in by_stem.values():
        if len(same) > 1:
            log.warning("same-stem files keep their extension in their video ids: %s", ", ".join(same))
        for rel in same:
            ids[rel] = rel if len(same) > 1 else str(PurePosixPath(rel).with_suffix(""))
    owner: dict[str, str] = {}
    for rel, vid in ids.items():  # e.g. `x.avi.mp4` (id x.avi) beside x.avi and x.mp4
        other = owner.setdefault(vid.lower(), rel)
        if other != rel:
            raise ValueError(f"{other!r} and {rel!r} would get the same video id {vid!r}; rename one of them")
    return ids


# --- manifest CSV --------------------------------------------------------------------------------


def _video_id_for(path: Path, base: Path) -> str:
    try:
        rel = path.relative_to(base)
    except ValueError:  # outside the CSV's folder: the absolute path, minus its anchor
        rel = Path(*path.parts[1:])
    return str(PurePosixPath(*rel.parts).with_suffix(""))


def load_manifest(csv_path: str | os.PathLike) -> Dataset:
    """Discover the videos listed in a manifest CSV (`path,labels[,subset][,group]`)."""
    csv_path = Path(csv_path).resolve()
    try:
        rows = _manifest_rows(csv_path)
    except UnicodeDecodeError as e:
        raise ValueError(f"{csv_path}: not UTF-8 text (byte {e.start}: {e.reason}); save the manifest as "
                         "UTF-8") from None
    return _manifest_dataset(csv_path, rows)


def _manifest_rows(csv_path: Path) -> list:
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        try:
            return _read_manifest_rows(csv_path, reader)
        except csv.Error as e:  # csv's own message names neither the file nor the line
            raise ValueError(f"{csv_path}:{reader.line_num}: unreadable CSV ({e})") from None


def _read_manifest_rows(csv_path: Path, reader: csv.DictReader) -> list:
    header = [h.strip() for h in (reader.fieldnames or [])]
    missing_cols = {"path", "labels"} - set(header)
    if missing_cols:
        raise ValueError(
            f"{csv_path}: the header must have columns path,labels[,subset][,group]; "
            f"missing {sorted(missing_cols)} (got {header})"
        )
    rows = []
    for n, raw in enumerate(reader, 2):
        if None in raw:  # DictReader files the fields beyond the header under the key None
            raise ValueError(f"{csv_path}:{n}: {len(header) + len(raw[None])} fields but the header has "
                             f"{len(header)} ({','.join(header)}); quote a value that holds a comma")
        row = {(k or "").strip(): (v or "").strip() for k, v in raw.items()}
        if any("\x00" in v for v in row.values()):  # Python 3.11's csv passes NUL bytes through as text
            raise ValueError(f"{csv_path}:{n}: a NUL byte in the row; the manifest must be plain UTF-8 text")
        if not row.get("path"):
            raise ValueError(f"{csv_path}:{n}: empty path")
        names = [c.strip() for c in row.get("labels", "").split("|") if c.strip()]
        subset = row.get("subset", "").lower()
        if subset and subset not in OFFICIAL_SUBSETS:
            raise ValueError(f"{csv_path}:{n}: subset must be train or test, got {row['subset']!r}")
        rows.append((n, row, names, subset))
    return rows


def _manifest_dataset(csv_path: Path, rows: list) -> Dataset:
    base = csv_path.parent
    if not rows:
        raise ValueError(f"{csv_path}: the manifest lists no videos")
    if not any(len(names) > 1 for _, _, names, _ in rows):
        # Single-label data: every video needs its class (only multi-label data has label-less videos).
        for n, row, names, _ in rows:
            if not names:
                raise ValueError(f"{csv_path}:{n}: no label for {row['path']!r}; a single-label manifest "
                                 "needs one per video (empty cells are allowed when some video has several)")
    if not any(names for _, _, names, _ in rows):
        raise ValueError(f"{csv_path}: no video has a label; give each video's classes in the labels column")

    classes = sorted({c for _, _, names, _ in rows for c in names})
    # Labels that differ only in case ("Archery", "archery") are refused rather than folded: which
    # spelling wins would be a guess, and two classes the user meant as one would halve each one's data.
    folded: dict[str, str] = {}
    for c in classes:
        if c.casefold() in folded:
            raise ValueError(f"{csv_path}: labels {folded[c.casefold()]!r} and {c!r} differ only in case; "
                             "spell each class one way")
        folded[c.casefold()] = c
    label_of = {c: i for i, c in enumerate(classes)}
    entries, seen = [], {}
    for n, row, names, subset in rows:
        p = Path(row["path"])
        p = p if p.is_absolute() else base / p
        try:
            p = p.resolve()
        except (RuntimeError, OSError):  # a symlink loop: kept as listed, so extract records it as failed
            p = Path(os.path.abspath(p))
        vid = _video_id_for(p, base)
        if vid in seen:
            raise ValueError(f"{csv_path}:{n}: video {vid!r} is listed twice (first on line {seen[vid]})")
        seen[vid] = n
        labels = tuple(dict.fromkeys(label_of[c] for c in names))  # dedupe, keep order
        entries.append(
            VideoEntry(
                video_id=vid,
                path=str(p),
                class_name="|".join(classes[i] for i in labels),
                label=labels[0] if labels else NO_LABEL,
                labels=labels,
                group=row.get("group") or group_of(p.stem, vid),
                splits=((1, subset),) if subset else (),
            )
        )
    entries.sort(key=lambda e: e.video_id)
    return Dataset(str(csv_path), "manifest", tuple(classes), tuple(entries))
