"""The CNN stages' precision helpers and test views, on the CPU (bf16 autocast runs there too)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from hyvid.models.cnn import build_stream_cnn, motion_input, view_crops
from hyvid.pipelines.inference.cnn import stream_forward
from hyvid.pipelines.precision import grad_scaler, resolve_amp
from hyvid.pipelines.training.cnn_loop import iteration_milestones, train_step


def test_resolve_amp():
    assert resolve_amp("auto", "cpu") is None and resolve_amp("off", "cpu") is None
    assert resolve_amp("bf16", "cpu") is torch.bfloat16
    with pytest.raises(ValueError, match="'fp16' needs a CUDA device"):
        resolve_amp("fp16", "cpu")
    with pytest.raises(ValueError, match="amp must be one of .* got 'half'"):
        resolve_amp("half", "cpu")


def test_train_step_bf16_autocast_on_cpu():
    torch.manual_seed(0)
    model = build_stream_cnn("motion", 3, 2, feature_dim=16)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    x = motion_input(np.random.default_rng(0).integers(0, 256, (4, 4, 32, 32), dtype=np.uint8))
    y = torch.tensor([0, 1, 2, 0])
    before = [p.detach().clone() for p in model.parameters()]
    loss, logits = train_step(model, nn.CrossEntropyLoss(), opt, grad_scaler("cpu", torch.bfloat16), x, y,
                              torch.device("cpu"), torch.bfloat16)
    assert logits.dtype == torch.bfloat16  # the forward ran under autocast
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_view_crops_and_averaged_views():
    frames = np.arange(2 * 6 * 8 * 3, dtype=np.uint8).reshape(2, 6, 8, 3)
    one = view_crops(frames, (4, 4), "frames", 1)
    assert one.shape == (1, 2, 4, 4, 3)
    np.testing.assert_array_equal(one[0], frames[:, 1:5, 2:6])
    ten = view_crops(frames, (4, 4), "frames", 10)
    assert ten.shape == (10, 2, 4, 4, 3)
    np.testing.assert_array_equal(ten[1], frames[:, :4, :4])
    np.testing.assert_array_equal(ten[5], ten[0][:, :, ::-1])
    with pytest.raises(ValueError, match="test views must be one of .* got 3"):
        view_crops(frames, (4, 4), "frames", 3)
    # A CNN trained on 24-px crops is scored on centre crops of that size, averaged over views.
    model = build_stream_cnn("motion", 3, 2, feature_dim=8, crop=24).eval()
    stacks = np.random.default_rng(1).integers(0, 256, (3, 4, 32, 32), dtype=np.uint8)
    f1, p1 = stream_forward(model, stacks, motion_input, views=1)
    with torch.no_grad():
        want = model.scores(model(motion_input(stacks[:, :, 4:28, 4:28]))).numpy()
    np.testing.assert_allclose(p1, want, rtol=1e-5, atol=1e-6)
    f10, p10 = stream_forward(model, stacks, motion_input, views=10)
    assert p10.shape == p1.shape and f10.shape == f1.shape and not np.allclose(p10, p1)


def test_iteration_milestones_are_the_papers_at_its_length():
    assert iteration_milestones("spatial", 26_000) == [14_000, 20_000]
    assert iteration_milestones("motion", 300_000) == [100_000, 200_000]
    assert iteration_milestones("motion", 30) == [10, 20]


def test_amp_and_iters_flags_reach_the_stage_configs():
    from hyvid.cluster.settings import Settings
    from hyvid.pipelines.cli import COMMANDS, build_parser

    s = Settings()
    parser = build_parser(s)
    cnn = COMMANDS["train-cnn"].config(parser.parse_args(["train-cnn", "--amp", "bf16", "--iters", "50"]), s)
    assert (cnn.amp, cnn.iters) == ("bf16", 50)
    feats = COMMANDS["features"].config(parser.parse_args(["features", "--amp", "off"]), s)
    assert feats.amp == "off"
    with pytest.raises(SystemExit):  # argparse refuses a mode outside AMP_MODES
        parser.parse_args(["features", "--amp", "fp8"])
