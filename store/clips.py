"""Encoding of the `clips` table's blob columns: `frame` (an RGB image) and `flow_stack` (2L x H x W uint8).

Chosen by measurement (benchmarks/extract.py, numbers in the README):
- frames are JPEG at quality 90: ~8 KB instead of 64 KB raw at 128x171, 0.3 ms to encode, PSNR
  ~36 dB, well below what the CNNs' augmentation already perturbs;
- flow stacks are raw uint8 compressed losslessly with zstd (level 1): ~20x smaller than raw,
  about 1 ms per stack both ways. JPEG would be smaller still but its block artifacts add error
  to exactly the fine motion the motion CNN reads, and PNG is 6x slower for a larger result.

The encodings are recorded in the clips table's schema metadata (`frame_encoding`,
`flow_encoding`) so readers can check them; the decoders also accept raw bytes.
"""
from __future__ import annotations

import cv2
import numpy as np
import pyarrow as pa

from hyvid.store.tables import FLOW_ZSTD_LEVEL, FRAME_JPEG_QUALITY

_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_JPEG_MAGIC = b"\xff\xd8"
_PNG_MAGIC = b"\x89PNG"
_codec = pa.Codec("zstd", compression_level=FLOW_ZSTD_LEVEL)


def encode_frame(rgb: np.ndarray, quality: int = FRAME_JPEG_QUALITY) -> bytes:
    """Encode an RGB uint8 [H, W, 3] frame as JPEG bytes."""
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an RGB uint8 [H, W, 3] frame, got {rgb.dtype} {rgb.shape}")
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError(f"JPEG encoding failed for a frame of shape {rgb.shape}")
    return buf.tobytes()


def decode_frame(data: bytes, height: int | None = None, width: int | None = None) -> np.ndarray:
    """Decode a stored frame (JPEG or PNG; raw RGB when height and width are given) to RGB uint8 [H, W, 3]."""
    data = bytes(data)
    if data[:2] == _JPEG_MAGIC or data[:4] == _PNG_MAGIC:
        bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        if bgr is None:
            raise ValueError(f"stored frame of {len(data)} bytes could not be decoded as an image")
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    if height is not None and width is not None and len(data) == height * width * 3:
        return np.frombuffer(data, np.uint8).reshape(height, width, 3).copy()
    raise ValueError(
        f"stored frame of {len(data)} bytes is neither JPEG/PNG nor raw RGB of {height}x{width}"
    )


def encode_flow_stack(arr: np.ndarray) -> bytes:
    """Encode a quantized flow stack (uint8 [2L, H, W]) losslessly as zstd-compressed bytes."""
    if arr.dtype != np.uint8 or arr.ndim != 3:
        raise ValueError(f"expected a uint8 [2L, H, W] flow stack, got {arr.dtype} {arr.shape}")
    blob: bytes = _codec.compress(np.ascontiguousarray(arr).tobytes(), asbytes=True)
    return blob


def decode_flow_stack(data: bytes, stack: int, height: int, width: int) -> np.ndarray:
    """Decode a stored flow stack to uint8 [2L, H, W] (channels x0, y0, x1, y1, ...; 128 = no flow).

    `pipelines.data.video.dequantize_flow` turns it back into pixels/frame.
    """
    size = 2 * stack * height * width
    data = bytes(data)
    if data[:4] == _ZSTD_MAGIC:
        try:
            data = _codec.decompress(data, decompressed_size=size, asbytes=True)
        except (OSError, pa.ArrowException) as e:
            raise ValueError(
                f"stored flow stack does not decompress to shape ({2 * stack}, {height}, {width}); "
                f"check stack/height/width: {e}"
            ) from e
    elif len(data) != size:
        raise ValueError(
            f"stored flow stack of {len(data)} bytes is neither zstd nor raw uint8 of shape "
            f"({2 * stack}, {height}, {width}) = {size} bytes; check stack/height/width"
        )
    return np.frombuffer(data, np.uint8).reshape(2 * stack, height, width).copy()
