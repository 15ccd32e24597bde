"""The NIfTI header checks' pure parts, on hand-computed transforms."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from autounet.errors import ImageReadError
from autounet.io.images import read_image
from autounet.io.nifti_header import check_nifti, corner_disagreement, qform_affine


def test_identity_quaternion_gives_the_voxel_sizes_and_offsets() -> None:
    affine = qform_affine((0.0, 0.0, 0.0, 5.0, 6.0, 7.0), (1.0, 1.0, 2.0, 3.0))
    assert np.allclose(affine, [[1, 0, 0, 5], [0, 2, 0, 6], [0, 0, 3, 7], [0, 0, 0, 1]])


def test_half_turn_about_z_and_negative_qfac() -> None:
    """(b, c, d) = (0, 0, 1) is 180 degrees about z: x and y flip; qfac -1 flips the third column."""
    affine = qform_affine((0.0, 0.0, 1.0, 0.0, 0.0, 0.0), (-1.0, 1.0, 1.0, 2.0))
    assert np.allclose(affine[:3, :3], np.diag([-1.0, -1.0, -2.0]))


def test_corner_disagreement_of_a_shift_and_a_flip() -> None:
    a = np.eye(4)
    shifted = np.eye(4)
    shifted[:3, 3] = (3.0, 4.0, 0.0)
    assert corner_disagreement(a, shifted, [10, 10, 10]) == pytest.approx(5.0)
    flipped = np.diag([-1.0, 1.0, 1.0, 1.0])
    # the corner x = 9 lands at -9: 18 mm apart; x = 0 stays
    assert corner_disagreement(a, flipped, [10, 2, 2]) == pytest.approx(18.0)


def _both_forms(path: Path, qform: np.ndarray, sform: np.ndarray) -> None:
    img = nib.Nifti1Image(np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6), None)
    img.set_qform(qform, code=1)
    img.set_sform(sform, code=2)
    nib.save(img, path)


def test_agreeing_forms_pass_and_rounding_is_tolerated(tmp_path: Path) -> None:
    q = np.diag([2.0, 2.0, 2.0, 1.0])
    s = q.copy()
    s[0, 3] = 0.1  # 0.05 of a 2 mm voxel: exporter rounding
    _both_forms(tmp_path / "a.nii.gz", q, s)
    assert check_nifti(tmp_path / "a.nii.gz", compressed=True) is None


def test_disagreeing_forms_need_a_choice_and_the_choice_sets_the_grid(tmp_path: Path) -> None:
    q = np.diag([1.0, 2.0, 3.0, 1.0])
    q[:3, 3] = (5.0, 6.0, 7.0)
    s = np.diag([-1.0, 2.0, 3.0, 1.0])
    s[:3, 3] = (100.0, 6.0, 7.0)
    path = tmp_path / "b.nii.gz"
    _both_forms(path, q, s)
    with pytest.raises(ImageReadError, match="disagree"):
        read_image(path)
    _, by_q = read_image(path, nifti_transform="qform")
    _, by_s = read_image(path, nifti_transform="sform")
    # NIfTI is RAS, ITK is LPS: x and y change sign
    assert by_q.origin == pytest.approx((-5.0, -6.0, 7.0)) and by_q.spacing == pytest.approx((1.0, 2.0, 3.0))
    assert by_s.origin == pytest.approx((-100.0, -6.0, 7.0))
    assert np.allclose(np.reshape(by_q.direction, (3, 3)), np.diag([-1.0, -1.0, 1.0]))
    assert np.allclose(np.reshape(by_s.direction, (3, 3)), np.diag([1.0, -1.0, 1.0]))
