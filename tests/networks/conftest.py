"""Tiny network plans shared by the network tests (3 stages, features 4/8/16).

The suite runs with --import-mode=importlib (test folders are not on sys.path), so the
factory reaches the tests as the `make_plan` fixture rather than by import.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from autounet.planners.plans import NetworkPlan

PlanFactory = Callable[..., NetworkPlan]


def tiny_plan(architecture: str = "plain_unet", dims: int = 3, anisotropic: bool = False,
              blocks: list[str] | None = None, features: list[int] | None = None) -> NetworkPlan:
    """3-stage plan; `anisotropic` uses [1,3,3] kernels and a [1,2,2] stride on the first pooled stage."""
    features = features or [4, 8, 16]
    n = len(features)
    kernels = [[3] * dims for _ in range(n)]
    strides = [[1] * dims] + [[2] * dims for _ in range(n - 1)]
    if anisotropic:
        kernels[0] = [1] + [3] * (dims - 1)
        strides[1] = [1] + [2] * (dims - 1)
    n_enc = [2] * n if architecture == "plain_unet" else [1, 2, 2][:n] + [2] * max(n - 3, 0)
    n_dec = [2] * (n - 1) if architecture == "plain_unet" else [1] * (n - 1)
    return NetworkPlan(architecture, features, kernels, strides, n_enc, n_dec, list(blocks or []))


@pytest.fixture
def make_plan() -> PlanFactory:
    """The `tiny_plan` factory."""
    return tiny_plan
