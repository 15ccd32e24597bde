import json

import numpy as np
import pytest
import torch
import SimpleITK as sitk

from autounet.errors import AutounetError, DatasetError
from autounet.inference.predict_folder import output_name, predict_folder, shard
from autounet.io.images import write_image
from autounet.core.workspace import Workspace

from inference_toys import flipped_geometry, labelled_case, make_plans, write_run


@pytest.fixture
def ws(tmp_path):
    ws = Workspace(tmp_path / "ws")
    write_run(ws.results("Task99_Toy"), make_plans([3.0, 1.3, 0.7]), folds=(0, 1))
    return ws


def _inputs(folder, ids=("a", "b", "c"), layout="nnunet"):
    folder.mkdir(parents=True, exist_ok=True)
    geometry = flipped_geometry()
    labels = {}
    for i, case in enumerate(ids):
        values, image = labelled_case(seed=i)
        name = f"{case}_0000.nii.gz" if layout == "nnunet" else f"{case}.nii.gz"
        write_image(image[0], geometry, folder / name)
        labels[case] = values
    return labels


def test_predicts_every_case_on_the_input_grid(ws, tmp_path):
    labels = _inputs(tmp_path / "in")
    out = tmp_path / "out"
    report = predict_folder(ws, tmp_path / "in", out, device="cpu", show_progress=False, cwd=tmp_path)
    assert report.written == ["a", "b", "c"] and not report.failed
    geometry = flipped_geometry()
    for case, values in labels.items():
        img = sitk.ReadImage(str(out / f"{case}.nii.gz"))
        np.testing.assert_array_equal(sitk.GetArrayFromImage(img), values)
        assert img.GetSpacing() == pytest.approx(geometry.spacing)
        assert img.GetOrigin() == pytest.approx(geometry.origin)
        assert img.GetDirection() == pytest.approx(geometry.direction)
        assert img.GetPixelID() == sitk.sitkUInt8
    info = json.loads((out / "predict_info.json").read_text())
    assert info["task"] == "Task99_Toy" and info["configuration"] == "3d_fullres"
    assert info["folds"] == {"3d_fullres": ["0", "1"]}
    assert info["mirroring"] is True and info["step_size"] == 0.5 and info["postprocessing"] is None
    assert "torch" in info["versions"]

    again = predict_folder(ws, tmp_path / "in", out, device="cpu", show_progress=False, resume=True, cwd=tmp_path)
    assert again.skipped == ["a", "b", "c"] and not again.written


@pytest.fixture
def restore_torch_threads():
    """predict_folder sets torch's (process-wide) thread count; later tests get theirs back."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_msd_single_file_probabilities_and_postprocessing(ws, tmp_path, restore_torch_threads):
    from autounet.postprocessing.rule import PostprocessingDecision, save_postprocessing

    run = ws.results("Task99_Toy") / "3d_fullres"
    save_postprocessing(PostprocessingDecision(
        keep_largest_foreground=False, keep_largest_per_label=[7], dice_before={}, dice_after={},
        foreground_mean_before=0.5, foreground_mean_after=0.6, decided_on="3d_fullres", num_cases=1),
        run / "postprocessing.json")
    labels = _inputs(tmp_path / "in", ids=("x",), layout="msd")
    out = tmp_path / "out"
    report = predict_folder(ws, tmp_path / "in" / "x.nii.gz", out, device="cpu", save_probabilities=True,
                            show_progress=False, cwd=tmp_path, folds=["0"], precision="fp32", threads=1)
    assert report.written == ["x"]
    pred = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "x.nii.gz")))
    from autounet.postprocessing.rule import apply_postprocessing, load_postprocessing

    expected = apply_postprocessing(labels["x"], load_postprocessing(run / "postprocessing.json"))
    assert (expected != labels["x"]).any()  # the speckles of label 7 really are removed
    np.testing.assert_array_equal(pred, expected)
    with np.load(out / "x.npz", allow_pickle=False) as npz:
        assert npz["probabilities"].shape == (3, *labels["x"].shape)
        assert npz["label_values"].tolist() == [0, 3, 7]
    info = json.loads((out / "predict_info.json").read_text())
    assert info["folds"] == {"3d_fullres": ["0"]}
    assert info["precision"] == "fp32" and info["threads"] == 1


def test_refuses_output_equal_to_input(ws, tmp_path):
    _inputs(tmp_path / "in")
    before = sorted(p.name for p in (tmp_path / "in").iterdir())
    with pytest.raises(AutounetError, match="input folder"):
        predict_folder(ws, tmp_path / "in", tmp_path / "in", device="cpu", show_progress=False, cwd=tmp_path)
    assert sorted(p.name for p in (tmp_path / "in").iterdir()) == before


def test_empty_input(ws, tmp_path):
    (tmp_path / "in").mkdir()
    with pytest.raises(DatasetError, match="no input images"):
        predict_folder(ws, tmp_path / "in", tmp_path / "out", device="cpu", show_progress=False, cwd=tmp_path)


def test_input_is_checked_before_any_checkpoint_is_loaded(ws, tmp_path, monkeypatch):
    """A wrong input folder is reported at once, without loading (or needing) the trained weights."""
    from autounet.inference import predictor

    def must_not_load(*args, **kwargs):
        raise AssertionError("a checkpoint was loaded before the input was checked")

    monkeypatch.setattr(predictor.Predictor, "from_run_folder", must_not_load)
    (tmp_path / "in").mkdir()
    with pytest.raises(DatasetError, match="no input images"):
        predict_folder(ws, tmp_path / "in", tmp_path / "out", device="cpu", show_progress=False, cwd=tmp_path)
    assert not (tmp_path / "out").exists()


def test_nan_voxels_fail_their_case_naming_the_file(ws, tmp_path):
    _inputs(tmp_path / "in", ids=("a", "b"))
    path = tmp_path / "in" / "b_0000.nii.gz"
    _, image = labelled_case(seed=5)
    poisoned = image[0].astype(np.float32)
    poisoned[0, 0, :2] = np.nan
    poisoned[0, 1, 0] = np.inf
    write_image(poisoned, flipped_geometry(), path)
    report = predict_folder(ws, tmp_path / "in", tmp_path / "out", device="cpu", show_progress=False, cwd=tmp_path)
    assert report.written == ["a"]
    assert report.failed["b"] == f"{path}: contains 3 NaN/inf voxel(s); replace them (e.g. with 0) and re-export"


def test_missing_channel_names_the_case(tmp_path):
    ws = Workspace(tmp_path / "ws")
    write_run(ws.results("Task98_Two"), make_plans([3.0, 1.3, 0.7], num_channels=2))
    _inputs(tmp_path / "in", ids=("a",))
    with pytest.raises(DatasetError, match="'a'"):
        predict_folder(ws, tmp_path / "in", tmp_path / "out", device="cpu", show_progress=False, cwd=tmp_path)


def test_failed_case_is_reported_and_others_continue(ws, tmp_path):
    _inputs(tmp_path / "in", ids=("a", "c"))
    (tmp_path / "in" / "b_0000.nii.gz").write_bytes(b"not an image")
    report = predict_folder(ws, tmp_path / "in", tmp_path / "out", device="cpu", show_progress=False, cwd=tmp_path)
    assert report.written == ["a", "c"]
    assert list(report.failed) == ["b"] and "b_0000.nii.gz" in report.failed["b"]
    assert not (tmp_path / "out" / "b.nii.gz").exists()


def test_parts_split_the_sorted_cases(ws, tmp_path):
    _inputs(tmp_path / "in", ids=("c", "a", "b"))
    report = predict_folder(ws, tmp_path / "in", tmp_path / "out", device="cpu", show_progress=False, cwd=tmp_path,
                            num_parts=2, part_id=1, use_mirroring=False)
    assert report.written == ["b"]
    assert shard(["a", "b", "c", "d", "e"], 2, 0) == ["a", "c", "e"]
    with pytest.raises(AutounetError, match="part-id"):
        shard(["a"], 2, 2)


def test_output_name_keeps_the_input_ending(tmp_path):
    assert output_name("la_003", tmp_path / "la_003_0000.nii.gz") == "la_003.nii.gz"
    assert output_name("BRATS_001", tmp_path / "BRATS_001.nii.gz") == "BRATS_001.nii.gz"
    assert output_name("case", tmp_path / "case_0000.nrrd") == "case.nrrd"
