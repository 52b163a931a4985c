"""Which device a trial trains on, what the row says it was, and what ``amp`` means there."""

from __future__ import annotations

import contextlib
import os

import torch


class DeviceUnavailable(RuntimeError):
    """A trial was given a GPU share but its process sees no CUDA device."""


def pick_device(gpus: float) -> torch.device:
    """The device a trial trains on: CUDA when Ray gave it a GPU share, else the CPU. A GPU
    share without a visible GPU is an error, never a silent (and many times slower) CPU run."""
    if gpus <= 0:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise DeviceUnavailable(
            f"the trial was given {gpus:g} GPU but sees no CUDA device (CUDA_VISIBLE_DEVICES="
            f"{os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}; a node without a GPU "
            "driver, or a CPU-only torch)")
    return torch.device("cuda")


def device_name(device: torch.device) -> str:
    """``cpu``, or ``cuda:0 (NVIDIA H200)``: what a trial row records it trained on."""
    if device.type != "cuda":
        return device.type
    index = device.index if device.index is not None else torch.cuda.current_device()
    return f"cuda:{index} ({torch.cuda.get_device_name(index)})"


def autocast_dtype(device: torch.device, amp: bool) -> torch.dtype | None:
    """What ``amp`` means on ``device``: bf16 autocast on a GPU (no loss scaling needed, unlike
    fp16), nothing on a CPU (bf16 autocast measured no faster on this project's CPUs)."""
    return torch.bfloat16 if amp and device.type == "cuda" else None


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    dtype = autocast_dtype(device, enabled)
    if dtype is not None:
        return torch.autocast(device.type, dtype=dtype)
    return contextlib.nullcontext()
