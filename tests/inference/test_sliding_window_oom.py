"""Sliding-window prediction through an injected out-of-memory error (CPU).

`OomInjector` raises torch.cuda.OutOfMemoryError when one forward gets more inputs than it
allows, as a GPU would; the prediction must halve the inputs per forward until they fit, keep
that size for the rest of the case, and give the same logits as without the error.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from torch import nn

from autounet.errors import AutounetError
from autounet.inference.sliding_window import sliding_window_logits


class OomInjector(nn.Module):
    """A network that runs out of memory on forwards of more than `max_batch` inputs."""

    def __init__(self, network: nn.Module, max_batch: int) -> None:
        super().__init__()
        self.network = network
        self.max_batch = max_batch
        self.seen: list[int] = []  # the number of inputs of every forward, failed ones included

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.shape[0])
        if x.shape[0] > self.max_batch:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.00 GiB (injected)")
        return self.network(x)


def _network() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv3d(4, 3, 3, padding=1))


def _predict(net: nn.Module, data: np.ndarray, max_forward_batch: int = 16) -> torch.Tensor:
    # 2 tiles x 8 mirrorings = 16 inputs per group of tiles; 27 tiles of 8^3 over 16^3 at step 0.5
    return sliding_window_logits(net, data, [8, 8, 8], num_classes=3, mirror_axes=(0, 1, 2), device="cpu",
                                 precision="fp32", batch_tiles=2, max_forward_batch=max_forward_batch)


def test_oom_in_a_forward_halves_the_inputs_and_keeps_the_logits(caplog: pytest.LogCaptureFixture) -> None:
    data = np.random.default_rng(0).normal(size=(1, 16, 16, 16)).astype(np.float32)
    net = _network()
    expected = _predict(OomInjector(net, 99), data)
    injected = OomInjector(net, 3)
    with caplog.at_level(logging.WARNING, logger="autounet"):
        logits = _predict(injected, data)
    # 16 fails, 8 fails, 4 fails, then 2 at a time for the whole case: 27 tiles x 8 views / 2
    assert injected.seen[:3] == [16, 8, 4] and set(injected.seen[3:]) == {2}
    assert len(injected.seen) == 3 + 27 * 8 // 2
    torch.testing.assert_close(logits, expected, rtol=1e-6, atol=1e-6)
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert messages == [f"out of device memory in a forward of {n} tiles; continuing with {n // 2} per forward "
                        f"(peak unknown)" for n in (16, 8, 4)]


def test_oom_with_one_input_is_a_clear_error() -> None:
    """At one input per forward nothing smaller is left: on CUDA the case is redone with the sums in
    host memory (accumulate_on='auto'); when that fails too, or on a CPU, the error says what to do."""
    data = np.zeros((1, 8, 8, 8), dtype=np.float32)
    injected = OomInjector(_network(), 0)
    with pytest.raises(AutounetError, match=r"^--device cpu: out of memory on cpu even with one tile of \[8, 8, 8\] "
                                            r"per forward and the sums in host memory; free memory$"):
        _predict(injected, data, max_forward_batch=4)
    assert injected.seen == [4, 2, 1]


def test_other_errors_are_not_retried() -> None:
    class Broken(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    with pytest.raises(RuntimeError, match="shapes"):
        _predict(Broken(), np.zeros((1, 8, 8, 8), dtype=np.float32))
