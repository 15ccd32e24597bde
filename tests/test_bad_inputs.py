"""The bad-input catalogue of the issues: every broken input, fed to the command that reads it, through the CLI.

Why through `autounet.cli.main`: what a user sees is the CLI's `error: ...` line and its exit
code, not a Python exception. The checks of each case (one line naming the file or key, no
traceback, nothing written, the message listed in the README) are in `refusals.py`; further
hostile cases of our own are in test_hostile_inputs.py.
"""

from __future__ import annotations

import dataclasses
import gzip
import shutil
import struct
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from autounet.io.images import read_image, read_label, write_image, write_label
from refusals import (
    NNUNET_TASK, TROUBLESHOOTING, Case, Expect, Scene, assert_refused, edit_json, edit_nifti_header,
    held_out_as_two_channels,
    normalise, patch_nifti_pixdim, plan_and_preprocess_argv, predict_argv, run_failing_prediction, to_nnunet,
)


# ----------------------------------------------------------------------------------------------
# the cases; each returns what to run and what the error must name


def truncated_image(s: Scene) -> Expect:
    data = s.image().read_bytes()
    s.image().write_bytes(data[: len(data) // 2])
    return Expect(plan_and_preprocess_argv(), (str(s.image()), "truncated"))


def not_an_image(s: Scene) -> Expect:
    s.image().write_text("patient_id,age\n17,54\n" * 40, encoding="utf-8")
    return Expect(plan_and_preprocess_argv(), (str(s.image()), "cannot be read as an image"))


def zero_byte_image(s: Scene) -> Expect:
    s.image().write_bytes(b"")
    return Expect(plan_and_preprocess_argv(), (str(s.image()), "0 bytes"))


def nan_inf_image(s: Scene) -> Expect:
    data, geometry = read_image(s.image())
    image = data[0].astype(np.float32)
    image[0, 0, :3] = np.nan
    image[0, 1, :2] = np.inf
    write_image(image, geometry, s.image())
    return Expect(plan_and_preprocess_argv(), (str(s.image()), "5 NaN/inf"))


def nnunet_channel_file_4d(s: Scene) -> Expect:
    def make_4d(root: Path) -> None:
        path = root / "imagesTr" / "demo_001_0000.nii.gz"
        data, geometry = read_image(path)
        write_image(np.concatenate([data, data]), geometry, path)

    root = to_nnunet(s, make_4d)
    return Expect(plan_and_preprocess_argv(NNUNET_TASK), (str(root / "imagesTr" / "demo_001_0000.nii.gz"), "is 4D"))


def msd_3d_where_4d_declared(s: Scene) -> Expect:
    edit_json(s.dataset_json, lambda d: d.__setitem__("modality", {"0": "MR", "1": "CT"}))
    return Expect(plan_and_preprocess_argv(), (str(s.image()), "has 1 channel(s) but dataset.json declares 2"))


def nnunet_channel_missing(s: Scene) -> Expect:
    def declare_two(root: Path) -> None:
        edit_json(root / "dataset.json", lambda d: d.__setitem__("channel_names", {"0": "MR", "1": "CT"}))

    root = to_nnunet(s, declare_two)
    return Expect(plan_and_preprocess_argv(NNUNET_TASK),
                  (str(root / "imagesTr" / "demo_001_0001.nii.gz"), "channel 1 file of case 'demo_001' is missing"))


def label_4d(s: Scene) -> Expect:
    seg, geometry = read_label(s.label())
    write_image(np.stack([seg, seg]), geometry, s.label())
    return Expect(plan_and_preprocess_argv(), (str(s.label()), "label map must be 3D"))


def label_float_values(s: Scene) -> Expect:
    seg, geometry = read_label(s.label())
    values = seg.astype(np.float32)
    values[seg == 2] = 0.5
    write_image(values, geometry, s.label())
    return Expect(plan_and_preprocess_argv(), (str(s.label()), "non-integer values (e.g. 0.5)"))


def label_undeclared_value(s: Scene) -> Expect:
    seg, geometry = read_label(s.label())
    write_label(np.where(seg == 2, 5, seg), geometry, s.label())
    return Expect(plan_and_preprocess_argv(), (str(s.label()), "label value(s) 5 are not declared"))


def label_shape_mismatch(s: Scene) -> Expect:
    seg, geometry = read_label(s.label())
    cropped = seg[:-2]
    write_label(cropped, dataclasses.replace(geometry, shape=tuple(cropped.shape)), s.label())
    return Expect(plan_and_preprocess_argv(), (str(s.label()), "has shape"))


def spacing_zero(s: Scene) -> Expect:
    patch_nifti_pixdim(s.image(), axis=1, value=0.0)
    return Expect(plan_and_preprocess_argv(), (str(s.image()), "must be positive"))


def spacing_negative(s: Scene) -> Expect:
    patch_nifti_pixdim(s.image(), axis=3, value=-2.0)
    return Expect(plan_and_preprocess_argv(), (str(s.image()), "must be positive"))


def direction_sheared_nifti(s: Scene) -> Expect:
    """A sheared sform and no qform: ITK finds no orthonormal definition (nibabel writes it as given)."""
    image = nib.load(str(s.image()))
    affine = np.array(image.affine)
    affine[0, 1] = 0.5 * affine[1, 1] + 0.3
    out = nib.Nifti1Image(np.asanyarray(image.dataobj), affine)
    out.set_sform(affine, code=1)
    out.set_qform(None, code=0)
    nib.save(out, str(s.image()))
    return Expect(plan_and_preprocess_argv(), (str(s.image()), "orthonormal"))


def direction_scaled_mha(s: Scene) -> Expect:
    """MetaImage keeps the direction matrix verbatim, so autounet's own orthonormality check meets it."""
    data, geometry = read_image(s.image())
    scaled = tuple(v * 2.0 if i < 3 else v for i, v in enumerate(geometry.direction))
    mha = s.task / "imagesTr" / "demo_001.mha"
    write_image(data[0], dataclasses.replace(geometry, direction=scaled), mha)

    def point_to_mha(d: dict) -> None:
        d["training"][0]["image"] = "./imagesTr/demo_001.mha"

    edit_json(s.dataset_json, point_to_mha)
    return Expect(plan_and_preprocess_argv(), (str(mha), "direction matrix in the header is not orthonormal"))


def dataset_json_trailing_comma(s: Scene) -> Expect:
    text = s.dataset_json.read_text(encoding="utf-8").rstrip()
    assert text.endswith("}")
    s.dataset_json.write_text(text[:-1].rstrip() + ",\n}\n", encoding="utf-8")
    return Expect(plan_and_preprocess_argv(), (str(s.dataset_json), "trailing comma at line"))


def dataset_json_missing_key(s: Scene) -> Expect:
    edit_json(s.dataset_json, lambda d: d.pop("labels"))
    return Expect(plan_and_preprocess_argv(), (str(s.dataset_json), "missing required key 'labels'"))


def nnunet_dataset_json_missing_key(s: Scene) -> Expect:
    root = to_nnunet(s, lambda r: edit_json(r / "dataset.json", lambda d: d.pop("file_ending")))
    return Expect(plan_and_preprocess_argv(NNUNET_TASK), (str(root / "dataset.json"), "'file_ending'"))


def num_training_mismatch(s: Scene) -> Expect:
    edit_json(s.dataset_json, lambda d: d.__setitem__("numTraining", 9))
    return Expect(plan_and_preprocess_argv(), (str(s.dataset_json), "'numTraining' is 9"))


def nnunet_num_training_mismatch(s: Scene) -> Expect:
    def drop_case(root: Path) -> None:
        (root / "imagesTr" / "demo_008_0000.nii.gz").unlink()
        (root / "labelsTr" / "demo_008.nii.gz").unlink()

    root = to_nnunet(s, drop_case)
    return Expect(plan_and_preprocess_argv(NNUNET_TASK), (str(root / "dataset.json"), "'numTraining' is 8"))


def duplicate_case_id(s: Scene) -> Expect:
    edit_json(s.dataset_json, lambda d: d["training"].append(dict(d["training"][0])))
    return Expect(plan_and_preprocess_argv(), (str(s.dataset_json), "case id 'demo_001' more than once"))


def _bad_patch(path: Path, patch: list[int]) -> None:
    edit_json(path, lambda d: d["configurations"]["3d_fullres"].__setitem__("patch_size", patch))


def plans_patch_not_divisible(s: Scene) -> Expect:
    _bad_patch(s.preprocessed_plans, [30, 48, 48])
    return Expect(["plans", "Task01"], (str(s.preprocessed_plans), "3d_fullres.patch_size", "not divisible"))


def train_plans_patch_not_divisible(s: Scene) -> Expect:
    _bad_patch(s.preprocessed_plans, [30, 48, 48])
    return Expect(["train", "3d_fullres", "fold", "0", "--device", "cpu", "--workers", "0"],
                  (str(s.preprocessed_plans), "3d_fullres.patch_size", "not divisible"))


def predict_run_plans_patch_not_divisible(s: Scene) -> Expect:
    _bad_patch(s.run_plans, [15, 16, 16])
    held_out_as_two_channels(s)
    return Expect(predict_argv(s), (str(s.run_plans), "3d_fullres.patch_size", "not divisible"))


def predict_missing_channel(s: Scene) -> Expect:
    s.images.mkdir()
    shutil.copyfile(s.held_out_image(), s.images / "demo_009_0000.nii.gz")
    return Expect(predict_argv(s), (str(s.images / "demo_009_0001.nii.gz"), "channel 1 of case 'demo_009' is missing"))


def predict_3d_file_for_two_channel_model(s: Scene) -> Expect:
    s.images.mkdir()
    shutil.copyfile(s.held_out_image(), s.images / "demo_009.nii.gz")
    return Expect(predict_argv(s), (str(s.images / "demo_009.nii.gz"), "has 1 channel(s) but the model expects 2"))


def predict_empty_input(s: Scene) -> Expect:
    s.images.mkdir()
    return Expect(predict_argv(s), (str(s.images), "no input images"))


def predict_output_is_input(s: Scene) -> Expect:
    s.images.mkdir()
    shutil.copyfile(s.held_out_image(), s.images / "demo_009_0000.nii.gz")
    return Expect(predict_argv(s, output=s.images), (str(s.images), "the output folder is the input folder"))


def dataset_json_not_utf8(s: Scene) -> Expect:
    text = s.dataset_json.read_text(encoding="utf-8").replace('"name": "Demo"', '"name": "Dém\u00f6"')
    s.dataset_json.write_bytes(text.encode("latin-1"))
    return Expect(plan_and_preprocess_argv(), (str(s.dataset_json), "not UTF-8 text", "save it as UTF-8"))


def dataset_json_duplicate_key(s: Scene) -> Expect:
    text = s.dataset_json.read_text(encoding="utf-8").rstrip()
    s.dataset_json.write_text(text[:-1] + ', "labels": {"0": "background", "1": "organ"}\n}\n', encoding="utf-8")
    return Expect(plan_and_preprocess_argv(), (str(s.dataset_json), "key 'labels' appears twice"))


def num_training_string(s: Scene) -> Expect:
    edit_json(s.dataset_json, lambda d: d.__setitem__("numTraining", str(d["numTraining"])))
    return Expect(plan_and_preprocess_argv(), (str(s.dataset_json), "'numTraining' must be an integer", "(str)"))


def predict_output_is_a_file(s: Scene) -> Expect:
    s.images.mkdir()
    shutil.copyfile(s.held_out_image(), s.images / "demo_009_0000.nii.gz")
    s.predictions.write_text("not a folder\n", encoding="utf-8")
    return Expect(predict_argv(s), (str(s.predictions), "exists and is a file"))


def predict_run_plans_negative_patch(s: Scene) -> Expect:
    _bad_patch(s.run_plans, [-16, 16, 16])
    held_out_as_two_channels(s)
    return Expect(predict_argv(s), (str(s.run_plans), "3d_fullres.patch_size", "within 1..4096"))


def train_plans_huge_batch(s: Scene) -> Expect:
    edit_json(s.preprocessed_plans, lambda d: d["configurations"]["3d_fullres"].__setitem__("batch_size", 1000000))
    return Expect(["train", "3d_fullres", "fold", "0", "--device", "cpu", "--workers", "0"],
                  (str(s.preprocessed_plans), "3d_fullres.batch_size", "within 1..4096"))


def complex_image(s: Scene) -> Expect:
    data, geometry = read_image(s.image())
    image = nib.Nifti1Image(data[0].T.astype(np.complex64) * (1 + 1j), np.diag([*geometry.spacing, 1.0]))
    nib.save(image, s.image())
    return Expect(plan_and_preprocess_argv(), (str(s.image()), "complex-valued voxels"))


def label_value_beyond_int64(s: Scene) -> Expect:
    import SimpleITK as sitk

    original = sitk.ReadImage(str(s.label()))
    seg = sitk.GetArrayFromImage(original).astype(np.uint64)
    seg[0, 0, 0] = 2**63 + 5
    image = sitk.GetImageFromArray(seg)
    image.CopyInformation(original)
    sitk.WriteImage(image, str(s.label()))
    return Expect(plan_and_preprocess_argv(), (str(s.label()), "label value(s) 9223372036854775813 are not declared"))


def label_shifted_origin(s: Scene) -> Expect:
    import SimpleITK as sitk

    label = sitk.ReadImage(str(s.label()))
    label.SetOrigin(tuple(o + d for o, d in zip(label.GetOrigin(), (40.0, 0.0, 0.0))))
    sitk.WriteImage(label, str(s.label()))
    return Expect(plan_and_preprocess_argv(), (str(s.label()), "label lies elsewhere in space", "--accept-label-geometry"))


def zero_length_axis(s: Scene) -> Expect:
    edit_nifti_header(s.image(), (42, "h", (0,)))  # dim[1] = 0
    return Expect(plan_and_preprocess_argv(), (str(s.image()), "axis 1 has length 0", "the image is empty"))


def image_is_a_device(s: Scene) -> Expect:
    s.image().unlink()
    s.image().symlink_to("/dev/zero")
    return Expect(plan_and_preprocess_argv(), (str(s.image()), "is not a regular file"))


def nan_in_header_offsets(s: Scene) -> Expect:
    edit_nifti_header(s.image(), (252, "h", (1,)),  # qform_code: scanner
                      (268, "3f", (float("nan"), 0.0, 0.0)))  # qoffset_x..z
    return Expect(plan_and_preprocess_argv(), (str(s.image()), "qform (quatern_b..qoffset_z) in the header holds NaN"))


def qform_sform_disagree(s: Scene) -> Expect:
    img = nib.load(s.image())
    sform = img.affine.copy()
    sform[0] *= -1  # x flipped ...
    sform[0, 3] += 100.0  # ... and 100 mm away
    img.set_sform(sform, code=1)
    img.set_qform(img.get_qform(), code=1)
    nib.save(img, s.image())
    return Expect(plan_and_preprocess_argv(), (str(s.image()), "the qform and the sform of the NIfTI header disagree",
                                               "--nifti-transform qform|sform"))


def msd_label_name_twice(s: Scene) -> Expect:
    edit_json(s.dataset_json, lambda d: d.__setitem__("labels", {"0": "background", "1": "organ", "2": "organ"}))
    return Expect(plan_and_preprocess_argv(), (str(s.dataset_json), "gives the name 'organ' to values 1 and 2"))


def _large_zero_nifti(path: Path, shape_xyz: tuple[int, int, int]) -> None:
    """A real .nii.gz of int16 zeros of `shape_xyz`, written in chunks: a small file that expands a lot.

    It stands for a gzip bomb (4 MB holding 4 GB of zeros) at a size a test can afford: the
    refusal must come from the header, before anything is decompressed.
    """
    nib.save(nib.Nifti1Image(np.zeros((2, 2, 2), np.int16), np.eye(4)), path)
    header = bytearray(gzip.decompress(path.read_bytes()))
    vox_offset = int(struct.unpack_from("<f", header, 108)[0])
    struct.pack_into("<8h", header, 40, 3, *shape_xyz, 1, 1, 1, 1)
    remaining = int(np.prod(shape_xyz)) * 2
    chunk = bytes(16 * 1024**2)
    with gzip.open(path, "wb", compresslevel=1) as out:
        out.write(bytes(header[:vox_offset]))
        while remaining > 0:
            out.write(chunk[: min(remaining, len(chunk))])
            remaining -= len(chunk)


def image_needs_more_memory_than_allowed(s: Scene) -> Expect:
    _large_zero_nifti(s.image(), (512, 512, 512))
    return Expect(plan_and_preprocess_argv() + ["--memory-gb", "0.25"],
                  (str(s.image()), "needs about 1.00 GiB of memory to read", "0.20 GiB one case may use"))


def spacing_outlier_large(s: Scene) -> Expect:
    for path in (s.image(), s.label()):
        for axis in (1, 2, 3):
            patch_nifti_pixdim(path, axis, 100.0)
    return Expect(plan_and_preprocess_argv(), (str(s.image()), "spacing 100x100x100 mm", "check the spacing"))


def spacing_outlier_small(s: Scene) -> Expect:
    for path in (s.image(), s.label()):
        for axis in (1, 2, 3):
            patch_nifti_pixdim(path, axis, 1e-4)
    return Expect(plan_and_preprocess_argv(), (str(s.image()), "spacing 0.0001x0.0001x0.0001 mm", "check the spacing"))



CASES: tuple[Case, ...] = (
    Case(truncated_image, integrity=True),
    Case(not_an_image, integrity=True),
    Case(zero_byte_image, integrity=True),
    Case(nan_inf_image, integrity=True),
    Case(nnunet_channel_file_4d, integrity=True),
    Case(msd_3d_where_4d_declared, integrity=True),
    Case(nnunet_channel_missing, integrity=True),
    Case(label_4d, integrity=True),
    Case(label_float_values, integrity=True),
    Case(label_undeclared_value, integrity=True),
    Case(label_value_beyond_int64, integrity=True),
    Case(label_shifted_origin, integrity=True),
    Case(zero_length_axis, integrity=True),
    Case(nan_in_header_offsets, integrity=True),
    Case(qform_sform_disagree, integrity=True),
    Case(image_is_a_device, integrity=True),
    Case(complex_image, integrity=True),
    Case(label_shape_mismatch, integrity=True),
    Case(spacing_zero, integrity=True),
    Case(spacing_negative, integrity=True),
    Case(direction_sheared_nifti, integrity=True),
    Case(direction_scaled_mha, integrity=True),
    Case(image_needs_more_memory_than_allowed, integrity=True),
    Case(spacing_outlier_large, integrity=True),
    Case(spacing_outlier_small, integrity=True),
    Case(dataset_json_trailing_comma),
    Case(dataset_json_missing_key),
    Case(nnunet_dataset_json_missing_key),
    Case(num_training_mismatch),
    Case(nnunet_num_training_mismatch),
    Case(duplicate_case_id),
    Case(dataset_json_not_utf8),
    Case(dataset_json_duplicate_key),
    Case(num_training_string),
    Case(msd_label_name_twice),
    Case(plans_patch_not_divisible, planned=True),
    Case(train_plans_patch_not_divisible, planned=True),
    Case(predict_run_plans_patch_not_divisible, planned=True),
    Case(predict_missing_channel, planned=True),
    Case(predict_3d_file_for_two_channel_model, planned=True),
    Case(predict_empty_input, planned=True),
    Case(predict_output_is_input, planned=True),
    Case(predict_output_is_a_file, planned=True),
    Case(predict_run_plans_negative_patch, planned=True),
    Case(train_plans_huge_batch, planned=True),
)




@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_refused_in_one_line_naming_it(
    case: Case, request: pytest.FixtureRequest, demo_task_3d: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert_refused(case, Scene(tmp_path.resolve()), demo_task_3d, lambda: request.getfixturevalue("planned_workspace"),
                   capsys, monkeypatch)


# ----------------------------------------------------------------------------------------------
# prediction: a broken case fails alone (the others are still predicted), exit code 1


def test_unreadable_case_at_prediction_names_case_and_file(
    predict_scene: Scene, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = predict_scene.images / "demo_009_0000.nii.gz"
    data = predict_scene.held_out_image().read_bytes()
    broken.write_bytes(data[: len(data) // 2])
    shutil.copyfile(predict_scene.held_out_image(), predict_scene.images / "demo_009_0001.nii.gz")

    last = run_failing_prediction(predict_scene, capsys)

    assert last.startswith(f"error: demo_009: {broken}: cannot be read as an image (truncated")
    assert sorted(p.name for p in predict_scene.predictions.iterdir()) == ["predict_info.json"]
    assert normalise(last, predict_scene) in TROUBLESHOOTING.read_text(encoding="utf-8")


def test_4d_channel_file_at_prediction_names_the_file(
    predict_scene: Scene, capsys: pytest.CaptureFixture[str]
) -> None:
    four_d = predict_scene.images / "demo_009_0000.nii.gz"
    data, geometry = read_image(predict_scene.held_out_image())
    write_image(np.concatenate([data, data]), geometry, four_d)
    shutil.copyfile(predict_scene.held_out_image(), predict_scene.images / "demo_009_0001.nii.gz")

    last = run_failing_prediction(predict_scene, capsys)

    assert str(four_d) in last and "is 4D" in last


def test_nan_image_at_prediction_is_refused(predict_scene: Scene, capsys: pytest.CaptureFixture[str]) -> None:
    _, geometry = read_image(predict_scene.held_out_image())
    tiny = dataclasses.replace(geometry, shape=(6, 10, 10))  # small, so the unfixed code predicts it quickly
    image = np.full((6, 10, 10), 100.0, dtype=np.float32)
    image[0, 0, :3] = np.nan
    write_image(image, tiny, predict_scene.images / "demo_009_0000.nii.gz")
    write_image(np.full((6, 10, 10), 100.0, dtype=np.float32), tiny, predict_scene.images / "demo_009_0001.nii.gz")

    last = run_failing_prediction(predict_scene, capsys)

    assert str(predict_scene.images / "demo_009_0000.nii.gz") in last and "NaN/inf" in last
