"""Memory needed to read an image, known from its header before a single voxel is decompressed.

A 4 MB .nii.gz can declare (and really hold) gigabytes of zeros; reading it would exhaust the
machine. Callers pass the bytes one case may use (`max_bytes`, derived by the command from the
free memory and its worker count); a file that needs more is refused by name, with its size.
"""

from __future__ import annotations

from math import prod
from pathlib import Path

import SimpleITK as sitk

from autounet.errors import ImageReadError

GIB = 1024**3
_COMPONENT_BYTES = {
    sitk.sitkUInt8: 1, sitk.sitkInt8: 1, sitk.sitkUInt16: 2, sitk.sitkInt16: 2, sitk.sitkUInt32: 4,
    sitk.sitkInt32: 4, sitk.sitkUInt64: 8, sitk.sitkInt64: 8, sitk.sitkFloat32: 4, sitk.sitkFloat64: 8,
    sitk.sitkComplexFloat32: 8, sitk.sitkComplexFloat64: 16,
    sitk.sitkVectorUInt8: 1, sitk.sitkVectorInt8: 1, sitk.sitkVectorUInt16: 2, sitk.sitkVectorInt16: 2,
    sitk.sitkVectorUInt32: 4, sitk.sitkVectorInt32: 4, sitk.sitkVectorUInt64: 8, sitk.sitkVectorInt64: 8,
    sitk.sitkVectorFloat32: 4, sitk.sitkVectorFloat64: 8,
}


def header_size(path: Path) -> tuple[tuple[int, ...], int, int] | None:
    """(size per axis as stored, components per voxel, bytes per component) from the header alone;
    None where the header cannot be read (the full read then reports why)."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return None
    nbytes = _COMPONENT_BYTES.get(reader.GetPixelID(), 8)
    return tuple(int(s) for s in reader.GetSize()), int(reader.GetNumberOfComponents()), nbytes


def read_bytes_needed(info: tuple[tuple[int, ...], int, int], as_float32: bool) -> int:
    """Peak bytes of reading an image of `info` (`header_size`): the library's buffer, numpy's copy
    and (images) the float32 copy."""
    size, components, nbytes = info
    return prod(size) * components * (2 * nbytes + (4 if as_float32 else 0))


def check_read_budget(path: Path, max_bytes: int | None, as_float32: bool) -> None:
    """Refuse, before reading, a file whose reading would need more than `max_bytes` (None: no limit)."""
    if max_bytes is None:
        return
    info = header_size(path)
    if info is None:
        return
    need = read_bytes_needed(info, as_float32)
    if need <= max_bytes:
        return
    size, components, nbytes = info
    shape = "x".join(str(s) for s in size) + (f"x{components}" if components > 1 else "")
    raise ImageReadError(
        path, f"needs about {need / GIB:.2f} GiB of memory to read ({shape} voxels of {nbytes} byte(s) in the "
        f"header), more than the {max_bytes / GIB:.2f} GiB one case may use; check the header, free memory, use "
        f"fewer workers (-np) or raise --memory-gb"
    )


def per_case_budget(memory_gb: float, workers: int, fraction: float = 0.8) -> int:
    """Bytes one case may use when `workers` processes (at least one) share `memory_gb` GB."""
    return int(memory_gb * fraction * GIB / max(1, workers))
