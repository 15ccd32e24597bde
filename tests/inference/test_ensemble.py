"""Ensembling saved probabilities across prediction folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from autounet.errors import AutounetError, DatasetError
from autounet.inference.ensemble import ensemble_folders, ensemble_probabilities
from autounet.io.atomic import save_npz
from autounet.io.geometry import Geometry
from autounet.io.images import read_label, write_label

SHAPE = (2, 1, 3)
LABEL_VALUES = np.array([0, 2, 5])
GEOMETRY = Geometry(spacing=(0.9, 1.1, 4.0), origin=(-3.0, 7.0, 1.5),
                    direction=(0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, -1.0), shape=SHAPE)


def _probs(rows: list[list[float]]) -> np.ndarray:
    """(K=3, 2, 1, 3) probabilities from a per-voxel list of class probabilities (6 voxels)."""
    return np.asarray(rows, dtype=np.float16).T.reshape(3, *SHAPE)


# Voxel-wise probabilities of two models; the mean decides differently than either model alone
# at voxel 2 (A: class 1, B: class 2, mean: class 2) and voxel 3 (A: 0, B: 1, mean: 0).
A = _probs([[1, 0, 0], [0, 1, 0], [0.1, 0.5, 0.4], [0.6, 0.4, 0], [0, 0, 1], [0.2, 0.2, 0.6]])
B = _probs([[1, 0, 0], [0, 1, 0], [0.1, 0.2, 0.7], [0.35, 0.45, 0.2], [0, 0, 1], [0, 0.9, 0.1]])
EXPECTED_INDEX = np.array([0, 1, 2, 0, 2, 1]).reshape(SHAPE)


def _write_prediction(folder: Path, case: str, probs: np.ndarray, geometry: Geometry = GEOMETRY) -> None:
    write_label(LABEL_VALUES[np.argmax(probs, axis=0)], geometry, folder / f"{case}.nii.gz")
    save_npz(folder / f"{case}.npz", probabilities=probs, label_values=LABEL_VALUES)


def test_ensemble_probabilities_is_the_float32_mean():
    mean = ensemble_probabilities([A, B])
    assert mean.dtype == np.float32
    np.testing.assert_allclose(mean, (A.astype(np.float32) + B.astype(np.float32)) / 2)
    with pytest.raises(ValueError, match="shape"):
        ensemble_probabilities([A, B[:, :1]])


def test_ensemble_folders_writes_label_values_on_the_first_folders_grid(tmp_path):
    d1, d2, out = tmp_path / "m1", tmp_path / "m2", tmp_path / "ens"
    _write_prediction(d1, "case_1", A)
    # the second folder's label map has another origin: the first folder's grid must be used
    other = Geometry(spacing=GEOMETRY.spacing, origin=(0.0, 0.0, 0.0), direction=GEOMETRY.direction, shape=SHAPE)
    _write_prediction(d2, "case_1", B, other)
    assert ensemble_folders([d1, d2], out, save_probabilities=True) == ["case_1"]

    seg, geometry = read_label(out / "case_1.nii.gz")
    np.testing.assert_array_equal(seg, LABEL_VALUES[EXPECTED_INDEX])
    assert geometry.origin == pytest.approx(GEOMETRY.origin)
    assert geometry.direction == pytest.approx(GEOMETRY.direction)
    assert geometry.spacing == pytest.approx(GEOMETRY.spacing)
    with np.load(out / "case_1.npz") as npz:
        assert npz["probabilities"].dtype == np.float16
        np.testing.assert_allclose(npz["probabilities"], ensemble_probabilities([A, B]), atol=1e-3)
        np.testing.assert_array_equal(npz["label_values"], LABEL_VALUES)


def test_missing_cases_are_listed(tmp_path):
    d1, d2 = tmp_path / "m1", tmp_path / "m2"
    _write_prediction(d1, "case_1", A)
    _write_prediction(d1, "case_2", A)
    _write_prediction(d2, "case_1", B)
    with pytest.raises(DatasetError, match=r"m2: missing case_2"):
        ensemble_folders([d1, d2], tmp_path / "out")


def test_mismatched_label_values_and_bad_arguments(tmp_path):
    d1, d2 = tmp_path / "m1", tmp_path / "m2"
    _write_prediction(d1, "c", A)
    write_label(np.zeros(SHAPE, np.uint8), GEOMETRY, d2 / "c.nii.gz")
    save_npz(d2 / "c.npz", probabilities=B, label_values=np.array([0, 1, 2]))
    with pytest.raises(AutounetError, match=r"c\.npz: label values \[0, 1, 2\] differ"):
        ensemble_folders([d1, d2], tmp_path / "out")
    with pytest.raises(AutounetError, match="at least two"):
        ensemble_folders([d1], tmp_path / "out")
    with pytest.raises(AutounetError, match="must differ"):
        ensemble_folders([d1, d2], d1)


def test_npz_without_label_values_is_refused(tmp_path):
    d1, d2 = tmp_path / "m1", tmp_path / "m2"
    _write_prediction(d1, "c", A)
    write_label(np.zeros(SHAPE, np.uint8), GEOMETRY, d2 / "c.nii.gz")
    save_npz(d2 / "c.npz", probabilities=B)
    with pytest.raises(AutounetError, match=r"c\.npz: needs keys 'probabilities' and 'label_values'"):
        ensemble_folders([d1, d2], tmp_path / "out")


def test_region_probabilities_are_averaged_thresholded_and_painted_in_order(tmp_path):
    """Region files: the mean of each region's sigmoid over the models, > 0.5, painted (1 then 2)."""
    from autounet.inference.export import save_probabilities

    outer_a = [0.9, 0.9, 0.6, 0.2, 0.7, 0.1]
    outer_b = [0.8, 0.2, 0.6, 0.6, 0.7, 0.3]  # means 0.85 0.55 0.6 0.4 0.7 0.2
    inner_a = [0.9, 0.1, 0.2, 0.9, 0.6, 0.0]
    inner_b = [0.9, 0.1, 0.9, 0.9, 0.2, 0.0]  # means 0.9 0.1 0.55 0.9 0.4 0.0
    d1, d2, out = tmp_path / "m1", tmp_path / "m2", tmp_path / "ens"
    for folder, outer, inner in ((d1, outer_a, inner_a), (d2, outer_b, inner_b)):
        probs = np.asarray([outer, inner], dtype=np.float32).reshape(2, *SHAPE)
        write_label(np.zeros(SHAPE, np.uint8), GEOMETRY, folder / "c.nii.gz")
        save_probabilities(probs, [1, 2], folder / "c.npz", regions=True)
    ensemble_folders([d1, d2], out)
    seg, _ = read_label(out / "c.nii.gz")
    # inner painted over outer; voxel 3 is inner only (outer mean 0.4), which still paints it 2
    assert seg.ravel().tolist() == [2, 1, 2, 2, 1, 0]
