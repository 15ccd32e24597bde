"""Image reading/writing: exact geometry round trips, channels, 2D files and broken inputs."""

from __future__ import annotations

import gzip
import logging
import struct
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from autounet.errors import ImageReadError
from autounet.io.geometry import Geometry
from autounet.io.images import (
    case_id_from_filename,
    file_ending,
    image_channel_count,
    label_dtype,
    read_channels,
    read_image,
    read_label,
    split_channel_suffix,
    strip_ending,
    write_image,
    write_label,
)

# a coronal-like acquisition: permuted and flipped axes, anisotropic spacing, non-zero origin
DIRECTION = (1.0, 0.0, 0.0, 0.0, 0.0, -1.0, 0.0, 1.0, 0.0)
GEOM = Geometry(spacing=(0.7, 0.8, 3.5), origin=(-12.5, 40.25, 7.0), direction=DIRECTION, shape=(4, 5, 6))


def _ramp(shape: tuple[int, ...]) -> np.ndarray:
    return np.arange(int(np.prod(shape)), dtype=np.float32).reshape(shape)


def test_image_round_trip_keeps_grid_and_values(tmp_path: Path) -> None:
    arr = _ramp((4, 5, 6)) * 0.5 - 3.0
    write_image(arr, GEOM, tmp_path / "img.nii.gz")
    data, geometry = read_image(tmp_path / "img.nii.gz")
    assert data.shape == (1, 4, 5, 6) and data.dtype == np.float32
    np.testing.assert_array_equal(data[0], arr)
    assert geometry.shape == (4, 5, 6)
    np.testing.assert_allclose(geometry.spacing, GEOM.spacing, rtol=1e-6)
    np.testing.assert_allclose(geometry.origin, GEOM.origin, rtol=1e-6)
    np.testing.assert_allclose(geometry.direction, DIRECTION, atol=1e-6)
    assert geometry.spacing_zyx == pytest.approx((3.5, 0.8, 0.7), rel=1e-6)
    assert geometry.file_dim == 3 and not geometry.is_2d
    assert not list(tmp_path.glob(".tmp-*"))


@pytest.mark.parametrize("ending", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_label_written_on_read_grid_is_lossless(tmp_path: Path, ending: str) -> None:
    seg = (np.arange(120).reshape(4, 5, 6) % 3).astype(np.int64)
    write_label(seg, GEOM, tmp_path / f"a{ending}")
    back, geometry = read_label(tmp_path / f"a{ending}")
    assert back.dtype == np.uint8
    np.testing.assert_array_equal(back, seg)
    # writing again with the geometry that was read gives the identical SimpleITK header
    write_label(back, geometry, tmp_path / f"b{ending}")
    a, b = sitk.ReadImage(str(tmp_path / f"a{ending}")), sitk.ReadImage(str(tmp_path / f"b{ending}"))
    assert a.GetSpacing() == b.GetSpacing() and a.GetOrigin() == b.GetOrigin()
    assert a.GetDirection() == b.GetDirection() and a.GetSize() == b.GetSize()


@pytest.mark.parametrize(("max_value", "min_value", "dtype"),
                         [(255, 0, np.uint8), (256, 0, np.uint16), (65535, 0, np.uint16),
                          (65536, 0, np.int32), (3, -1, np.int32)])
def test_label_dtype_is_smallest_that_fits(max_value: int, min_value: int, dtype: type) -> None:
    assert label_dtype(np.array([min_value, max_value])) == np.dtype(dtype)


def test_write_label_keeps_large_values(tmp_path: Path) -> None:
    seg = np.zeros((4, 5, 6), dtype=np.int64)
    seg[0, 0, 0] = 117
    seg[1, 1, 1] = 70000
    write_label(seg, GEOM, tmp_path / "big.nii.gz")
    back, _ = read_label(tmp_path / "big.nii.gz")
    assert back.dtype == np.int32
    np.testing.assert_array_equal(back, seg)


def test_write_label_refuses_fractional_values(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="integer"):
        write_label(np.full((4, 5, 6), 0.5), GEOM, tmp_path / "x.nii.gz")


def test_write_refuses_shape_not_matching_geometry(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not match"):
        write_label(np.zeros((4, 5, 7), dtype=np.uint8), GEOM, tmp_path / "x.nii.gz")
    assert not list(tmp_path.iterdir())


def test_true_2d_file_reads_as_singleton_and_writes_back_2d(tmp_path: Path) -> None:
    img = sitk.GetImageFromArray(_ramp((7, 9)))
    img.SetSpacing((0.6, 0.9))
    img.SetOrigin((3.0, -4.0))
    img.SetDirection((0.0, 1.0, 1.0, 0.0))
    sitk.WriteImage(img, str(tmp_path / "slice.nii.gz"))
    data, geometry = read_image(tmp_path / "slice.nii.gz")
    assert data.shape == (1, 1, 7, 9)
    assert geometry.file_dim == 2 and geometry.is_2d and geometry.shape == (1, 7, 9)
    assert geometry.spacing[:2] == pytest.approx((0.6, 0.9))
    write_label(np.ones((1, 7, 9), dtype=np.uint8), geometry, tmp_path / "seg.nii.gz")
    out = sitk.ReadImage(str(tmp_path / "seg.nii.gz"))
    assert out.GetDimension() == 2
    assert out.GetSpacing() == pytest.approx((0.6, 0.9))
    assert out.GetOrigin() == pytest.approx((3.0, -4.0))
    assert out.GetDirection() == pytest.approx((0.0, 1.0, 1.0, 0.0))


def test_singleton_axis_3d_file_is_2d(tmp_path: Path) -> None:
    geometry = Geometry(spacing=(1.0, 1.2, 5.0), origin=(0.0, 0.0, 0.0), shape=(1, 8, 9))
    write_image(_ramp((1, 8, 9)), geometry, tmp_path / "flat.nii.gz")
    _, back = read_image(tmp_path / "flat.nii.gz")
    assert back.is_2d and back.file_dim == 3 and back.shape == (1, 8, 9)


def test_4d_nifti_is_channels_on_the_4th_axis(tmp_path: Path) -> None:
    arr = np.stack([_ramp((4, 5, 6)), -_ramp((4, 5, 6))])
    write_image(arr, GEOM, tmp_path / "multi.nii.gz")
    assert image_channel_count(tmp_path / "multi.nii.gz") == 2
    data, geometry = read_image(tmp_path / "multi.nii.gz")
    assert data.shape == (2, 4, 5, 6)
    np.testing.assert_array_equal(data, arr)
    np.testing.assert_allclose(geometry.direction, DIRECTION, atol=1e-6)
    np.testing.assert_allclose(geometry.spacing, GEOM.spacing, rtol=1e-6)


def test_4d_label_is_refused(tmp_path: Path) -> None:
    write_image(np.zeros((2, 4, 5, 6), dtype=np.uint8), GEOM, tmp_path / "seg4d.nii.gz")
    with pytest.raises(ImageReadError, match=r"seg4d\.nii\.gz: is a 4D image \(2 volumes\)"):
        read_label(tmp_path / "seg4d.nii.gz")


def test_read_channels_stacks_files(tmp_path: Path) -> None:
    write_image(_ramp((4, 5, 6)), GEOM, tmp_path / "c_0000.nii.gz")
    write_image(_ramp((4, 5, 6)) + 1, GEOM, tmp_path / "c_0001.nii.gz")
    data, geometry = read_channels([tmp_path / "c_0000.nii.gz", tmp_path / "c_0001.nii.gz"])
    assert data.shape == (2, 4, 5, 6)
    np.testing.assert_array_equal(data[1] - data[0], np.ones((4, 5, 6)))
    assert geometry.shape == GEOM.shape


def test_read_channels_shape_or_spacing_mismatch_names_the_file(tmp_path: Path) -> None:
    write_image(_ramp((4, 5, 6)), GEOM, tmp_path / "c_0000.nii.gz")
    other = Geometry(spacing=GEOM.spacing, origin=GEOM.origin, direction=DIRECTION, shape=(4, 5, 7))
    write_image(_ramp((4, 5, 7)), other, tmp_path / "c_0001.nii.gz")
    with pytest.raises(ImageReadError, match=r"c_0001\.nii\.gz: has shape \[4, 5, 7\]"):
        read_channels([tmp_path / "c_0000.nii.gz", tmp_path / "c_0001.nii.gz"])
    coarse = Geometry(spacing=(0.7, 0.8, 3.0), origin=GEOM.origin, direction=DIRECTION, shape=(4, 5, 6))
    write_image(_ramp((4, 5, 6)), coarse, tmp_path / "c_0002.nii.gz")
    with pytest.raises(ImageReadError, match=r"c_0002\.nii\.gz: has spacing \[3, 0\.8, 0\.7\]"):
        read_channels([tmp_path / "c_0000.nii.gz", tmp_path / "c_0002.nii.gz"])


def test_read_channels_refuses_a_4d_channel_file_among_several_but_keeps_one_msd_file(tmp_path: Path) -> None:
    write_image(np.stack([_ramp((4, 5, 6)), _ramp((4, 5, 6))]), GEOM, tmp_path / "c_0000.nii.gz")
    write_image(_ramp((4, 5, 6)), GEOM, tmp_path / "c_0001.nii.gz")
    with pytest.raises(ImageReadError, match=r"c_0000\.nii\.gz: is 4D \(2 volumes\) where a 3D channel file is "
                                             r"expected; split it into one 3D file per channel"):
        read_channels([tmp_path / "c_0000.nii.gz", tmp_path / "c_0001.nii.gz"])
    data, _ = read_channels([tmp_path / "c_0000.nii.gz"])  # one MSD-style 4D file: its volumes are channels
    assert data.shape == (2, 4, 5, 6)


def test_sheared_nifti_sform_without_qform_gets_a_clear_message(tmp_path: Path) -> None:
    import nibabel as nib

    affine = np.diag([1.0, 1.0, 2.0, 1.0])
    affine[0, 1] = 0.8
    image = nib.Nifti1Image(np.zeros((6, 5, 4), dtype=np.float32), affine)
    image.set_sform(affine, code=1)
    image.set_qform(None, code=0)
    nib.save(image, str(tmp_path / "sheared.nii.gz"))
    with pytest.raises(ImageReadError, match=r"sheared\.nii\.gz: direction \(sform\) in the NIfTI header is not "
                                             r"orthonormal .* no valid qform"):
        read_image(tmp_path / "sheared.nii.gz")


def test_itk_warnings_are_not_printed_around_the_one_line_errors() -> None:
    assert not sitk.ProcessObject_GetGlobalWarningDisplay()


def test_read_channels_origin_mismatch_only_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_image(_ramp((4, 5, 6)), GEOM, tmp_path / "c_0000.nii.gz")
    shifted = Geometry(spacing=GEOM.spacing, origin=(0.0, 0.0, 0.0), direction=DIRECTION, shape=(4, 5, 6))
    write_image(_ramp((4, 5, 6)), shifted, tmp_path / "c_0001.nii.gz")
    with caplog.at_level(logging.WARNING):
        data, geometry = read_channels([tmp_path / "c_0000.nii.gz", tmp_path / "c_0001.nii.gz"])
    assert data.shape[0] == 2 and geometry.origin == pytest.approx(GEOM.origin)
    assert "c_0001.nii.gz" in caplog.text and "origin" in caplog.text


# ---------------------------------------------------------------------------------------------- broken inputs


def _good_nifti(tmp_path: Path) -> bytes:
    write_image(_ramp((4, 5, 6)), GEOM, tmp_path / "good.nii")
    return (tmp_path / "good.nii").read_bytes()


def _with_pixdim(raw: bytes, value: float) -> bytes:
    patched = bytearray(raw)
    patched[80:84] = struct.pack("<f", value)  # pixdim[1] = x spacing in a NIfTI-1 header
    return bytes(patched)


def _nrrd(shape_dirs: str) -> bytes:
    header = ("NRRD0004\ntype: float\ndimension: 3\nspace: left-posterior-superior\nsizes: 2 2 2\n"
              f"space directions: {shape_dirs}\nencoding: raw\nendian: little\nspace origin: (0,0,0)\n\n")
    return header.encode() + np.zeros(8, np.float32).tobytes()


BROKEN = {
    "zero-byte": ("empty.nii.gz", lambda raw: b"", "empty file"),
    "truncated gz": ("trunc.nii.gz", lambda raw: gzip.compress(raw)[: len(gzip.compress(raw)) // 2], "truncated"),
    "truncated nii": ("trunc.nii", lambda raw: raw[: len(raw) - 100], "truncated"),
    "not an image": ("notes.nii.gz", lambda raw: b"patient list\n" * 50, "not gzip-compressed"),
    "text as nrrd": ("notes.nrrd", lambda raw: b"patient list\n" * 50, "cannot be read as an image"),
    "wrong magic": ("magic.nii", lambda raw: raw[:344] + b"abcd" + raw[348:], "wrong magic"),
    "zero spacing": ("zero.nii", lambda raw: _with_pixdim(raw, 0.0), "must be positive"),
    "negative spacing": ("neg.nii.gz", lambda raw: gzip.compress(_with_pixdim(raw, -1.0)), "must be positive"),
    "sheared direction": ("shear.nrrd", lambda raw: _nrrd("(1,0,0) (0.5,1,0) (0,0,1)"), "not orthonormal"),
    "zero spacing nrrd": ("flat.nrrd", lambda raw: _nrrd("(0,0,0) (0,1,0) (0,0,1)"), "cannot be read|positive"),
}


@pytest.mark.parametrize("kind", sorted(BROKEN))
def test_broken_image_raises_error_naming_the_file(tmp_path: Path, kind: str) -> None:
    name, make, reason = BROKEN[kind]
    path = tmp_path / name
    path.write_bytes(make(_good_nifti(tmp_path)))
    for reader in (read_image, read_label):
        with pytest.raises(ImageReadError) as info:
            reader(path)
        message = str(info.value)
        assert message.startswith(str(path) + ": ")
        assert "\n" not in message
        assert any(r in message for r in reason.split("|")), message


def test_missing_and_unsupported_files(tmp_path: Path) -> None:
    with pytest.raises(ImageReadError, match="file not found"):
        read_image(tmp_path / "absent.nii.gz")
    (tmp_path / "scan.png").write_bytes(b"\x89PNG")
    with pytest.raises(ImageReadError, match=r"scan\.png: unsupported file ending"):
        read_image(tmp_path / "scan.png")


# ---------------------------------------------------------------------------------------------- names


@pytest.mark.parametrize(("name", "ending", "case_id"), [
    ("la_003_0000.nii.gz", ".nii.gz", "la_003"),
    ("la_003_0001.nii.gz", None, "la_003"),
    ("BRATS_001.nii.gz", ".nii.gz", "BRATS_001"),
    ("case_12_0000.mha", ".mha", "case_12"),
    ("/data/x/img.nrrd", None, "img"),
])
def test_case_id_from_filename(name: str, ending: str | None, case_id: str) -> None:
    assert case_id_from_filename(name, ending) == case_id


def test_endings_and_suffixes() -> None:
    assert file_ending("A.NII.GZ") == ".nii.gz"
    assert file_ending("a.mhd") == ".mhd"
    assert file_ending("a.png") is None
    assert strip_ending("case_0000.nii.gz") == "case_0000"
    assert strip_ending("notes.txt") == "notes.txt"
    assert split_channel_suffix("case_0003") == ("case", 3)
    assert split_channel_suffix("case_003") == ("case_003", None)


# ---------------------------------------------------------------------------------------------- real data


def test_reads_every_real_image(shared_data_dir: Path) -> None:
    paths = sorted(p for p in shared_data_dir.rglob("*") if file_ending(p.name) in (".nii", ".nii.gz", ".nrrd"))
    if not paths:
        pytest.skip("no NIfTI/NRRD files in the shared data folder")
    for p in paths:
        data, geometry = read_image(p)
        assert data.dtype == np.float32
        assert data.shape[1:] == geometry.shape, p
        assert all(s > 0 for s in geometry.spacing), p
        d = np.array(geometry.direction).reshape(3, 3)
        np.testing.assert_allclose(d @ d.T, np.eye(3), atol=1e-3)
