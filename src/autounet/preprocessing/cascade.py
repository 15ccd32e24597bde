"""The link between the two cascade stages, shared by training and prediction.

A `3d_lowres` model predicts a case on its coarse grid; the `3d_cascade_fullres` model then
sees that prediction, moved onto the full-resolution preprocessed grid, as one-hot channels
of the foreground classes stacked after the image channels (reference section 5). Training
(the lowres fold's validation writes `predicted_next_stage/<case>.npz`) and prediction (the
lowres predictor runs first, in memory) both go through `next_stage_segmentation`, so the
cascade network sees the same kind of input in both.

Both grids cover the same cropped region of the case (cropping does not depend on the
configuration), so moving between them is a pure resampling. It uses the plan's
probability resampling (linear, separate-z for anisotropic spacings), like the export onto
the original grid, then argmax. No torch here: the data-loader workers import this module.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from autounet.errors import DatasetError
from autounet.io.atomic import save_npz
from autounet.planners.plans import ResamplingPlan
from autounet.preprocessing.resampling import resample_probabilities

log = logging.getLogger(__name__)

NEXT_STAGE_DIR = "predicted_next_stage"
NEXT_STAGE_KEY = "seg"


def _as_numpy(logits: Any) -> np.ndarray:
    """A torch tensor (any device) or array as a float32 numpy array, without importing torch."""
    if hasattr(logits, "detach"):
        logits = logits.detach().float().cpu().numpy()
    return np.asarray(logits, dtype=np.float32)


def next_stage_segmentation(
    logits: Any,
    target_shape: Sequence[int],
    spacing: Sequence[float] | None = None,
    target_spacing: Sequence[float] | None = None,
    resampling: ResamplingPlan | None = None,
) -> np.ndarray:
    """Class indices (int16, `target_shape`) of low-resolution logits (K, z, y, x) on the next grid.

    Each class's logits are resampled with the plan's probability interpolation and the
    running maximum is kept, so memory stays at two target-sized volumes whatever K is.
    Without spacings the resampling is joint linear (no separate-z decision); give the
    low-resolution and target spacings (transposed order) to apply the anisotropy rule.
    Ties keep the lower class index, as argmax does.
    """
    arr = _as_numpy(logits)
    shape = [int(s) for s in target_shape]
    if arr.ndim != len(shape) + 1 or arr.shape[0] < 1:
        raise ValueError(f"expected logits (K, {', '.join('.' * len(shape))}) for target shape {shape}, "
                         f"got {arr.shape}")
    rs = resampling or ResamplingPlan()
    if spacing is None or target_spacing is None:
        spacing = target_spacing = [1.0] * len(shape)
    if list(arr.shape[1:]) == shape:
        return arr.argmax(0).astype(np.int16)

    def resample(k: int) -> np.ndarray:
        return resample_probabilities(arr[k:k + 1], shape, spacing, target_spacing, order=rs.order_probabilities,
                                      order_z=rs.order_z, threshold=rs.anisotropy_threshold)[0]

    best = resample(0)
    index = np.zeros(shape, dtype=np.int16)
    for k in range(1, arr.shape[0]):
        score = resample(k)
        better = score > best
        index[better] = k
        np.maximum(best, score, out=best)
    return index


def foreground_one_hot(seg: np.ndarray, num_classes: int) -> np.ndarray:
    """(K-1, *seg.shape) float32 indicator of classes 1..K-1; background (and anything else) is all zero."""
    if num_classes < 2:
        raise ValueError(f"a one-hot of the foreground needs at least 2 classes, got {num_classes}")
    classes = np.arange(1, num_classes, dtype=seg.dtype if np.issubdtype(seg.dtype, np.integer) else np.int64)
    return (seg[None] == classes.reshape(-1, *([1] * seg.ndim))).astype(np.float32)


def cascade_input(data: np.ndarray, previous_seg: np.ndarray, num_classes: int) -> np.ndarray:
    """Image channels (C, ...) followed by the one-hot of the previous stage's foreground classes."""
    if tuple(previous_seg.shape) != tuple(data.shape[1:]):
        raise ValueError(f"previous-stage segmentation {previous_seg.shape} does not match the image grid "
                         f"{tuple(data.shape[1:])}")
    return np.concatenate([np.asarray(data, dtype=np.float32), foreground_one_hot(previous_seg, num_classes)], axis=0)


def next_stage_path(folder: str | Path, case_id: str) -> Path:
    return Path(folder) / f"{case_id}.npz"


def save_next_stage(seg: np.ndarray, folder: str | Path, case_id: str) -> Path:
    """Write one case's previous-stage segmentation (int16 class indices) atomically."""
    path = next_stage_path(folder, case_id)
    save_npz(path, **{NEXT_STAGE_KEY: np.asarray(seg, dtype=np.int16)})
    return path


def load_previous_stage(folder: str | Path, case_id: str, expected_shape: Sequence[int] | None = None) -> np.ndarray:
    """A case's previous-stage segmentation; unreadable or mis-shaped files raise DatasetError."""
    path = next_stage_path(folder, case_id)
    try:
        with np.load(path, allow_pickle=False) as npz:
            seg = npz[NEXT_STAGE_KEY]
    except (OSError, ValueError, KeyError) as exc:
        raise DatasetError(f"{path}: cannot read the previous stage's prediction ({exc}); delete it and "
                           f"train the 3d_lowres fold that validates '{case_id}' again") from None
    if expected_shape is not None and tuple(seg.shape) != tuple(int(s) for s in expected_shape):
        raise DatasetError(f"{path}: shape {tuple(seg.shape)} differs from the preprocessed case "
                           f"{tuple(expected_shape)}; the data was preprocessed again after the 3d_lowres "
                           f"training: retrain 3d_lowres")
    return seg


def missing_previous_stage(folder: str | Path, case_ids: Sequence[str]) -> list[str]:
    """The cases without a previous-stage prediction in `folder`, in the given order."""
    return [c for c in case_ids if not next_stage_path(folder, c).is_file()]
