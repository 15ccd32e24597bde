"""find_best_configuration on a tiny fake results tree with a known best candidate."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from autounet.errors import DatasetError
from autounet.commands.find_best import find_best_configuration
from autounet.core.run_layout import load_best_configuration
from autounet.io.atomic import save_npz
from autounet.io.geometry import Geometry
from autounet.io.images import write_label
from autounet.core.workspace import Workspace
from autounet.planners.plans import Plans, save_plans

TASK = "Task09_Fake"
SHAPE = (3, 6, 6)
GEOMETRY = Geometry(spacing=(1.0, 1.0, 2.0), origin=(0.0, 0.0, 0.0), shape=SHAPE)
LABEL_VALUES = np.array([0, 1, 2])
CASES = ["c0", "c1", "c2", "c3"]
FOLDS = {0: ["c0", "c1"], 1: ["c2", "c3"]}


def _reference() -> np.ndarray:
    seg = np.zeros(SHAPE, np.uint8)
    seg[1, 1:4, 1:4] = 1  # 9 voxels
    seg[1, 4:6, 4:6] = 2  # 4 voxels
    return seg


# Each model is confident (0.8) and right except at its own error voxels, where it prefers
# background 0.55 to the true class 0.45. The other model is right there, so the mean of the two
# is right everywhere: the ensemble is perfect (foreground Dice 1).
# "3d_fullres" misses 3 label-1 voxels in c0 -> label 1 Dice 0.8 in one case: foreground 0.975.
# "2d" misses 2 label-2 voxels in c1 and c2 -> label 2 Dice 2/3 in two cases: foreground 0.9167.
ERRORS = {"3d_fullres": {"c0": (1, np.s_[1, 1, 1:4])}, "2d": {"c1": (2, np.s_[1, 4, 4:6]), "c2": (2, np.s_[1, 4, 4:6])}}


def _probabilities(run: str, case: str) -> np.ndarray:
    ref = _reference()
    probs = np.full((3, *SHAPE), 0.1, np.float32)
    for k in range(3):
        probs[k][ref == k] = 0.8
    if case in ERRORS[run]:
        label, where = ERRORS[run][case]
        mask = np.zeros(SHAPE, bool)
        mask[where] = True
        probs[:, mask] = 0.0
        probs[0, mask] = 0.55
        probs[label, mask] = 0.45
    return probs.astype(np.float16)


def _plans() -> Plans:
    return Plans(task=TASK, channel_names={"0": "CT"}, labels={"background": 0, "organ": 1, "vessel": 2},
                 transpose_forward=[0, 1, 2], transpose_backward=[0, 1, 2], original_median_spacing=[2.0, 1.0, 1.0],
                 original_median_shape=list(SHAPE), foreground_intensity_properties={}, gpu_memory_target_gb=8.0,
                 configurations={})


@pytest.fixture()
def workspace(tmp_path: Path) -> Workspace:
    ws = Workspace(tmp_path / "ws")
    for case in CASES:
        write_label(_reference(), GEOMETRY, ws.preprocessed(TASK) / "gt_segmentations" / f"{case}.nii.gz")
    for run in ("3d_fullres", "2d"):
        run_dir = ws.results(TASK) / run
        save_plans(_plans(), run_dir / "plans.json")
        for fold, cases in FOLDS.items():
            vdir = run_dir / f"fold_{fold}" / "validation"
            for case in cases:
                probs = _probabilities(run, case)
                write_label(LABEL_VALUES[np.argmax(probs, axis=0)], GEOMETRY, vdir / f"{case}.nii.gz")
                save_npz(vdir / f"{case}.npz", probabilities=probs, label_values=LABEL_VALUES)
            (vdir / "summary.json").write_text("{}")
    return ws


def test_the_ensemble_of_two_complementary_runs_wins(workspace):
    result = find_best_configuration(workspace, TASK, folds=(0, 1))
    results_dir = workspace.results(TASK)
    by_name = {c["name"]: c for c in result["candidates"]}
    assert set(by_name) == {"3d_fullres", "2d", "2d+3d_fullres"}
    assert by_name["3d_fullres"]["foreground_mean_dice"] == pytest.approx((0.95 + 1.0) / 2)
    assert by_name["2d"]["foreground_mean_dice"] == pytest.approx((1.0 + (2 + 2 * 2 / 3) / 4) / 2)
    assert by_name["2d+3d_fullres"]["foreground_mean_dice"] == pytest.approx(1.0)
    assert [c["name"] for c in result["candidates"]] == ["2d+3d_fullres", "3d_fullres", "2d"]

    assert result["selected"]["kind"] == "ensemble"
    assert result["selected"]["run_names"] == ["2d", "3d_fullres"]
    assert result["selected"]["configurations"] == ["2d", "3d_fullres"]
    assert result["postprocessing"] == "ensembles/2d+3d_fullres/postprocessing.json"
    assert (results_dir / result["postprocessing"]).is_file()

    on_disk = json.loads((results_dir / "best_configuration.json").read_text())
    assert on_disk["selected"] == result["selected"]
    text = (results_dir / "best_configuration.txt").read_text()
    assert "* 2d+3d_fullres" in text and "organ" in text and "postprocessing:" in text
    # every fold's validation cases were gathered into crossval_results
    assert sorted(p.name for p in (results_dir / "2d" / "crossval_results").glob("*.nii.gz")) == \
        [f"{c}.nii.gz" for c in CASES]
    loaded = load_best_configuration(workspace, TASK)
    assert loaded is not None and Path(loaded["postprocessing"]).is_absolute()


def test_without_ensembles_the_better_single_run_wins(workspace):
    result = find_best_configuration(workspace, TASK, folds=(0, 1), allow_ensembles=False)
    assert result["selected"]["kind"] == "single"
    assert result["selected"]["run_names"] == ["3d_fullres"]
    assert result["postprocessing"] == "3d_fullres/postprocessing.json"
    decision = json.loads((workspace.results(TASK) / "3d_fullres" / "postprocessing.json").read_text())
    assert decision["num_cases"] == 4 and decision["keep_largest_foreground"] is False


def test_untrained_folds_are_skipped_and_the_pair_not_ensembled(workspace):
    # fold 1 of "2d" never finished: "2d" is judged on fold 0 only and covers other cases than
    # "3d_fullres", so the two cannot be ensembled
    shutil.rmtree(workspace.results(TASK) / "2d" / "fold_1" / "validation")
    result = find_best_configuration(workspace, TASK, folds=(0, 1))
    by_name = {c["name"]: c for c in result["candidates"]}
    assert set(by_name) == {"3d_fullres", "2d"}
    assert by_name["2d"]["folds"] == [0] and by_name["2d"]["num_cases"] == 2
    assert by_name["3d_fullres"]["folds"] == [0, 1] and by_name["3d_fullres"]["num_cases"] == 4
    assert not (workspace.results(TASK) / "ensembles").exists()


def test_runs_without_probabilities_are_not_ensembled(workspace):
    (workspace.results(TASK) / "3d_fullres" / "fold_0" / "validation" / "c1.npz").unlink()
    result = find_best_configuration(workspace, TASK, folds=(0, 1))
    assert {c["name"] for c in result["candidates"]} == {"3d_fullres", "2d"}
    assert result["selected"]["run_names"] == ["3d_fullres"]


def test_configuration_filter(workspace):
    result = find_best_configuration(workspace, TASK, configurations=["2d"], folds=(0, 1))
    assert [c["name"] for c in result["candidates"]] == ["2d"]


def test_nothing_trained_names_the_folder(tmp_path):
    ws = Workspace(tmp_path / "empty")
    write_label(_reference(), GEOMETRY, ws.preprocessed(TASK) / "gt_segmentations" / "c0.nii.gz")
    with pytest.raises(DatasetError, match=rf"results/{TASK}: no results"):
        find_best_configuration(ws, TASK)
    (ws.results(TASK) / "3d_fullres" / "fold_0").mkdir(parents=True)
    with pytest.raises(DatasetError, match=rf"results/{TASK}: no trained run has validation predictions"):
        find_best_configuration(ws, TASK)
