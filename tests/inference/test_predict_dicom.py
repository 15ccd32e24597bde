"""`predict` on DICOM series (sub-folder and flat layouts) and DICOM-SEG output read back voxel by voxel."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from autounet.core.workspace import Workspace
from autounet.errors import AutounetError
from autounet.inference.predict_folder import predict_folder
from autounet.io.images import write_image

from dicom_series import axial_positions, write_series
from inference_toys import labelled_case, make_plans, write_run

LABELS = {"background": 0, "liver": 3, "spleen": 7}


@pytest.fixture
def ws(tmp_path):
    ws = Workspace(tmp_path / "ws")
    write_run(ws.results("Task99_Toy"), make_plans([3.0, 1.3, 0.7], labels=LABELS), folds=(0,))
    return ws


def _series(folder, seed, uid="1.2.826.0.1.3680043.8.498.1", name="slice"):
    """A series whose intensities (class index + 1) the toy network turns back into `values` exactly."""
    values, image = labelled_case(seed=seed)
    write_series(folder, image[0].astype(np.int16), axial_positions(image.shape[1], 3.0), pixel_spacing=(1.3, 0.7),
                 series_uid=uid, name=name)
    return values


def _predict(ws, tmp_path, src, out, **kwargs):
    return predict_folder(ws, src, tmp_path / out, device="cpu", show_progress=False, cwd=tmp_path,
                          precision="fp32", threads=1, use_mirroring=False, **kwargs)


def test_sub_folder_layout_predicts_each_series_on_its_grid(ws, tmp_path):
    values = {"ct1": _series(tmp_path / "in" / "ct1_0000", 0), "ct2": _series(tmp_path / "in" / "ct2_0000", 1)}
    report = _predict(ws, tmp_path, tmp_path / "in", "out")
    assert report.written == ["ct1", "ct2"] and not report.failed
    for case, expected in values.items():
        pred = sitk.ReadImage(str(tmp_path / "out" / f"{case}.nii.gz"))
        np.testing.assert_array_equal(sitk.GetArrayFromImage(pred), expected)
        assert pred.GetSpacing() == pytest.approx((0.7, 1.3, 3.0))
        assert pred.GetOrigin() == pytest.approx((-10.0, 20.0, 30.0))


def test_flat_folder_with_several_series_is_told_apart_by_uid(ws, tmp_path):
    a = _series(tmp_path / "in", 0, uid="1.2.3.10", name="a")
    b = _series(tmp_path / "in", 1, uid="1.2.3.20", name="b")
    report = _predict(ws, tmp_path, tmp_path / "in", "out")
    assert report.written == ["1.2.3.10", "1.2.3.20"]
    for case, expected in (("1.2.3.10", a), ("1.2.3.20", b)):
        np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out" / f"{case}.nii.gz"))),
                                      expected)


def test_dicom_seg_round_trip_equals_the_nifti_output(ws, tmp_path):
    hd = pytest.importorskip("highdicom")
    pydicom = pytest.importorskip("pydicom")
    expected = _series(tmp_path / "in" / "ct1", 2)
    _predict(ws, tmp_path, tmp_path / "in", "nifti")
    report = _predict(ws, tmp_path, tmp_path / "in", "seg", output_format="dicom-seg")
    assert report.written == ["ct1"]
    assert json.loads((tmp_path / "seg" / "predict_info.json").read_text())["output_format"] == "dicom-seg"
    nifti = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "nifti" / "ct1.nii.gz")))
    np.testing.assert_array_equal(nifti, expected)

    seg = hd.seg.segread(str(tmp_path / "seg" / "ct1.dcm"))
    names = {d.SegmentNumber: d.SegmentLabel for d in seg.SegmentSequence}
    assert names == {1: "liver", 2: "spleen"}
    assert seg.SeriesInstanceUID != "1.2.826.0.1.3680043.8.498.1" and seg.Modality == "SEG"
    sources = sorted((pydicom.dcmread(str(f)) for f in (tmp_path / "in" / "ct1").iterdir()),
                     key=lambda d: float(d.ImagePositionPatient[2]))
    numbers = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=[d.SOPInstanceUID for d in sources], combine_segments=True)
    back = np.array([0, 3, 7])[numbers]  # segment number -> label value
    np.testing.assert_array_equal(back, nifti)
    referenced = seg.ReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == "1.2.826.0.1.3680043.8.498.1"
    assert len(referenced.ReferencedInstanceSequence) == nifti.shape[0]


def test_dicom_seg_needs_dicom_input(ws, tmp_path):
    values, image = labelled_case()
    (tmp_path / "in").mkdir()
    write_image(image[0], make_geometry(values.shape), tmp_path / "in" / "x_0000.nii.gz")
    with pytest.raises(AutounetError, match=r"x_0000.nii.gz: --output-format dicom-seg needs DICOM series as input"):
        _predict(ws, tmp_path, tmp_path / "in", "out", output_format="dicom-seg")
    assert not (tmp_path / "out").exists()


def test_cli_refuses_dicom_seg_for_nifti_input_in_one_line(ws, tmp_path, capsys):
    from autounet import cli

    values, image = labelled_case()
    (tmp_path / "in").mkdir()
    write_image(image[0], make_geometry(values.shape), tmp_path / "in" / "x.nii.gz")
    code = cli.main(["--workspace", str(ws.root), "predict", "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"),
                     "-t", "Task99_Toy", "--device", "cpu", "--output-format", "dicom-seg"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err == (f"error: {tmp_path / 'in' / 'x.nii.gz'}: --output-format dicom-seg needs DICOM series as input "
                   f"(a DICOM-SEG references its source slices); use the default nifti output for this input")


def test_dicom_seg_without_the_extra_names_it(ws, tmp_path, monkeypatch):
    import sys

    _series(tmp_path / "in" / "ct1", 0)
    monkeypatch.setitem(sys.modules, "highdicom", None)
    with pytest.raises(AutounetError, match=r"needs the optional extra: pip install 'autounet\[dicom\]'"):
        _predict(ws, tmp_path, tmp_path / "in", "out", output_format="dicom-seg")


def make_geometry(shape):
    from autounet.io.geometry import Geometry

    return Geometry(spacing=(0.7, 1.3, 3.0), origin=(0.0, 0.0, 0.0), shape=shape)


def test_cli_predicts_the_real_ct_series_into_a_seg_and_a_nifti(tmp_path, shared_data_dir, capsys):
    """dcmqi's 3-slice CT through `autounet predict` both ways; the toy network maps HU x to the class whose
    centre (1, 2, 3) is nearest, so the expected label map follows from the voxels by hand."""
    hd = pytest.importorskip("highdicom")
    pydicom = pytest.importorskip("pydicom")
    from autounet import cli
    from autounet.io.dicom import read_series

    ws = Workspace(tmp_path / "ws")
    write_run(ws.results("Task99_Toy"), make_plans([1.0, 0.810547, 0.810547], labels=LABELS, patch=(4, 128, 128)))
    series = shared_data_dir / "dcmqi-ct3slice" / "ct-3slice"
    data, _ = read_series(series)
    expected = np.select([data[0] >= 2.5, data[0] >= 1.5], [7, 3], 0)
    outputs = {}
    for fmt in ("nifti", "dicom-seg"):
        code = cli.main(["--workspace", str(ws.root), "predict", "-i", str(series), "-o", str(tmp_path / fmt),
                         "-t", "Task99_Toy", "--device", "cpu", "--disable-tta", "--output-format", fmt])
        assert code == 0, capsys.readouterr()
        outputs[fmt] = sorted(p.name for p in (tmp_path / fmt).iterdir())
    assert outputs == {"nifti": ["ct-3slice.nii.gz", "predict_info.json"],
                       "dicom-seg": ["ct-3slice.dcm", "predict_info.json"]}
    nifti = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "nifti" / "ct-3slice.nii.gz")))
    np.testing.assert_array_equal(nifti, expected)
    sources = sorted((pydicom.dcmread(str(f), stop_before_pixels=True) for f in series.iterdir()),
                     key=lambda d: float(d.ImagePositionPatient[2]))
    numbers = hd.seg.segread(str(tmp_path / "dicom-seg" / "ct-3slice.dcm")).get_pixels_by_source_instance(
        source_sop_instance_uids=[d.SOPInstanceUID for d in sources], combine_segments=True)
    np.testing.assert_array_equal(np.array([0, 3, 7])[numbers], nifti)
