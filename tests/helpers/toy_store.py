"""A learnable toy feature store: `videos`, `classes` and `frame_features` tables, no videos behind them.

Used by the train tests, the remote-tracking and cluster tests, and benchmarks/train_parallel.py.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from hyvid.store.lance_io import append_rows
from hyvid.store.tables import CLASSES, FOLD_ALL, FRAME_FEATURES_NAME, VIDEOS, frame_features_schema

SPATIAL_DIM, MOTION_DIM = 16, 12
N_POSITIONS = 8
# Classes 0 and 1 differ in their mean features; classes 2 and 3 are made of the same two
# patterns in opposite ORDER across time, so their frame averages are identically distributed:
# only a temporal model can tell them apart.
STATIC_CLASSES = ("static_a", "static_b")
ORDER_CLASSES = ("order_pq", "order_qp")
CLASS_NAMES = STATIC_CLASSES + ORDER_CLASSES
TEST_GROUPS = ("g01", "g02")
TRAIN_GROUPS = ("g03", "g04", "g05", "g06", "g07")  # store.splits carves one of them for val


def build_toy_store(store_uri: str, videos_per_group: int = 4, noise: float = 0.6, seed: int = 0) -> dict:
    """Write `videos`, `classes` and `frame_features` of a learnable toy dataset (split 1 only).

    Returns the class names and the indices of the order-only classes.
    """
    rng = np.random.default_rng(seed)
    dims = {"spatial": SPATIAL_DIM, "motion": MOTION_DIM}
    # Non-negative like post-ReLU fc1 activations (the χ² kernels of the SVM baselines need that).
    protos = {s: rng.uniform(0.0, 2.0, size=(len(STATIC_CLASSES), d)) for s, d in dims.items()}
    p = {s: rng.uniform(0.0, 2.0, size=d) for s, d in dims.items()}
    q = {s: rng.uniform(0.0, 2.0, size=d) for s, d in dims.items()}
    half = N_POSITIONS // 2

    videos, feats = [], {k: [] for k in ("video_id", "position", "frame_index", "timestamp", "spatial", "motion")}
    for label, name in enumerate(CLASS_NAMES):
        for group in TEST_GROUPS + TRAIN_GROUPS:
            for c in range(videos_per_group):
                vid = f"{name}/v_{name}_{group}_c{c:02d}"
                subset = "test" if group in TEST_GROUPS else "train"
                videos.append(
                    {
                        "video_id": vid, "path": f"/toy/{vid}.avi", "class_name": name, "label": label,
                        "labels": [label], "group": group, "splits": [{"split": 1, "subset": subset}],
                        "n_frames": N_POSITIONS * 3, "fps": 25.0, "width": 32, "height": 24,
                        "n_positions": N_POSITIONS, "clamped": False, "status": "ok", "error": None,
                        "extract_config": "toy", "flow_bound": 20.0, "node_id": "toy",
                    }
                )
                for s, d in dims.items():
                    if label < len(STATIC_CLASSES):
                        mean = np.tile(protos[s][label], (N_POSITIONS, 1))
                    else:
                        first, second = (p[s], q[s]) if name == "order_pq" else (q[s], p[s])
                        mean = np.vstack([np.tile(first, (half, 1)), np.tile(second, (N_POSITIONS - half, 1))])
                    x = np.maximum(mean + rng.normal(0.0, noise, size=(N_POSITIONS, d)), 0.0)
                    feats[s].extend(x.astype(np.float32))
                for pos in range(N_POSITIONS):
                    feats["video_id"].append(vid)
                    feats["position"].append(pos)
                    feats["frame_index"].append(pos * 3)
                    feats["timestamp"].append(pos * 3 / 25.0)

    append_rows(store_uri, VIDEOS.name, pa.Table.from_pylist(videos, schema=VIDEOS.schema))
    append_rows(
        store_uri, CLASSES.name,
        pa.table({"label": pa.array(range(len(CLASS_NAMES)), pa.int32()), "class_name": list(CLASS_NAMES)},
                 schema=CLASSES.schema),
    )
    schema = frame_features_schema(SPATIAL_DIM, MOTION_DIM)
    n = len(feats["video_id"])
    table = pa.table(
        {
            "video_id": feats["video_id"],
            "position": pa.array(feats["position"], pa.int32()),
            "frame_index": pa.array(feats["frame_index"], pa.int32()),
            "timestamp": pa.array(feats["timestamp"], pa.float64()),
            "split": pa.array([1] * n, pa.int32()),
            "fold": pa.array([FOLD_ALL] * n, pa.int32()),
            "spatial": pa.FixedSizeListArray.from_arrays(np.concatenate(feats["spatial"]), SPATIAL_DIM),
            "motion": pa.FixedSizeListArray.from_arrays(np.concatenate(feats["motion"]), MOTION_DIM),
            "spatial_run_id": ["toy"] * n,
            "motion_run_id": ["toy"] * n,
        },
        schema=schema,
    )
    append_rows(store_uri, FRAME_FEATURES_NAME, table)
    return {"class_names": list(CLASS_NAMES), "order_labels": [CLASS_NAMES.index(c) for c in ORDER_CLASSES]}
