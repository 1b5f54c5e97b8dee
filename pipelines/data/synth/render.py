"""Rendering one synth video: its nuisance drawn from a seed, the object's path for its class,
and the frames."""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from hyvid.pipelines.data.synth.catalogue import (
    BACKGROUND_TEXTURES,
    KIND_APPEARANCE,
    KIND_NONE,
    KIND_ORDER,
    NEUTRAL_TEXTURES,
    SUB_ACTIONS,
    ClassSpec,
)
from hyvid.pipelines.data.synth.sprites import _crop, _duotone, _mask, _paste, _photo, _sprite

# Bumped whenever the same settings would render different videos, so a dataset written by an
# older hyvid is never silently reused (2: appearance objects shake in place instead of drifting).
# Not bumped for the catalogue beyond 19 classes: the first 19 render byte for byte as before
# (their draws, arithmetic and selection are untouched; tests/test_synth.py pins it), and no
# generator-2 dataset can hold a newer class, since --classes stopped at 19.
GENERATOR_VERSION = 2

_NOISE_BANK = 7  # prime, so any step from 1 to 6 visits every field before repeating
# Geometry is designed at 160x120 and scaled by the frame size (see _unit).
_REF_W, _REF_H = 160, 120
_MIN_HALF_SWING = 3  # frames out (and as many back) of the shortest sub-action
_FIRST_SUB_ACTIONS = 3  # Left, Up, Zoom: drawn where generator 2 drew them


def _unit(size: tuple[int, int]) -> float:
    return math.sqrt(size[0] * size[1] / (_REF_W * _REF_H))


def _pause_frames(stack: int, extra: int) -> int:
    # A stack starting at p holds flows p..p+L-1; it sees both sub-actions only if the pause has
    # at most L-2 still flows. Three more than L keeps a margin for the extractor's rounding.
    return stack + 3 + extra


def min_frames(stack: int) -> int:
    """Shortest --frames for which even a -20% video fits two sub-actions and the pause."""
    return math.ceil((_pause_frames(stack, 0) + 4 * _MIN_HALF_SWING + 2) / 0.8)


@dataclass(frozen=True)
class RenderedVideo:
    """Frames plus the ground truth the tests check against."""

    frames: np.ndarray  # (T, H, W, 3) uint8 RGB
    phase: np.ndarray  # (T,) int8: sub-action (1 first, 2 second) of the flow t -> t+1, else 0
    center: np.ndarray  # (T, 2) float: object centre on screen, before wrapping
    scale: np.ndarray  # (T,) float: object scale
    camera: np.ndarray  # (T, 2) float: camera offset; center + camera is the object's scene position
    rotation: np.ndarray  # (T,) float: object rotation in degrees (Rotate)
    stretch: np.ndarray  # (T,) float: extra horizontal scale (Stretch)


def _tri(n_half: int) -> np.ndarray:
    """0 -> 1 -> 0 over 2*n_half + 1 frames: a swing out and back at constant speed."""
    up = np.arange(n_half + 1, dtype=np.float64) / n_half
    return np.concatenate([up, up[-2::-1]])


@dataclass(frozen=True)
class _Nuisance:
    """Everything random about a video except its class, drawn from its seed in one fixed order.

    Drawing all of it for every class (used or not) keeps the draws aligned: with one seed, any
    two classes get the same length, start, background, drift, object crop, noise and so on.
    """

    T: int  # frames
    # background and camera
    bg_name: str
    bg_lo: np.ndarray
    bg_hi: np.ndarray
    bg_scale: float
    drift: np.ndarray  # (T, 2) camera offset per frame: a steady pan
    # the object
    obj_h: float
    aspect: float
    ellipse: bool
    crop: tuple[float, float, float]  # side fraction, x and y position of the crop in its ROI
    hflip: bool
    saturation: float
    obj_gain: float
    neutral_name: str
    nt_lo: np.ndarray
    nt_hi: np.ndarray
    contrast: float | None  # low-contrast videos: pull towards the background colour by this
    alpha_max: float
    start: np.ndarray  # (2,) scene position at frame 0
    # motion
    # appearance classes: one shared shake for all of them (axis, amplitude in px, period in frames, phase)
    shake: tuple[float, float, float, float]
    speed_factor: float  # motion classes: per-video speed and direction jitter
    angle_jitter: float
    jitter: np.ndarray  # (T,) per-frame speed factor
    halves: np.ndarray  # order classes, per sub-action (SUB_ACTIONS order): half-swing length as a fraction of T
    swing_speed: np.ndarray  # per sub-action, px/frame (Left, Up, Diagonal, Circle)
    zoom_amp: float
    rot_amp: float  # Rotate: degrees
    stretch_amp: float  # Stretch: extra width at the peak, as a fraction
    pause_extra: float  # fraction of T added to the minimal pause
    lead_frac: float  # where the sub-actions start within the free frames
    # extras
    distractor: tuple | None  # (size, texture, lo, hi, start, angle, speed)
    occluder: tuple | None  # (vertical, width fraction, position, texture, lo, hi)
    gains: np.ndarray  # (T,) brightness per frame
    noise_sigma: float
    noise_seed: int
    noise_picks: np.ndarray  # (T,) which bank field each frame uses
    noise_sign: np.ndarray  # (T,) +-1

    @classmethod
    def draw(cls, seed: int, size: tuple[int, int], frames: int, length: int | None = None) -> "_Nuisance":
        W, H = size
        u = _unit(size)
        rng = np.random.default_rng(seed)
        U = rng.uniform
        T = max(2, int(round(frames * U(0.8, 1.2))))
        if length is not None:  # a fixed length (multi-label panels share one); the draw above still aligns the rest
            T = int(length)
        t = np.arange(T, dtype=np.float64)
        bg_name = BACKGROUND_TEXTURES[rng.integers(len(BACKGROUND_TEXTURES))]
        bg_lo, bg_hi, bg_scale = U(0, 90, 3), U(150, 255, 3), U(0.45, 0.8)
        drift_a, drift_v = U(0, 2 * math.pi), U(0.0, 0.3) * u
        small, obj_small, obj_normal = U() < 0.15, U(0.22, 0.32), U(0.32, 0.55)
        aspect, ellipse = U(0.8, 1.25), U() < 0.5
        crop, hflip = (U(0.5, 0.9), U(), U()), U() < 0.5
        saturation, obj_gain = U(0.75, 1.25), U(0.85, 1.15)
        neutral_name = NEUTRAL_TEXTURES[rng.integers(len(NEUTRAL_TEXTURES))]
        nt_lo, nt_hi = U(0, 110, 3), U(140, 255, 3)
        low_contrast, contrast, alpha_low = U() < 0.15, U(0.5, 0.75), U(0.85, 0.95)
        start = np.array([U(0, W), U(0, H)])
        shake = (U(0, 2 * math.pi), U(2.0, 4.0) * u, U(6.0, 10.0), U(0, 2 * math.pi))
        speed_factor, angle_jitter = U(0.85, 1.15), math.radians(rng.normal(0, 5))
        jit_amp, jit_period, jit_phase = U(0.05, 0.2), U(12, 30), U(0, 2 * math.pi)
        # Drawn per sub-action (not per slot): with one seed both classes of an order pair play
        # the very same two swings, only in the other order.
        halves = U(0.12, 0.16, _FIRST_SUB_ACTIONS)
        swing_speed = U(1.5, 2.1, _FIRST_SUB_ACTIONS) * u
        zoom_amp, pause_extra, lead_frac = U(0.4, 0.6), U(0.0, 0.08), U()
        has_distractor = U() < 0.15
        distractor = (H * U(0.08, 0.14), NEUTRAL_TEXTURES[rng.integers(len(NEUTRAL_TEXTURES))],
                      U(0, 110, 3), U(140, 255, 3), np.array([U(0, W), U(0, H)]), U(0, 2 * math.pi),
                      U(0.3, 1.5) * u)
        has_occluder = U() < 0.2
        occluder = (U() < 0.5, U(0.08, 0.16), U(0.15, 0.85),
                    BACKGROUND_TEXTURES[rng.integers(len(BACKGROUND_TEXTURES))], U(0, 90, 3), U(150, 255, 3))
        gain, flicker, flicker_phase = U(0.75, 1.2), U(0.0, 0.03), U(0, 2 * math.pi)
        noise_sigma, noise_seed = U(1.0, 6.0), int(rng.integers(2**31 - 1))
        noise_pick, noise_step = int(rng.integers(_NOISE_BANK)), int(rng.integers(1, _NOISE_BANK))
        noise_sign = rng.choice(np.array([-1.0, 1.0], np.float32), T)
        # The later sub-actions are drawn after everything generator 2 drew, so its draws (and
        # videos) are unchanged; same ranges as the first three.
        more = len(SUB_ACTIONS) - _FIRST_SUB_ACTIONS
        halves = np.concatenate([halves, U(0.12, 0.16, more)])
        swing_speed = np.concatenate([swing_speed, U(1.5, 2.1, more) * u])
        rot_amp, stretch_amp = U(35.0, 55.0), U(0.4, 0.6)
        return cls(
            T=T, bg_name=bg_name, bg_lo=bg_lo, bg_hi=bg_hi, bg_scale=bg_scale,
            drift=drift_v * np.column_stack([np.full(T, math.cos(drift_a)), np.full(T, math.sin(drift_a))])
            * t[:, None],
            obj_h=H * (obj_small if small else obj_normal), aspect=aspect, ellipse=ellipse, crop=crop,
            hflip=hflip, saturation=saturation, obj_gain=obj_gain, neutral_name=neutral_name,
            nt_lo=nt_lo, nt_hi=nt_hi, contrast=contrast if low_contrast else None,
            alpha_max=alpha_low if low_contrast else 1.0, start=start,
            shake=shake, speed_factor=speed_factor, angle_jitter=angle_jitter,
            jitter=1.0 + jit_amp * np.sin(2 * math.pi * t / jit_period + jit_phase),
            halves=halves, swing_speed=swing_speed, zoom_amp=zoom_amp, rot_amp=rot_amp,
            stretch_amp=stretch_amp, pause_extra=pause_extra, lead_frac=lead_frac,
            distractor=distractor if has_distractor else None,
            occluder=occluder if has_occluder else None,
            gains=gain * (1.0 + flicker * np.sin(2 * math.pi * t / 9.0 + flicker_phase)),
            noise_sigma=noise_sigma, noise_seed=noise_seed,
            noise_picks=(noise_pick + np.arange(T) * noise_step) % _NOISE_BANK,  # never twice in a row
            noise_sign=noise_sign,
        )


@dataclass(frozen=True)
class _Pose:
    """The object over time: scene position (T, 2), scale, rotation, stretch and phase (T,)."""

    pos: np.ndarray
    scale: np.ndarray
    rotation: np.ndarray
    stretch: np.ndarray
    phase: np.ndarray

    @classmethod
    def still(cls, pos: np.ndarray) -> "_Pose":
        T = len(pos)
        return cls(pos, np.ones(T), np.zeros(T), np.ones(T), np.zeros(T, np.int8))


_DIAGONAL = np.array([-math.sqrt(0.5), -math.sqrt(0.5)])  # up-left on screen (y points down)


def _order_pose(spec: ClassSpec, nz: _Nuisance, stack: int) -> _Pose:
    """An order class: lead-in, sub-action A, still pause, sub-action B, still tail."""
    T = nz.T
    which = [SUB_ACTIONS.index(a) for a in spec.order]
    h = [max(_MIN_HALF_SWING, int(round(T * nz.halves[k]))) for k in which]
    # Short videos give up the pause's extra length first, then shorten the swings; the pause
    # never drops below _pause_frames(stack, 0), which is what hides the order.
    pause = _pause_frames(stack, int(round(T * nz.pause_extra)))
    pause = max(_pause_frames(stack, 0), min(pause, T - 2 - 2 * h[0] - 2 * h[1]))
    while 2 * h[0] + 2 * h[1] + pause + 2 > T and max(h) > _MIN_HALF_SWING:
        h = [max(_MIN_HALF_SWING, v - 1) for v in h]
    if 2 * h[0] + 2 * h[1] + pause + 2 > T:
        raise ValueError(f"a {T}-frame video cannot hold two sub-actions and a {pause}-frame pause: "
                         f"raise --frames (>= {min_frames(stack)})")
    t0 = int(nz.lead_frac * (T - (2 * h[0] + 2 * h[1] + pause + 1)))  # random start offset
    disp, scale, phase = np.zeros((T, 2)), np.ones(T), np.zeros(T, np.int8)
    rotation, stretch = np.zeros(T), np.ones(T)
    starts = (t0, t0 + 2 * h[0] + pause)
    for i, (action, k, t_a, hh) in enumerate(zip(spec.order, which, starts, h, strict=True)):
        tri = _tri(hh)
        sl = slice(t_a, t_a + len(tri))
        if action == "Left":
            disp[sl, 0] -= nz.swing_speed[k] * hh * tri
        elif action == "Up":
            disp[sl, 1] -= nz.swing_speed[k] * hh * tri
        elif action == "Zoom":
            scale[sl] *= 1.0 + nz.zoom_amp * tri
        elif action == "Diagonal":
            disp[sl] += (nz.swing_speed[k] * hh * tri)[:, None] * _DIAGONAL
        elif action == "Circle":  # one anticlockwise loop at the swing speed: 2*pi*r = speed * 2*hh
            r, theta = nz.swing_speed[k] * hh / math.pi, np.linspace(0.0, 2 * math.pi, len(tri))
            disp[sl] += r * np.column_stack([np.cos(theta) - 1.0, -np.sin(theta)])
        elif action == "Rotate":
            rotation[sl] += nz.rot_amp * tri
        elif action == "Stretch":
            stretch[sl] *= 1.0 + nz.stretch_amp * tri
        else:
            raise ValueError(f"{spec.name}: unknown sub-action {action!r}; known: {', '.join(SUB_ACTIONS)}")
        phase[t_a: t_a + 2 * hh] = i + 1
    return _Pose(nz.start + disp, scale, rotation, stretch, phase)


def _pose(spec: ClassSpec, nz: _Nuisance, stack: int, u: float) -> _Pose:
    """Where the object is, and how it is turned and sized, in every frame."""
    if spec.kind == KIND_ORDER:
        return _order_pose(spec, nz, stack)
    if spec.kind in (KIND_APPEARANCE, KIND_NONE):
        # A shake in place, not a translation: with a drift the appearance classes' flow overlapped
        # the motion classes' (an object drifting up *is* MotionUp to the motion stream), and the
        # motion LSTM named a motion class, confidently and wrongly, for most appearance videos.
        # A shake is distinct from every motion and order class in any single flow stack yet the
        # same for all appearance classes, so the motion stream is at chance only among them.
        axis, amp, period, phase = nz.shake
        off = amp * np.sin(2 * math.pi * np.arange(nz.T) / period + phase)
        return _Pose.still(nz.start + off[:, None] * np.array([math.cos(axis), -math.sin(axis)]))
    a, v = math.radians(spec.angle) + nz.angle_jitter, spec.speed * u * nz.speed_factor
    step = v * np.column_stack([np.cos(a) * nz.jitter, -np.sin(a) * nz.jitter])  # screen y points down
    return _Pose.still(nz.start + np.vstack([np.zeros((1, 2)), np.cumsum(step[:-1], 0)]))


def _object_sprite(spec: ClassSpec, nz: _Nuisance, bg_mean: np.ndarray) -> np.ndarray:
    """The object: a crop of its class photo (appearance) or of a shared neutral texture."""
    oh, ow = max(6, int(round(nz.obj_h))), max(6, int(round(nz.obj_h * nz.aspect)))
    side, fx, fy = nz.crop
    if spec.kind == KIND_APPEARANCE:
        tex = _crop(_photo(spec.photo), spec.roi, side, nz.aspect, fx, fy, ow, oh)
        if spec.tint is not None:
            grey = tex.mean(2) if tex.ndim == 3 else tex
            tex = _duotone(grey, np.asarray(spec.tint[0], np.float32), np.asarray(spec.tint[1], np.float32))
        elif tex.ndim == 2:  # a grey photo is a grey object
            tex = np.repeat(tex[..., None], 3, axis=2)
        grey = tex.mean(2, keepdims=True)
        tex = grey + (tex - grey) * nz.saturation
    else:  # one shared pool: motion and order classes look alike
        tex = _duotone(_crop(_photo(nz.neutral_name), (0, 0, 1, 1), side, nz.aspect, fx, fy, ow, oh),
                       nz.nt_lo, nz.nt_hi)
    if nz.hflip:
        tex = tex[:, ::-1]
    tex = np.clip(tex * nz.obj_gain, 0, 255)
    if nz.contrast is not None:  # low contrast: pull the object towards the background's colour
        tex = bg_mean + (tex - bg_mean) * nz.contrast
    return _sprite(tex, _mask(oh, ow, nz.ellipse, 0.15 * oh) * nz.alpha_max)


def render_video(spec: ClassSpec, seed: int, size: tuple[int, int] = (_REF_W, _REF_H),
                 frames: int = 72, stack: int = 10, length: int | None = None) -> RenderedVideo:
    """Render one video of a class. The nuisance depends on `seed` only, not on the class.

    `length` fixes the number of frames (else drawn within ±20% of `frames`); the multi-label
    writer renders a video's panels with one length.
    """
    W, H = size
    u = _unit(size)
    nz = _Nuisance.draw(seed, size, frames, length)
    T, drift = nz.T, nz.drift
    pose = _pose(spec, nz, stack, u)
    screen = pose.pos - drift  # the camera pans by `drift`, so scene content moves by -drift
    scale, rotation, stretch = pose.scale, pose.rotation, pose.stretch

    bg_src = _duotone(cv2.resize(_photo(nz.bg_name), None, fx=nz.bg_scale * u, fy=nz.bg_scale * u,
                                 interpolation=cv2.INTER_AREA), nz.bg_lo, nz.bg_hi)
    obj = _object_sprite(spec, nz, bg_src.reshape(-1, 3).mean(0))
    dist = occ = None
    if nz.distractor is not None:
        d_h, d_name, d_lo, d_hi, d_start, d_angle, d_speed = nz.distractor
        dh = max(4, int(round(d_h)))
        dist = _sprite(_duotone(_crop(_photo(d_name), (0, 0, 1, 1), 0.7, 1.0, *nz.crop[1:], dh, dh), d_lo, d_hi),
                       _mask(dh, dh, True, 0.2 * dh))
        t = np.arange(T)
        d_pos = d_start + d_speed * np.column_stack([np.cos(d_angle) * t, -np.sin(d_angle) * t]) - drift
    if nz.occluder is not None:  # a bar fixed in the scene, drawn over the object
        vertical, frac, where, o_name, o_lo, o_hi = nz.occluder
        ow, oh = (max(4, int(W * frac)), H + 8) if vertical else (W + 8, max(4, int(H * frac)))
        occ = _sprite(_duotone(_crop(_photo(o_name), (0, 0, 1, 1), 0.5, ow / oh, *nz.crop[1:], ow, oh), o_lo, o_hi),
                      np.ones((oh, ow), np.float32))
        occ_c = np.array([where * W, H / 2]) if vertical else np.array([W / 2, where * H])

    # The background must hold the whole pan (getRectSubPix would replicate its border).
    margin = int(math.ceil(np.abs(drift[-1]).max())) + 2
    pad_y = max(0, (H + 2 * margin - bg_src.shape[0] + 1) // 2)
    pad_x = max(0, (W + 2 * margin - bg_src.shape[1] + 1) // 2)
    if pad_y or pad_x:
        bg_src = cv2.copyMakeBorder(bg_src, pad_y, pad_y, pad_x, pad_x, cv2.BORDER_REFLECT)
    bx0, by0 = (bg_src.shape[1] - W) / 2, (bg_src.shape[0] - H) / 2
    # Sensor noise from a small bank of fields, each used with a random sign and never twice in a
    # row: a fresh field per frame cost more than everything else together. Fields are not
    # shifted between frames, so the flow sees flicker rather than motion.
    cv2.setRNGSeed(nz.noise_seed)  # OpenCV's RNG is per thread: deterministic per video
    bank = np.empty((_NOISE_BANK, H, W, 3), np.float32)
    for b in bank:
        cv2.randn(b.reshape(H, W * 3), 0.0, nz.noise_sigma)  # one channel: a Scalar std would miss G, B
    out = np.empty((T, H, W, 3), np.uint8)
    for i in range(T):
        # Sub-pixel crop of the viewport: frame(x, y) = bg(x + bx0 + drift_x, y + by0 + drift_y).
        frame = cv2.getRectSubPix(bg_src, (W, H), (bx0 + drift[i, 0] + (W - 1) / 2, by0 + drift[i, 1] + (H - 1) / 2))
        if dist is not None:
            _paste(frame, dist, d_pos[i, 0], d_pos[i, 1], 1.0, wrap=True)
        _paste(frame, obj, screen[i, 0], screen[i, 1], scale[i], wrap=True, rotation=rotation[i], stretch=stretch[i])
        if occ is not None:
            _paste(frame, occ, occ_c[0] - drift[i, 0], occ_c[1] - drift[i, 1], 1.0, wrap=False)
        frame = cv2.scaleAdd(frame, float(nz.gains[i]), bank[nz.noise_picks[i]] * nz.noise_sign[i])
        np.clip(frame, 0, 255, out=frame)
        np.copyto(out[i], frame, casting="unsafe")
    return RenderedVideo(out, pose.phase, screen, scale, drift, rotation, stretch)
