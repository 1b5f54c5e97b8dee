"""The two stream CNNs: pretrained backbone, shapes, input scaling, flow flips, score averaging."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from skimage import data

from hyvid.models.cnn import (
    MotionCNN,
    SpatialCNN,
    efficientnet_lite0,
    flip_flow_stack,
    flip_frames,
    motion_input,
    random_crop_flip,
    spatial_input,
    two_stream_scores,
    video_scores,
)

EGYPTIAN_CAT = 285
IMAGENET_CATS = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat


@pytest.fixture(scope="module")
def spatial() -> SpatialCNN:
    torch.manual_seed(0)
    return SpatialCNN(num_classes=5, feature_dim=1024).eval()


def _chelsea(size: int) -> np.ndarray:
    return cv2.resize(data.chelsea(), (size, size), interpolation=cv2.INTER_AREA)[None]


def test_backbone_is_imagenet_trained():
    """The package's full classifier ranks skimage's cat photo as a cat, at 224 px."""
    net = efficientnet_lite0(pretrained=True).eval()
    with torch.no_grad():
        probs = net(spatial_input(_chelsea(224))).softmax(1)[0]
    assert int(probs.argmax()) == EGYPTIAN_CAT
    assert float(probs[list(IMAGENET_CATS)].sum()) > 0.8
    # A random-init net has no idea: the weights, not the architecture, know the cat.
    rand = efficientnet_lite0(pretrained=False).eval()
    with torch.no_grad():
        assert float(rand(spatial_input(_chelsea(224))).softmax(1)[0, list(IMAGENET_CATS)].sum()) < 0.5


def test_spatial_cnn_backbone_is_the_pretrained_one(spatial):
    """SpatialCNN's pooled features + the ImageNet classifier still see the cat at the stored 112 px."""
    full = efficientnet_lite0(pretrained=True).eval()
    with torch.no_grad():
        logits = full._fc(spatial.pooled(spatial_input(_chelsea(112))))
    assert int(logits.argmax()) in IMAGENET_CATS


def test_spatial_features_shapes(spatial):
    frames = np.random.default_rng(0).integers(0, 256, (3, 112, 112, 3), dtype=np.uint8)
    with torch.no_grad():
        x = spatial_input(frames)
        feats, logits = spatial.features_and_logits(x)
        assert torch.equal(spatial.features(x), feats)
    assert x.dtype == torch.float32 and x.shape == (3, 3, 112, 112)
    assert feats.shape == (3, 1024) and feats.dtype == torch.float32
    assert float(feats.min()) >= 0.0 and float(feats.max()) > 0.0
    assert logits.shape == (3, 5)


def test_spatial_finetune_head_freezes_backbone(spatial):
    trainable = {n for n, p in spatial.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("_head.") for n in trainable)
    spatial.train()
    assert not spatial.backbone.training and spatial._head.training  # BN statistics stay frozen
    spatial.eval()
    full = SpatialCNN(num_classes=5, pretrained=False, finetune="all")
    assert any(n.startswith("backbone.") and p.requires_grad for n, p in full.named_parameters())
    with pytest.raises(ValueError, match="finetune"):
        SpatialCNN(num_classes=5, finetune="some")


def test_spatial_head_learns_backbone_does_not(spatial):
    net = SpatialCNN(num_classes=2, feature_dim=16, pretrained=False).train()
    before = {k: v.clone() for k, v in net.backbone.state_dict().items()}
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.1)
    x = spatial_input(np.random.default_rng(1).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8))
    loss = torch.nn.functional.cross_entropy(net(x), torch.tensor([0, 1, 0, 1]))
    loss.backward()
    opt.step()
    after = net.backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # incl. BN running stats
    assert net._head.classifier.weight.grad is not None


def test_motion_cnn_shapes():
    net = MotionCNN(num_classes=4, stack=10).eval()
    stacks = np.full((2, 20, 112, 112), 128, np.uint8)
    with torch.no_grad():
        feats, logits = net.features_and_logits(motion_input(stacks))
    assert feats.shape == (2, 1024) and float(feats.min()) >= 0.0
    assert logits.shape == (2, 4)
    # Any stored size works (adaptive pool), e.g. a 64x48 video's flows.
    with torch.no_grad():
        assert net(motion_input(np.full((1, 20, 48, 64), 128, np.uint8))).shape == (1, 4)
    with pytest.raises(ValueError, match="20 flow channels"):
        net(motion_input(np.full((1, 4, 32, 32), 128, np.uint8)))


def test_motion_cnn_input_pool_is_a_2x2_average_before_conv1():
    torch.manual_seed(0)
    pooled_net = MotionCNN(num_classes=3, stack=2, input_pool=2).eval()
    full_net = MotionCNN(num_classes=3, stack=2, input_pool=1).eval()
    full_net.load_state_dict(pooled_net.state_dict())  # same weights: pooling has none
    x = torch.randn(2, 4, 40, 56)
    with torch.no_grad():
        via_pool = pooled_net.pooled(x)
        by_hand = full_net.pooled(torch.nn.functional.avg_pool2d(x, 2))
        assert torch.allclose(via_pool, by_hand, atol=1e-6)
        assert not torch.allclose(via_pool, full_net.pooled(x), atol=1e-3)
    with pytest.raises(ValueError, match="input_pool"):
        MotionCNN(num_classes=3, stack=2, input_pool=0)


def test_motion_input_scaling():
    q = np.zeros((1, 4, 2, 2), np.uint8)
    q[0, 0] = 255
    q[0, 1] = 0
    q[0, 2] = 128
    q[0, 3, 0, 0] = 255
    x = motion_input(q, subtract_mean=False)
    assert torch.allclose(x[0, 0], torch.ones(2, 2)) and torch.allclose(x[0, 1], -torch.ones(2, 2))
    assert abs(float(x[0, 2, 0, 0])) < 0.01  # 128 is (almost) zero flow
    xm = motion_input(q, subtract_mean=True)
    assert torch.allclose(xm.mean(dim=(2, 3)), torch.zeros(1, 4), atol=1e-6)
    assert float(xm[0, 3, 0, 0]) > 0 > float(xm[0, 3, 1, 1])


def test_flip_flow_stack_negates_x_only_and_is_involution():
    rng = np.random.default_rng(0)
    stack = rng.integers(0, 256, (6, 5, 7), dtype=np.uint8)  # L=3
    f = flip_flow_stack(stack)
    assert f.dtype == np.uint8 and f.shape == stack.shape
    for c in range(6):
        mirrored = stack[c, :, ::-1]
        expect = 255 - mirrored if c % 2 == 0 else mirrored
        np.testing.assert_array_equal(f[c], expect)
    np.testing.assert_array_equal(flip_flow_stack(f), stack)
    # As flow: x negates (up to quantization), y keeps its sign.
    fx = motion_input(f[None], subtract_mean=False)[0]
    sx = motion_input(stack[None], subtract_mean=False)[0]
    assert torch.allclose(fx[0], -sx[0].flip(-1), atol=1 / 127.5 + 1e-6)
    assert torch.equal(fx[1], sx[1].flip(-1))
    # Batched input flips every stack.
    np.testing.assert_array_equal(flip_flow_stack(stack[None])[0], f)


def test_random_crop_flip():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (8, 12, 16, 3), dtype=np.uint8)
    out = random_crop_flip(frames, (10, 14), rng, "frames")
    assert out.shape == (8, 10, 14, 3)
    stacks = rng.integers(0, 256, (8, 4, 12, 16), dtype=np.uint8)
    out = random_crop_flip(stacks, (10, 14), rng, "flow")
    assert out.shape == (8, 4, 10, 14)
    # Each output is a crop of its input, either plain or flow-flipped.
    for src, dst in zip(stacks, out, strict=True):
        found = False
        for cand in (src, flip_flow_stack(src)):
            for y in range(3):
                for x in range(3):
                    found |= np.array_equal(cand[:, y:y + 10, x:x + 14], dst)
        assert found


def test_random_crop_flip_whole_frame():
    """A crop side of 0 keeps the whole frame: every output is its input, plain or flipped."""
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, (16, 12, 16, 3), dtype=np.uint8)
    out = random_crop_flip(frames, (0, 0), rng, "frames")
    assert out.shape == frames.shape
    flipped = [not np.array_equal(o, f) for o, f in zip(out, frames, strict=True)]
    for o, f, was_flipped in zip(out, frames, flipped, strict=True):
        np.testing.assert_array_equal(o, flip_frames(f) if was_flipped else f)
    assert 0 < sum(flipped) < len(frames)  # the flip is still a coin toss
    stacks = rng.integers(0, 256, (4, 4, 12, 16), dtype=np.uint8)
    assert random_crop_flip(stacks, (0, 0), rng, "flow").shape == stacks.shape


def test_two_stream_and_video_scores():
    s = torch.tensor([[0.8, 0.2], [0.6, 0.4]])
    m = torch.tensor([[0.2, 0.8], [0.0, 1.0]])
    ts = two_stream_scores(s, m)
    assert torch.allclose(ts, torch.tensor([[0.5, 0.5], [0.3, 0.7]]))
    assert torch.allclose(ts.sum(1), torch.ones(2))
    assert torch.allclose(video_scores(s), torch.tensor([0.7, 0.3]))
    np.testing.assert_allclose(two_stream_scores(s.numpy(), m.numpy()), ts.numpy())
    with pytest.raises(ValueError, match="differ in shape"):
        two_stream_scores(s, m[:, :1])


def test_cli_train_cnn_and_features_flags(tmp_path, capsys):
    from hyvid.pipelines.cli import build_parser, main

    args = build_parser().parse_args(["train-cnn", "--store", "s", "--stream", "motion", "--epochs", "2",
                                      "--no-gpu", "--finetune", "all"])
    assert (args.stream, args.epochs, args.use_gpu, args.finetune) == ("motion", 2, False, "all")
    assert build_parser().parse_args(["train-cnn"]).use_gpu is None  # auto
    assert main(["features", "--store", str(tmp_path), "--run", "only-one-id"]) == 2
    assert "SPATIAL_RUN_ID,MOTION_RUN_ID" in capsys.readouterr().err
