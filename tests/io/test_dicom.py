"""DICOM series reading: the grid from slice positions, the refusals, and agreement with reference files."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from autounet.errors import AutounetError, ImageReadError
from autounet.io.dicom import (
    read_series,
    require_dicom_extra,
    series_in_folder,
    series_references,
    slice_grid,
)
from autounet.io.images import image_channel_count, read_channels, read_image

from dicom_series import AXIAL, axial_positions, write_series


def _volume(num: int = 4) -> np.ndarray:
    return (np.arange(num * 5 * 6).reshape(num, 5, 6) * 7 - 100).astype(np.int16)


def test_slice_grid_from_oblique_positions_by_hand():
    # row (1,0,0), column (0,0.6,0.8): normal = row x column = (0,-0.8,0.6); slices 3 mm apart, given shuffled
    iop = (1.0, 0.0, 0.0, 0.0, 0.6, 0.8)
    p0 = np.array([4.0, 10.0, -2.0])
    normal = np.array([0.0, -0.8, 0.6])
    positions = [p0 + 2 * 3.0 * normal, p0, p0 + 3.0 * normal]
    grid = slice_grid(positions, [iop] * 3, "x")
    assert grid.order == [1, 2, 0]
    assert grid.spacing_z == pytest.approx(3.0)
    assert grid.origin == pytest.approx((4.0, 10.0, -2.0))
    # columns of the row-major direction: x = row, y = column, z = normal
    assert grid.direction == pytest.approx((1.0, 0.0, 0.0, 0.0, 0.6, -0.8, 0.0, 0.8, 0.6))


def test_series_voxels_and_grid_come_from_positions_not_slice_thickness(tmp_path):
    volume = _volume()
    write_series(tmp_path / "s", volume, axial_positions(4, 2.5), slice_thickness=5.0)  # written z-reversed
    data, geometry = read_series(tmp_path / "s")
    assert data.dtype == np.float32 and data.shape == (1, 4, 5, 6)
    np.testing.assert_array_equal(data[0], volume)
    assert geometry.spacing == pytest.approx((0.8, 0.5, 2.5))  # PixelSpacing is (row step y, column step x)
    assert geometry.origin == pytest.approx((-10.0, 20.0, 30.0))
    assert geometry.shape == (4, 5, 6) and geometry.file_dim == 3 and not geometry.is_2d
    # read_image and read_channels take a series folder wherever they take a file
    image, same = read_image(tmp_path / "s")
    assert same == geometry and image_channel_count(tmp_path / "s") == 1
    stacked, _ = read_channels([tmp_path / "s", tmp_path / "s"])
    assert stacked.shape == (2, 4, 5, 6)


def test_reading_needs_no_dicom_extra(tmp_path, monkeypatch):
    write_series(tmp_path / "s", _volume(2), axial_positions(2, 1.0))
    monkeypatch.setitem(sys.modules, "pydicom", None)
    monkeypatch.setitem(sys.modules, "highdicom", None)
    data, _ = read_series(tmp_path / "s")
    assert data.shape == (1, 2, 5, 6)
    with pytest.raises(AutounetError, match=r"needs the optional extra: pip install 'autounet\[dicom\]'$"):
        require_dicom_extra()


def _refusal(folder: Path) -> str:
    with pytest.raises(ImageReadError) as info:
        read_series(folder)
    message = str(info.value)
    assert "\n" not in message and message.startswith(str(folder))
    return message


def test_missing_slice_is_refused(tmp_path):
    positions = axial_positions(5, 2.5)
    del positions[3]  # steps 2.5, 2.5, 5.0
    write_series(tmp_path / "s", _volume(4), positions)
    message = _refusal(tmp_path / "s")
    assert "missing slice(s): a gap of 5 mm between the slices at 35 and 40 mm where the slice spacing is 2.5 mm" \
        in message


def test_non_uniform_spacing_is_refused(tmp_path):
    positions = [[0.0, 0.0, z] for z in (0.0, 2.5, 5.5, 8.0)]  # steps 2.5, 3.0, 2.5
    write_series(tmp_path / "s", _volume(4), positions)
    assert "non-uniform slice spacing: steps between slice positions range from 2.5 to 3 mm" in _refusal(tmp_path / "s")


def test_small_rounding_of_positions_is_accepted(tmp_path):
    positions = [[0.0, 0.0, z] for z in (0.0, 2.501, 4.999, 7.5)]
    write_series(tmp_path / "s", _volume(4), positions)
    assert read_series(tmp_path / "s")[1].spacing[2] == pytest.approx(2.5, abs=2e-3)


def test_mixed_orientations_are_refused(tmp_path):
    tilted = (1.0, 0.0, 0.0, 0.0, 0.6, 0.8)
    write_series(tmp_path / "s", _volume(3), axial_positions(3, 2.0), orientations=[AXIAL, AXIAL, tilted])
    message = _refusal(tmp_path / "s")
    assert "mixed slice orientations: ImageOrientationPatient [1, 0, 0, 0, 0.6, 0.8] of one slice differs from " \
           "[1, 0, 0, 0, 1, 0]" in message


def test_duplicate_position_is_refused(tmp_path):
    positions = [[0.0, 0.0, z] for z in (0.0, 2.0, 2.0, 4.0)]
    write_series(tmp_path / "s", _volume(4), positions)
    assert "two slices lie at the same position (2 mm along the normal)" in _refusal(tmp_path / "s")


def test_folder_with_two_series_or_none(tmp_path):
    write_series(tmp_path / "two", _volume(2), axial_positions(2, 1.0), series_uid="1.2.3.1", name="a")
    write_series(tmp_path / "two", _volume(3), axial_positions(3, 1.0), series_uid="1.2.3.2", name="b")
    assert "holds 2 DICOM series (1.2.3.1, 1.2.3.2); put one series per folder" in _refusal(tmp_path / "two")
    refs = series_references(tmp_path / "two")
    assert sorted(refs) == ["1.2.3.1", "1.2.3.2"]
    assert read_series(refs["1.2.3.2"])[0].shape == (1, 3, 5, 6)
    assert read_image(refs["1.2.3.1"])[0].shape == (1, 2, 5, 6)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("not DICOM")
    assert "holds no DICOM series" in _refusal(tmp_path / "empty")
    assert series_in_folder(tmp_path / "empty") == []


def test_series_in_folder_names_sub_folders_and_flat_series(tmp_path):
    write_series(tmp_path / "in" / "case1_0000", _volume(2), axial_positions(2, 1.0))
    write_series(tmp_path / "in" / "case2", _volume(2), axial_positions(2, 1.0))
    write_series(tmp_path / "in", _volume(2), axial_positions(2, 1.0), series_uid="1.2.3.9")
    assert series_in_folder(tmp_path / "in") == [
        ("case1_0000", tmp_path / "in" / "case1_0000"), ("case2", tmp_path / "in" / "case2"),
        ("in", tmp_path / "in")]


def test_dcmqi_ct_3slice_matches_its_nrrd_labels_and_pydicom(shared_data_dir):
    pydicom = pytest.importorskip("pydicom")
    folder = shared_data_dir / "dcmqi-ct3slice" / "ct-3slice"
    data, geometry = read_series(folder)
    reference = sitk.ReadImage(str(shared_data_dir / "dcmqi-ct3slice" / "liver_seg.nrrd"))
    assert geometry.shape == (3, 512, 512)
    assert geometry.spacing == pytest.approx(reference.GetSpacing(), abs=1e-5)  # z: 1 mm steps, SliceThickness 1.25
    assert geometry.origin == pytest.approx(reference.GetOrigin(), abs=1e-4)
    assert geometry.direction == pytest.approx(reference.GetDirection())
    # independent decoding: slices sorted by z (instance 3 lies lowest), slope/intercept applied
    slices = sorted((pydicom.dcmread(str(f)) for f in folder.iterdir()), key=lambda d: float(d.ImagePositionPatient[2]))
    expected = np.stack([d.pixel_array * float(d.RescaleSlope) + float(d.RescaleIntercept) for d in slices])
    np.testing.assert_array_equal(data[0], expected)


def test_totalsegmentator_series_lies_on_its_reference_grid(shared_data_dir):
    root = shared_data_dir / "totalsegmentator-reference"
    data, geometry = read_series(root / "example_ct_dicom")
    reference = sitk.ReadImage(str(root / "example_seg_dicom.nii.gz"))  # same 512x512x20 grid, stored y-flipped
    assert geometry.shape == (20, 512, 512)
    assert geometry.spacing == pytest.approx(reference.GetSpacing())  # 2 mm steps although SliceThickness says 3
    image = sitk.GetImageFromArray(data[0])
    image.SetSpacing(geometry.spacing)
    image.SetOrigin(geometry.origin)
    image.SetDirection(geometry.direction)
    for index in [(0, 0, 0), (511, 0, 19), (17, 300, 7)]:
        point = image.TransformIndexToPhysicalPoint(index)
        assert reference.TransformPhysicalPointToIndex(point) == (index[0], 511 - index[1], index[2])
    assert data.min() == -1024 and data.max() == 1839
    # TotalSegmentator's labels sit inside the body: their voxels are soft tissue, not air
    labels = np.flip(sitk.GetArrayFromImage(reference), axis=1)
    assert np.median(data[0][labels > 0]) > -200 and np.median(data[0][labels == 0]) < np.median(data[0][labels > 0])


def test_single_slice_series_takes_its_step_from_the_header(tmp_path):
    (path,) = write_series(tmp_path / "s", _volume(1), axial_positions(1, 1.0), slice_thickness=4.0)
    data, geometry = read_series(tmp_path / "s")
    assert data.shape == (1, 1, 5, 6) and geometry.is_2d
    assert geometry.spacing == pytest.approx((0.8, 0.5, 1.0))  # no steps: SpacingBetweenSlices (GDCM wrote 1)
    pydicom = pytest.importorskip("pydicom")
    ds = pydicom.dcmread(str(path))
    del ds.SpacingBetweenSlices
    ds.save_as(str(path))
    assert read_series(tmp_path / "s")[1].spacing == pytest.approx((0.8, 0.5, 4.0))  # then SliceThickness


def test_a_folder_named_like_an_image_file_keeps_the_file_message(tmp_path):
    (tmp_path / "a_0000.nii.gz").mkdir()
    with pytest.raises(ImageReadError, match="is not a regular file"):
        read_image(tmp_path / "a_0000.nii.gz")


def test_seg_of_the_dcmqi_series_reads_back_and_agrees_with_dcmqis_own_seg(shared_data_dir, tmp_path):
    hd = pytest.importorskip("highdicom")
    pydicom = pytest.importorskip("pydicom")
    from autounet.io.dicom import read_series_info, write_dicom_seg

    root = shared_data_dir / "dcmqi-ct3slice"
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(root / "liver_spine_seg.nrrd")))  # 1 liver, 2 spine
    write_dicom_seg(labels, root / "ct-3slice", {0: "background", 1: "liver", 2: "spine", 3: "heart"},
                    tmp_path / "seg.dcm", "test")
    files, _ = read_series_info(root / "ct-3slice")
    uids = [pydicom.dcmread(str(f), stop_before_pixels=True).SOPInstanceUID for f in files]
    ours = hd.seg.segread(str(tmp_path / "seg.dcm"))
    assert [(d.SegmentNumber, d.SegmentLabel) for d in ours.SegmentSequence] == [(1, "liver"), (2, "spine"),
                                                                                 (3, "heart")]
    back = ours.get_pixels_by_source_instance(source_sop_instance_uids=uids, combine_segments=True)
    np.testing.assert_array_equal(back, labels)
    # dcmqi's liver.dcm was made from liver_seg.nrrd: indexed by our slice order it holds the same liver
    theirs = hd.seg.segread(str(root / "liver.dcm")).get_pixels_by_source_instance(
        source_sop_instance_uids=uids, combine_segments=True, ignore_spatial_locations=True)
    assert int(theirs.sum()) == 107098
    np.testing.assert_array_equal(theirs == 1, back == 1)


def test_seg_refuses_an_anonymised_series_without_uids(shared_data_dir):
    from autounet.io.dicom import check_seg_source

    folder = shared_data_dir / "totalsegmentator-reference" / "example_ct_dicom"
    with pytest.raises(AutounetError) as info:
        check_seg_source(folder)
    assert str(info.value).startswith(f"{folder}: DICOM slice CT.")
    assert str(info.value).endswith("has no SOPClassUID, SOPInstanceUID, StudyInstanceUID, SeriesInstanceUID "
                                    "(anonymised?), which a DICOM-SEG must reference; use the default nifti output "
                                    "for this series")
