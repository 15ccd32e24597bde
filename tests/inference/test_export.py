import numpy as np
import pytest
import SimpleITK as sitk
import torch

from autounet.inference import export
from autounet.inference.export import (
    logits_to_segmentation_on_original_grid,
    save_prediction,
    save_probabilities,
    smallest_label_dtype,
)
from autounet.preprocessing.preprocessor import label_values_to_indices, preprocess_case

from inference_toys import flipped_geometry, labelled_case, make_plans


def _one_hot_logits(seg_indices: np.ndarray, num_classes: int) -> np.ndarray:
    idx = np.where(seg_indices < 0, 0, seg_indices)
    return (np.arange(num_classes)[:, None, None, None] == idx[None]).astype(np.float32) * 5.0


@pytest.mark.parametrize("forward", [[0, 1, 2], [2, 0, 1]])
def test_round_trip_reproduces_labels_and_grid(tmp_path, forward):
    values, image = labelled_case()
    geometry = flipped_geometry()
    zyx = geometry.spacing_zyx
    plans = make_plans([zyx[a] for a in forward], transpose_forward=forward)
    data, seg, props, _ = preprocess_case(image, values, geometry, plans, "3d_fullres", case_id="c1")
    assert props.bbox != [[0, n] for n in props.shape_before_crop]  # the case was cropped
    seg_out, probs = logits_to_segmentation_on_original_grid(torch.from_numpy(_one_hot_logits(seg, 3)), props,
                                                             plans, "3d_fullres", return_probabilities=True)
    np.testing.assert_array_equal(seg_out, values)
    assert seg_out.dtype == np.uint8
    assert probs.shape == (3, *values.shape) and probs.dtype == np.float16
    np.testing.assert_array_equal(probs.argmax(0), label_values_to_indices(values, [0, 3, 7]))
    assert probs[0, 0, 0, 0] == 1 and probs[1:, 0, 0, 0].sum() == 0  # outside the crop: background

    path = tmp_path / "c1.nii.gz"
    save_prediction(seg_out, geometry, path)
    written = sitk.ReadImage(str(path))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(written), values)
    assert written.GetSpacing() == pytest.approx(geometry.spacing)
    assert written.GetOrigin() == pytest.approx(geometry.origin)
    assert written.GetDirection() == pytest.approx(geometry.direction)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_round_trip_through_resampling_keeps_grid():
    """Resampled to 1 mm and back: same shape, labels nearly everywhere (linear interpolation blurs edges)."""
    values, image = labelled_case()
    geometry = flipped_geometry()
    plans = make_plans([1.0, 1.0, 1.0])
    data, seg, props, _ = preprocess_case(image, values, geometry, plans, "3d_fullres")
    assert list(data.shape[1:]) != props.shape_after_crop
    seg_out, _ = logits_to_segmentation_on_original_grid(_one_hot_logits(seg, 3), props, plans, "3d_fullres")
    assert seg_out.shape == values.shape
    assert (seg_out == values).mean() > 0.9
    assert set(np.unique(seg_out)) <= {0, 3, 7}


def test_class_by_class_equals_all_classes(monkeypatch):
    values, image = labelled_case()
    geometry = flipped_geometry()
    plans = make_plans([1.0, 1.0, 1.0])
    data, seg, props, _ = preprocess_case(image, values, geometry, plans, "3d_fullres")
    logits = np.random.default_rng(0).normal(size=(3, *data.shape[1:])).astype(np.float32)
    assert export.choose_export_strategy(return_probabilities=False) == "class_by_class"
    assert export.choose_export_strategy(return_probabilities=True) == "all_classes"
    by_class, _ = logits_to_segmentation_on_original_grid(logits, props, plans, "3d_fullres")
    monkeypatch.setattr(export, "choose_export_strategy", lambda *a, **k: "all_classes")
    all_classes, _ = logits_to_segmentation_on_original_grid(logits, props, plans, "3d_fullres")
    np.testing.assert_array_equal(by_class, all_classes)
    with_probs, probs = logits_to_segmentation_on_original_grid(logits, props, plans, "3d_fullres",
                                                                return_probabilities=True)
    np.testing.assert_array_equal(with_probs, all_classes)
    assert probs is not None and probs.dtype == np.float16


def test_rejects_wrong_class_count():
    values, image = labelled_case()
    geometry = flipped_geometry()
    plans = make_plans(list(geometry.spacing_zyx))
    data, seg, props, _ = preprocess_case(image, values, geometry, plans, "3d_fullres")
    with pytest.raises(ValueError, match="K=3"):
        logits_to_segmentation_on_original_grid(np.zeros((2, *data.shape[1:]), np.float32), props, plans,
                                                "3d_fullres")


def test_smallest_label_dtype():
    assert smallest_label_dtype([0, 255]) == np.uint8
    assert smallest_label_dtype([0, 256]) == np.uint16
    assert smallest_label_dtype([0, 70000]) == np.int32


def test_save_probabilities(tmp_path):
    probs = np.full((2, 1, 2, 2), 0.5, dtype=np.float32)
    save_probabilities(probs, [0, 4], tmp_path / "c.npz")
    with np.load(tmp_path / "c.npz", allow_pickle=False) as npz:
        assert npz["probabilities"].dtype == np.float16
        assert npz["label_values"].tolist() == [0, 4]
