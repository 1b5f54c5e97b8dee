"""Benchmark: the CNN stages' loader from Lance, in clips/s with no model at all: the rate at which
`train-cnn` and `features` can be fed, i.e. the bound their CNN step on a GPU is read against
(issue 22, item 2).

On a store it makes itself (`pipelines.data.synth` videos, extracted with the default settings:
25 positions a video, 128-px short side, flow stacks of L = 10, DIS flow), for each stream
(spatial: frames; motion: flow stacks):

* train-cnn's loader, as `training.cnn_loop.cnn_fit` reads a shuffled epoch: per batch one
  `ClipsDataset.get_batch` (one Lance `take`, JPEG / zstd decoding), the random crop + flip at the
  training crop, and `stream_input` (the float tensor the CNN takes). By reader:
  `serial` (`iter_batches` without prefetch), `prefetch` (`iter_batches` as the stage runs it: one
  background thread; this is the stage's loader), and `threads_K` (K threads reading disjoint
  batches in order: what the same calls give with K readers; Lance is not fork-safe, so DataLoader
  worker processes are not an option, see `pipelines.data.clips`).
* features' loader, as `features._features_task` reads: one scan of a task's videos (16) filtered
  by id, sorted, decoded (`decode_rows`), the centre view crop (`view_crops`) and the input
  transform; K tasks at once (threads in this process standing for the stage's Ray tasks: Lance
  reads and the decoders release the GIL). `both` is the stage's scan (both streams' columns).

Each figure is the best of `--repeats` full passes over the store after one warm-up pass (the
page cache then holds the table, as on a node that has read it once); the JSON keeps every pass.
The load average before and after is recorded: on a shared machine the numbers are noisy.

    .venv/bin/python -m benchmarks.cnn_loader            # writes benchmarks/results/cnn_loader.json
    .venv/bin/python -m benchmarks.cnn_loader --quick    # a smaller store, 2 passes
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import logging
import os
import platform
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pyarrow.compute as pc
import torch

from hyvid.models.cnn import random_crop_flip, stream_input, view_crops
from hyvid.pipelines.data.clips import STREAM_COLUMNS, ClipsDataset, decode_rows, iter_batches
from hyvid.pipelines.features import FeaturesConfig
from hyvid.pipelines.train_cnn import DEFAULT_CROP, TrainCNNConfig
from hyvid.store.lance_io import open_table
from hyvid.store.tables import CLIPS

from ._common import add_scratch_args, arg_parser, write_json
from ._measure import machine

log = logging.getLogger("bench.cnn_loader")
STREAMS = ("spatial", "motion")
KIND = {"spatial": "frames", "motion": "flow"}
# The stages' own defaults, read from their configs (one home for each).
TRAIN_BATCH = TrainCNNConfig.__dataclass_fields__["batch_size"].default
VIDEOS_PER_TASK = FeaturesConfig.__dataclass_fields__["videos_per_task"].default


def get_args_parser() -> argparse.ArgumentParser:
    p = arg_parser(__doc__, "cnn_loader")
    p.add_argument("--classes", type=int, default=4, help="synthetic classes")
    p.add_argument("--videos-per-class", type=int, default=6, help="synthetic videos per class")
    p.add_argument("--batch", type=int, default=TRAIN_BATCH, help="train-cnn clips per batch (its default)")
    p.add_argument("--crop", type=int, default=DEFAULT_CROP, help="training crop side (train-cnn's default)")
    p.add_argument("--repeats", type=int, default=3, help="timed passes per measurement (best kept)")
    p.add_argument("--quick", action="store_true", help="4 classes x 2 videos, 2 passes")
    add_scratch_args(p, "/tmp/hyvid_bench_cnn_loader")
    return p


@dataclass(frozen=True)
class LoaderStore:
    """A synthetic store made for the benchmark: where it is and what its clips are."""

    store_uri: str
    labels: dict[str, int]  # every ok video -> its class index
    clips: int
    frame_hw: tuple[int, int]
    stack: int
    make_seconds: float


def make_store(workdir: Path, classes: int, videos_per_class: int, use_ray: bool = False) -> LoaderStore:
    """Synthetic videos extracted into a fresh store under `workdir` with extract's defaults.

    `use_ray=False` extracts in this process (no Ray start: the quick choice on a few cores).
    """
    from hyvid.pipelines.data.synth import SynthConfig, synth
    from hyvid.pipelines.extract import ExtractConfig, extract
    from hyvid.store.feature_store import FeatureStore

    t0 = time.perf_counter()
    shutil.rmtree(workdir, ignore_errors=True)
    data, store = workdir / "data", str(workdir / "store")
    synth(SynthConfig(out=data, classes=classes, videos_per_class=videos_per_class))
    ex = extract(ExtractConfig(dataset=str(data), store_uri=store, use_ray=use_ray, progress=False))
    if ex.ok == 0:
        raise RuntimeError(f"extract stored no video of {data}: {ex.failures[:3]}")
    videos = FeatureStore(store).videos()
    names = sorted(set(videos.column("label").to_pylist()))
    labels = {v: names.index(c) for v, c in zip(videos.column("video_id").to_pylist(),
                                                 videos.column("label").to_pylist(), strict=True)}
    probe = ClipsDataset(store, labels, "motion")
    x, _ = probe.get_batch([0])
    return LoaderStore(store, labels, len(probe), (int(x.shape[2]), int(x.shape[3])), int(x.shape[1]) // 2,
                       time.perf_counter() - t0)


def worker_counts(cores: int) -> list[int]:
    """Reader counts worth measuring on `cores` cores: 2, 4, 8, ... and the core count itself."""
    out = {cores} if cores >= 2 else set()
    k = 2
    while k < cores:
        out.add(k)
        k *= 2
    return sorted(out)


def _threaded_batches(data: ClipsDataset, indices: np.ndarray, batch_size: int, threads: int
                      ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """`iter_batches` with `threads` readers: batches in order, at most 2 per reader in flight."""
    chunks = [indices[i:i + batch_size] for i in range(0, len(indices), batch_size)]
    with cf.ThreadPoolExecutor(max_workers=threads) as pool:
        futs = [pool.submit(data.get_batch, c) for c in chunks[:2 * threads]]
        for k, c in enumerate(chunks):
            x, y = futs[k].result()
            if k + 2 * threads < len(chunks):
                futs.append(pool.submit(data.get_batch, chunks[k + 2 * threads]))
            yield x, y, c


def train_batches(data: ClipsDataset, stream: str, batch_size: int, crop: int, reader: str, seed: int = 0,
                  to: Callable[[torch.Tensor], torch.Tensor] | None = None
                  ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One shuffled epoch of train-cnn's (input, label) batches (crop + flip + `stream_input`), read by
    `reader`: "serial", "prefetch" (the stage's) or "threads_K"; `to` (e.g. a copy to the GPU) is
    applied to the inputs last. The crop and transform run in the caller's thread, as in cnn_fit."""
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(data))
    if reader in ("serial", "prefetch"):
        it = iter_batches(data, perm, batch_size, prefetch=reader == "prefetch")
    elif reader.startswith("threads_"):
        it = _threaded_batches(data, perm, batch_size, int(reader.split("_", 1)[1]))
    else:
        raise ValueError(f"reader must be serial, prefetch or threads_K, got {reader!r}")
    for x, y, _ in it:
        t = stream_input(stream, random_crop_flip(x, (crop, crop), rng, KIND[stream]))
        yield (to(t) if to is not None else t), torch.from_numpy(y)


def features_task_rows(store_uri: str, version: int, video_ids: list[str], stream: str) -> dict[str, np.ndarray]:
    """One features task's clips, as `features._features_task` reads them: its videos' rows scanned
    by id, sorted and decoded, uint8 by stream ("both": the stage's scan of both streams' columns)."""
    streams = STREAMS if stream == "both" else (stream,)
    cols = ["video_id", "position", *dict.fromkeys(c for s in streams for c in STREAM_COLUMNS[s])]
    ds = open_table(store_uri, CLIPS.name, version=version)
    rows = ds.scanner(columns=cols, filter=pc.field("video_id").isin(video_ids)).to_table()
    rows = rows.sort_by([("video_id", "ascending"), ("position", "ascending")])
    return {s: decode_rows(rows, s) for s in streams}


def task_chunks(store: LoaderStore, videos_per_task: int = VIDEOS_PER_TASK) -> list[list[str]]:
    """The store's video ids in tasks of `videos_per_task`, as the features stage groups them."""
    ids = sorted(store.labels)
    return [ids[i:i + videos_per_task] for i in range(0, len(ids), videos_per_task)]


def _features_read(store_uri: str, version: int, video_ids: list[str], stream: str, crop: int
                   ) -> list[torch.Tensor]:
    """One features task's input: `features_task_rows`, centre-cropped and transformed (no model)."""
    rows = features_task_rows(store_uri, version, video_ids, stream)
    return [stream_input(s, view_crops(x, (crop, crop), KIND[s], 1)[0]) for s, x in rows.items()]


def features_tasks(store: LoaderStore, stream: str, crop: int, tasks: int, videos_per_task: int = VIDEOS_PER_TASK
                   ) -> int:
    """Read every video's clips as the features stage's tasks do, `tasks` at once; returns the clips read."""
    ds = open_table(store.store_uri, CLIPS.name)
    chunks = task_chunks(store, videos_per_task)
    with cf.ThreadPoolExecutor(max_workers=tasks) as pool:
        outs = list(pool.map(lambda c: _features_read(store.store_uri, ds.version, c, stream, crop), chunks))
    return sum(len(o[0]) for o in outs)


def timed_passes(fn: Callable[[], int], repeats: int) -> dict:
    """clips/s of `fn` (which does one pass and returns its clip count): one warm-up, then `repeats` timed."""
    fn()
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        n = fn()
        rates.append(n / (time.perf_counter() - t0))
    return {"clips_per_s": round(max(rates), 1), "passes_clips_per_s": [round(r, 1) for r in rates], "clips": n}


def train_loader_rates(store: LoaderStore, stream: str, batch_size: int, crop: int, readers: list[str],
                       repeats: int, to: Callable[[torch.Tensor], torch.Tensor] | None = None,
                       sync: Callable[[], None] | None = None) -> dict:
    """train-cnn's loader clips/s for `stream`, by reader (see `train_batches`)."""
    data = ClipsDataset(store.store_uri, store.labels, stream)

    def one_pass(reader: str) -> int:
        n = sum(len(y) for _, y in train_batches(data, stream, batch_size, crop, reader, to=to))
        if sync is not None:
            sync()
        return n

    out = {}
    for r in readers:
        out[r] = timed_passes(lambda r=r: one_pass(r), repeats)
        log.info("train-cnn loader, %s, %s: %.1f clips/s", stream, r, out[r]["clips_per_s"])
    return out


def features_loader_rates(store: LoaderStore, stream: str, crop: int, tasks: list[int], repeats: int) -> dict:
    """features' loader clips/s for `stream` ("spatial", "motion" or "both"), by tasks at once."""
    out = {}
    for k in tasks:
        out[f"tasks_{k}"] = timed_passes(lambda k=k: features_tasks(store, stream, crop, k), repeats)
        log.info("features loader, %s, %d task(s): %.1f clips/s", stream, k, out[f"tasks_{k}"]["clips_per_s"])
    return out


def measure(store: LoaderStore, batch_size: int, crop: int, repeats: int, cores: int) -> dict:
    """Both loaders, every stream, every reader count that makes sense on `cores` cores."""
    counts = worker_counts(cores)
    readers = ["serial", "prefetch", *(f"threads_{k}" for k in counts)]
    torch.set_num_threads(cores)  # the input transform's torch ops; the stage's worker gets its CPU share
    return {
        "train_cnn": {s: train_loader_rates(store, s, batch_size, crop, readers, repeats) for s in STREAMS},
        "features": {s: features_loader_rates(store, s, crop, [1, *counts], repeats) for s in (*STREAMS, "both")},
    }


def summary(rates: dict) -> dict:
    """The headline figures: the stage's own loader (prefetch; 1 task) and the best over reader counts."""
    out = {}
    for s, by in rates["train_cnn"].items():
        out[f"train_cnn_{s}_prefetch"] = by["prefetch"]["clips_per_s"]
        out[f"train_cnn_{s}_best"] = max(v["clips_per_s"] for v in by.values())
    for s, by in rates["features"].items():
        out[f"features_{s}_1_task"] = by["tasks_1"]["clips_per_s"]
        out[f"features_{s}_best"] = max(v["clips_per_s"] for v in by.values())
    return out


def main(args: argparse.Namespace) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.quick:
        args.classes, args.videos_per_class, args.repeats = 4, 2, 2
    cores = os.cpu_count() or 1
    load_before = [round(x, 2) for x in os.getloadavg()]
    store = make_store(Path(args.workdir), args.classes, args.videos_per_class)
    log.info("store: %d videos, %d clips of %s px, stacks of L=%d (made in %.0f s)", len(store.labels), store.clips,
             store.frame_hw, store.stack, store.make_seconds)
    t0 = time.perf_counter()
    rates = measure(store, args.batch, args.crop, args.repeats, cores)
    result = {
        "benchmark": "cnn_loader",
        "videos": len(store.labels), "clips": store.clips, "frame_hw": list(store.frame_hw), "stack": store.stack,
        "batch_size": args.batch, "crop": args.crop, "videos_per_task": VIDEOS_PER_TASK, "repeats": args.repeats,
        "store_seconds": round(store.make_seconds, 1), "measure_seconds": round(time.perf_counter() - t0, 1),
        "summary_clips_per_s": summary(rates),
        **rates,
        "machine": {**machine(), "cpu_count": cores, "platform": platform.platform(), "torch": torch.__version__,
                    "loadavg_before": load_before, "loadavg_after": [round(x, 2) for x in os.getloadavg()]},
    }
    result["machine"].pop("loadavg_1_5_15")
    if not args.keep:
        shutil.rmtree(args.workdir, ignore_errors=True)
    write_json(args.out, result)
    for k, v in result["summary_clips_per_s"].items():
        log.info("%s: %.1f clips/s", k, v)
    log.info("wrote %s", args.out)
    return result


if __name__ == "__main__":
    main(get_args_parser().parse_args())
