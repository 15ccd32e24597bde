"""Which preprocessed folder each named plans uses, and the stamp that keeps stale arrays from training."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from autounet.errors import AutounetError
from autounet.planners.experiment_planner import plan_experiment
from autounet.planners.plans import Plans, save_plans
from autounet.preprocessing.case_store import CaseStore
from autounet.preprocessing.data_folders import assign_data_identifiers, check_stamp, stamp_matches, write_stamp
from autounet.task.fingerprint import CaseFingerprint, Fingerprint, IntensityProperties


def _plans() -> Plans:
    props = IntensityProperties(mean=1.0, std=1.0, median=1.0, min=0.0, max=2.0, percentile_00_5=0.0,
                                percentile_99_5=2.0)
    cases = [CaseFingerprint(f"c{i}", [1.0, 1.0, 1.0], [48, 48, 48], [48, 48, 48], [[0, 48]] * 3, {"0": 1, "1": 1},
                             1.0) for i in range(4)]
    fp = Fingerprint(task="Task09_X", channel_names={"0": "MR"}, labels={"background": 0, "a": 1}, is_2d=False,
                     cases=cases, intensity_properties={"0": props}, median_relative_size_after_crop=1.0,
                     num_samples_per_channel=10, seed=0)
    return plan_experiment(fp, 4.0)


def test_other_plans_share_the_default_folders_only_when_preprocessing_is_equal(tmp_path: Path) -> None:
    default = _plans()
    save_plans(default, tmp_path / "plans.json")
    same_grid = copy.deepcopy(default)
    same_grid.name = "wide"
    same_grid.configuration("3d_fullres").batch_size += 1
    why = assign_data_identifiers(same_grid, tmp_path)
    assert same_grid.configuration("3d_fullres").data_identifier == "3d_fullres"
    assert "shares the default plans'" in why["3d_fullres"]
    finer = copy.deepcopy(default)
    finer.name = "fine"
    finer.configuration("3d_fullres").spacing = [0.5, 0.5, 0.5]
    assign_data_identifiers(finer, tmp_path)
    assert finer.configuration("3d_fullres").data_identifier == "3d_fullres__fine"
    assert finer.configuration("2d").data_identifier == "2d"
    assert assign_data_identifiers(default, tmp_path) == {}  # the default plans keep the plain names


def test_without_default_plans_named_plans_get_their_own_folders(tmp_path: Path) -> None:
    plans = _plans()
    plans.name = "resenc-l"
    assign_data_identifiers(plans, tmp_path)
    assert {c.data_identifier for c in plans.configurations.values()} == {"2d__resenc-l", "3d_fullres__resenc-l"}


def test_the_stamp_refuses_arrays_made_for_other_settings(tmp_path: Path) -> None:
    plans = _plans()
    folder = tmp_path / "3d_fullres"
    folder.mkdir()
    assert stamp_matches(folder, plans, "3d_fullres")  # folders from before stamps are accepted
    write_stamp(folder, plans, "3d_fullres")
    check_stamp(folder, plans, "3d_fullres")
    assert CaseStore(folder).case_ids() == []  # the stamp is not mistaken for a case
    replanned = copy.deepcopy(plans)
    replanned.configuration("3d_fullres").spacing = [2.0, 2.0, 2.0]
    with pytest.raises(AutounetError, match=r"3d_fullres: preprocessed for other settings than the default plans' "
                                            r"3d_fullres .* with the options that wrote plans.json"):
        check_stamp(folder, replanned, "3d_fullres")
