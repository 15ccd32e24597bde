"""Map network logits on the preprocessed grid back onto the original image grid.

The inverse of preprocessing, in reverse order: resample the logits to the cropped original
shape (linear, with the same separate-z rule as preprocessing), turn them into class
indices (or probabilities), map indices to the label values written on disk, paste the
crop back into the full volume and undo the transposition.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from scipy.special import expit

from autounet.inference.memory import choose_export_strategy, estimate_export_memory_bytes
from autounet.io.geometry import Geometry
from autounet.planners.plans import Plans
from autounet.preprocessing.case_properties import CaseProperties
from autounet.preprocessing.cropping import paste_into
from autounet.preprocessing.resampling import resample_probabilities
from autounet.task.labels import regions_to_labels

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


def smallest_label_dtype(label_values: Sequence[int]) -> np.dtype:
    """uint8/uint16 when every label value fits, else int32 (what the written file will hold)."""
    lo, hi = min(label_values), max(label_values)
    if lo >= 0 and hi < 256:
        return np.dtype(np.uint8)
    if lo >= 0 and hi < 65536:
        return np.dtype(np.uint16)
    return np.dtype(np.int32)


def _resampler(props: CaseProperties, plans: Plans, configuration: str):
    """A function (K, *preprocessed) -> (K, *shape_after_crop) float32 with the plan's settings."""
    cfg = plans.configuration(configuration)
    rs = cfg.resampling
    force_axis = 0 if cfg.dims == 2 else None
    shape = [int(s) for s in props.shape_after_crop]

    half = cfg.window_arithmetic == "nnunet_fp16"  # nnU-Net resamples its fp16 logits into fp16

    def resample(channels: np.ndarray) -> np.ndarray:
        if list(channels.shape[1:]) == shape:
            return np.asarray(channels, dtype=np.float32)
        out = resample_probabilities(channels, shape, props.target_spacing, props.spacing,
                                     order=rs.order_probabilities, order_z=rs.order_z,
                                     threshold=rs.anisotropy_threshold, force_separate_axis=force_axis)
        return out.astype(np.float16).astype(np.float32) if half else out

    return resample


def _softmax(logits: np.ndarray) -> np.ndarray:
    import torch

    return torch.softmax(torch.from_numpy(np.ascontiguousarray(logits, dtype=np.float32)), dim=0).numpy()


def argmax_class_by_class(logits: np.ndarray, resample) -> np.ndarray:
    """Argmax of the resampled logits keeping only a running maximum: memory independent of K.

    Ties keep the lower index, like np.argmax, so the result equals resampling everything first.
    """
    best = resample(logits[0:1])[0]
    index = np.zeros(best.shape, dtype=np.int16)
    for k in range(1, logits.shape[0]):
        score = resample(logits[k:k + 1])[0]
        better = score > best
        index[better] = k
        np.maximum(best, score, out=best)
    return index


def logits_to_segmentation_on_original_grid(
    logits: np.ndarray | torch.Tensor,
    props: CaseProperties,
    plans: Plans,
    configuration_name: str,
    return_probabilities: bool = False,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Label map (Z, Y, X) in original array order on `props.geometry.shape`, and optionally
    probabilities (K, Z, Y, X) float16 (background 1 outside the crop box).

    `logits` are (K, z, y, x) on the preprocessed (transposed, cropped, resampled) grid. The
    label map holds `plans.label_values` in the smallest integer type that fits them.
    """
    import torch  # here, not at the top: the torch-free ONNX runner imports this module's helpers

    if isinstance(logits, torch.Tensor):
        logits = logits.detach().float().cpu().numpy()
    if plans.has_regions:
        seg_cropped, probabilities = _regions_on_crop(logits, props, plans, configuration_name, return_probabilities)
        return _on_input_grid(seg_cropped, probabilities, props, plans)
    num_classes = plans.num_classes
    if logits.ndim != 4 or logits.shape[0] != num_classes:
        raise ValueError(f"expected logits (K={num_classes}, z, y, x), got shape {tuple(logits.shape)}")
    resample = _resampler(props, plans, configuration_name)
    strategy = choose_export_strategy(return_probabilities)
    log.debug("export of %s: %s, estimated %.2f GiB", props.case_id or "case", strategy.replace("_", " "),
             estimate_export_memory_bytes(props.shape_after_crop, props.shape_before_crop, num_classes,
                                          return_probabilities) / 1024**3)

    probabilities = None
    if strategy == "class_by_class":
        index = argmax_class_by_class(logits, resample)
    else:
        resampled = resample(logits)
        if return_probabilities:
            probs = _softmax(resampled)
            del resampled
            index = torch.from_numpy(probs).argmax(0).numpy()  # first maximum, like np.argmax; no copy
            background = np.zeros(num_classes, dtype=np.float16)
            background[0] = 1
            full = np.broadcast_to(background.reshape(-1, 1, 1, 1), (num_classes, *props.shape_before_crop))
            full = np.array(full)
            full[(slice(None),) + tuple(slice(a, b) for a, b in props.bbox)] = probs.astype(np.float16)
            probabilities = full
        else:
            index = torch.from_numpy(resampled).argmax(0).numpy()
            del resampled

    values = np.asarray(plans.label_values)
    seg_cropped = values[index].astype(smallest_label_dtype(plans.label_values))
    return _on_input_grid(seg_cropped, probabilities, props, plans)


def _regions_on_crop(probs: np.ndarray, props: CaseProperties, plans: Plans, configuration_name: str,
                     return_probabilities: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """Region probabilities (R, z, y, x) -> label map on the crop (each region resampled, thresholded
    at 0.5 and painted in `regions_class_order`), and the probabilities pasted into the uncropped
    grid (0 outside the crop box) when asked for. With `region_averaging` "logits" the input holds
    logits, turned into probabilities after the resampling (nnU-Net's order)."""
    regions = plans.region_values
    if probs.ndim != 4 or probs.shape[0] != len(regions):
        raise ValueError(f"expected region probabilities (R={len(regions)}, z, y, x), got shape {tuple(probs.shape)}")
    resample = _resampler(props, plans, configuration_name)
    masks = []
    full = np.zeros((len(regions), *props.shape_before_crop), dtype=np.float16) if return_probabilities else None
    box = tuple(slice(a, b) for a, b in props.bbox)
    for r in range(len(regions)):
        region = resample(probs[r:r + 1])[0]
        if not plans.sigmoid_per_view:
            region = expit(region)  # torch-free (the ONNX runner shares this module)
        masks.append(region > 0.5)
        if full is not None:
            full[(r, *box)] = np.clip(region, 0, 1).astype(np.float16)
    order = list(plans.regions_class_order or [])
    seg = regions_to_labels(np.stack(masks), order, dtype=smallest_label_dtype(plans.label_values))
    return seg, full


def _on_input_grid(seg_cropped: np.ndarray, probabilities: np.ndarray | None, props: CaseProperties,
                   plans: Plans) -> tuple[np.ndarray, np.ndarray | None]:
    """Paste the crop back into the full volume and undo the transposition."""
    seg = paste_into(props.shape_before_crop, props.bbox, seg_cropped, fill=0)

    backward = list(plans.transpose_backward)
    seg = np.ascontiguousarray(seg.transpose(backward))
    if probabilities is not None:
        probabilities = np.ascontiguousarray(probabilities.transpose([0] + [a + 1 for a in backward]))
    if tuple(seg.shape) != tuple(props.geometry.shape):
        raise ValueError(f"exported shape {seg.shape} differs from the original grid {tuple(props.geometry.shape)} "
                         f"of case {props.case_id or '?'}; the case properties do not match the plans")
    return seg, probabilities


def save_prediction(seg: np.ndarray, geometry: Geometry, path: str | os.PathLike[str]) -> None:
    """Write a label map atomically on exactly the input's grid."""
    from autounet.io.images import write_label

    write_label(seg, geometry, path)


def probability_meaning(plans: Plans) -> tuple[list[int], bool]:
    """What each probability channel stands for: a class's label value, or (regions) the value its
    region is painted with; and whether the channels are regions."""
    if plans.has_regions:
        return list(plans.regions_class_order or []), True
    return list(plans.label_values), False


def labels_from_probabilities(probabilities: np.ndarray, values: Sequence[int], regions: bool) -> np.ndarray:
    """Label map from (averaged) probabilities: argmax over classes, or regions over 0.5 painted in order."""
    if regions:
        return regions_to_labels(np.asarray(probabilities) > 0.5, values, dtype=smallest_label_dtype([0, *values]))
    return np.asarray(values)[np.argmax(probabilities, axis=0)]


def save_probabilities(probabilities: np.ndarray, label_values: Sequence[int], path: str | os.PathLike[str],
                       regions: bool = False) -> None:
    """`<case>.npz` with 'probabilities' float16 (K, Z, Y, X) and 'label_values' (for ensembling); for a
    region model one sigmoid channel per region, 'label_values' its painting value, and 'regions' = 1."""
    from autounet.io.atomic import save_npz

    save_npz(path, probabilities=np.asarray(probabilities, dtype=np.float16),
             label_values=np.asarray(label_values, dtype=np.int64), regions=np.asarray(int(regions)))
