"""Overlay pictures: an image slice with reference and prediction outlined in class colours.

The slice is the one holding the most foreground (of the reference, else the prediction),
cut across the coarsest axis so that anisotropic scans are shown in their native plane.
"""

from __future__ import annotations

import io
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from autounet.io.atomic import atomic_path  # noqa: E402

CLASS_COLOURS = ("#e6194b", "#3cb44b", "#ffe119", "#4363d8", "#f58231", "#911eb4", "#46f0f0",
                 "#f032e6", "#bcf60c", "#fabebe", "#008080", "#e6beff", "#9a6324", "#800000")


def slice_axis(spacing_zyx: Sequence[float] | None, shape: Sequence[int] | None = None) -> int:
    """Axis to cut across: the singleton axis of 2D data, else the coarsest one (ties: the first).

    2D data comes first because its in-plane spacing may well be coarser than the nominal
    spacing of its single slice, and cutting across an in-plane axis would show one line.
    Without spacing, axis 0.
    """
    if shape is not None and len(shape) == 3 and max(shape) > 1:
        singleton = [axis for axis, size in enumerate(shape) if size == 1]
        if singleton:
            return singleton[0]
    if spacing_zyx is None:
        return 0
    return int(np.argmax(np.asarray(spacing_zyx)))


def class_colour(value: int, label_values: Collection[int] | None = None) -> str:
    """Colour of a label value: its rank among the task's foreground labels (without them, value - 1).

    The colour depends on the class, not on which classes a slice happens to show, so a class
    keeps its colour across the pictures of a report.
    """
    foreground = sorted(v for v in (label_values or ()) if v > 0)
    rank = foreground.index(value) if value in foreground else value - 1
    return CLASS_COLOURS[rank % len(CLASS_COLOURS)]


def largest_foreground_slice(seg: np.ndarray, axis: int) -> int:
    """Index along `axis` with the most nonzero voxels; the middle slice for an empty map."""
    counts = np.count_nonzero(seg > 0, axis=tuple(a for a in range(seg.ndim) if a != axis))
    if counts.max(initial=0) == 0:
        return seg.shape[axis] // 2
    return int(np.argmax(counts))


def _take(volume: np.ndarray, axis: int, index: int) -> np.ndarray:
    return np.take(volume, index, axis=axis)


def _window(image: np.ndarray) -> tuple[float, float]:
    """Display window from robust percentiles so that outliers do not wash out the picture."""
    finite = image[np.isfinite(image)]
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(finite, [0.5, 99.5])
    return float(lo), float(hi if hi > lo else lo + 1.0)


def render_overlay(
    image: np.ndarray,
    reference: np.ndarray | None,
    prediction: np.ndarray | None = None,
    spacing_zyx: Sequence[float] | None = None,
    label_names: Mapping[int, str] | None = None,
    title: str = "",
) -> bytes:
    """PNG bytes: one panel per given label map (reference, prediction), same slice and window.

    `image` is (Z, Y, X) or (C, Z, Y, X) (the first channel is shown).
    """
    if image.ndim == 4:
        image = image[0]
    maps = [(name, seg) for name, seg in (("reference", reference), ("prediction", prediction)) if seg is not None]
    for name, seg in maps:
        if seg.shape != image.shape:
            raise ValueError(f"{name} shape {seg.shape} differs from image shape {image.shape}")
    axis = slice_axis(spacing_zyx, image.shape)
    chooser = reference if reference is not None and np.any(reference > 0) else prediction
    index = largest_foreground_slice(chooser if chooser is not None else np.zeros(image.shape), axis)
    plane = _take(image, axis, index)
    aspect = 1.0
    if spacing_zyx is not None:
        rest = [s for a, s in enumerate(spacing_zyx) if a != axis]
        aspect = float(rest[0] / rest[1])
    lo, hi = _window(image)
    panels = max(1, len(maps))
    fig, axes = plt.subplots(1, panels, figsize=(4.2 * panels, 4.4), squeeze=False)
    labels_present = sorted({int(v) for _, seg in maps for v in np.unique(_take(seg, axis, index)) if v > 0})
    for ax, (name, seg) in zip(axes[0], maps or [("image", None)]):
        ax.imshow(plane, cmap="gray", vmin=lo, vmax=hi, aspect=aspect, interpolation="nearest")
        if seg is not None:
            seg_plane = _take(seg, axis, index)
            for value in labels_present:
                mask = (seg_plane == value).astype(float)
                if mask.any():
                    ax.contour(mask, levels=[0.5], colors=[class_colour(value, label_names)], linewidths=1.4)
        ax.set_title(f"{name} (axis {axis}, slice {index})", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    if labels_present:
        handles = [plt.Line2D([0], [0], color=class_colour(v, label_names), lw=2) for v in labels_present]
        names = [(label_names or {}).get(v, str(v)) for v in labels_present]
        fig.legend(handles, names, loc="lower center", ncol=min(6, len(names)), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.06 if labels_present else 0, 1, 1))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


def overlay_files(image_path: Path, seg_path: Path, out_path: Path, second_seg: Path | None = None) -> Path:
    """`autounet overlay`: draw any image with one (or two) label maps for a quick data check."""
    from autounet.errors import DatasetError
    from autounet.io.images import read_image, read_label

    image, geometry = read_image(image_path)
    seg, seg_geometry = read_label(seg_path)
    if seg.shape != image.shape[1:]:
        raise DatasetError(f"{seg_path}: shape {seg.shape} differs from the image's {image.shape[1:]} ({image_path})")
    other = None
    if second_seg is not None:
        other, _ = read_label(second_seg)
        if other.shape != seg.shape:
            raise DatasetError(f"{second_seg}: shape {other.shape} differs from {seg_path}'s {seg.shape}")
    png = render_overlay(image, seg, other, spacing_zyx=geometry.spacing_zyx, title=Path(image_path).name)
    with atomic_path(out_path, suffix=".png") as tmp:
        tmp.write_bytes(png)
    return out_path
