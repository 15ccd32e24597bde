"""What the values of a task's label maps mean: classes, overlapping regions, and the ignore label.

Three kinds of task, all written the way nnU-Net v2 users write dataset.json:

- classes: `"labels": {"background": 0, "liver": 1, "tumour": 2}`: one softmax over exclusive classes;
- regions: `"labels": {"background": 0, "whole_tumor": [1, 2, 3], "tumor_core": [2, 3],
  "enhancing_tumor": [3]}` plus `"regions_class_order": [1, 2, 3]`: one sigmoid output per
  region (the union of its label values), turned back into a label map by painting the regions
  in that order, later regions over earlier ones;
- either with `"ignore": N` (the highest value): voxels without annotation, left out of the
  loss, the sampler, the pseudo Dice and the evaluation, and never predicted.

Everything here is a pure function of dataset.json entries or arrays, so every stage (planning,
training, inference, evaluation) reads the same meaning from the same code.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from autounet.errors import DatasetError

IGNORE_NAME = "ignore"
BACKGROUND = 0


@dataclass(frozen=True)
class Region:
    """One output of a region-based network: a name and the label values whose union it is."""

    name: str
    values: list[int]


@dataclass(frozen=True)
class LabelSpec:
    """The parsed 'labels' of a dataset.json.

    `labels` are the values that occur in label maps as classes or parts of regions (background
    included, the ignore value not); for a region task the values are named `label_<v>`.
    """

    labels: dict[str, int]
    regions: list[Region] | None = None
    regions_class_order: list[int] | None = None
    ignore_label: int | None = None


def _int_value(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise DatasetError(f"{where} must be an integer or a list of integers, got {value!r}")
    return value


def named_from_msd(raw_labels: Mapping[str, Any], where: str) -> dict[str, Any]:
    """MSD labels map values to names; turned around. Labels already written by name (the nnU-Net
    v2 form, the only one with regions) are accepted as they are."""
    if any(not _is_integer_text(k) for k in raw_labels) and all(not _is_integer_text(k) for k in raw_labels):
        return dict(raw_labels)
    named: dict[str, Any] = {}
    for key, value in raw_labels.items():
        if not _is_integer_text(key):
            raise DatasetError(
                f"{where}: 'labels' key '{key}' is not an integer; MSD labels map integer values to names"
            )
        number = int(key)
        if str(value) in named:
            raise DatasetError(f"{where}: 'labels' gives the name '{value}' to values {named[str(value)]} and "
                               f"{number}; names must be unique (merge the values in the label maps or rename one)")
        named[str(value)] = number
    return named


def _is_integer_text(key: str) -> bool:
    try:
        int(key)
    except ValueError:
        return False
    return True


def parse_named_labels(raw: Mapping[str, Any], where: str) -> LabelSpec:
    """nnU-Net v2 'labels' (name -> value, or name -> list of values for a region); `where` names the file.

    Refused, naming the key: a region without values or with background in it, an `ignore`
    that is a list or not the highest value, background missing or not 0.
    """
    entries: dict[str, list[int]] = {}
    is_region_task = False
    for name, value in raw.items():
        key = f"{where}: 'labels.{name}'"
        if isinstance(value, list):
            if not value:
                raise DatasetError(f"{key}: a region needs at least one label value")
            entries[str(name)] = [_int_value(v, key) for v in value]
            is_region_task = True
        else:
            entries[str(name)] = [_int_value(value, key)]
    if entries.get("background") != [BACKGROUND]:
        raise DatasetError(f"{where}: 'labels' must declare background as 0; add \"background\": 0")
    ignore = None
    if IGNORE_NAME in entries:
        values = entries.pop(IGNORE_NAME)
        if isinstance(raw[IGNORE_NAME], list):
            raise DatasetError(f"{where}: 'labels.{IGNORE_NAME}' must be one integer (the value of unannotated "
                               f"voxels), not a list")
        ignore = values[0]
    classes = {n: v for n, v in entries.items() if n != "background"}
    if ignore is not None:
        highest = max((max(v) for v in classes.values()), default=0)
        if ignore <= highest:
            raise DatasetError(f"{where}: 'labels.{IGNORE_NAME}' is {ignore}, but the ignore label must be the "
                               f"highest value (above {highest}); renumber it, e.g. to {highest + 1}")
    for name, values in classes.items():
        if any(v < 0 for v in values):
            raise DatasetError(f"{where}: 'labels' values must be >= 0; 'labels.{name}' is {raw[name]}")
        if BACKGROUND in values:
            raise DatasetError(f"{where}: 'labels.{name}' contains 0, the background; background cannot be part "
                               f"of a {'region' if is_region_task else 'class'}")
    if not is_region_task:
        labels = {"background": BACKGROUND, **{n: v[0] for n, v in classes.items()}}
        return LabelSpec(labels=labels, ignore_label=ignore)
    regions = [Region(name, sorted(set(values))) for name, values in classes.items()]
    if not regions:
        raise DatasetError(f"{where}: 'labels' lists no region besides background")
    union = sorted({v for r in regions for v in r.values})
    labels = {"background": BACKGROUND, **{f"label_{v}": v for v in union}}
    return LabelSpec(labels=labels, regions=regions, ignore_label=ignore)


def with_regions_class_order(spec: LabelSpec, raw_order: Any, where: str) -> LabelSpec:
    """Attach and check `regions_class_order`: one label value per region, each inside its region
    (so that painting the regions back gives every voxel a value the region stands for)."""
    if spec.regions is None:
        if raw_order is not None:
            raise DatasetError(f"{where}: 'regions_class_order' is given but 'labels' defines no regions "
                               f"(a region is a name with a list of values); remove it or define the regions")
        return spec
    if raw_order is None:
        raise DatasetError(f"{where}: 'labels' defines regions but 'regions_class_order' is missing; add one label "
                           f"value per region, e.g. {[r.values[0] for r in spec.regions]}")
    if not isinstance(raw_order, list) or len(raw_order) != len(spec.regions):
        raise DatasetError(f"{where}: 'regions_class_order' needs one entry per region ({len(spec.regions)}: "
                           f"{[r.name for r in spec.regions]}), got {raw_order!r}")
    order = [_int_value(v, f"{where}: 'regions_class_order[{i}]'") for i, v in enumerate(raw_order)]
    for i, (value, region) in enumerate(zip(order, spec.regions)):
        if value not in region.values:
            raise DatasetError(f"{where}: 'regions_class_order[{i}]' is {value}, which is not a value of region "
                               f"'{region.name}' {region.values}; paint each region with one of its own values")
    return LabelSpec(spec.labels, spec.regions, order, spec.ignore_label)


def check_label_spec(spec: LabelSpec, max_labels: int, where: str) -> None:
    """Bounds shared by both layouts: how many outputs a network can be planned for."""
    outputs = len(spec.regions) if spec.regions is not None else len(spec.labels)
    if outputs > max_labels:
        raise DatasetError(f"{where}: 'labels' declares {outputs} labels, more than the {max_labels} a network "
                           f"can be planned for; merge labels or check the file")
    values = list(spec.labels.values())
    if len(set(values)) != len(values):
        raise DatasetError(f"{where}: 'labels' gives the same value to several names ({spec.labels}); make them unique")


# --------------------------------------------------------------------------- arrays


def labels_to_regions(seg: np.ndarray, regions: Sequence[Sequence[int]]) -> np.ndarray:
    """(R, *seg.shape) bool: voxel in region r when its label value is one of region r's values."""
    return np.stack([np.isin(seg, list(values)) for values in regions]) if regions else \
        np.zeros((0, *seg.shape), dtype=bool)


def regions_to_labels(masks: np.ndarray, regions_class_order: Sequence[int], dtype: Any = np.uint8) -> np.ndarray:
    """Paint region masks (R, ...) into a label map: region r gets `regions_class_order[r]`, later
    regions overwrite earlier ones, voxels in no region are background."""
    if masks.shape[0] != len(regions_class_order):
        raise ValueError(f"{masks.shape[0]} region masks but {len(regions_class_order)} regions_class_order entries")
    out = np.zeros(masks.shape[1:], dtype=dtype)
    for mask, value in zip(masks, regions_class_order):
        out[np.asarray(mask, dtype=bool)] = value
    return out


def region_index_table(label_values: Sequence[int], regions: Sequence[Sequence[int]]) -> np.ndarray:
    """(K, R) bool: class index k (label value `label_values[k]`) belongs to region r.

    Training targets hold class indices, so the loss turns them into region targets with this."""
    values = list(label_values)
    table = np.zeros((len(values), len(regions)), dtype=bool)
    for r, region in enumerate(regions):
        for v in region:
            if v in values:
                table[values.index(v), r] = True
    return table
