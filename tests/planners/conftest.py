"""Synthetic fingerprints for planner tests (no images needed)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from autounet.task.fingerprint import CaseFingerprint, Fingerprint
from autounet.planners.plans import IntensityProperties


def _make_fingerprint(
    spacing: tuple[float, float, float],
    shape: tuple[int, int, int],
    n: int = 20,
    is_2d: bool = False,
    channels: dict[str, str] | None = None,
    relative_size: float = 1.0,
) -> Fingerprint:
    """n identical cases of `shape` (already cropped) at `spacing`, labels 0/1/2."""
    channels = channels or {"0": "CT"}
    cases = [CaseFingerprint(f"case_{i:03d}", list(spacing), list(shape), list(shape),
                             [[0, s] for s in shape], {"0": 10, "1": 5}, relative_size) for i in range(n)]
    props = IntensityProperties(mean=10.0, std=2.0, median=10.0, min=0.0, max=20.0,
                                percentile_00_5=1.0, percentile_99_5=19.0)
    return Fingerprint(task="Task99_Test", channel_names=channels, labels={"background": 0, "a": 1, "b": 2},
                       is_2d=is_2d, cases=cases, intensity_properties={k: props for k in channels},
                       median_relative_size_after_crop=relative_size, num_samples_per_channel=100, seed=1234)


@pytest.fixture
def make_fingerprint() -> Callable[..., Fingerprint]:
    return _make_fingerprint
