"""Recognising an accelerator out-of-memory error and reading the memory it measured.

Training and prediction both react to running out of device memory by doing the same work in
smaller pieces; they share how the error is recognised, how cached blocks are handed back
before the retry, and how the peak is read for the log and run.json.
"""

from __future__ import annotations

import torch

#: Substring of the RuntimeError message torch raises for CUDA (older versions), MPS and cuDNN allocations.
OOM_MESSAGE = "out of memory"


def is_out_of_memory(exc: BaseException) -> bool:
    """True for torch.cuda.OutOfMemoryError or a RuntimeError whose message says 'out of memory'."""
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and OOM_MESSAGE in str(exc).lower()


def release_cached_memory(device: torch.device) -> None:
    """Return the allocator's cached blocks to the device so that the retry can use them."""
    if device.type == "cuda" and torch.cuda.is_available():
        torch.cuda.empty_cache()


def peak_memory_bytes(device: torch.device) -> int | None:
    """Peak bytes allocated on a CUDA device since the start (or the last reset); None elsewhere."""
    if device.type == "cuda" and torch.cuda.is_available():
        return int(torch.cuda.max_memory_allocated(device))
    return None
