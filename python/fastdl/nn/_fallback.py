"""Visible fallback to the stock torch.nn layer for calls no fastdl kernel covers (a dtype or device
fastdl was not built for): one warning per layer type and reason, and counts tests can read."""

from __future__ import annotations

import warnings
from collections import Counter

import torch
from torch import Tensor

import fastdl

_counts: Counter[tuple[str, str]] = Counter()


def fallback_counts() -> dict[tuple[str, str], int]:
    """How many calls each (layer, reason) sent to torch.nn since the last reset."""
    return dict(_counts)


def reset_fallback_counts() -> None:
    _counts.clear()


def kernel_gap(input: Tensor) -> str | None:
    """Why no fastdl kernel takes this input (device or dtype), or None if one does."""
    device = input.device.type
    if device == "cpu" or device == "meta":
        ok = input.dtype in (torch.float32, torch.float64)
    elif device == "cuda":
        if not fastdl.cuda_enabled():
            return "fastdl was built without CUDA kernels"
        ok = input.dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16)
    else:
        return f"no fastdl kernels for device {device}"
    return None if ok else f"no fastdl kernel for {input.dtype} on {device}"


def fall_back(module: torch.nn.Module, reason: str) -> None:
    """Record (and announce once) that `module` runs as its torch.nn parent for this call."""
    key = (type(module).__name__, reason)
    if key not in _counts:
        warnings.warn(f"fastdl.nn.{key[0]}: {reason}; this call runs torch.nn.{key[0]}", stacklevel=3)
    _counts[key] += 1
