"""The torch TV-L1 solver against what it solves: OpenCV's DualTVL1 on real photo pairs, known
sub-pixel translations, and the same flow for a pair alone or in any batch."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from helpers.videos import translating_photo_frames

from hyvid.pipelines.data.tvl1 import TVL1Params, _level_sizes, median_blur, tvl1_flow

W, H = 96, 72
MARGIN = 8  # content enters the frame at the borders: no flow can be right there
VELOCITIES = [(0.6, -0.35), (1.4, 0.2), (-0.8, 0.9)]


def _pair(v, seed=0) -> tuple[np.ndarray, np.ndarray]:
    a, b = translating_photo_frames(2, v, W, H, seed=seed)
    return cv2.cvtColor(a, cv2.COLOR_RGB2GRAY), cv2.cvtColor(b, cv2.COLOR_RGB2GRAY)


def _epe(flow: np.ndarray, target) -> float:
    """Mean end-point error inside the margin; `target` a velocity or a flow field."""
    d = flow[..., MARGIN:-MARGIN, MARGIN:-MARGIN, :] - (np.asarray(target, np.float32)
                                                       if np.ndim(target) == 1 else
                                                       target[..., MARGIN:-MARGIN, MARGIN:-MARGIN, :])
    return float(np.sqrt((d ** 2).sum(-1)).mean())


@pytest.fixture(scope="module")
def pairs():
    return [_pair(v, seed=i) for i, v in enumerate(VELOCITIES)]


@pytest.fixture(scope="module")
def batched(pairs):
    i0 = np.stack([a for a, _ in pairs])
    i1 = np.stack([b for _, b in pairs])
    return i0, i1, tvl1_flow(i0, i1).numpy()


def test_agrees_with_opencv_and_recovers_the_true_motion(pairs, batched):
    cv2.setNumThreads(1)
    reference = cv2.optflow.DualTVL1OpticalFlow_create()
    flows = batched[2]
    assert flows.shape == (len(pairs), H, W, 2) and flows.dtype == np.float32
    for (a, b), v, ours in zip(pairs, VELOCITIES, flows, strict=True):
        theirs = reference.calc(a, b, None)
        assert _epe(ours, theirs) < 0.03, v  # measured 0.005-0.007 px at 160x120 and 320x240
        assert _epe(ours, v) <= max(0.15, 1.3 * _epe(theirs, v)), (v, _epe(ours, v), _epe(theirs, v))
        assert _epe(ours, v) < 0.15


def test_a_pair_gets_the_same_flow_alone_or_in_any_batch(pairs, batched):
    i0, i1, flows = batched
    alone = np.stack([tvl1_flow(a, b).numpy() for a, b in pairs])
    split = tvl1_flow(torch.from_numpy(i0), torch.from_numpy(i1), batch_pixels=1, threads=2).numpy()
    whole = tvl1_flow(i0, i1, batch_pixels=0).numpy()  # every pair in one batch, as on a GPU
    for other in (alone, split, whole):
        # Not bit for bit: sums over a batch round differently, and the stopping test may then stop
        # a pair one step apart; agreement is far below the quantisation step (0.16 px).
        assert _epe(flows, other) < 0.01
    assert np.array_equal(tvl1_flow(i0[0], i1[0]).numpy(), alone[0])  # one [H, W] pair: the same call


def test_torch_kernels_solve_as_the_opencv_ones(pairs, batched):
    """The path a GPU takes (torch median and |grad u|), run on the CPU."""
    i0, i1, flows = batched
    assert _epe(tvl1_flow(i0, i1, opencv_kernels=False).numpy(), flows) < 0.03
    x = torch.randn(3, 2, 30, 41)
    for k in (3, 5):
        assert torch.equal(median_blur(x, k, opencv=False), median_blur(x, k, opencv=True))


def test_identical_frames_give_zero_flow_and_the_pyramid_stops_at_16_px():
    a = _pair((0.0, 0.0))[0]
    assert np.abs(tvl1_flow(a, a).numpy()).max() < 1e-6
    assert _level_sizes(120, 160, TVL1Params()) == [(120, 160), (96, 128), (77, 102), (62, 82), (50, 66)]
    assert _level_sizes(24, 40, TVL1Params()) == [(24, 40), (19, 32)]


def test_bad_inputs_name_the_value():
    with pytest.raises(ValueError, match="same shape"):
        tvl1_flow(np.zeros((2, 20, 20)), np.zeros((2, 20, 21)))
    with pytest.raises(ValueError, match="at least 3x3"):
        tvl1_flow(np.zeros((1, 2, 20)), np.zeros((1, 2, 20)))
    with pytest.raises(ValueError, match="scale_step"):
        TVL1Params(scale_step=1.0)
    assert tvl1_flow(np.zeros((0, 20, 20)), np.zeros((0, 20, 20))).shape == (0, 20, 20, 2)
