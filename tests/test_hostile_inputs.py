"""Hostile inputs of our own, beyond the issues' list: other JSON traps, other header lies,
damaged trained models, and inputs a model cannot answer for.

Each case builds its input on the fly in a private copy of the demo task and is checked by
`refusals.assert_refused` (non-zero exit, one line naming the file or key, no traceback,
nothing written; documented cases are quoted in the README's troubleshooting table). Cases
where one prediction case fails while the command goes on are checked by
`refusals.run_failing_prediction`.

Classes: JSON traps (1-11), header lies and broken files (12-25), task content (26),
trained-model damage (27-31), prediction inputs (32-34).
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from autounet.cli import main
from autounet.io.images import read_image, write_image
from refusals import (
    Case, Expect, Scene, assert_refused, edit_json, edit_nifti_header, held_out_as_two_channels,
    plan_and_preprocess_argv, predict_argv, run_failing_prediction,
)

TRAIN = ["train", "3d_fullres", "fold", "0", "--device", "cpu", "--workers", "0"]


def _checkpoint(s: Scene) -> Path:
    return s.run_plans.parent / "fold_0" / "checkpoint_final.pt"


def _edit_checkpoint(s: Scene, change: Callable[[dict], object]) -> None:
    """Load the run's fold-0 checkpoint, let `change` alter its weights dict, save it back."""
    state = torch.load(_checkpoint(s), weights_only=True)
    change(state["network"])
    torch.save(state, _checkpoint(s))


# ----------------------------------------------------------------------------------------------
# JSON traps


def json_nan_literal(s: Scene) -> Expect:
    text = s.dataset_json.read_text(encoding="utf-8")
    s.dataset_json.write_text(text.replace('"numTraining": 8', '"numTraining": NaN'), encoding="utf-8")
    return Expect(plan_and_preprocess_argv(), (str(s.dataset_json), "'NaN' is not a JSON number"))


def json_nested_deeply(s: Scene) -> Expect:
    s.dataset_json.write_text('{"labels": ' + "[" * 100_000 + "]" * 100_000 + "}", encoding="utf-8")
    return Expect(plan_and_preprocess_argv(), (str(s.dataset_json), "nested too deeply"))


def json_oversized(s: Scene) -> Expect:
    with open(s.dataset_json, "r+b") as fh:  # sparse: 65 MiB on paper, nothing on disk
        fh.truncate(65 * 2**20)
    return Expect(plan_and_preprocess_argv(), (str(s.dataset_json), "is 65 MiB", "more than the 64 MiB"))


def json_is_a_device(s: Scene) -> Expect:
    s.dataset_json.unlink()
    os.symlink("/dev/zero", s.dataset_json)
    return Expect(plan_and_preprocess_argv(), (str(s.dataset_json), "is not a regular file"))


def json_top_level_list(s: Scene) -> Expect:
    s.dataset_json.write_text("[1, 2]\n", encoding="utf-8")
    return Expect(plan_and_preprocess_argv(), (str(s.dataset_json), "must hold a JSON object, got list"))


def json_label_key_not_integer(s: Scene) -> Expect:
    edit_json(s.dataset_json, lambda d: d["labels"].update({"1.5": "half"}))
    return Expect(plan_and_preprocess_argv(), (str(s.dataset_json), "'labels' key '1.5' is not an integer"))


def json_negative_label(s: Scene) -> Expect:
    edit_json(s.dataset_json, lambda d: d["labels"].update({"-1": "below"}))
    return Expect(plan_and_preprocess_argv(), (str(s.dataset_json), "'labels' values must be >= 0"))


def json_too_many_labels(s: Scene) -> Expect:
    edit_json(s.dataset_json, lambda d: d["labels"].update({str(v): f"l{v}" for v in range(3, 1003)}))
    return Expect(plan_and_preprocess_argv(), (str(s.dataset_json), "declares 1003 labels", "more than the 1000"))


def json_empty_modality(s: Scene) -> Expect:
    edit_json(s.dataset_json, lambda d: d.__setitem__("modality", {}))
    return Expect(plan_and_preprocess_argv(), (str(s.dataset_json), "'modality' must be a non-empty object"))


def plans_infinity(s: Scene) -> Expect:
    text = s.preprocessed_plans.read_text(encoding="utf-8")
    s.preprocessed_plans.write_text(text.replace('"batch_size": ', '"batch_size": Infinity, "x": ', 1),
                                    encoding="utf-8")
    return Expect(TRAIN, (str(s.preprocessed_plans), "'Infinity' is not a JSON number"))


def plans_misspelt_key(s: Scene) -> Expect:
    edit_json(s.preprocessed_plans, lambda d: d["configurations"]["3d_fullres"].__setitem__("batchsize", 2))
    return Expect(TRAIN, (str(s.preprocessed_plans), "configurations.3d_fullres", "unknown key(s) ['batchsize']"))


# ----------------------------------------------------------------------------------------------
# header lies and broken files


def nifti_vox_offset_beyond_file(s: Scene) -> Expect:
    edit_nifti_header(s.image(), (108, "f", (1e9,)))
    return Expect(plan_and_preprocess_argv(), (str(s.image()), "truncated"))


def nifti_nine_dimensions(s: Scene) -> Expect:
    edit_nifti_header(s.image(), (40, "h", (9,)))
    return Expect(plan_and_preprocess_argv(), (str(s.image()), "invalid dimension count 9"))


def nifti_rgb_voxels(s: Scene) -> Expect:
    edit_nifti_header(s.image(), (70, "2h", (128, 24)))
    return Expect(plan_and_preprocess_argv(), (str(s.image()), "holds RGB colour voxels"))


def nifti_unknown_datatype(s: Scene) -> Expect:
    edit_nifti_header(s.image(), (70, "h", (999,)))
    return Expect(plan_and_preprocess_argv(), (str(s.image()), "datatype code 999 is unknown"))


def nifti_bitpix_lies(s: Scene) -> Expect:
    edit_nifti_header(s.image(), (72, "h", (8,)))
    return Expect(plan_and_preprocess_argv(), (str(s.image()), "bitpix 8", "does not match datatype"))


def nifti_infinite_scaling(s: Scene) -> Expect:
    edit_nifti_header(s.image(), (112, "f", (float("inf"),)))
    return Expect(plan_and_preprocess_argv(), (str(s.image()), "scl_slope inf", "not finite"))


def label_scaled_to_fractions(s: Scene) -> Expect:
    edit_nifti_header(s.label(), (112, "2f", (0.5, 0.0)))
    return Expect(plan_and_preprocess_argv(), (str(s.label()), "non-integer values"))


def label_shifted_by_intercept(s: Scene) -> Expect:
    edit_nifti_header(s.label(), (112, "2f", (1.0, 7.0)))
    return Expect(plan_and_preprocess_argv(), (str(s.label()), "label value(s) 7, 8, 9 are not declared"))


def label_negative_value(s: Scene) -> Expect:
    img = nib.load(s.label())
    seg = np.asarray(img.dataobj).astype(np.int8)
    seg[0, 0, 0] = -1
    nib.save(nib.Nifti1Image(seg, img.affine), s.label())
    return Expect(plan_and_preprocess_argv(), (str(s.label()), "label value(s) -1 are not declared"))


def gzip_trailing_garbage(s: Scene) -> Expect:
    s.image().write_bytes(s.image().read_bytes() + b"garbage" * 100)
    return Expect(plan_and_preprocess_argv(), (str(s.image()), "corrupt gzip data"))


def plain_nifti_named_gz(s: Scene) -> Expect:
    s.image().write_bytes(gzip.decompress(s.image().read_bytes()))
    return Expect(plan_and_preprocess_argv(), (str(s.image()), "not gzip-compressed data"))


def gzip_checksum_corrupt(s: Scene) -> Expect:
    data = bytearray(s.image().read_bytes())
    data[-6] ^= 0xFF  # the CRC32 of the trailer
    s.image().write_bytes(bytes(data))
    return Expect(plan_and_preprocess_argv(), (str(s.image()), "cannot be read as an image"))


def image_symlink_loop(s: Scene) -> Expect:
    s.image().unlink()
    os.symlink(s.image(), s.image())
    return Expect(plan_and_preprocess_argv(), (str(s.image()), "symbolic link whose target does not exist"))


def label_dangling_symlink(s: Scene) -> Expect:
    s.label().unlink()
    os.symlink(s.root / "elsewhere" / "gone.nii.gz", s.label())
    return Expect(plan_and_preprocess_argv(), (str(s.label()), "symbolic link whose target does not exist"))


# ----------------------------------------------------------------------------------------------
# task content


def no_foreground_anywhere(s: Scene) -> Expect:
    for path in sorted((s.task / "labelsTr").glob("*.nii.gz")):
        img = nib.load(path)
        nib.save(nib.Nifti1Image(np.zeros(img.shape, np.uint8), img.affine), path)
    return Expect(plan_and_preprocess_argv(), (str(s.dataset_json), "contains a foreground label"))


# ----------------------------------------------------------------------------------------------
# trained-model damage (the whole command stops before anything is written)


def checkpoint_nan_weights(s: Scene) -> Expect:
    _edit_checkpoint(s, lambda weights: next(iter(weights.values())).fill_(float("nan")))
    held_out_as_two_channels(s)
    return Expect(predict_argv(s), (str(_checkpoint(s)), "hold NaN/inf", "use another checkpoint or retrain"))


def checkpoint_truncated(s: Scene) -> Expect:
    data = _checkpoint(s).read_bytes()
    _checkpoint(s).write_bytes(data[: len(data) // 2])
    held_out_as_two_channels(s)
    return Expect(predict_argv(s), (str(_checkpoint(s)), "not a loadable checkpoint"))


def checkpoint_random_bytes(s: Scene) -> Expect:
    _checkpoint(s).write_bytes(np.random.default_rng(0).bytes(5000))
    held_out_as_two_channels(s)
    return Expect(predict_argv(s), (str(_checkpoint(s)), "refused"))


def checkpoint_weights_of_another_network(s: Scene) -> Expect:
    _edit_checkpoint(s, lambda weights: weights.__setitem__(next(iter(weights)), torch.zeros(3, 3)))
    held_out_as_two_channels(s)
    return Expect(predict_argv(s), (str(_checkpoint(s)), "weights do not fit network"))


def run_plans_nan_spacing(s: Scene) -> Expect:
    text = s.run_plans.read_text(encoding="utf-8")
    s.run_plans.write_text(text.replace('"spacing": [', '"spacing": [NaN, ', 1), encoding="utf-8")
    held_out_as_two_channels(s)
    return Expect(predict_argv(s), (str(s.run_plans), "'NaN' is not a JSON number"))


CASES: tuple[Case, ...] = (
    Case(json_nan_literal),
    Case(json_nested_deeply),
    Case(json_oversized),
    Case(json_is_a_device, documented=False),
    Case(json_top_level_list, documented=False),
    Case(json_label_key_not_integer, documented=False),
    Case(json_negative_label, documented=False),
    Case(json_too_many_labels),
    Case(json_empty_modality, documented=False),
    Case(plans_infinity, planned=True, documented=False),
    Case(plans_misspelt_key, planned=True, documented=False),
    Case(nifti_vox_offset_beyond_file, integrity=True, documented=False),
    Case(nifti_nine_dimensions, integrity=True, documented=False),
    Case(nifti_rgb_voxels, integrity=True),
    Case(nifti_unknown_datatype, integrity=True, documented=False),
    Case(nifti_bitpix_lies, integrity=True, documented=False),
    Case(nifti_infinite_scaling, integrity=True),
    Case(label_scaled_to_fractions, integrity=True, documented=False),
    Case(label_shifted_by_intercept, integrity=True, documented=False),
    Case(label_negative_value, integrity=True, documented=False),
    Case(gzip_trailing_garbage, integrity=True, documented=False),
    Case(plain_nifti_named_gz, integrity=True, documented=False),
    Case(gzip_checksum_corrupt, integrity=True, documented=False),
    Case(image_symlink_loop, integrity=True),
    Case(label_dangling_symlink, integrity=True, documented=False),
    Case(no_foreground_anywhere, integrity=True),
    Case(checkpoint_nan_weights, planned=True),
    Case(checkpoint_truncated, planned=True, documented=False),
    Case(checkpoint_random_bytes, planned=True, documented=False),
    Case(checkpoint_weights_of_another_network, planned=True, documented=False),
    Case(run_plans_nan_spacing, planned=True, documented=False),
)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_input_is_refused_in_one_line_naming_it(
    case: Case, request: pytest.FixtureRequest, demo_task_3d: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert_refused(case, Scene(tmp_path.resolve()), demo_task_3d, lambda: request.getfixturevalue("planned_workspace"),
                   capsys, monkeypatch)


# ----------------------------------------------------------------------------------------------
# prediction inputs the model cannot answer for: that case fails, by name; nothing is written for it


def test_2d_image_given_to_a_3d_model_is_refused(predict_scene: Scene, capsys: pytest.CaptureFixture[str]) -> None:
    data, _ = read_image(predict_scene.held_out_image())
    for channel in (0, 1):
        nib.save(nib.Nifti1Image(data[0, 5].T.copy(), np.eye(4)), predict_scene.images / f"demo_009_000{channel}.nii.gz")

    last = run_failing_prediction(predict_scene, capsys)

    assert f"{predict_scene.images / 'demo_009_0000.nii.gz'}: is a 2D image, but 3d_fullres was trained on 3D" in last


def test_case_too_large_for_memory_after_resampling_is_refused(
    predict_scene: Scene, capsys: pytest.CaptureFixture[str]
) -> None:
    """40 mm voxels resampled to the model's ~1 mm grid: 64000x the voxels (once 21 GB resident)."""
    data, geometry = read_image(predict_scene.held_out_image())
    coarse = dataclasses.replace(geometry, spacing=(40.0, 40.0, 40.0))
    for channel in (0, 1):
        write_image(data[0], coarse, predict_scene.images / f"demo_009_000{channel}.nii.gz")

    last = run_failing_prediction(predict_scene, capsys)

    assert last.startswith("error: demo_009: case demo_009: resampling") and "GiB one case may use" in last


def test_qform_sform_choice_is_applied_at_prediction(predict_scene: Scene, capsys: pytest.CaptureFixture[str]) -> None:
    """With --nifti-transform the chosen transform's grid is the prediction's grid (here the sform's)."""
    img = nib.load(predict_scene.held_out_image())
    data = np.asarray(img.dataobj)
    qform = np.diag([*img.header.get_zooms()[:3], 1.0])
    sform = qform.copy()
    sform[0, 3] = 100.0
    for channel in (0, 1):
        out = nib.Nifti1Image(data, None)
        out.set_qform(qform, code=1)
        out.set_sform(sform, code=2)
        nib.save(out, predict_scene.images / f"demo_009_000{channel}.nii.gz")
    argv = [*predict_argv(predict_scene), "--workspace", str(predict_scene.ws)]
    assert main(argv) == 1
    assert "the qform and the sform of the NIfTI header disagree" in capsys.readouterr().err
    shutil.rmtree(predict_scene.predictions)
    assert main([*argv, "--nifti-transform", "sform"]) == 0
    written = nib.load(predict_scene.predictions / "demo_009.nii.gz")
    assert np.allclose(written.affine, sform, atol=1e-4)
    assert json.loads((predict_scene.predictions / "predict_info.json").read_text())["task"] == "Task01_Demo"
