"""Synthetic DICOM series written slice by slice with SimpleITK (GDCM), for the DICOM tests.

Each slice carries the ImagePositionPatient / ImageOrientationPatient it is given, so that
tests can build series with gaps, uneven steps or mixed orientations. Needs no pydicom.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def write_series(folder: Path, volume: np.ndarray, positions: Sequence[Sequence[float]],
                 orientations: Sequence[Sequence[float]] | None = None, pixel_spacing: tuple[float, float] = (0.5, 0.8),
                 series_uid: str = "1.2.826.0.1.3680043.8.498.1", slice_thickness: float = 5.0,
                 name: str = "slice") -> list[Path]:
    """Write (Z, Y, X) int16 `volume` as one CT slice file per z, slice k at positions[k].

    `pixel_spacing` is (row step, column step) = (y, x) as in the PixelSpacing tag; the
    SliceThickness tag is deliberately unrelated to the positions. Files are written in
    reverse order of z so that readers must sort by position.
    """
    folder.mkdir(parents=True, exist_ok=True)
    orientations = orientations or [AXIAL] * len(positions)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    paths = []
    for k in reversed(range(volume.shape[0])):
        image = sitk.GetImageFromArray(volume[k:k + 1].astype(np.int16))
        row, col = np.array(orientations[k][:3]), np.array(orientations[k][3:])
        image.SetDirection(tuple(np.stack([row, col, np.cross(row, col)], axis=1).ravel()))
        image.SetOrigin(tuple(float(v) for v in positions[k]))
        image.SetSpacing((pixel_spacing[1], pixel_spacing[0], 1.0))
        tags = {
            "0008|0060": "CT", "0008|0016": "1.2.840.10008.5.1.4.1.1.2", "0010|0010": "Synthetic^Case",
            "0010|0020": "SYN001", "0020|000d": "1.2.826.0.1.3680043.8.498.9", "0020|000e": series_uid,
            "0008|0018": f"{series_uid}.{k + 1}", "0020|0013": str(k + 1), "0020|0052": "1.2.826.0.1.3680043.8.498.7",
            "0020|0032": "\\".join(f"{v:.6f}" for v in positions[k]),
            "0020|0037": "\\".join(f"{v:.6f}" for v in orientations[k]),
            "0028|0030": f"{pixel_spacing[0]:.6f}\\{pixel_spacing[1]:.6f}", "0018|0050": f"{slice_thickness:.6f}",
            "0028|1052": "0", "0028|1053": "1",
        }
        for tag, value in tags.items():
            image.SetMetaData(tag, value)
        path = folder / f"{name}{k:03d}.dcm"
        writer.SetFileName(str(path))
        writer.Execute(image)
        paths.append(path)
    return paths


def axial_positions(num: int, step: float, start: tuple[float, float, float] = (-10.0, 20.0, 30.0)) -> list[list[float]]:
    """Positions of `num` axial slices `step` mm apart along z."""
    return [[start[0], start[1], start[2] + k * step] for k in range(num)]
