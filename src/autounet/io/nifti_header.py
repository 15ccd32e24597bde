"""NIfTI headers checked before SimpleITK reads them, from the header bytes alone.

Why: SimpleITK pads truncated NIfTI files with zeros, repairs zero or negative pixdim values,
reads an unknown datatype as garbage, and, where the qform and the sform of a header describe
different grids, silently picks one of them (the sform only when its code is 1, "scanner").
Each of those would hand the network wrong voxels or a wrong grid without a word, so they are
refused here with a one-line reason. Where both transforms are set and disagree, the caller
says which one to trust (`trust`), and the grid of that one is returned to be applied.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from autounet.errors import ImageReadError

NIFTI_TRANSFORMS: tuple[str, ...] = ("qform", "sform")
"""Values of `trust`: which of a NIfTI header's two transforms defines the grid where they disagree."""

AGREE_VOXEL_FRACTION = 0.1
"""qform and sform agree when they place every corner of the grid within this fraction of the
smallest voxel edge of each other (rounding in exporters stays far below it)."""

_FIX = "re-export or replace the file"


@dataclass(frozen=True)
class _Layout:
    """Byte offsets and struct types of the header fields used here (NIfTI-1: 348 bytes, NIfTI-2: 540)."""

    datatype: int
    bitpix: int
    dim: int
    int_t: str
    pixdim: int
    float_t: str
    vox_offset: int
    vox_t: str
    scl: int
    xform_codes: int
    code_t: str
    quatern: int
    srow: int
    magic: int
    magic_bytes: bytes


_LAYOUTS = {
    348: _Layout(70, 72, 40, "h", 76, "f", 108, "f", 112, 252, "h", 256, 280, 344, b"n+1\x00"),
    540: _Layout(12, 14, 16, "q", 104, "d", 168, "q", 176, 344, "i", 352, 400, 4, b"n+2\x00"),
}

_DATATYPE_BITS = {2: 8, 4: 16, 8: 32, 16: 32, 32: 64, 64: 64, 256: 8, 512: 16, 768: 32, 1024: 64, 1280: 64,
                  1792: 128}
"""NIfTI datatype codes SimpleITK reads as numbers (complex ones are refused later, with their own message)."""
_COLOUR = {128: "RGB", 2304: "RGBA"}


def check_nifti(path: Path, compressed: bool, trust: str | None = None) -> np.ndarray | None:
    """Refuse a NIfTI file whose header lies or is ambiguous; return the grid to apply, if any.

    Returns None where SimpleITK's own reading of the grid is right, else the 4x4 affine (ITK's
    LPS world, voxel index x, y, z) of the transform `trust` names, for the caller to set.
    """
    head = _read_head(path, compressed)
    layout, endian = _layout_of(path, head)

    def field(offset: int, fmt: str, count: int = 1) -> tuple:
        return struct.unpack_from(endian + f"{count}{fmt}", head, offset)

    if head[layout.magic:layout.magic + 4] != layout.magic_bytes:
        raise ImageReadError(
            path, f"cannot be read as an image (wrong magic bytes {head[layout.magic:layout.magic + 4]!r}, "
            f"expected a single-file NIfTI {layout.magic_bytes[:3].decode()!r}); {_FIX}"
        )
    dims = field(layout.dim, layout.int_t, 8)
    pixdim = field(layout.pixdim, layout.float_t, 8)
    ndim = int(dims[0])
    if not 1 <= ndim <= 7:
        raise ImageReadError(path, f"cannot be read as an image (invalid dimension count {ndim} in the header); {_FIX}")
    bits = _check_datatype(path, int(field(layout.datatype, "h")[0]), int(field(layout.bitpix, "h")[0]))
    zero = [i + 1 for i, d in enumerate(dims[1:1 + ndim]) if int(d) < 1]
    if zero:
        raise ImageReadError(path, f"cannot be read as an image (axis {zero[0]} has length {int(dims[zero[0]])} in "
                                   f"the header: the image is empty); {_FIX}")
    spatial = pixdim[1:1 + min(ndim, 3)]
    if any(not np.isfinite(p) or p <= 0 for p in spatial):
        raise ImageReadError(
            path, f"spacing (pixdim) {_fmt(spatial)} in the header must be positive; fix the header and re-export"
        )
    slope, inter = field(layout.scl, layout.float_t, 2)
    if np.isinf(slope) or np.isinf(inter) or (np.isnan(inter) and np.isfinite(slope) and slope != 0):
        raise ImageReadError(path, f"intensity scaling in the header (scl_slope {slope:g}, scl_inter {inter:g}) is "
                                   f"not finite; set scl_slope 1 and scl_inter 0 (or 0: no scaling) and re-export")
    override = _transforms(path, field, layout, pixdim, [int(d) for d in dims[1:4]] if ndim >= 3 else [], trust)
    vox_offset = int(field(layout.vox_offset, layout.vox_t)[0])
    expected = vox_offset + int(np.prod([max(int(d), 1) for d in dims[1:1 + ndim]], dtype=np.int64)) * bits // 8
    actual = _uncompressed_size(path, expected) if compressed else path.stat().st_size
    if actual < expected:
        raise ImageReadError(
            path, f"cannot be read as an image (truncated: {actual} of {expected} bytes present); {_FIX}"
        )
    return override


def qform_affine(quatern: tuple[float, ...], pixdim: tuple[float, ...]) -> np.ndarray:
    """The qform as a 4x4 RAS affine: rotation from the unit quaternion (b, c, d), voxel sizes,
    and qfac (pixdim[0], -1 flips the third axis)."""
    b, c, d, qx, qy, qz = (float(v) for v in quatern)
    a = np.sqrt(max(0.0, 1.0 - (b * b + c * c + d * d)))
    rotation = np.array([
        [a * a + b * b - c * c - d * d, 2 * (b * c - a * d), 2 * (b * d + a * c)],
        [2 * (b * c + a * d), a * a + c * c - b * b - d * d, 2 * (c * d - a * b)],
        [2 * (b * d - a * c), 2 * (c * d + a * b), a * a + d * d - b * b - c * c],
    ])
    qfac = -1.0 if pixdim[0] < 0 else 1.0
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([pixdim[1], pixdim[2], qfac * pixdim[3]])
    affine[:3, 3] = (qx, qy, qz)
    return affine


def corner_disagreement(a: np.ndarray, b: np.ndarray, shape_xyz: list[int]) -> float:
    """Largest distance (mm) between where two affines put the corners of a grid of `shape_xyz`."""
    corners = np.array([[i, j, k, 1.0] for i in (0, shape_xyz[0] - 1) for j in (0, shape_xyz[1] - 1)
                        for k in (0, shape_xyz[2] - 1)])
    return float(np.max(np.linalg.norm((corners @ a.T - corners @ b.T)[:, :3], axis=1)))


def _transforms(path: Path, field, layout: _Layout, pixdim: tuple[float, ...], shape_xyz: list[int],
                trust: str | None) -> np.ndarray | None:
    qform_code, sform_code = field(layout.xform_codes, layout.code_t, 2)
    quatern = field(layout.quatern, layout.float_t, 6)
    srow = field(layout.srow, layout.float_t, 12)
    for name, code, values in (("qform (quatern_b..qoffset_z)", qform_code, quatern),
                               ("sform (srow_x..z)", sform_code, srow)):
        if code > 0 and not np.all(np.isfinite(values)):
            raise ImageReadError(path, f"cannot be read as an image (the {name} in the header holds NaN or inf); "
                                       f"fix the header or re-export the file")
    if qform_code <= 0 or sform_code <= 0 or len(shape_xyz) != 3:
        return None
    qform = qform_affine(quatern, pixdim)
    sform = np.vstack([np.array(srow, dtype=float).reshape(3, 4), [0.0, 0.0, 0.0, 1.0]])
    apart = corner_disagreement(qform, sform, shape_xyz)
    if apart <= AGREE_VOXEL_FRACTION * min(float(p) for p in pixdim[1:4]):
        return None
    if trust is None:
        raise ImageReadError(path, f"the qform and the sform of the NIfTI header disagree (by {apart:.3g} mm at the "
                                   f"image corners); say which one is right with --nifti-transform qform|sform, or "
                                   f"make them agree and re-export")
    if trust not in NIFTI_TRANSFORMS:
        raise ValueError(f"trust must be one of {NIFTI_TRANSFORMS}, got {trust!r}")
    chosen = qform if trust == "qform" else sform
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ chosen  # RAS (NIfTI) -> LPS (ITK)


def _check_datatype(path: Path, code: int, bitpix: int) -> int:
    """Bits per voxel of a datatype SimpleITK reads correctly; a bitpix that disagrees is a lie."""
    if code in _COLOUR:
        raise ImageReadError(path, f"holds {_COLOUR[code]} colour voxels (NIfTI datatype {code}); save a grey-value "
                                   f"image, one channel per file")
    bits = _DATATYPE_BITS.get(code)
    if bits is None:
        raise ImageReadError(path, f"cannot be read as an image (NIfTI datatype code {code} is unknown or "
                                   f"unsupported); {_FIX}")
    if bitpix != bits:
        raise ImageReadError(path, f"cannot be read as an image (bitpix {bitpix} in the header does not match "
                                   f"datatype {code}, which has {bits} bits per voxel); {_FIX}")
    return bits


def _read_head(path: Path, compressed: bool) -> bytes:
    opener = gzip.open if compressed else open
    try:
        with opener(path, "rb") as fh:  # type: ignore[operator]
            head = fh.read(540)
    except EOFError:
        raise ImageReadError(
            path, f"cannot be read as an image (truncated: the gzip data ends early); {_FIX}"
        ) from None
    except (OSError, zlib.error) as exc:
        reason = "not gzip-compressed data" if "Not a gzipped" in str(exc) else f"corrupt gzip data: {exc}"
        raise ImageReadError(path, f"cannot be read as an image ({reason}); {_FIX}") from None
    if len(head) < 348:
        raise ImageReadError(
            path, f"cannot be read as an image (only {len(head)} bytes, shorter than a NIfTI header); {_FIX}"
        )
    return head


def _layout_of(path: Path, head: bytes) -> tuple[_Layout, str]:
    for size, layout in _LAYOUTS.items():
        for endian in ("<", ">"):
            if struct.unpack(endian + "i", head[:4])[0] == size and len(head) >= size:
                return layout, endian
    raise ImageReadError(path, f"cannot be read as an image (not a NIfTI header); {_FIX}")


def _uncompressed_size(path: Path, expected: int) -> int:
    """Size of the decompressed .gz content; cheap when the gzip trailer already agrees.

    A truncated stream counts what could be decompressed; corrupt data is an error.
    """
    with open(path, "rb") as fh:
        fh.seek(-4, os.SEEK_END)
        isize = struct.unpack("<I", fh.read(4))[0]
    if isize == expected % 2**32:
        return expected
    total = 0
    decomp = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                while chunk:
                    total += len(decomp.decompress(chunk))
                    chunk = b""
                    if decomp.eof:  # next gzip member, if any
                        chunk = decomp.unused_data
                        decomp = zlib.decompressobj(16 + zlib.MAX_WBITS) if chunk else decomp
            total += len(decomp.flush())
    except zlib.error as exc:
        raise ImageReadError(path, f"cannot be read as an image (corrupt gzip data: {exc}); {_FIX}") from None
    return total


def _fmt(values: tuple[float, ...]) -> str:
    return "[" + ", ".join(f"{v:.6g}" for v in values) + "]"
