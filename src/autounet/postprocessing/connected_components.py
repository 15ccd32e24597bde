"""Connected-component cleanup of label maps (full connectivity: 26-neighbourhood in 3D).

Both operations only ever turn voxels into background (0); they never relabel. Ties between
equally large components keep the first one in array (raster) order, so results are deterministic.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def largest_component_mask(mask: np.ndarray) -> np.ndarray:
    """The largest connected component of a binary mask (empty in, empty out)."""
    mask = np.asarray(mask, dtype=bool)
    structure = ndimage.generate_binary_structure(mask.ndim, mask.ndim)
    components, n = ndimage.label(mask, structure=structure)
    if n <= 1:
        return mask.copy()
    sizes = np.bincount(components.ravel(), minlength=n + 1)
    sizes[0] = 0
    return components == int(np.argmax(sizes))


def keep_largest_foreground_component(seg: np.ndarray) -> np.ndarray:
    """Set every foreground voxel outside the largest component of the union of all labels to 0."""
    seg = np.asarray(seg)
    foreground = seg != 0
    keep = largest_component_mask(foreground)
    out = seg.copy()
    out[foreground & ~keep] = 0
    return out


def keep_largest_component_of_label(seg: np.ndarray, label: int) -> np.ndarray:
    """Set the voxels of `label` outside its largest component to 0; other labels are untouched."""
    if label == 0:
        raise ValueError("label 0 is background; keep-largest applies to foreground labels only")
    seg = np.asarray(seg)
    mask = seg == label
    keep = largest_component_mask(mask)
    out = seg.copy()
    out[mask & ~keep] = 0
    return out


def keep_largest_component_of_region(seg: np.ndarray, values: list[int] | tuple[int, ...]) -> np.ndarray:
    """Set the voxels of a region (the union of `values`) outside its largest component to 0."""
    if 0 in values:
        raise ValueError("a region cannot contain background (0)")
    seg = np.asarray(seg)
    mask = np.isin(seg, list(values))
    keep = largest_component_mask(mask)
    out = seg.copy()
    out[mask & ~keep] = 0
    return out
