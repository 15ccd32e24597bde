"""Region and ignore labels from dataset.json, and the label-map <-> region conversions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from autounet.errors import DatasetError
from autounet.task.dataset import load_task
from autounet.task.demo_data import sparsify
from autounet.task.labels import (
    labels_to_regions,
    parse_named_labels,
    region_index_table,
    regions_to_labels,
    with_regions_class_order,
)

BRATS = {"background": 0, "whole_tumor": [1, 2, 3], "tumor_core": [2, 3], "enhancing_tumor": [3]}


def test_brats_style_regions_parse_into_regions_and_the_values_they_unite() -> None:
    spec = with_regions_class_order(parse_named_labels(BRATS, "ds.json"), [1, 2, 3], "ds.json")
    assert [(r.name, r.values) for r in spec.regions or []] == [
        ("whole_tumor", [1, 2, 3]), ("tumor_core", [2, 3]), ("enhancing_tumor", [3])]
    assert spec.labels == {"background": 0, "label_1": 1, "label_2": 2, "label_3": 3}
    assert spec.regions_class_order == [1, 2, 3] and spec.ignore_label is None


def test_an_ignore_label_is_not_a_class() -> None:
    spec = parse_named_labels({"background": 0, "liver": 1, "tumour": 2, "ignore": 3}, "ds.json")
    assert spec.labels == {"background": 0, "liver": 1, "tumour": 2}
    assert spec.ignore_label == 3 and spec.regions is None


@pytest.mark.parametrize(("labels", "order", "fragment"), [
    ({"background": 0, "liver": 1, "ignore": 1}, None, "'labels.ignore' is 1, but the ignore label must be the highest"),
    ({"background": 0, "liver": 2, "ignore": [3]}, None, "'labels.ignore' must be one integer"),
    ({"background": 0, "tumour": [0, 1]}, [1], "'labels.tumour' contains 0, the background"),
    ({"background": 0, "tumour": []}, [1], "'labels.tumour': a region needs at least one label value"),
    ({"background": 1, "tumour": 2}, None, "must declare background as 0"),
    (BRATS, None, "'regions_class_order' is missing"),
    (BRATS, [1, 2], "'regions_class_order' needs one entry per region (3"),
    (BRATS, [1, 2, 2], "'regions_class_order[2]' is 2, which is not a value of region 'enhancing_tumor'"),
    ({"background": 0, "liver": 1}, [1], "'regions_class_order' is given but 'labels' defines no regions"),
])
def test_bad_labels_are_refused_naming_the_key(labels: dict, order: list | None, fragment: str) -> None:
    with pytest.raises(DatasetError) as info:
        with_regions_class_order(parse_named_labels(labels, "ds.json"), order, "ds.json")
    assert fragment in str(info.value) and str(info.value).startswith("ds.json")


def test_regions_round_trip_on_random_nested_label_maps() -> None:
    """label map -> regions -> label map by regions_class_order is the identity (nested regions)."""
    rng = np.random.default_rng(0)
    regions = [[1, 2, 3], [2, 3], [3]]
    for shape in [(7, 9, 5), (13, 11), (1, 16, 16)]:
        seg = rng.integers(0, 4, size=shape).astype(np.uint8)
        masks = labels_to_regions(seg, regions)
        assert masks.shape == (3, *shape) and masks.dtype == bool
        np.testing.assert_array_equal(masks[0], seg > 0)
        np.testing.assert_array_equal(regions_to_labels(masks, [1, 2, 3]), seg)


def test_painting_order_decides_overlaps() -> None:
    masks = np.array([[True, True, False], [False, True, True]])
    assert regions_to_labels(masks, [1, 2]).tolist() == [1, 2, 2]
    assert regions_to_labels(masks[::-1], [2, 1]).tolist() == [1, 1, 2]


def test_region_index_table_maps_class_indices_to_regions() -> None:
    table = region_index_table([0, 1, 2, 3], [[1, 2, 3], [2, 3], [3]])
    assert table.astype(int).tolist() == [[0, 0, 0], [1, 0, 0], [1, 1, 0], [1, 1, 1]]


def _write_dataset(root: Path, content: dict) -> Path:
    root.mkdir(parents=True)
    (root / "dataset.json").write_text(json.dumps(content), encoding="utf-8")
    return root


def test_both_layouts_accept_regions_and_ignore(tmp_path: Path) -> None:
    nnunet = _write_dataset(tmp_path / "Dataset005_Brats", {
        "channel_names": {"0": "T1"}, "labels": {**BRATS, "ignore": 4}, "regions_class_order": [1, 2, 3],
        "numTraining": 0, "file_ending": ".nii.gz"})
    msd = _write_dataset(tmp_path / "Task05_Brats", {
        "modality": {"0": "T1"}, "labels": BRATS, "regions_class_order": [1, 2, 3], "training": [], "test": []})
    msd_ignore = _write_dataset(tmp_path / "Task06_Sparse", {
        "modality": {"0": "T1"}, "labels": {"0": "background", "1": "liver", "2": "ignore"},
        "training": [], "test": []})
    for root in (nnunet, msd):
        task = load_task(root)
        assert [r.name for r in task.regions or []] == ["whole_tumor", "tumor_core", "enhancing_tumor"]
        assert task.label_values == [0, 1, 2, 3]
    assert load_task(nnunet).allowed_label_values == [0, 1, 2, 3, 4]
    sparse = load_task(msd_ignore)
    assert sparse.labels == {"background": 0, "liver": 1} and sparse.ignore_label == 2


def test_sparsify_keeps_every_nth_slice_and_marks_the_rest_ignore() -> None:
    seg = np.arange(10)[:, None, None] * np.ones((10, 2, 2), dtype=np.uint8)
    sparse = sparsify(seg % 3, 5)
    kept = [z for z in range(10) if not (sparse[z] == 3).all()]
    assert kept == [0, 5]
    np.testing.assert_array_equal(sparse[kept], (seg % 3)[kept])
    two_d = sparsify(np.zeros((1, 10, 4), dtype=np.uint8), 5)  # a 2D image: rows, not the single slice
    assert (two_d[0, [0, 5]] == 0).all() and (two_d[0, 1] == 3).all()
