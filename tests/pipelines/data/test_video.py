"""Decoding, sampling, optical flow, quantization and clip encodings on real tiny videos."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
from helpers.videos import SQUARE, moving_square_frames, write_bad_files, write_video

from hyvid.pipelines.data.video import (
    FLOW_METHODS,
    VideoError,
    compute_flows,
    decode_video,
    dequantize_flow,
    extract_clip_arrays,
    quantize_flow,
    sample_positions,
    stored_shape,
)
from hyvid.store.clips import decode_flow_stack, decode_frame, encode_flow_stack, encode_frame
from hyvid.store.tables import CLIPS, FLOW_BOUND

STEP = 2 * FLOW_BOUND / 255


def _square_mask(n: int, dx: int, dy: int, i: int, w: int = 64, h: int = 48) -> np.ndarray:
    """Pixels of the square in frame i (inner part, away from its edges)."""
    x = 4 + (dx * i) % (w - SQUARE - 8)
    y = 4 + (dy * i) % (h - SQUARE - 8)
    m = np.zeros((h, w), bool)
    m[y + 3:y + SQUARE - 3, x + 3:x + SQUARE - 3] = True
    return m


@pytest.mark.parametrize("method", FLOW_METHODS)
@pytest.mark.parametrize("dx,dy", [(2, 0), (-2, 0), (0, 2)])
def test_flow_sign_follows_motion(method, dx, dy):
    frames = moving_square_frames(2, dx=dx, dy=dy, seed=1)
    if dx < 0:  # start at the right so the square does not wrap around
        frames = moving_square_frames(12, dx=2, seed=1)[::-1][:2]
    gray = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]
    flow = compute_flows(gray, method)
    assert flow.shape == (1, 48, 64, 2) and flow.dtype == np.float32
    start = 11 if dx < 0 else 0
    mask = _square_mask(2, 2 if dx < 0 else dx, dy, start)
    fx, fy = flow[0, ..., 0][mask].mean(), flow[0, ..., 1][mask].mean()
    assert np.sign(fx) == np.sign(dx) or dx == 0
    assert np.sign(fy) == np.sign(dy) or dy == 0
    main, other = (fx, fy) if dx else (fy, fx)
    assert abs(main) > 1.0 and abs(other) < 0.5 * abs(main), (method, fx, fy)


def test_clip_stacks_hold_x_then_y_channels_with_right_sign(tmp_path):
    path = write_video(tmp_path / "right.avi", moving_square_frames(18, dx=2, seed=2))
    ca = extract_clip_arrays(str(path), n_positions=3, stack=4, size=48)
    flow = dequantize_flow(ca.flow_stacks)  # [P, 2L, H, W]
    moving = (np.abs(flow[:, 0::2]) > 1.0)
    assert moving.any()
    assert flow[:, 0::2][moving].mean() > 1.0  # x channels: rightward is positive
    assert abs(flow[:, 1::2][moving].mean()) < 0.5  # y channels: no vertical motion


def test_quantization_round_trip_within_one_step():
    rng = np.random.default_rng(0)
    flow = rng.uniform(-1.5 * FLOW_BOUND, 1.5 * FLOW_BOUND, (4, 16, 20, 2)).astype(np.float32)
    q = quantize_flow(flow)
    assert q.dtype == np.uint8 and q.shape == flow.shape
    back = dequantize_flow(q)
    err = np.abs(back - np.clip(flow, -FLOW_BOUND, FLOW_BOUND))
    assert err.max() <= STEP / 2 + 1e-5  # rounding: half a step at most
    edges = quantize_flow(np.array([0.0, FLOW_BOUND, -FLOW_BOUND, 1e9, -1e9], np.float32))
    assert edges.tolist() == [128, 255, 0, 255, 0]
    # monotonic in the flow
    ramp = quantize_flow(np.linspace(-FLOW_BOUND, FLOW_BOUND, 1001, dtype=np.float32))
    assert (np.diff(ramp.astype(int)) >= 0).all() and ramp[0] == 0 and ramp[-1] == 255


def test_sample_positions_uniform_and_clamped():
    s = sample_positions(100, 25, 10)
    assert len(s.frame_indices) == 25 and not s.clamped
    assert s.frame_indices[0] == 0 and s.frame_indices[-1] == 100 - 1 - 10
    assert (np.diff(s.frame_indices) > 0).all()
    # a stack of L flows starting at p uses flows p..p+L-1, i.e. frames p..p+L
    assert (s.flow_indices == s.frame_indices[:, None] + np.arange(10)).all()
    assert s.flow_indices.max() <= 100 - 2

    short = sample_positions(20, 25, 10)  # fewer than frames + L: positions repeat
    assert short.clamped and len(short.frame_indices) == 25 and short.flow_indices.max() <= 18
    tiny = sample_positions(5, 25, 10)  # shorter than one stack: the last flow repeats
    assert tiny.clamped and tiny.flow_indices.max() == 3 and (tiny.frame_indices == 0).all()
    with pytest.raises(ValueError, match="at least 2 frames"):
        sample_positions(1, 25, 10)


def test_stored_shape_keeps_aspect():
    assert stored_shape(320, 240, 128) == (128, 171)
    assert stored_shape(240, 320, 128) == (171, 128)
    assert stored_shape(64, 48, 48) == (48, 64)


def test_extract_clip_arrays_shapes_and_timestamps(tmp_path):
    path = write_video(tmp_path / "v.avi", moving_square_frames(30), fps=10.0)
    ca = extract_clip_arrays(str(path), n_positions=5, stack=3, size=24)
    assert ca.frames.shape == (5, 24, 32, 3) and ca.frames.dtype == np.uint8
    assert ca.flow_stacks.shape == (5, 6, 24, 32) and ca.flow_stacks.dtype == np.uint8
    assert ca.n_frames == 30 and (ca.width, ca.height) == (64, 48) and not ca.clamped
    assert ca.fps == pytest.approx(10.0)
    np.testing.assert_allclose(ca.timestamps, ca.frame_indices / 10.0)
    assert ca.frame_indices[-1] == 30 - 1 - 3

    short = extract_clip_arrays(str(write_video(tmp_path / "s.avi", moving_square_frames(4))), 5, 3, 24)
    assert short.clamped and short.flow_stacks.shape == (4, 6, 24, 32)  # 5 positions asked, 4 frames


def test_decode_returns_rgb(tmp_path):
    frames = [np.zeros((48, 64, 3), np.uint8) for _ in range(3)]
    for f in frames:
        f[..., 0] = 220  # red in RGB
    got, fps = decode_video(str(write_video(tmp_path / "red.avi", frames)))
    assert got.shape == (3, 48, 64, 3) and fps == pytest.approx(25.0)
    assert got[..., 0].mean() > 180 and got[..., 2].mean() < 60


def test_absurd_frame_rate_is_replaced_with_a_warning(tmp_path, caplog):
    # A broken timestamp table reports 0.625 fps, which would put the 30th frame at 46 s.
    path = write_video(tmp_path / "slow.avi", moving_square_frames(30), fps=0.625)
    assert cv2.VideoCapture(str(path)).get(cv2.CAP_PROP_FPS) == pytest.approx(0.625)  # the file really says so
    with caplog.at_level("WARNING"):
        ca = extract_clip_arrays(str(path), n_positions=5, stack=3, size=24)
    assert ca.fps == 25.0 and ca.timestamps.max() < 30 / 25.0
    assert "reports 0.625 fps, outside 1..1000" in caplog.text


@pytest.mark.parametrize("kind,reason", [
    ("empty", "empty"), ("text", "cannot be opened as a video"), ("truncated", "truncated"),
    ("one_frame", "only 1 frame"),
])
def test_bad_files_raise_video_error_naming_file_and_reason(tmp_path, kind, reason):
    path = write_bad_files(tmp_path, "v_Bad")[kind]
    with pytest.raises(VideoError) as e:
        extract_clip_arrays(str(path), 5, 3, 24)
    assert str(path) in str(e.value) and reason in e.value.reason


def test_missing_file_is_a_video_error(tmp_path):
    with pytest.raises(VideoError, match="does not exist"):
        decode_video(str(tmp_path / "nope.avi"))


def test_frame_and_flow_encodings_round_trip():
    from skimage import data

    frame = np.ascontiguousarray(cv2.resize(data.astronaut(), (171, 128), interpolation=cv2.INTER_AREA))
    back = decode_frame(encode_frame(frame))
    assert back.shape == frame.shape and back.dtype == np.uint8
    psnr = 10 * np.log10(255**2 / np.mean((back.astype(float) - frame) ** 2))
    assert psnr > 30  # a photo at the stored size; JPEG q90
    stack = np.random.default_rng(0).integers(0, 256, (6, 24, 32), dtype=np.uint8)
    blob = encode_flow_stack(stack)
    np.testing.assert_array_equal(decode_flow_stack(blob, 3, 24, 32), stack)  # lossless
    np.testing.assert_array_equal(decode_flow_stack(stack.tobytes(), 3, 24, 32), stack)  # raw accepted
    with pytest.raises(ValueError, match="check stack/height/width"):
        decode_flow_stack(blob, 3, 24, 31)
    assert CLIPS.schema.metadata[b"frame_encoding"] == b"jpeg"
    assert float(CLIPS.schema.metadata[b"flow_bound"]) == FLOW_BOUND
