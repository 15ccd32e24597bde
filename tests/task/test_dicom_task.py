"""A task whose imagesTr holds DICOM series (`<case>_0000/` folders) and NIfTI labels: listed, checked, planned."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from autounet import cli
from autounet.core.workspace import Workspace
from autounet.errors import DatasetError
from autounet.io.geometry import Geometry
from autounet.io.images import write_label
from autounet.preprocessing.case_store import CaseStore
from autounet.task.dataset import load_task
from autounet.task.fingerprint import load_fingerprint
from autounet.task.integrity import check_task

from dicom_series import axial_positions, write_series

SHAPE = (10, 24, 20)  # z, y, x
SPACING_XYZ = (0.8, 0.6, 2.5)


def _dicom_task(root: Path, num_cases: int = 3) -> Path:
    task = root / "Dataset050_Dicom"
    rng = np.random.default_rng(0)
    for i in range(num_cases):
        label = np.zeros(SHAPE, dtype=np.uint8)
        label[3:7, 6 + i:16, 5:14 - i] = 1
        image = (rng.normal(0, 20, SHAPE) + 300.0 * label).astype(np.int16)
        positions = axial_positions(SHAPE[0], SPACING_XYZ[2], start=(-5.0, 7.0, 11.0 + i))
        write_series(task / "imagesTr" / f"case{i}_0000", image, positions,
                     pixel_spacing=(SPACING_XYZ[1], SPACING_XYZ[0]), series_uid=f"1.2.3.{i}")
        grid = Geometry(spacing=SPACING_XYZ, origin=(-5.0, 7.0, 11.0 + i), shape=SHAPE)
        (task / "labelsTr").mkdir(parents=True, exist_ok=True)
        write_label(label, grid, task / "labelsTr" / f"case{i}.nii.gz")
    (task / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "CT"}, "labels": {"background": 0, "lesion": 1},
        "numTraining": num_cases, "file_ending": ".nii.gz"}))
    return task


def test_series_folders_are_the_cases_channel_files(tmp_path):
    task = load_task(_dicom_task(tmp_path))
    assert [c.case_id for c in task.training] == ["case0", "case1", "case2"]
    assert task.training[1].images == [task.root / "imagesTr" / "case1_0000"]
    assert task.training[1].label == task.root / "labelsTr" / "case1.nii.gz"
    report = check_task(task, show_progress=False)
    assert report.errors == [] and report.warnings == []


def test_a_broken_series_is_an_integrity_error_naming_its_folder(tmp_path):
    root = _dicom_task(tmp_path, num_cases=2)
    slices = sorted((root / "imagesTr" / "case1_0000").iterdir())
    slices[4].unlink()
    report = check_task(load_task(root), show_progress=False)
    assert len(report.errors) == 1
    assert report.errors[0].startswith(f"{root / 'imagesTr' / 'case1_0000'}: missing slice(s): a gap of 5 mm")


def test_a_series_folder_beyond_channel_names_is_an_error(tmp_path):
    root = _dicom_task(tmp_path, num_cases=2)
    write_series(root / "imagesTr" / "case0_0001", np.zeros(SHAPE, np.int16), axial_positions(SHAPE[0], 2.5))
    errors = check_task(load_task(root), show_progress=False).errors
    assert errors == [f"{root / 'imagesTr' / 'case0_0001'}: channel 1 is not declared in dataset.json "
                      f"'channel_names' (declared: 1); remove the file or declare the channel"]


def test_plan_and_preprocess_reads_the_series_grid(tmp_path):
    root = _dicom_task(tmp_path)
    ws = tmp_path / "ws"
    assert cli.main(["--workspace", str(ws), "plan_and_preprocess", str(root), "-np", "0", "--gpu-memory", "8",
                     "--no-progress", "-c", "3d_fullres"]) == 0
    out = Workspace(ws).preprocessed("Dataset050_Dicom")
    fingerprint = load_fingerprint(out / "fingerprint.json")
    assert {c.case_id: c.shape for c in fingerprint.cases} == {f"case{i}": list(SHAPE) for i in range(3)}
    assert all(c.spacing == pytest.approx([2.5, 0.6, 0.8]) for c in fingerprint.cases)
    store = CaseStore(out / "3d_fullres")
    _, seg, props = store.load("case2")
    assert props.geometry.origin == pytest.approx((-5.0, 7.0, 13.0))
    assert props.geometry.spacing == pytest.approx(SPACING_XYZ)
    assert int((seg > 0).sum()) == 4 * 8 * 7  # the label's voxels, found on the series' grid


def test_a_series_folder_without_channel_suffix_is_named(tmp_path):
    root = _dicom_task(tmp_path, num_cases=1)
    (root / "imagesTr" / "case0_0000").rename(root / "imagesTr" / "case0")
    with pytest.raises(DatasetError) as info:
        load_task(root)
    assert str(info.value) == (f"{root / 'imagesTr' / 'case0'}: DICOM series folders need a 4-digit channel suffix "
                               f"(<case>_0000/); rename the folder")
