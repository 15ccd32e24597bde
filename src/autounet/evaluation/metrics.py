"""Segmentation metrics on binary masks, in physical units (millimetres) from the spacing.

Conventions, so that the numbers match nnU-Net's evaluator and stay comparable across tasks:

- Dice and IoU are NaN when both masks are empty (the case says nothing about that class and is
  left out of the class mean by `nanmean`); an empty reference with a non-empty prediction gives 0.
- Surface voxels are mask voxels with at least one background neighbour in the full
  (26-) neighbourhood; voxels on the image border count as surface. Distances are between voxel
  centres, measured with `scipy.ndimage.distance_transform_edt(..., sampling=spacing)`.
- HD95 is the larger of the two directed 95th percentiles (reference -> prediction and back), the
  usual "robust Hausdorff" definition. Both masks empty: NaN; exactly one empty: +inf (the
  distance to a missing structure is unbounded; callers that average must expect inf).
- Normalized surface Dice (Nikolov et al. 2021) counts surface voxels instead of weighting them by
  surfel area: (reference surface within tolerance of the predicted surface + predicted surface
  within tolerance of the reference surface) / (both surface sizes). Both empty: NaN; one empty: 0.

All functions take arrays in (Z, Y, X) order and the spacing in the same order.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage


def _as_bool_pair(ref: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ref = np.asarray(ref, dtype=bool)
    pred = np.asarray(pred, dtype=bool)
    if ref.shape != pred.shape:
        raise ValueError(f"reference shape {ref.shape} differs from prediction shape {pred.shape}")
    return ref, pred


def confusion_counts(ref_mask: np.ndarray, pred_mask: np.ndarray) -> tuple[int, int, int, int]:
    """(TP, FP, FN, TN) voxel counts of a binary prediction against a binary reference."""
    ref, pred = _as_bool_pair(ref_mask, pred_mask)
    tp = int(np.count_nonzero(ref & pred))
    n_ref = int(np.count_nonzero(ref))
    n_pred = int(np.count_nonzero(pred))
    fp = n_pred - tp
    fn = n_ref - tp
    tn = int(ref.size) - tp - fp - fn
    return tp, fp, fn, tn


def dice_from_counts(tp: int, fp: int, fn: int) -> float:
    """2TP / (2TP + FP + FN); NaN when both masks are empty."""
    denom = 2 * tp + fp + fn
    return float("nan") if denom == 0 else 2.0 * tp / denom


def iou_from_counts(tp: int, fp: int, fn: int) -> float:
    """TP / (TP + FP + FN); NaN when both masks are empty."""
    denom = tp + fp + fn
    return float("nan") if denom == 0 else tp / denom


def dice(ref_mask: np.ndarray, pred_mask: np.ndarray) -> float:
    """Dice coefficient of two binary masks (NaN when both are empty)."""
    tp, fp, fn, _ = confusion_counts(ref_mask, pred_mask)
    return dice_from_counts(tp, fp, fn)


def iou(ref_mask: np.ndarray, pred_mask: np.ndarray) -> float:
    """Intersection over union of two binary masks (NaN when both are empty)."""
    tp, fp, fn, _ = confusion_counts(ref_mask, pred_mask)
    return iou_from_counts(tp, fp, fn)


def surface_mask(mask: np.ndarray) -> np.ndarray:
    """Mask voxels with a background neighbour in the full neighbourhood (image border = background)."""
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return mask.copy()
    structure = ndimage.generate_binary_structure(mask.ndim, mask.ndim)
    eroded = ndimage.binary_erosion(mask, structure=structure, border_value=0)
    return mask & ~eroded


def _union_bbox(ref: np.ndarray, pred: np.ndarray) -> tuple[slice, ...]:
    """Bounding box of both masks plus one voxel, so that cropping changes no surface or distance.

    The margin keeps every voxel next to the crop edge either background or on the true image
    border, so erosion sees the same neighbourhoods; all surface voxels of both masks lie inside,
    so nearest-surface distances are unchanged.
    """
    coords = np.nonzero(ref | pred)
    return tuple(slice(max(int(c.min()) - 1, 0), min(int(c.max()) + 2, n)) for c, n in zip(coords, ref.shape))


def surface_distances(
    ref: np.ndarray, pred: np.ndarray, spacing: Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    """Directed surface distances in mm: (reference surface -> prediction, prediction surface -> reference).

    Each array has one entry per surface voxel of the source mask. When the target mask is empty
    the distances are +inf; when the source mask is empty the array is empty.
    """
    ref, pred = _as_bool_pair(ref, pred)
    if len(spacing) != ref.ndim:
        raise ValueError(f"spacing {tuple(spacing)} needs {ref.ndim} entries")
    empty = np.zeros(0, dtype=np.float64)
    if not ref.any() and not pred.any():
        return empty, empty
    box = _union_bbox(ref, pred)
    ref, pred = ref[box], pred[box]
    ref_surface = surface_mask(ref)
    pred_surface = surface_mask(pred)
    sampling = [float(s) for s in spacing]

    def directed(source: np.ndarray, target: np.ndarray) -> np.ndarray:
        if not source.any():
            return empty
        if not target.any():
            return np.full(int(np.count_nonzero(source)), np.inf)
        # Distance of every voxel to the nearest target-surface voxel (the zeros of ~target).
        dist = ndimage.distance_transform_edt(~target, sampling=sampling)
        return np.asarray(dist[source], dtype=np.float64)

    return directed(ref_surface, pred_surface), directed(pred_surface, ref_surface)


def hd95_from_distances(ref_to_pred: np.ndarray, pred_to_ref: np.ndarray) -> float:
    """Robust Hausdorff distance from directed distances (see the module docstring for empties)."""
    if ref_to_pred.size == 0 and pred_to_ref.size == 0:
        return float("nan")
    if ref_to_pred.size == 0 or pred_to_ref.size == 0:
        return float("inf")
    return float(max(np.percentile(ref_to_pred, 95), np.percentile(pred_to_ref, 95)))


def nsd_from_distances(ref_to_pred: np.ndarray, pred_to_ref: np.ndarray, tolerance_mm: float) -> float:
    """Normalized surface Dice from directed distances (fraction of both surfaces within tolerance)."""
    total = ref_to_pred.size + pred_to_ref.size
    if total == 0:
        return float("nan")
    within = np.count_nonzero(ref_to_pred <= tolerance_mm) + np.count_nonzero(pred_to_ref <= tolerance_mm)
    return float(within / total)


def hd95(ref: np.ndarray, pred: np.ndarray, spacing: Sequence[float]) -> float:
    """95th-percentile Hausdorff distance in mm (NaN both empty, inf one empty)."""
    return hd95_from_distances(*surface_distances(ref, pred, spacing))


def normalized_surface_dice(
    ref: np.ndarray, pred: np.ndarray, spacing: Sequence[float], tolerance_mm: float
) -> float:
    """Normalized surface Dice at `tolerance_mm` (NaN both empty, 0 one empty)."""
    if tolerance_mm < 0:
        raise ValueError(f"tolerance must be non-negative, got {tolerance_mm}")
    return nsd_from_distances(*surface_distances(ref, pred, spacing), tolerance_mm)
