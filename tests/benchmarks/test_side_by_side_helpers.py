"""Pure helpers of the side-by-side benchmarks (benchmarks/_nnunet.py, train_throughput.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import _nnunet  # noqa: E402
import train_throughput  # noqa: E402


def _nnunet_plans(transpose_forward: list[int]) -> dict:
    return {
        "transpose_forward": transpose_forward,
        "configurations": {"3d_fullres": {
            "patch_size": [64, 64, 64], "batch_size": 4, "spacing": [1, 1, 1],
            "architecture": {"network_class_name": "PlainConvUNet", "arch_kwargs": {
                "n_stages": 2, "features_per_stage": [32, 64], "kernel_sizes": [[3, 3, 3]] * 2,
                "strides": [[1, 1, 1], [2, 2, 2]], "n_conv_per_stage": [2, 2], "n_conv_per_stage_decoder": [2],
                "conv_bias": True}},
        }},
    }


def _autounet_plans(transpose_backward: list[int], architecture: str = "plain_unet") -> dict:
    return {
        "transpose_backward": transpose_backward,
        "configurations": {"3d_fullres": {
            "patch_size": [20, 40, 80], "batch_size": 2,
            "network": {"architecture": architecture, "features_per_stage": [16, 32, 64],
                        "kernel_sizes": [[1, 3, 3], [3, 3, 3], [3, 3, 3]],
                        "strides": [[1, 1, 1], [1, 2, 2], [2, 2, 2]],
                        "n_conv_encoder": [2, 2, 2], "n_conv_decoder": [2, 2], "blocks": []},
        }},
    }


def test_match_copies_patch_batch_and_topology_in_same_axis_order() -> None:
    plans, notes = _nnunet.match_nnunet_plans(_nnunet_plans([0, 1, 2]), _autounet_plans([0, 1, 2]), "3d_fullres")
    cfg = plans["configurations"]["3d_fullres"]
    kwargs = cfg["architecture"]["arch_kwargs"]
    assert cfg["patch_size"] == [20, 40, 80] and cfg["batch_size"] == 2
    assert kwargs["n_stages"] == 3 and kwargs["features_per_stage"] == [16, 32, 64]
    assert kwargs["strides"] == [[1, 1, 1], [1, 2, 2], [2, 2, 2]]
    assert kwargs["n_conv_per_stage_decoder"] == [2, 2]
    assert kwargs["conv_bias"] is True  # keys autounet has no counterpart for are left alone
    assert "[64, 64, 64]" in notes[0] and "[20, 40, 80]" in notes[1]


def test_match_maps_axes_between_different_transpositions() -> None:
    # autounet transposed (z, y, x) -> (x, z, y) (backward [1, 2, 0]); its patch [20, 40, 80] is x=20, z=40, y=80.
    # nnU-Net keeps (z, y, x), so it must get z=40, y=80, x=20.
    plans, _ = _nnunet.match_nnunet_plans(_nnunet_plans([0, 1, 2]), _autounet_plans([1, 2, 0]), "3d_fullres")
    cfg = plans["configurations"]["3d_fullres"]
    assert cfg["patch_size"] == [40, 80, 20]
    assert cfg["architecture"]["arch_kwargs"]["kernel_sizes"][0] == [3, 3, 1]


def test_match_leaves_the_input_unchanged_and_rejects_other_architectures() -> None:
    original = _nnunet_plans([0, 1, 2])
    _nnunet.match_nnunet_plans(original, _autounet_plans([0, 1, 2]), "3d_fullres")
    assert original["configurations"]["3d_fullres"]["patch_size"] == [64, 64, 64]
    with pytest.raises(ValueError, match="residual"):
        _nnunet.match_nnunet_plans(original, _autounet_plans([0, 1, 2], "residual_unet"), "3d_fullres")


def test_parse_nnunet_epoch_times() -> None:
    text = ("2026-01-01 10:00:00.1: Epoch 0\n2026-01-01 10:00:09.0: Epoch time: 8.93 s\n"
            "2026-01-01 10:00:09.0: Epoch 1\n2026-01-01 10:00:15.0: Epoch time: 6 s\nYayy! New best EMA\n")
    assert _nnunet.parse_nnunet_epoch_times(text) == [8.93, 6.0]
    assert _nnunet.parse_nnunet_epoch_times("no epochs here") == []


def test_nnunet_predict_command_switches_tta_only_by_flag() -> None:
    python = Path("/venv/bin/python")
    on = _nnunet.nnunet_predict_command(python, 7, "3d_fullres", Path("i"), Path("o"), "cpu", mirroring=True)
    off = _nnunet.nnunet_predict_command(python, 7, "3d_fullres", Path("i"), Path("o"), "cpu", mirroring=False)
    assert on[0] == "/venv/bin/nnUNetv2_predict" and "--disable_tta" not in on
    assert off == on + ["--disable_tta"]
    assert on[on.index("-step_size") + 1] == "0.5" and on[on.index("-f") + 1] == "0"


def test_summarize_drops_the_warm_up_epoch_and_takes_medians() -> None:
    runs = [train_throughput.TrainRun(100.0, [30.0, 10.0, 12.0]), train_throughput.TrainRun(90.0, [25.0, 8.0, 8.0])]
    assert runs[0].steady_epoch_s == 11.0
    summary = train_throughput.summarize(runs, iters=4, voxels_per_batch=1000)
    assert summary.steady_epoch_s == pytest.approx(9.5)  # median of 11 and 8
    assert summary.iters_per_s == pytest.approx(4 / 9.5)
    assert summary.voxels_per_s == pytest.approx(4000 / 9.5)


def test_real_ct_task_has_consecutive_labels_and_six_cases(shared_data_dir: Path, tmp_path: Path) -> None:
    """The real-CT benchmark task: 41 TotalSegmentator classes renumbered 0..40 for nnU-Net."""
    import json

    import numpy as np
    import SimpleITK as sitk

    import real_ct_task

    out = tmp_path / "Task76_TotalCt"
    assert real_ct_task.write_task(shared_data_dir, out) == 41
    dataset = json.loads((out / "dataset.json").read_text())
    assert dataset["numTraining"] == 6 and sorted(map(int, dataset["labels"])) == list(range(41))
    found = set()
    for entry in dataset["training"]:
        label = sitk.ReadImage(str(out / entry["label"]))
        image = sitk.ReadImage(str(out / entry["image"]))
        assert label.GetSize() == image.GetSize() and label.GetSpacing() == image.GetSpacing()
        found |= set(np.unique(sitk.GetArrayViewFromImage(label)).tolist())
    assert found == set(range(41))


def test_learning_task_relabels_the_largest_structures_consecutively() -> None:
    """Kept values become 1..k by size; every other label, however large its id, becomes background."""
    import numpy as np

    import learning_task

    label = np.array([0, 7, 7, 7, 3, 3, 117, 117, 117, 117, 2])
    kept = learning_task.largest_labels(label, 2)
    assert kept == [117, 7]
    assert learning_task.relabel(label, kept).tolist() == [0, 2, 2, 2, 0, 0, 1, 1, 1, 1, 0]


def test_learning_task_case_keeps_geometry_and_moves_anatomy(shared_data_dir: Path, tmp_path: Path) -> None:
    """A drawn case: image and label on one cropped grid, the crop's origin where the draw put it,
    and a rotation that actually moves the structures (not a plain crop of the source)."""
    import numpy as np
    import SimpleITK as sitk

    import learning_task

    out = tmp_path / "Task71_Ct"
    kept = learning_task.write_task(shared_data_dir, out, source="ct", cases=3, classes=3)
    assert len(kept) == 3
    source = sitk.ReadImage(str(shared_data_dir / "totalsegmentator-reference" / "example_ct_sm.nii.gz"))
    for i in range(3):
        image = sitk.ReadImage(str(out / "imagesTr" / f"case_{i:03d}.nii.gz"))
        label = sitk.ReadImage(str(out / "labelsTr" / f"case_{i:03d}.nii.gz"))
        assert image.GetSize() == label.GetSize() and image.GetOrigin() == label.GetOrigin()
        assert all(0.74 * s <= c <= 0.91 * s for c, s in zip(image.GetSize(), source.GetSize()))
        assert set(np.unique(sitk.GetArrayViewFromImage(label)).tolist()) <= {0, 1, 2, 3}
        assert image.GetPixelID() == sitk.sitkInt16  # CT stays integer Hounsfield units
    # the same draw without rotation, scale or noise is an exact crop of the source
    draw = learning_task.CaseDraw(rotation_deg=0.0, scale=1.0, crop_fraction=(0.5, 0.5, 0.5),
                                  crop_offset=(1.0, 0.0, 0.5), intensity_scale=1.0, noise_std=0.0)
    flat = sitk.Cast(source, sitk.sitkFloat32)
    image, _ = learning_task.make_case(flat, sitk.Cast(source > 0, sitk.sitkUInt8), draw, "CT",
                                       np.random.default_rng(0))
    size = np.array(source.GetSize())
    start = np.floor((size - np.round(size * 0.5)) * np.array([1.0, 0.0, 0.5])).astype(int)
    crop = sitk.GetArrayFromImage(source)[start[2]:start[2] + image.GetSize()[2],
                                          start[1]:start[1] + image.GetSize()[1],
                                          start[0]:start[0] + image.GetSize()[0]]
    np.testing.assert_allclose(sitk.GetArrayFromImage(image), crop, atol=0.5)
    rotated = learning_task.CaseDraw(**{**draw.__dict__, "rotation_deg": 10.0})
    moved, _ = learning_task.make_case(flat, sitk.Cast(source > 0, sitk.sitkUInt8), rotated, "CT",
                                       np.random.default_rng(0))
    assert np.abs(sitk.GetArrayFromImage(moved) - crop).mean() > 10


def test_sparse_benchmark_split_is_seeded_and_keeps_both_sides() -> None:
    import sparse_annotations

    ids = [f"c{i:02d}" for i in range(10)]
    train, held = sparse_annotations.split_cases(ids, 0.2, seed=3)
    assert len(held) == 2 and sorted(train + held) == ids
    assert sparse_annotations.split_cases(ids, 0.2, seed=3) == (train, held)
    assert len(sparse_annotations.split_cases(ids[:2], 0.9, seed=0)[0]) == 1  # never empties the training side
