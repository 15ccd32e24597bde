"""Planner rules: configurations, cascade trigger, batch cap, memory fit, normalization, reasons."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pytest

from autounet.errors import PlansError
from autounet.io.json_schema import to_dict
from autounet.planners.normalization_choice import normalization_scheme
from autounet.planners.experiment_planner import (
    initial_patch_size,
    plan_and_save,
    plan_experiment,
)
from autounet.planners.memory import DEFAULT_CONSTANTS
from autounet.task.fingerprint import Fingerprint
from autounet.planners.plans import load_plans

MakeFingerprint = Callable[..., Fingerprint]

REASON_KEYS = {"spacing", "patch_size", "batch_size", "topology", "normalization", "configurations"}


def test_initial_patch_size_by_hand() -> None:
    # 1/spacing = (0.5, 1, 1); scale = (256^3 / 0.5)^(1/3) = 322.54 -> (161, 323, 323)
    assert initial_patch_size([2.0, 1.0, 1.0], [1000, 1000, 1000]) == [161, 323, 323]
    assert initial_patch_size([1.0, 1.0], [100, 5000]) == [100, 2048]


@pytest.mark.parametrize(("name", "scheme"), [("CT", "ct"), ("ct", "ct"), ("T2", "zscore"), ("nonorm", "none"),
                                              ("None", "none"), ("rescale_to_0_1", "rescale_0_1"), ("MRI", "zscore")])
def test_normalization_scheme(name: str, scheme: str) -> None:
    assert normalization_scheme(name) == scheme


def test_2d_data_plans_only_2d_and_batch_cap(make_fingerprint: MakeFingerprint) -> None:
    # 100 cases of 64 x 64: patch 64 x 64; 5% of 100 x 4096 voxels / 4096 = 5 samples per batch
    fp = make_fingerprint((999.0, 1.0, 1.0), (1, 64, 64), n=100, is_2d=True)
    plans = plan_experiment(fp, gpu_memory_gb=8.0)
    assert list(plans.configurations) == ["2d"]
    cfg = plans.configurations["2d"]
    assert plans.is_2d_data and plans.transpose_forward == [0, 1, 2]
    assert cfg.spacing == [1.0, 1.0] and cfg.patch_size == [64, 64]
    assert cfg.batch_size == 5
    assert cfg.batch_dice is True and cfg.mirror_axes == [0, 1]


def test_batch_size_is_at_least_two(make_fingerprint: MakeFingerprint) -> None:
    # 10 cases: 5% cap = round(0.5) = 0 -> raised to the minimum of 2
    plans = plan_experiment(make_fingerprint((999.0, 1.0, 1.0), (1, 64, 64), n=10, is_2d=True))
    assert plans.configurations["2d"].batch_size == 2


def test_small_images_get_no_cascade(make_fingerprint: MakeFingerprint) -> None:
    plans = plan_experiment(make_fingerprint((1.0, 1.0, 1.0), (64, 64, 64)), gpu_memory_gb=8.0)
    assert list(plans.configurations) == ["2d", "3d_fullres"]
    full = plans.configurations["3d_fullres"]
    assert full.patch_size == [64, 64, 64] and full.batch_dice is False
    assert full.previous_stage is None and full.next_stage is None
    assert "no cascade" in plans.reasons["configurations"]


def test_large_images_trigger_lowres_and_cascade(make_fingerprint: MakeFingerprint) -> None:
    plans = plan_experiment(make_fingerprint((1.0, 1.0, 1.0), (512, 512, 512)), gpu_memory_gb=8.0)
    assert list(plans.configurations) == ["2d", "3d_fullres", "3d_lowres", "3d_cascade_fullres"]
    full, low, cas = (plans.configurations[k] for k in ("3d_fullres", "3d_lowres", "3d_cascade_fullres"))
    assert math.prod(full.patch_size) / 512**3 < 0.25
    assert low.spacing[0] > 1.0 and low.spacing[0] == pytest.approx(low.spacing[1])
    assert math.prod(low.patch_size) / math.prod(low.median_shape) >= 0.25 * 0.97
    assert low.next_stage == "3d_cascade_fullres" and low.batch_dice is False
    assert cas.previous_stage == "3d_lowres" and cas.data_identifier == "3d_fullres"
    assert cas.patch_size == full.patch_size and cas.batch_dice is True and full.batch_dice is True
    # the cascade also reads the one-hot lowres prediction (2 extra channels)
    assert cas.estimated_memory_bytes > full.estimated_memory_bytes


def test_transposition_and_anisotropic_spacing(make_fingerprint: MakeFingerprint) -> None:
    plans = plan_experiment(make_fingerprint((0.8, 0.8, 4.0), (256, 256, 30)))
    assert plans.transpose_forward == [2, 0, 1] and plans.transpose_backward == [1, 2, 0]
    full = plans.configurations["3d_fullres"]
    assert full.spacing == pytest.approx([4.0, 0.8, 0.8])
    assert full.median_shape == [30, 256, 256]
    assert full.network.kernel_sizes[0] == [1, 3, 3]
    assert plans.configurations["2d"].spacing == pytest.approx([0.8, 0.8])
    assert plans.original_median_spacing == pytest.approx([0.8, 0.8, 4.0])


@pytest.mark.parametrize("shape", [(512, 512, 512), (128, 128, 128)])
def test_memory_fits_and_grows_with_the_budget(shape: tuple[int, int, int], make_fingerprint: MakeFingerprint) -> None:
    sizes = {}
    for gb in (4.0, 8.0, 24.0):
        plans = plan_experiment(make_fingerprint((1.0, 1.0, 1.0), shape, n=200), gpu_memory_gb=gb)
        for name, cfg in plans.configurations.items():
            assert cfg.estimated_memory_bytes <= gb * 1e9 * DEFAULT_CONSTANTS.planning_safety_margin, (gb, name)
        sizes[gb] = {n: (math.prod(c.patch_size), c.batch_size) for n, c in plans.configurations.items()}
    for name in ("2d", "3d_fullres"):
        for small, big in ((4.0, 8.0), (8.0, 24.0)):
            p0, b0 = sizes[small][name]
            p1, b1 = sizes[big][name]
            assert p1 >= p0 and p1 * b1 >= p0 * b0, (name, small, big)
    assert sizes[24.0]["3d_fullres"][0] > sizes[4.0]["3d_fullres"][0]


def test_normalization_and_mask_use(make_fingerprint: MakeFingerprint) -> None:
    channels = {"0": "CT", "1": "T2", "2": "nonorm", "3": "rescale_to_0_1"}
    cropped = plan_experiment(make_fingerprint((1.0, 1.0, 1.0), (64, 64, 64), channels=channels, relative_size=0.5))
    cfg = cropped.configurations["3d_fullres"]
    assert cfg.normalization == ["ct", "zscore", "none", "rescale_0_1"]
    assert cfg.use_mask_for_norm == [False, True, False, False]
    full = plan_experiment(make_fingerprint((1.0, 1.0, 1.0), (64, 64, 64), channels=channels, relative_size=0.9))
    assert full.configurations["3d_fullres"].use_mask_for_norm == [False] * 4


def test_reasons_intensities_and_labels_are_recorded(make_fingerprint: MakeFingerprint) -> None:
    fp = make_fingerprint((1.0, 1.0, 1.0), (512, 512, 512))
    plans = plan_experiment(fp)
    assert REASON_KEYS <= set(plans.reasons)
    for cfg in plans.configurations.values():
        assert REASON_KEYS <= set(cfg.reasons), cfg.name
        assert all(text for text in cfg.reasons.values())
        assert cfg.estimated_memory_bytes > 0
    assert plans.labels == fp.labels and plans.label_values == [0, 1, 2]
    assert plans.foreground_intensity_properties["0"].percentile_99_5 == 19.0


def test_resenc_architecture_is_planned(make_fingerprint: MakeFingerprint) -> None:
    plans = plan_experiment(make_fingerprint((1.0, 1.0, 1.0), (128, 128, 128)), architecture="resenc_unet")
    net = plans.configurations["3d_fullres"].network
    assert net.architecture == "resenc_unet" and net.n_conv_encoder[:4] == [1, 3, 4, 6]


def test_invalid_budget_is_rejected(make_fingerprint: MakeFingerprint) -> None:
    with pytest.raises(PlansError, match="gpu-memory"):
        plan_experiment(make_fingerprint((1.0, 1.0, 1.0), (64, 64, 64)), gpu_memory_gb=0.0)


def test_plan_and_save_round_trip(tmp_path: Path, make_fingerprint: MakeFingerprint) -> None:
    path = tmp_path / "plans.json"
    plans = plan_and_save(make_fingerprint((1.0, 1.0, 1.0), (512, 512, 512)), path, gpu_memory_gb=8.0)
    assert to_dict(load_plans(path)) == to_dict(plans)
