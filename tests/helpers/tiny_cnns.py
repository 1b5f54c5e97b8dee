"""A real Lance store of tiny extracted videos and two logged CNNs (untrained, seeded), as train-cnn
logs them: what `features` needs, without the minutes of CNN training. Used by the test-views tests
and the features interrupt test."""
from __future__ import annotations

from pathlib import Path

CLASSES = ("left", "right")
STACK, CROP = 2, 16


def extract_tiny_store(tmp_path: Path, groups: int = 3, frames: int = 2) -> str:
    """`groups` tiny videos per class (a square moving left or right; the last group is test),
    extracted into `<tmp_path>/store` without Ray; the store's URI."""
    from helpers.videos import moving_square_frames, write_manifest, write_video
    from hyvid.pipelines.extract import ExtractConfig, extract

    rows = []
    for c, name in enumerate(CLASSES):
        for g in range(1, groups + 1):
            path = write_video(tmp_path / "videos" / f"v_{name}_g{g:02d}_c01.avi",
                               moving_square_frames(10, dx=2 if c else -2, w=48, h=32, seed=10 * c + g))
            rows.append({"path": str(path), "labels": name,
                         "subset": "test" if g == groups else "train", "group": f"g{g:02d}"})
    store = str(tmp_path / "store")
    ex = extract(ExtractConfig(dataset=str(write_manifest(tmp_path / "manifest.csv", rows)), store_uri=store,
                               frames=frames, stack=STACK, size=24, use_ray=False, progress=False))
    assert ex.ok == len(rows)
    return store


def build_store_and_cnns(tmp_path: Path, tracking_uri: str, experiment: str, groups: int = 3,
                         frames: int = 2) -> tuple[str, dict[str, str]]:
    """`groups` videos per class extracted (the last group is test) and a spatial and a motion CNN
    (weights large enough to tell inputs apart) logged as train-cnn runs of split 1 with a 16-px
    training crop; (store, {"spatial": run id, "motion": run id})."""
    import torch

    from hyvid.models import registry as R
    from hyvid.models.cnn import MotionCNN, SpatialCNN
    from hyvid.pipelines import tracking
    from hyvid.pipelines.inference import packaging

    store = extract_tiny_store(tmp_path, groups, frames)
    tracking.setup(tracking_uri, experiment)
    torch.manual_seed(0)
    runs = {}
    for name, model, stream in ((R.SPATIAL_CNN, SpatialCNN(2, feature_dim=8, pretrained=False), "spatial"),
                                (R.MOTION_CNN, MotionCNN(2, stack=STACK, feature_dim=8, widths=(4,) * 5), "motion")):
        model.input_crop = CROP  # what train-cnn records: the test views are crops of this size
        with torch.no_grad():  # freshly initialised nets give nearly the same features for every input
            for p in model.parameters():
                if p.dim() > 1:
                    p.normal_(0, 0.3)
        with tracking.start_run(name, tracking.STAGE_TRAIN_CNN, 1, store) as run:
            packaging.log_cnn(model, name, stream, STACK, CLASSES, False)
            runs[stream] = run.info.run_id
    return store, runs
