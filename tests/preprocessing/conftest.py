"""Shared builders for preprocessing tests: small, hand-made plans."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from autounet.planners.plans import ConfigurationPlan, IntensityProperties, NetworkPlan, Plans


def _configuration(
    name: str, spacing: list[float], normalization: list[str], use_mask: list[bool]
) -> ConfigurationPlan:
    dims = len(spacing)
    network = NetworkPlan(
        architecture="plain_unet",
        features_per_stage=[8, 16],
        kernel_sizes=[[3] * dims, [3] * dims],
        strides=[[1] * dims, [2] * dims],
        n_conv_encoder=[2, 2],
        n_conv_decoder=[2],
    )
    return ConfigurationPlan(
        name=name,
        data_identifier=name if name != "3d_cascade_fullres" else "3d_fullres",
        spacing=spacing,
        patch_size=[8] * dims,
        batch_size=2,
        median_shape=[16] * dims,
        network=network,
        normalization=normalization,
        use_mask_for_norm=use_mask,
        batch_dice=False,
        estimated_memory_bytes=1,
    )


def build_plans(
    *,
    labels: dict[str, int] | None = None,
    transpose_forward: list[int] | None = None,
    spacing_3d: list[float] | None = None,
    spacing_2d: list[float] | None = None,
    normalization: list[str] | None = None,
    use_mask: list[bool] | None = None,
    cascade: bool = False,
) -> Plans:
    """Plans for a one-channel task with a `3d_fullres` and a `2d` configuration."""
    labels = labels or {"background": 0, "a": 1}
    forward = transpose_forward or [0, 1, 2]
    normalization = normalization or ["zscore"]
    use_mask = use_mask or [False] * len(normalization)
    configurations = {
        "3d_fullres": _configuration("3d_fullres", spacing_3d or [1.0, 1.0, 1.0], normalization, use_mask),
        "2d": _configuration("2d", spacing_2d or [1.0, 1.0], normalization, use_mask),
    }
    if cascade:
        configurations["3d_cascade_fullres"] = _configuration(
            "3d_cascade_fullres", spacing_3d or [1.0, 1.0, 1.0], normalization, use_mask
        )
    plans = Plans(
        task="Task99_Test",
        channel_names={str(i): ("CT" if s == "ct" else f"MR{i}") for i, s in enumerate(normalization)},
        labels=labels,
        transpose_forward=forward,
        transpose_backward=[forward.index(i) for i in range(3)],
        original_median_spacing=[1.0, 1.0, 1.0],
        original_median_shape=[16, 16, 16],
        foreground_intensity_properties={
            str(i): IntensityProperties(mean=10.0, std=2.0, median=10.0, min=0.0, max=20.0,
                                        percentile_00_5=4.0, percentile_99_5=16.0)
            for i in range(len(normalization))
        },
        gpu_memory_target_gb=8.0,
        configurations=configurations,
    )
    plans.validate("test plans")
    return plans


@pytest.fixture
def make_plans() -> Callable[..., Plans]:
    return build_plans
