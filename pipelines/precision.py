"""Mixed precision and host-to-device transfer for the CNN stages (`train-cnn`, `features`).

One place decides how a CNN runs on its device:

- `resolve_amp(mode, device)`: the autocast dtype of `--amp auto|bf16|fp16|off`. "auto" is bf16
  on a CUDA device that supports it, else fp16 there, and off on the CPU: CPU autocast casts every
  convolution to bf16, which oneDNN runs fast only on CPUs with AMX (this machine has AVX-512 BF16,
  not AMX; its bf16 speed is not measured yet) and changes the stored features. `bf16` on the CPU is
  still honoured (the tests exercise the autocast path that way).
- `autocast(device, dtype)`: the context the forward (and loss) runs under; a no-op for None.
- `grad_scaler(device, dtype)`: fp16 on CUDA needs loss scaling (its 5-bit exponent underflows
  small gradients); bf16 has fp32's range and needs none. A disabled scaler otherwise, so the
  training step is one code path.
- `to_device(x, device)`: pinned host memory and a non-blocking copy on CUDA, so the copy of batch
  n+1 overlaps the kernels of batch n; a plain `.to` on the CPU (pinning there only costs).
- `channels_last(module_or_tensor)`: NHWC, the layout cuDNN's tensor-core convolutions
  and oneDNN's CPU convolutions both prefer.
"""
from __future__ import annotations

import contextlib
from typing import ContextManager, TypeVar

import torch
from torch import nn

AMP_MODES = ("auto", "bf16", "fp16", "off")
DEFAULT_AMP = "auto"  # bf16 (else fp16) on CUDA, off on the CPU: see the module doc
AMP_HELP = ("mixed precision of the CNN forward/backward: auto (bf16 where the GPU supports it, else fp16 "
            "with a grad scaler; off on the CPU), bf16, fp16 (CUDA only) or off")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_amp(mode: str) -> str:
    """`mode` if it is one of AMP_MODES, else a ValueError naming it."""
    if mode not in AMP_MODES:
        raise ValueError(f"amp must be one of {', '.join(AMP_MODES)}, got {mode!r}")
    return mode


def resolve_amp(mode: str, device: torch.device | str) -> torch.dtype | None:
    """The autocast dtype of `mode` on `device` (None: full fp32)."""
    check_amp(mode)
    dev = torch.device(device)
    if mode == "off":
        return None
    if mode == "auto":
        if dev.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if mode == "fp16" and dev.type != "cuda":
        raise ValueError(f"amp 'fp16' needs a CUDA device (got {dev}); use --amp bf16 or off on the CPU")
    return _DTYPES[mode]


def autocast(device: torch.device | str, dtype: torch.dtype | None) -> ContextManager:
    """The autocast context of `dtype` on `device`'s type; nothing for None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def grad_scaler(device: torch.device | str, dtype: torch.dtype | None) -> torch.amp.GradScaler:
    """A loss scaler, enabled only for fp16 on CUDA (see the module doc)."""
    dev = torch.device(device)
    return torch.amp.GradScaler(dev.type, enabled=dtype == torch.float16 and dev.type == "cuda")


def to_device(x: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """`x` on `device`: through pinned memory with a non-blocking copy on CUDA."""
    dev = torch.device(device)
    if dev.type != "cuda":
        return x.to(dev)
    if not x.is_pinned():
        x = x.pin_memory()
    return x.to(dev, non_blocking=True)


T = TypeVar("T", nn.Module, torch.Tensor)


def channels_last(x: T) -> T:
    """A 4-d tensor or a module in NHWC memory format (other tensors unchanged)."""
    if isinstance(x, nn.Module):
        return x.to(memory_format=torch.channels_last)
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x
