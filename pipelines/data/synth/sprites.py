"""Image pieces of a synth frame: scikit-image photos, crops, duotones, alpha masks, and pasting
a sprite into a frame at a sub-pixel position, scale, rotation and stretch."""
from __future__ import annotations

import math
from functools import lru_cache

import cv2
import numpy as np


@lru_cache(maxsize=None)
def _photo(name: str) -> np.ndarray:
    """A scikit-image photo as float32 RGB (grayscale ones as one channel), 0..255, loaded once."""
    import skimage.data

    img = skimage.data.stereo_motorcycle()[0] if name == "motorcycle" else getattr(skimage.data, name)()
    img = np.asarray(img)
    if img.dtype == bool:
        img = img.astype(np.uint8) * 255
    elif img.dtype.kind == "f" and img.max() <= 1.0:  # e.g. shepp_logan_phantom, in 0..1
        img = img * 255.0
    if img.ndim == 3:
        img = img[..., :3]
    return np.ascontiguousarray(img, dtype=np.float32)


def _duotone(gray: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Colour a grayscale texture between two colours, so shared textures come in many colours."""
    g = (gray / 255.0)[..., None]
    return (lo + g * (hi - lo)).astype(np.float32)


def _sprite(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """RGBA float32 with a 2-pixel rim of zero alpha and edge-replicated colour: warped with
    BORDER_REPLICATE, what lies outside stays transparent and edges blend without dark fringes."""
    pad = 2
    rgb = cv2.copyMakeBorder(np.ascontiguousarray(rgb, np.float32), pad, pad, pad, pad, cv2.BORDER_REPLICATE)
    alpha = cv2.copyMakeBorder(np.ascontiguousarray(alpha, np.float32), pad, pad, pad, pad, cv2.BORDER_CONSTANT,
                               value=0)
    return np.dstack([rgb, alpha])


def _mask(h: int, w: int, ellipse: bool, soft: float) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    if ellipse:
        cv2.ellipse(m, (w // 2, h // 2), (max(1, w // 2 - 1), max(1, h // 2 - 1)), 0, 0, 360, 255, -1)
    else:
        r = max(1, min(h, w) // 5)
        cv2.rectangle(m, (r, 0), (w - 1 - r, h - 1), 255, -1)
        cv2.rectangle(m, (0, r), (w - 1, h - 1 - r), 255, -1)
        for cx, cy in ((r, r), (w - 1 - r, r), (r, h - 1 - r), (w - 1 - r, h - 1 - r)):
            cv2.circle(m, (cx, cy), r, 255, -1)
    k = max(3, int(soft) | 1)
    return cv2.GaussianBlur(m, (k, k), 0).astype(np.float32) / 255.0


def _crop(img: np.ndarray, roi: tuple[float, float, float, float], side_frac: float, aspect: float,
          fx: float, fy: float, out_w: int, out_h: int) -> np.ndarray:
    """A crop of img inside roi (fractions) with the output's aspect, resized to (out_w, out_h)."""
    H, W = img.shape[:2]
    x0, y0, x1, y1 = roi[0] * W, roi[1] * H, roi[2] * W, roi[3] * H
    side = side_frac * min(x1 - x0, y1 - y0)
    cw, ch = side * math.sqrt(aspect), side / math.sqrt(aspect)
    cw, ch = min(cw, x1 - x0), min(ch, y1 - y0)
    cx0 = x0 + fx * (x1 - x0 - cw)
    cy0 = y0 + fy * (y1 - y0 - ch)
    patch = img[int(cy0): int(cy0 + ch) + 1, int(cx0): int(cx0 + cw) + 1]
    return cv2.resize(patch, (out_w, out_h), interpolation=cv2.INTER_AREA)


def _paste(frame: np.ndarray, sprite: np.ndarray, cx: float, cy: float, scale: float, wrap: bool,
           rotation: float = 0.0, stretch: float = 1.0) -> None:
    """Alpha-blend a premultiplied RGBA sprite centred at (cx, cy) into frame, in place.

    Sub-pixel: warpAffine interpolates, so slow motion is smooth rather than 0/1-pixel jumps.
    With wrap, the screen is a torus: what leaves one edge enters the opposite one, so a uniform
    random start gives every time step the same distribution of positions whatever the class.
    `rotation` (degrees, anticlockwise on screen) and `stretch` (extra horizontal scale) serve
    the order classes' Rotate and Stretch sub-actions.
    """
    H, W = frame.shape[:2]
    sh, sw = sprite.shape[:2]
    if rotation == 0.0 and stretch == 1.0:
        # Generator 2's exact arithmetic: the videos of its classes must keep their bytes.
        fwd = None
        half_w, half_h = scale * sw / 2 + 1, scale * sh / 2 + 1
    else:
        c, s = math.cos(math.radians(rotation)), math.sin(math.radians(rotation))
        fwd = np.array([[c * scale * stretch, s * scale], [-s * scale * stretch, c * scale]])  # screen y is down
        inv_m = np.linalg.inv(fwd)
        half_w = abs(fwd[0, 0]) * sw / 2 + abs(fwd[0, 1]) * sh / 2 + 1
        half_h = abs(fwd[1, 0]) * sw / 2 + abs(fwd[1, 1]) * sh / 2 + 1
    if wrap:
        cx, cy = cx % W, cy % H
        xs = [0] + ([-W] if cx + half_w > W else []) + ([W] if cx - half_w < 0 else [])
        ys = [0] + ([-H] if cy + half_h > H else []) + ([H] if cy - half_h < 0 else [])
        offsets = [(ox, oy) for ox in xs for oy in ys]
    else:
        offsets = [(0, 0)]
    for ox, oy in offsets:
        px, py = cx + ox, cy + oy
        x0, x1 = max(0, int(math.floor(px - half_w))), min(W, int(math.ceil(px + half_w)))
        y0, y1 = max(0, int(math.floor(py - half_h))), min(H, int(math.ceil(py + half_h)))
        if x1 <= x0 or y1 <= y0:
            continue
        if fwd is None:
            # Inverse map: ROI pixel (x, y) <- sprite ((x + x0 - px) / s + sw/2, ...), pixel centres at +0.5.
            inv = 1.0 / scale
            m = np.array([[inv, 0, (x0 - px) * inv + sw / 2 - 0.5 + 0.5 * inv],
                          [0, inv, (y0 - py) * inv + sh / 2 - 0.5 + 0.5 * inv]], np.float32)
        else:  # the same map with a full 2x2 inverse
            off = inv_m @ np.array([x0 + 0.5 - px, y0 + 0.5 - py]) + np.array([sw / 2 - 0.5, sh / 2 - 0.5])
            m = np.hstack([inv_m, off[:, None]]).astype(np.float32)
        warped = cv2.warpAffine(sprite, m, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                borderMode=cv2.BORDER_REPLICATE)
        roi = frame[y0:y1, x0:x1]
        alpha = np.ascontiguousarray(warped[..., 3])
        roi[...] = cv2.blendLinear(roi, warped[..., :3], 1.0 - alpha, alpha)  # bg·(1-a) + obj·a
