"""Named plans: file names, presets, the preprocessing key that lets plans share data, and plans transfer."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from pathlib import Path

import pytest

from autounet.errors import PlansError
from autounet.planners.experiment_planner import plan_experiment
from autounet.planners.plans import (
    available_plans,
    check_plans_name,
    load_named_plans,
    plans_file_name,
    save_plans,
)
from autounet.planners.presets import PLANNERS, planner_preset
from autounet.planners.transfer import transfer_plans
from autounet.task.fingerprint import Fingerprint
from autounet.task.labels import Region

MakeFingerprint = Callable[..., Fingerprint]


def test_plans_file_names_and_refused_names() -> None:
    assert plans_file_name() == "plans.json"
    assert plans_file_name("resenc-l") == "plans__resenc-l.json"
    for bad in ("", "a/b", "-x", "x" * 49, "a b", "../up"):
        with pytest.raises(PlansError, match="plans name"):
            check_plans_name(bad)


def test_named_plans_are_listed_and_loaded_by_name(tmp_path: Path, make_fingerprint: MakeFingerprint) -> None:
    plans = plan_experiment(make_fingerprint((1.0, 1.0, 1.0), (64, 64, 64)))
    save_plans(plans, tmp_path / "plans.json")
    other = copy.deepcopy(plans)
    other.name = "wide"
    save_plans(other, tmp_path / plans_file_name("wide"))
    assert available_plans(tmp_path) == ["default", "wide"]
    assert load_named_plans(tmp_path, "wide").name == "wide"
    with pytest.raises(PlansError, match=r"no plans named 'resenc-l' for this task \(plans: default, wide\)"):
        load_named_plans(tmp_path, "resenc-l")
    (tmp_path / plans_file_name("wide")).rename(tmp_path / plans_file_name("narrow"))
    with pytest.raises(PlansError, match="name: is 'wide', expected 'narrow'"):
        load_named_plans(tmp_path, "narrow")


def test_presets_follow_the_reference_targets(make_fingerprint: MakeFingerprint) -> None:
    assert {n: (p.architecture, p.gpu_memory_gb, p.batch_cap_fraction) for n, p in PLANNERS.items()} == {
        "default": ("plain_unet", None, 0.05), "resenc": ("resenc_unet", None, 0.05),
        "resenc-m": ("resenc_unet", 8.0, 1.0), "resenc-l": ("resenc_unet", 24.0, 1.0),
        "resenc-xl": ("resenc_unet", 40.0, 1.0)}
    with pytest.raises(PlansError, match="--planner: 'resenc-xxl' is not a planner"):
        planner_preset("resenc-xxl")
    fp = make_fingerprint((1.0, 1.0, 1.0), (160, 160, 160))
    sizes = []
    for name in ("resenc-m", "resenc-l", "resenc-xl"):
        preset = planner_preset(name)
        plans = plan_experiment(fp, preset.gpu_memory_gb, preset.architecture, preset.batch_cap_fraction)
        cfg = plans.configuration("3d_fullres")
        sizes.append(cfg.batch_size * cfg.patch_size[0] * cfg.patch_size[1] * cfg.patch_size[2])
        assert cfg.network.architecture == "resenc_unet"
    assert sizes[0] < sizes[1] < sizes[2]  # more memory, more voxels per batch


def test_preprocessing_key_follows_grid_and_normalization_only(make_fingerprint: MakeFingerprint) -> None:
    fp = make_fingerprint((1.0, 1.0, 3.0), (64, 64, 40))
    default = plan_experiment(fp, 8.0)
    resenc = plan_experiment(fp, 24.0, "resenc_unet", 1.0)
    assert default.configuration("3d_fullres").patch_size != resenc.configuration("3d_fullres").patch_size or \
        default.configuration("3d_fullres").batch_size != resenc.configuration("3d_fullres").batch_size
    assert default.preprocessing_key("3d_fullres") == resenc.preprocessing_key("3d_fullres")
    assert default.preprocessing_key("2d") == resenc.preprocessing_key("2d")
    assert default.preprocessing_key("2d") != default.preprocessing_key("3d_fullres")
    other = copy.deepcopy(default)
    other.configuration("3d_fullres").spacing[0] *= 2
    assert other.preprocessing_key("3d_fullres") != default.preprocessing_key("3d_fullres")
    other = copy.deepcopy(default)
    other.configuration("3d_fullres").normalization = ["zscore"]
    assert other.preprocessing_key("3d_fullres") != default.preprocessing_key("3d_fullres")


def test_content_hash_ignores_explanations_only(make_fingerprint: MakeFingerprint) -> None:
    plans = plan_experiment(make_fingerprint((1.0, 1.0, 1.0), (64, 64, 64)))
    same = copy.deepcopy(plans)
    same.reasons["spacing"] = "reworded"
    same.configuration("3d_fullres").estimated_memory_bytes += 1
    assert same.content_hash() == plans.content_hash()
    bigger = copy.deepcopy(plans)
    bigger.configuration("3d_fullres").batch_size += 1
    assert bigger.content_hash() != plans.content_hash()


def test_transfer_keeps_the_network_and_takes_the_targets_data_description(make_fingerprint: MakeFingerprint) -> None:
    source = plan_experiment(make_fingerprint((1.0, 1.0, 1.0), (96, 96, 96), channels={"0": "CT"}))
    target_fp = make_fingerprint((0.8, 0.8, 2.5), (40, 120, 120), channels={"0": "T1", "1": "T2"})
    target_fp = dataclasses.replace(target_fp, task="Task42_Other", labels={"background": 0, "x": 1, "y": 2, "z": 3})
    moved = transfer_plans(source, target_fp, "from-Task99_Test")
    assert moved.task == "Task42_Other" and moved.name == "from-Task99_Test" and moved.num_classes == 4
    for name, cfg in source.configurations.items():
        mine = moved.configuration(name)
        assert (mine.network, mine.patch_size, mine.batch_size, mine.spacing) == \
            (cfg.network, cfg.patch_size, cfg.batch_size, cfg.spacing)
        assert mine.normalization == ["zscore", "zscore"]  # the target's MR channels, not the source's CT
    assert moved.transpose_forward == source.transpose_forward
    assert moved.original_median_spacing == [0.8, 0.8, 2.5]
    assert "transferred from Task99_Test" in moved.reasons["planner"]


def test_transfer_to_region_or_2d_tasks_drops_what_cannot_apply(make_fingerprint: MakeFingerprint) -> None:
    source = plan_experiment(make_fingerprint((1.0, 1.0, 1.0), (400, 400, 400)), 2.0)
    assert "3d_lowres" in source.configurations
    regions_fp = dataclasses.replace(make_fingerprint((1.0, 1.0, 1.0), (64, 64, 64)),
                                     regions=[Region("ab", [1, 2]), Region("b", [2])], regions_class_order=[1, 2])
    moved = transfer_plans(source, regions_fp, "from-x")
    assert sorted(moved.configurations) == ["2d", "3d_fullres"] and moved.configuration("3d_fullres").next_stage is None
    assert "not transferred: 3d_lowres, 3d_cascade_fullres" in moved.reasons["planner"]
    flat = transfer_plans(source, make_fingerprint((1.0, 1.0, 1.0), (1, 64, 64), is_2d=True), "from-x")
    assert list(flat.configurations) == ["2d"] and flat.is_2d_data
