"""Video decoding, frame sampling and optical flow: the arrays that `extract` stores and `predict` uses.

One function, `extract_clip_arrays`, turns a video file into what a clip row holds (the RGB frame
at each sampled position and the stack of L quantized flows starting there). `hyvid extract`
stores its output and `hyvid predict` feeds it to the CNNs, so a new video is prepared exactly as
the training videos were.

Conventions (measured choices are in the README, "Extraction"):
- Frames are resized so that their short side is `size` pixels (aspect ratio kept; default 128,
  which leaves room for the 112-pixel random crops the CNNs take).
- Flow is computed between consecutive frames at that stored resolution, so flow values are in
  stored pixels per frame. OpenCV's convention holds: frame[t](y, x) ~ frame[t+1](y + fy, x + fx),
  so an object moving right has positive x flow.
- Flow is clipped to ±FLOW_BOUND and mapped linearly to uint8 with rounding; zero flow is 128.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

# FFmpeg prints every damaged macroblock of a corrupt file to stderr; the reason a file fails is
# reported in VideoError instead. Read when the first capture opens, so setting it here suffices.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from hyvid.store.tables import FLOW_BOUND  # noqa: E402

log = logging.getLogger(__name__)

FLOW_METHODS = ("dis", "farneback", "tvl1", "tvl1-torch")
DEFAULT_FLOW = "dis"  # ~600 flows/s at 320x240 against Farneback's 60 and TV-L1's 1.3
# tvl1-torch (pipelines.data.tvl1) runs on a torch device: auto = CUDA when torch sees one, else the CPU.
FLOW_DEVICES = ("auto", "cpu", "cuda")
DEFAULT_FLOW_DEVICE = "auto"
DEFAULT_SIZE = 128
DEFAULT_POSITIONS = 25  # the two-stream test protocol samples 25 frames per video
DEFAULT_STACK = 10  # L: flows per stack (2L channels)
FALLBACK_FPS = 25.0  # for containers that report no frame rate
# Frame rates outside this range come from broken timestamp tables (an MP4 that reports 0.625 fps,
# so its 30th frame sits at 46 s), not from cameras: they are replaced by FALLBACK_FPS, with a warning.
FPS_RANGE = (1.0, 1000.0)

FLOW_CHUNK = 32  # flows computed in float32 at a time before quantization: bounds their memory

# DIS "fast" preset: at 128 px its end-point error on a known shift (~0.1-0.16 px) is below the
# uint8 quantization step (2*20/255 = 0.16 px), at ~5x the speed of the "medium" preset.
DIS_PRESET = cv2.DISOPTICAL_FLOW_PRESET_FAST


class FlowServiceError(RuntimeError):
    """The flow computation itself failed (a GPU flow actor died): not the video's fault, so the
    video is not recorded as failed; the extraction task fails instead."""


class VideoError(Exception):
    """A video file that cannot be extracted; the message names the file and the reason."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


# Bounds on what one video may cost (a crawl of user videos holds odd files; none may take a node down).
MIN_SIZE = 16  # stored short side: below this DIS flow has no patch to match
MAX_SIZE = 512  # stored short side: 2x the 256 px two-stream nets were trained at
# The long side is capped too: at the default size 128, 512 px keeps every aspect up to 4:1 whole,
# and bounds a clip row to 2L*128*512 flow bytes + one frame (1.4 MB raw at L=10, under the 2 MB a
# row may take even for noise that does not compress).
DEFAULT_MAX_LONG_SIDE = 512
MAX_LONG_SIDE = 2048
# Wider than 4:1 (ultra-wide 32:9 cinema is 3.6:1) is a strip, not a scene: the CNNs' square crops
# would each see a sliver of it. Such videos are failed with the reason.
DEFAULT_MAX_ASPECT = 4.0
MAX_ASPECT = 32.0
# 8K UHD: larger source frames are refused before decoding; the decoder's own buffers would cost GBs.
MAX_SOURCE_PIXELS = 7680 * 4320


def stored_shape(width: int, height: int, size: int, max_long_side: int | None = None) -> tuple[int, int]:
    """(height, width) of a frame resized so that its short side is `size` (aspect ratio kept),
    then scaled down so that its long side is at most `max_long_side` when given."""
    if width <= 0 or height <= 0:
        raise ValueError(f"frame size must be positive, got {width}x{height}")
    short, long = min(width, height), max(width, height)
    scale = size / short
    if max_long_side is not None and long * scale > max_long_side:
        scale = max_long_side / long
    h, w = max(1, int(round(height * scale))), max(1, int(round(width * scale)))
    if max_long_side is None or long * size / short <= max_long_side:
        # The short side is exactly `size` (rounding must not make it size - 1).
        h, w = (size, w) if height <= width else (h, size)
    return h, w


def resize_frame(frame: np.ndarray, size: int | None, max_long_side: int | None = None) -> np.ndarray:
    """Resize one frame to the stored size (short side = `size`, long side <= `max_long_side`);
    None keeps it as is."""
    if size is None:
        return frame
    h, w = stored_shape(frame.shape[1], frame.shape[0], size, max_long_side)
    if (h, w) == frame.shape[:2]:
        return frame
    # Shrinking by 2x or more needs INTER_AREA against aliasing (which would show up as spurious
    # flow); below 2x bilinear already averages enough and is ~6x faster than INTER_AREA.
    interp = cv2.INTER_AREA if 2 * h <= frame.shape[0] else cv2.INTER_LINEAR
    return cv2.resize(frame, (w, h), interpolation=interp)


def check_frame_size(path: str, width: int, height: int, size: int | None, max_long_side: int | None,
                     max_aspect: float | None) -> None:
    """Raise VideoError for a source frame size whose cost or shape is beyond the bounds."""
    if width <= 0 or height <= 0:
        return  # unknown until the first frame is decoded
    if width * height > MAX_SOURCE_PIXELS:
        raise VideoError(path, f"frames of {width}x{height} exceed the {MAX_SOURCE_PIXELS // 10**6} Mpx "
                               "(8K) a video may have; downscale the file first")
    aspect = max(width, height) / min(width, height)
    if max_aspect is not None and aspect > max_aspect:
        raise VideoError(path, f"aspect ratio {width}x{height} = {aspect:.1f}:1 is beyond the {max_aspect:g}:1 "
                               "limit (max_aspect); crop the video, or raise --max-aspect")
    if size is not None:
        h, w = stored_shape(width, height, size, max_long_side)
        if min(h, w) < MIN_SIZE:
            raise VideoError(path, f"{width}x{height} frames stored with a long side of at most {max_long_side} px "
                                   f"would be {w}x{h}, under the {MIN_SIZE} px optical flow needs")


def peak_bytes(n_positions: int, stack: int, size: int, max_long_side: int) -> int:
    """A bound on the arrays `extract_clip_arrays` holds for one video at these settings (bytes).

    Per stored pixel: RGB + grey of each kept frame (<= P(L+1) frames, 4 B), the quantized flows
    (<= P*L, 2 B), their stacks (P*2L) and the sampled frames (P*3).
    """
    pixels = size * max_long_side
    return n_positions * pixels * (4 * (stack + 1) + 2 * stack + 2 * stack + 3)


@dataclass(frozen=True)
class DecodedVideo:
    """Frames of one video (RGB uint8 [N, H, W, 3], possibly resized) and its source properties."""

    frames: np.ndarray
    fps: float
    width: int  # source width, before resizing
    height: int  # source height, before resizing


@dataclass
class _Scan:
    """What one pass over a video kept: frame index -> RGB frame at the stored size."""

    kept: dict[int, np.ndarray]
    n: int  # frames decoded
    declared: int  # frames the container declares (0: unknown)
    fps: float
    width: int
    height: int


def _scan(path: str, size: int | None, keep: set[int] | None, max_long_side: int | None = None,
          max_aspect: float | None = None) -> _Scan:
    """Decode every frame of `path`, keeping those in `keep` (all when None) at the stored size."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise VideoError(path, "file does not exist")
    if os.path.getsize(path) == 0:
        raise VideoError(path, "file is empty (0 bytes)")
    cap = cv2.VideoCapture(path)
    try:
        if not cap.isOpened():
            raise VideoError(path, "cannot be opened as a video (not a video file, or an unsupported codec)")
        declared = max(0, int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0))
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        width = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH) or 0)
        height = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT) or 0)
        check_frame_size(path, width, height, size, max_long_side, max_aspect)
        kept: dict[int, np.ndarray] = {}
        n = 0
        while True:
            if keep is not None and n not in keep:
                if not cap.grab():  # decodes, but skips the copy and colour conversion
                    break
                n += 1
                continue
            ok, bgr = cap.read()
            if not ok:
                break
            if n == 0 and (width <= 0 or height <= 0 or (bgr.shape[1], bgr.shape[0]) != (width, height)):
                height, width = bgr.shape[:2]
                check_frame_size(path, width, height, size, max_long_side, max_aspect)
            # Resize before the colour conversion: both are cheaper on the small frame.
            kept[n] = cv2.cvtColor(resize_frame(bgr, size, max_long_side), cv2.COLOR_BGR2RGB)
            n += 1
    finally:
        cap.release()
    return _Scan(kept, n, declared, fps, width, height)


def _validate(path: str, scan: _Scan) -> float:
    """Raise VideoError for a video that decoded badly; return its frame rate."""
    n, declared = scan.n, scan.declared
    if n == 0:
        raise VideoError(path, "no frame could be decoded (corrupt file or unsupported codec)")
    # Containers with an index declare the frame count; decoding stops early at damage. A little
    # slack covers containers whose count is estimated from the duration.
    if declared > 0 and n < declared - max(1, declared // 100):
        raise VideoError(
            path, f"truncated or corrupt: decoded only {n} of the {declared} frames its header declares"
        )
    if n == 1:
        raise VideoError(path, "has only 1 frame; optical flow needs at least 2")
    fps = scan.fps
    if not (FPS_RANGE[0] <= fps <= FPS_RANGE[1]):  # NaN fails too
        log.warning("%s reports %s fps, outside %g..%g (no or a broken timestamp table); assuming %.0f fps "
                    "for timestamps", path, f"{fps:g}" if fps else "no", *FPS_RANGE, FALLBACK_FPS)
        fps = FALLBACK_FPS
    return fps


def _decode(path: str, size: int | None) -> DecodedVideo:
    path = os.fspath(path)
    scan = _scan(path, size, None)
    fps = _validate(path, scan)
    return DecodedVideo(np.stack([scan.kept[i] for i in range(scan.n)]), fps, scan.width, scan.height)


def decode_video(path: str, size: int | None = None) -> tuple[np.ndarray, float]:
    """Decode every frame of a video with OpenCV: (RGB uint8 [N, H, W, 3], fps).

    With `size`, frames are resized on the fly so that their short side is `size` (keeps memory
    small for long videos). Raises VideoError naming the file and the reason for empty, non-video,
    truncated/corrupt and one-frame files.
    """
    v = _decode(path, size)
    return v.frames, v.fps


@dataclass(frozen=True)
class Sampling:
    """Where the clips of one video come from.

    frame_indices[p] is the source frame of position p; flow_indices[p, j] is the flow (between
    frames i and i+1) in slot j of its stack. `clamped` marks a video too short for
    n_positions + L frames, whose positions repeat or whose stacks repeat their last flow.
    """

    frame_indices: np.ndarray  # int64 [P]
    flow_indices: np.ndarray  # int64 [P, L]
    clamped: bool


def sample_positions(n_frames: int, n_positions: int = DEFAULT_POSITIONS, stack: int = DEFAULT_STACK) -> Sampling:
    """Sample `n_positions` positions uniformly, each with a stack of `stack` flows starting there.

    A video of N frames has N-1 flows; a stack of L flows starting at position p needs frames
    p..p+L, so starts are spread evenly over 0..N-1-L. Shorter videos still give n_positions
    positions: starts repeat, and stacks longer than the video repeat its last flow.
    """
    if n_frames < 2:
        raise ValueError(f"need at least 2 frames for optical flow, got n_frames={n_frames}")
    if n_positions < 1 or stack < 1:
        raise ValueError(f"n_positions and stack must be >= 1, got {n_positions} and {stack}")
    last_start = max(0, n_frames - 1 - stack)
    starts = np.floor(np.linspace(0, last_start, n_positions) + 0.5).astype(np.int64)
    flows = np.minimum(starts[:, None] + np.arange(stack)[None, :], n_frames - 2)
    clamped = n_frames < n_positions + stack
    return Sampling(starts, flows, clamped)


def _flow_fn(method: str):
    if method == "dis":
        dis = cv2.DISOpticalFlow_create(DIS_PRESET)
        return lambda a, b: dis.calc(a, b, None)
    if method == "farneback":
        # OpenCV's documented defaults (pyr_scale 0.5, 3 levels, window 15, 3 iterations, poly 5/1.2).
        return lambda a, b: cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 3, 15, 3, 5, 1.2, 0)
    if method == "tvl1":
        tvl1 = cv2.optflow.DualTVL1OpticalFlow_create()
        return lambda a, b: tvl1.calc(a, b, None)
    raise ValueError(f"unknown flow method {method!r}; choose one of {', '.join(FLOW_METHODS)}")


def check_flow_device(device: str) -> str:
    """`device` if it is one of FLOW_DEVICES, else ValueError naming it and the choices."""
    if device not in FLOW_DEVICES:
        raise ValueError(f"flow device must be one of {', '.join(FLOW_DEVICES)}, got {device!r}; "
                         f"pass --flow-device {'|'.join(FLOW_DEVICES)}")
    return device


def resolve_flow_device(device: str) -> str:
    """The torch device tvl1-torch runs on: auto is cuda when torch sees a GPU, else cpu."""
    import torch  # here, not at the top: only tvl1-torch needs torch, DIS users need not load it

    check_flow_device(device)
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("flow device 'cuda' was asked for but torch sees no CUDA GPU here; pass --flow-device "
                         "auto (the CPU where there is none) or cpu")
    return device


# Computes the flows of stacked pairs: grey uint8 I0 [K, H, W], I1 [K, H, W] -> float32 [K, H, W, 2].
FlowBatch = Callable[[np.ndarray, np.ndarray], np.ndarray]


def flow_batch_fn(method: str, device: str = DEFAULT_FLOW_DEVICE) -> FlowBatch:
    """The flow of each pair of a batch by `method`; tvl1-torch solves the batch at once on `device`."""
    if method == "tvl1-torch":
        from hyvid.pipelines.data.tvl1 import tvl1_flow

        dev = resolve_flow_device(device)
        return lambda a, b: tvl1_flow(a, b, device=dev).cpu().numpy()
    calc = _flow_fn(method)
    # DIS asserts contiguous inputs; slices of a stacked array may not be.
    return lambda a, b: np.stack([calc(np.ascontiguousarray(x), np.ascontiguousarray(y))
                                  for x, y in zip(a, b, strict=True)])


def compute_flows(
    gray_frames: np.ndarray | list[np.ndarray], method: str = "dis", indices: np.ndarray | list[int] | None = None,
    device: str = DEFAULT_FLOW_DEVICE,
) -> np.ndarray:
    """Optical flow between consecutive grayscale frames: float32 [K, H, W, 2] (x, y) in pixels/frame.

    Flow i goes from frame i to frame i+1. `indices` picks which flows to compute (default all
    N-1), so only the flows the sampled stacks need are paid for. `device` is tvl1-torch's.
    """
    n = len(gray_frames)
    if n < 2:
        raise ValueError(f"need at least 2 frames for optical flow, got {n}")
    idx = np.arange(n - 1) if indices is None else np.asarray(indices, dtype=np.int64)
    if idx.size and (idx.min() < 0 or idx.max() > n - 2):
        raise ValueError(f"flow indices must lie in 0..{n - 2} for {n} frames, got {idx.min()}..{idx.max()}")
    calc = flow_batch_fn(method, device)
    h, w = gray_frames[0].shape[:2]
    out = np.empty((len(idx), h, w, 2), np.float32)
    for a in range(0, len(idx), FLOW_CHUNK):
        chunk = idx[a:a + FLOW_CHUNK]
        out[a:a + len(chunk)] = calc(np.stack([gray_frames[i] for i in chunk]),
                                     np.stack([gray_frames[i + 1] for i in chunk]))
    return out


def quantize_flow(flow: np.ndarray, bound: float = FLOW_BOUND) -> np.ndarray:
    """Clip flow to ±bound and map it linearly to uint8 [0, 255] with rounding (zero flow -> 128).

    value = round((clip(f, -bound, bound) + bound) * 255 / (2 * bound)), rounding to nearest with
    ties to even (OpenCV's saturate_cast, whose saturation is the clip): 5-10x faster than the
    same in NumPy, which matters at ~200 flows per video.
    """
    flow = np.asarray(flow, dtype=np.float32)
    if flow.size == 0:
        return np.zeros(flow.shape, np.uint8)
    scale = 255.0 / (2.0 * bound)
    # Clip first: saturate_cast of values beyond int range (1e9) would wrap instead of saturating.
    flat = np.clip(flow, -bound, bound).reshape(-1, flow.shape[-1] if flow.ndim > 1 else 1)
    q = cv2.addWeighted(flat, scale, flat, 0.0, bound * scale, dtype=cv2.CV_8U)
    return q.reshape(flow.shape)


def dequantize_flow(q: np.ndarray, bound: float = FLOW_BOUND) -> np.ndarray:
    """Inverse of quantize_flow: uint8 -> float32 pixels/frame, within bound/255 of the clipped flow."""
    return (q.astype(np.float32) * np.float32(2.0 * bound / 255.0) - np.float32(bound)).astype(np.float32)


def stack_flows(flows_q: np.ndarray, slot_of: np.ndarray) -> np.ndarray:
    """Arrange quantized flows [K, H, W, 2] into stacks [P, 2L, H, W] with channels x0, y0, x1, y1, ...

    `slot_of[p, j]` is the row of `flows_q` for slot j of stack p.
    """
    p, length = slot_of.shape
    h, w = flows_q.shape[1:3]
    stacks = flows_q[slot_of.reshape(-1)]  # [P*L, H, W, 2]
    stacks = stacks.reshape(p, length, h, w, 2).transpose(0, 1, 4, 2, 3)  # [P, L, 2, H, W]
    return np.ascontiguousarray(stacks.reshape(p, 2 * length, h, w))


@dataclass(frozen=True)
class ClipArrays:
    """Everything stored for one video: sampled RGB frames and their flow stacks, plus provenance."""

    frames: np.ndarray  # uint8 [P, H, W, 3] RGB at the stored size
    flow_stacks: np.ndarray  # uint8 [P, 2L, H, W], channels x0, y0, x1, y1, ...; 128 = no flow
    frame_indices: np.ndarray  # int64 [P]: source frame of each position
    timestamps: np.ndarray  # float64 [P]: seconds
    fps: float
    n_frames: int  # decoded frames in the source
    width: int  # source width
    height: int  # source height
    clamped: bool  # the video had fewer than n_positions + L frames
    stack: int  # L
    flow_bound: float = FLOW_BOUND


def _needed(s: Sampling) -> set[int]:
    """Source frames a sampling reads: each position's frame and both ends of each of its flows."""
    return {int(i) for i in s.frame_indices} | {int(i) for i in s.flow_indices.ravel()} | {
        int(i) + 1 for i in s.flow_indices.ravel()}


def plan_sampling(n_frames: int, n_positions: int, stack: int) -> Sampling:
    """`sample_positions` with at most one position per frame: asking for more positions than a
    video has frames gives each frame once (and `clamped`), not thousands of repeated rows."""
    s = sample_positions(n_frames, min(n_positions, n_frames), stack)
    return Sampling(s.frame_indices, s.flow_indices, s.clamped or n_positions > n_frames)


def extract_clip_arrays(
    path: str,
    n_positions: int = DEFAULT_POSITIONS,
    stack: int = DEFAULT_STACK,
    size: int | None = DEFAULT_SIZE,
    flow_method: str = "dis",
    max_long_side: int | None = DEFAULT_MAX_LONG_SIDE,
    max_aspect: float | None = DEFAULT_MAX_ASPECT,
    flow_device: str = DEFAULT_FLOW_DEVICE,
    flow_batch: FlowBatch | None = None,
    flow_chunk: int = FLOW_CHUNK,
) -> ClipArrays:
    """Decode a video, sample positions and compute the flow stacks there (shared by extract and predict).

    Only the frames the sampled positions and their stacks read are kept, so memory depends on
    the settings (`peak_bytes`), not on the video's length. Raises VideoError for files that
    cannot be extracted (including frames beyond the size and aspect bounds), ValueError for bad
    arguments.

    The flows go `flow_chunk` pairs at a time through `flow_batch` (default: `flow_batch_fn` of
    the method on `flow_device`): extract's GPU path passes one that sends them to a flow actor.
    """
    if flow_method not in FLOW_METHODS:
        raise ValueError(f"unknown flow method {flow_method!r}; choose one of {', '.join(FLOW_METHODS)}")
    check_flow_device(flow_device)
    if flow_chunk < 1:
        raise ValueError(f"flow_chunk must be >= 1, got {flow_chunk}")
    path = os.fspath(path)
    bounds = dict(max_long_side=max_long_side, max_aspect=max_aspect)
    probe = cv2.VideoCapture(path) if os.path.exists(path) and os.path.getsize(path) > 0 else None
    declared = int(probe.get(cv2.CAP_PROP_FRAME_COUNT) or 0) if probe is not None and probe.isOpened() else 0
    if probe is not None:
        probe.release()
    # Plan from the declared length; one more pass only if the decoded length moves a position.
    keep = _needed(plan_sampling(declared, n_positions, stack)) if declared >= 2 else None
    if keep is None:  # length unknown: count first (grab only, nothing kept)
        keep = set()
        counted = _scan(path, size, keep, **bounds)
        if counted.n >= 2:
            keep = _needed(plan_sampling(counted.n, n_positions, stack))
    scan = _scan(path, size, keep, **bounds)
    fps = _validate(path, scan)
    n = scan.n
    sampling = plan_sampling(n, n_positions, stack)
    if not _needed(sampling) <= set(scan.kept):
        scan = _scan(path, size, _needed(sampling), **bounds)
        if scan.n != n or not _needed(sampling) <= set(scan.kept):
            raise VideoError(path, f"decodes to a different number of frames each time ({n}, then {scan.n})")
    needed = np.unique(sampling.flow_indices)
    gray = {i: cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for i, f in scan.kept.items()}
    calc = flow_batch or flow_batch_fn(flow_method, flow_device)
    h, w = gray[int(needed[0])].shape
    flows_q = np.empty((len(needed), h, w, 2), np.uint8)
    for a in range(0, len(needed), flow_chunk):
        chunk = needed[a:a + flow_chunk]
        flows = calc(np.stack([gray[int(i)] for i in chunk]), np.stack([gray[int(i) + 1] for i in chunk]))
        flows_q[a:a + len(chunk)] = quantize_flow(flows)
    slot_of = np.searchsorted(needed, sampling.flow_indices)
    return ClipArrays(
        frames=np.stack([scan.kept[int(i)] for i in sampling.frame_indices]),
        flow_stacks=stack_flows(flows_q, slot_of),
        frame_indices=sampling.frame_indices,
        timestamps=sampling.frame_indices.astype(np.float64) / fps,
        fps=fps,
        n_frames=n,
        width=scan.width,
        height=scan.height,
        clamped=sampling.clamped,
        stack=stack,
    )
