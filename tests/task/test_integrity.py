"""The integrity check: one test per problem, each asserting the message names the file."""

from __future__ import annotations

import logging

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from autounet.errors import IntegrityError
from autounet.io.geometry import Geometry
from autounet.io.images import read_image, read_label, write_image
from autounet.task.dataset import load_task
from autounet.task.demo_data import convert_msd_to_nnunet
from autounet.task.integrity import IntegrityReport, check_task, verify_task


@pytest.fixture
def msd(demo_task_3d: Path, tmp_path: Path) -> Path:
    """A private copy of the 3D demo task that a test may break."""
    return Path(shutil.copytree(demo_task_3d, tmp_path / demo_task_3d.name))


@pytest.fixture(scope="module")
def nnunet_source(demo_task_3d: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return convert_msd_to_nnunet(demo_task_3d, tmp_path_factory.mktemp("nnunet"))


@pytest.fixture
def nnunet(nnunet_source: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(nnunet_source, tmp_path / nnunet_source.name))


def _check(root: Path) -> IntegrityReport:
    return check_task(load_task(root), num_workers=0)


def _only_error(report: IntegrityReport, path: Path, fragment: str) -> str:
    assert len(report.errors) == 1, report.errors
    message = report.errors[0]
    assert str(path) in message, message
    assert fragment in message, message
    return message


def _modify_image(path: Path, change: Callable[[np.ndarray, Geometry], tuple[np.ndarray, Geometry]]) -> None:
    data, geometry = read_image(path)
    new, new_geometry = change(data[0], geometry)
    write_image(new, new_geometry, path)


def _modify_label(path: Path, change: Callable[[np.ndarray, Geometry], tuple[np.ndarray, Geometry]]) -> None:
    seg, geometry = read_label(path)
    new, new_geometry = change(seg, geometry)
    write_image(new, new_geometry, path)


def _regrid(geometry: Geometry, **changes: object) -> Geometry:
    fields = dict(spacing=geometry.spacing, origin=geometry.origin, direction=geometry.direction,
                  shape=geometry.shape, file_dim=geometry.file_dim, is_2d=geometry.is_2d)
    fields.update(changes)
    return Geometry(**fields)  # type: ignore[arg-type]


def test_demo_tasks_are_clean(demo_task_3d: Path, demo_task_2d: Path, nnunet_source: Path) -> None:
    for root in (demo_task_3d, demo_task_2d, nnunet_source):
        report = _check(root)
        assert report.errors == [] and report.warnings == [] and report.ok


def test_listed_image_missing(msd: Path) -> None:
    (msd / "imagesTr" / "demo_003.nii.gz").unlink()
    path = msd / "imagesTr" / "demo_003.nii.gz"
    _only_error(_check(msd), path, "listed in dataset.json for case 'demo_003' but missing")


def test_label_file_missing(msd: Path) -> None:
    (msd / "labelsTr" / "demo_002.nii.gz").unlink()
    _only_error(_check(msd), msd / "labelsTr" / "demo_002.nii.gz", "label of training case 'demo_002' is missing")


def test_label_entry_missing(msd: Path) -> None:
    js = json.loads((msd / "dataset.json").read_text())
    del js["training"][1]["label"]
    (msd / "dataset.json").write_text(json.dumps(js))
    _only_error(_check(msd), msd / "imagesTr" / "demo_002.nii.gz", "no label file given")


def test_nnunet_channel_file_missing(nnunet: Path) -> None:
    (nnunet / "imagesTr" / "demo_004_0000.nii.gz").rename(nnunet / "imagesTr" / "demo_004_0001.nii.gz")
    report = _check(nnunet)
    assert any(str(nnunet / "imagesTr" / "demo_004_0000.nii.gz") in e and "channel 0 file of case 'demo_004'" in e
               for e in report.errors), report.errors
    assert any(str(nnunet / "imagesTr" / "demo_004_0001.nii.gz") in e and "not declared" in e
               for e in report.errors), report.errors


def test_unreadable_image(msd: Path) -> None:
    path = msd / "imagesTr" / "demo_005.nii.gz"
    path.write_bytes(path.read_bytes()[:200])
    _only_error(_check(msd), path, "cannot be read as an image (truncated")


def test_image_and_label_shapes_differ(msd: Path) -> None:
    path = msd / "labelsTr" / "demo_001.nii.gz"
    _modify_label(path, lambda s, g: (s[:-1], _regrid(g, shape=(g.shape[0] - 1, g.shape[1], g.shape[2]))))
    _only_error(_check(msd), path, "label has shape")


def test_spacing_differs_is_error_origin_differs_is_error_unless_accepted(msd: Path) -> None:
    label = msd / "labelsTr" / "demo_001.nii.gz"
    _modify_label(label, lambda s, g: (s, _regrid(g, spacing=(g.spacing[0], g.spacing[1], g.spacing[2] * 1.01))))
    _only_error(_check(msd), label, "label has spacing")

    other = msd / "labelsTr" / "demo_002.nii.gz"
    _modify_label(label, lambda s, g: (s, _regrid(g, spacing=(g.spacing[0], g.spacing[1], g.spacing[2] / 1.01))))
    _modify_label(other, lambda s, g: (s, _regrid(g, origin=(g.origin[0] + 5.0, g.origin[1], g.origin[2]))))
    report = _check(msd)
    assert len(report.errors) == 1 and report.errors[0].startswith(f"{other}: label lies elsewhere in space")
    assert "origin differs by 5x0x0 mm" in report.errors[0] and "--accept-label-geometry" in report.errors[0]
    report = check_task(load_task(msd), show_progress=False, accept_label_geometry=True)
    assert report.errors == []
    assert len(report.warnings) == 1 and str(other) in report.warnings[0] and "origin" in report.warnings[0]


def test_label_origin_within_a_hundredth_of_a_voxel_is_only_noted(msd: Path) -> None:
    label = msd / "labelsTr" / "demo_001.nii.gz"
    _modify_label(label, lambda s, g: (s, _regrid(g, origin=(g.origin[0] + 0.005 * g.spacing[0], *g.origin[1:]))))
    report = _check(msd)
    assert report.errors == []


def test_spacing_within_tolerance_is_accepted(msd: Path) -> None:
    label = msd / "labelsTr" / "demo_001.nii.gz"
    _modify_label(label, lambda s, g: (s, _regrid(g, spacing=(g.spacing[0] * (1 + 5e-4), g.spacing[1], g.spacing[2]))))
    assert _check(msd).errors == []


def test_channel_count_differs_between_cases(msd: Path) -> None:
    path = msd / "imagesTr" / "demo_006.nii.gz"
    _modify_image(path, lambda a, g: (np.stack([a, a]), g))
    _only_error(_check(msd), path, "case 'demo_006' has 2 channel(s) but dataset.json declares 1")


def test_nnunet_channel_file_is_4d(nnunet: Path) -> None:
    path = nnunet / "imagesTr" / "demo_002_0000.nii.gz"
    _modify_image(path, lambda a, g: (np.stack([a, a]), g))
    _only_error(_check(nnunet), path, "is 4D (2 volumes) where a 3D channel file is expected")


def test_msd_3d_image_where_4d_expected(msd: Path) -> None:
    js = json.loads((msd / "dataset.json").read_text())
    js["modality"] = {"0": "T1", "1": "T2"}
    (msd / "dataset.json").write_text(json.dumps(js))
    report = _check(msd)
    assert len(report.errors) == 1, "the same channel-count mistake in every case is one problem"
    assert str(msd / "imagesTr" / "demo_001.nii.gz") in report.errors[0]
    assert "has 1 channel(s) but dataset.json declares 2" in report.errors[0]
    assert "and so do 7 more case(s) (demo_002, demo_003" in report.errors[0]


def test_nan_and_inf_voxels(msd: Path) -> None:
    path = msd / "imagesTr" / "demo_007.nii.gz"

    def poison(a: np.ndarray, g: Geometry) -> tuple[np.ndarray, Geometry]:
        a = a.astype(np.float32)
        a[0, 0, :2] = np.nan
        a[0, 1, 0] = np.inf
        return a, g

    _modify_image(path, poison)
    _only_error(_check(msd), path, "contains 3 NaN/inf voxel(s)")


def test_label_not_integer_valued(msd: Path) -> None:
    path = msd / "labelsTr" / "demo_008.nii.gz"
    _modify_label(path, lambda s, g: (np.where(s == 2, 0.5, s).astype(np.float32), g))
    _only_error(_check(msd), path, "non-integer values (e.g. 0.5)")


def test_float_label_with_whole_values_is_accepted(msd: Path) -> None:
    path = msd / "labelsTr" / "demo_008.nii.gz"
    _modify_label(path, lambda s, g: (s.astype(np.float32), g))
    assert _check(msd).errors == []


def test_label_values_not_declared(msd: Path) -> None:
    path = msd / "labelsTr" / "demo_004.nii.gz"
    _modify_label(path, lambda s, g: (np.where(s == 2, 5, s).astype(np.uint8), g))
    _only_error(_check(msd), path, "label value(s) 5 are not declared")


def test_label_is_4d(msd: Path) -> None:
    path = msd / "labelsTr" / "demo_003.nii.gz"
    seg, geometry = read_label(path)
    write_image(np.stack([seg, seg]), geometry, path)
    _only_error(_check(msd), path, "is a 4D image (2 volumes) but a label map must be 3D")


def test_empty_task(msd: Path) -> None:
    js = json.loads((msd / "dataset.json").read_text())
    js["training"], js["numTraining"] = [], 0
    (msd / "dataset.json").write_text(json.dumps(js))
    _only_error(_check(msd), msd.resolve() / "dataset.json", "no training cases")


def test_missing_test_image(msd: Path) -> None:
    (msd / "imagesTs" / "demo_010.nii.gz").unlink()
    _only_error(_check(msd), msd / "imagesTs" / "demo_010.nii.gz", "test image of case 'demo_010' is missing")


def test_all_problems_are_collected_and_nothing_is_written(msd: Path, tmp_path: Path) -> None:
    (msd / "labelsTr" / "demo_002.nii.gz").unlink()
    bad = msd / "imagesTr" / "demo_005.nii.gz"
    bad.write_bytes(b"")
    _modify_label(msd / "labelsTr" / "demo_006.nii.gz", lambda s, g: (np.where(s == 1, 9, s).astype(np.uint8), g))
    before = sorted((p, p.stat().st_mtime_ns) for p in tmp_path.rglob("*"))
    with pytest.raises(IntegrityError) as info:
        verify_task(load_task(msd), num_workers=2)
    assert len(info.value.problems) == 3
    message = str(info.value)
    for name in ("labelsTr/demo_002.nii.gz", "imagesTr/demo_005.nii.gz", "labelsTr/demo_006.nii.gz"):
        assert name in message
    assert sorted((p, p.stat().st_mtime_ns) for p in tmp_path.rglob("*")) == before


def test_verify_task_logs_warnings_and_passes(msd: Path, caplog: pytest.LogCaptureFixture) -> None:
    label = msd / "labelsTr" / "demo_001.nii.gz"
    _modify_label(label, lambda s, g: (s, _regrid(g, direction=tuple(-v for v in g.direction))))
    with pytest.raises(IntegrityError, match="direction differs"):  # a flipped label is refused by default
        verify_task(load_task(msd))
    report = verify_task(load_task(msd), accept_label_geometry=True)
    assert report.ok and len(report.warnings) == 1
    assert str(label) in caplog.text and "direction" in caplog.text


@pytest.mark.parametrize("show_progress", [True, False])
def test_progress_follows_show_progress(msd: Path, caplog: pytest.LogCaptureFixture, show_progress: bool) -> None:
    """`--no-progress` reaches the integrity check too (plan_and_preprocess passes it through); outside a
    terminal (as under pytest) progress is a log line rather than a bar."""
    with caplog.at_level(logging.INFO, logger="autounet.progress"):
        verify_task(load_task(msd), num_workers=0, show_progress=show_progress)
    assert ("integrity check: 1/" in caplog.text) is show_progress


def test_declared_label_in_no_case_is_a_warning(msd: Path) -> None:
    """The network could never learn it; say so (the integrity check used to stay silent)."""
    data = json.loads((msd / "dataset.json").read_text())
    data["labels"]["7"] = "never_drawn"
    (msd / "dataset.json").write_text(json.dumps(data))
    report = _check(msd)
    assert report.ok
    assert [w for w in report.warnings if "label 7 ('never_drawn') is declared but occurs in none of the" in w]


def test_spacing_outliers_need_the_ratio_and_three_cases() -> None:
    from autounet.task.integrity import spacing_outliers

    one = (1.0, 1.0, 1.0)
    cases = [(Path(f"c{i}.nii.gz"), one, (40, 40, 40)) for i in range(4)]
    assert spacing_outliers(cases) == []
    # 9x per axis is still a real dataset's spread (e.g. 0.7 vs 5 mm slices); 11x is not
    assert spacing_outliers(cases + [(Path("ok.nii.gz"), (9.0, 1.0, 1.0), (40, 40, 40))]) == []
    errors = spacing_outliers(cases + [(Path("big.nii.gz"), (11.0, 11.0, 11.0), (40, 40, 40))])
    assert len(errors) == 1 and errors[0].startswith("big.nii.gz: spacing 11x11x11 mm")
    assert spacing_outliers(cases[:1] + [(Path("big.nii.gz"), (100.0,) * 3, (40, 40, 40))]) == []


def test_files_outside_the_task_folder_are_read_and_noted_once(msd: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for name in ("demo_001.nii.gz", "demo_002.nii.gz"):
        target = elsewhere / name
        shutil.move(msd / "imagesTr" / name, target)
        (msd / "imagesTr" / name).symlink_to(target)
    report = _check(msd)
    assert report.ok
    notes = [w for w in report.warnings if "lie outside the task folder" in w]
    assert len(notes) == 1 and notes[0].startswith(f"{msd}: 2 training file(s)") and str(elsewhere) in notes[0]
