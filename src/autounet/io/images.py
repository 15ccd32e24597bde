"""Reading and writing medical images (NIfTI, NRRD, MetaImage, DICOM series) through SimpleITK.

Why a wrapper: every stage must see the same axis order ((C, Z, Y, X) float32 images,
(Z, Y, X) label maps), the same notion of "2D case", and a one-line error naming the file
for anything broken. SimpleITK silently pads truncated NIfTI files with zeros and repairs
zero or negative pixdim values, so NIfTI headers are checked first (`nifti_header.py`).
Wherever an image path is taken, a DICOM series (a folder, see `dicom.py`) may stand instead.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from autounet.errors import ImageReadError
from autounet.io.atomic import atomic_path
from autounet.io.dicom import is_series_reference, read_series
from autounet.io.geometry import Geometry
from autounet.io.nifti_header import check_nifti
from autounet.io.read_budget import check_read_budget

log = logging.getLogger(__name__)

# ITK prints its own C++ warnings (e.g. about a NIfTI's qform/sform) straight to stderr, around
# autounet's one-line errors; every problem that matters is reported by the checks here instead.
sitk.ProcessObject_SetGlobalWarningDisplay(False)

SUPPORTED_ENDINGS: tuple[str, ...] = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")
"""Longest first, so that '.nii.gz' wins over '.nii' when stripping."""

SPACING_RTOL = 1e-3
SPACING_ATOL = 1e-4
ORIGIN_ATOL = 1e-3
DIRECTION_ATOL = 1e-3
_ORTHONORMAL_ATOL = 1e-3
_CHANNEL_SUFFIX = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")
_FIX = "re-export or replace the file"


# ----------------------------------------------------------------------------------------------
# file names


def file_ending(name: str | os.PathLike[str]) -> str | None:
    """The supported image ending of `name` ('.nii.gz', '.nrrd', ...), or None."""
    lower = Path(name).name.lower()
    for ending in SUPPORTED_ENDINGS:
        if lower.endswith(ending):
            return ending
    return None


def strip_ending(name: str | os.PathLike[str]) -> str:
    """File name without its image ending ('a_0000.nii.gz' -> 'a_0000'); unknown endings keep the name."""
    base = Path(name).name
    ending = file_ending(base)
    return base[: -len(ending)] if ending else base


def split_channel_suffix(stem: str) -> tuple[str, int | None]:
    """Split nnU-Net's 4-digit channel suffix: 'case_0001' -> ('case', 1); 'case' -> ('case', None)."""
    m = _CHANNEL_SUFFIX.match(stem)
    if m is None:
        return stem, None
    return m.group("case"), int(m.group("channel"))


def case_id_from_filename(name: str | os.PathLike[str], file_ending: str | None = None) -> str:
    """Case id of an nnU-Net-style channel file ('la_003_0000.nii.gz' -> 'la_003').

    With `file_ending` given only that ending is stripped; a name without the 4-digit channel
    suffix is returned without its ending (MSD style: one file per case).
    """
    base = Path(name).name
    if file_ending and base.lower().endswith(file_ending.lower()):
        stem = base[: -len(file_ending)]
    else:
        stem = strip_ending(base)
    return split_channel_suffix(stem)[0]


# ----------------------------------------------------------------------------------------------
# reading


def read_image(path: str | os.PathLike[str], max_bytes: int | None = None,
               nifti_transform: str | None = None) -> tuple[np.ndarray, Geometry]:
    """Read an image as float32 (C, Z, Y, X) and its grid.

    A 4D NIfTI holds channels on its 4th axis (MSD multi-modal files); vector-pixel images
    (e.g. RGB NRRD) hold channels per voxel. A true 2D file is read as (C, 1, Y, X) with
    `file_dim == 2`. NaN/inf are not checked here: the integrity check counts them with
    `count_nonfinite`, because SimpleITK reads NaN/inf in NIfTI files as 0. A file whose header
    says reading it needs more than `max_bytes` is refused before it is read. `nifti_transform`
    ('qform' or 'sform') says which transform of a NIfTI header defines the grid where they disagree.
    A DICOM series (a folder or a `.dcm-series` reference, see `dicom.py`) is read as one channel.
    """
    path = Path(path)
    if file_ending(path) is None and is_series_reference(path):
        return read_series(path, max_bytes)
    image = _read_sitk(path, max_bytes, as_float32=True, nifti_transform=nifti_transform)
    dim = image.GetDimension()
    components = image.GetNumberOfComponentsPerPixel()
    arr = sitk.GetArrayFromImage(image)  # a copy: a view would dangle once `image` is freed
    if dim == 4:
        if components != 1:
            raise ImageReadError(path, f"4D image with {components} components per voxel is not supported; {_FIX}")
        data = arr.astype(np.float32, copy=False)  # (T, Z, Y, X)
    elif components > 1:
        data = np.moveaxis(arr.astype(np.float32, copy=False), -1, 0)
        if dim == 2:
            data = data[:, None]
    else:
        data = arr.astype(np.float32, copy=False)[None]
        if dim == 2:
            data = data[:, None]
    geometry = _geometry_of(image, path, tuple(int(s) for s in data.shape[1:]))
    return np.ascontiguousarray(data), geometry


def read_label(path: str | os.PathLike[str], max_bytes: int | None = None,
               nifti_transform: str | None = None) -> tuple[np.ndarray, Geometry]:
    """Read a label map as (Z, Y, X) in its stored dtype; a 4D or multi-component file is an error."""
    path = Path(path)
    image = _read_sitk(path, max_bytes, as_float32=False, nifti_transform=nifti_transform)
    dim = image.GetDimension()
    components = image.GetNumberOfComponentsPerPixel()
    arr = sitk.GetArrayFromImage(image)
    if dim == 4:
        if arr.shape[0] != 1:
            raise ImageReadError(
                path,
                f"is a 4D image ({arr.shape[0]} volumes) but a label map must be 3D; "
                "save one 3D label map per case",
            )
        arr = arr[0]
    if components > 1:
        raise ImageReadError(
            path, f"has {components} components per voxel but a label map must be a scalar image; {_FIX}"
        )
    if dim == 2:
        arr = arr[None]
    return np.ascontiguousarray(arr), _geometry_of(image, path, tuple(int(s) for s in arr.shape))


def read_channels(paths: Sequence[str | os.PathLike[str]], max_bytes: int | None = None,
                  nifti_transform: str | None = None) -> tuple[np.ndarray, Geometry]:
    """Read one file per channel (nnU-Net layout) and stack them to (C, Z, Y, X).

    A single path may hold several channels (an MSD 4D file); among several paths each file
    must hold exactly one, else the error names the file instead of a wrong channel total later.
    The first file's grid is the case's grid. A different shape or spacing cannot be
    repaired silently (error naming the file); a different origin or direction is most
    often rounding in an exporter, so it is only logged.
    """
    if not paths:
        raise ValueError("read_channels needs at least one path")
    arrays: list[np.ndarray] = []
    reference: Geometry | None = None
    for p in paths:
        data, geometry = read_image(p, max_bytes, nifti_transform)
        if len(paths) > 1 and data.shape[0] != 1:
            raise ImageReadError(
                p, f"is 4D ({data.shape[0]} volumes) where a 3D channel file is expected; "
                "split it into one 3D file per channel (_0000, _0001, ...)"
            )
        if reference is None:
            reference = geometry
        else:
            hard, soft = compare_grids(reference, geometry)
            if hard:
                raise ImageReadError(
                    p, f"{hard} of the case's first channel file {Path(paths[0]).name}; "
                    "all channel files of a case must share one grid - resample or re-export it"
                )
            if soft:
                log.warning("%s: %s from the first channel file %s; using the first file's grid",
                            p, soft, Path(paths[0]).name)
        arrays.append(data)
    assert reference is not None
    return np.concatenate(arrays, axis=0), reference


def compare_grids(a: Geometry, b: Geometry) -> tuple[str | None, str | None]:
    """Describe how grid `b` differs from grid `a`: (blocking difference, tolerable difference).

    Shape and spacing (beyond a relative 1e-3 / absolute 1e-4 tolerance) block; origin and
    direction differences are only reported as tolerable. Each text reads "has X ... other".
    """
    if tuple(a.shape) != tuple(b.shape):
        return f"has shape {list(b.shape)} (z, y, x), different from shape {list(a.shape)}", None
    if not np.allclose(b.spacing, a.spacing, rtol=SPACING_RTOL, atol=SPACING_ATOL):
        return (f"has spacing {_fmt(b.spacing_zyx)} (z, y, x), different from spacing "
                f"{_fmt(a.spacing_zyx)}"), None
    soft = []
    if not np.allclose(b.origin, a.origin, rtol=0.0, atol=ORIGIN_ATOL):
        soft.append(f"origin {_fmt(b.origin)} instead of {_fmt(a.origin)}")
    if not np.allclose(b.direction, a.direction, rtol=0.0, atol=DIRECTION_ATOL):
        soft.append(f"direction {_fmt(b.direction)} instead of {_fmt(a.direction)}")
    return None, ("has " + " and ".join(soft) + ", different") if soft else None


def image_channel_count(path: str | os.PathLike[str]) -> int:
    """Number of channels `read_image` would return, from the header only (cheap)."""
    path = Path(path)
    if file_ending(path) is None and is_series_reference(path):
        return 1
    _check_readable_file(path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise _itk_read_error(path, exc) from None
    if reader.GetDimension() == 4:
        return int(reader.GetSize()[3])
    return int(reader.GetNumberOfComponents())


def count_nonfinite(path: str | os.PathLike[str], data: np.ndarray | None = None) -> int:
    """Number of NaN/inf voxels in the file at `path` (`data`: what read_image returned for it).

    SimpleITK's NIfTI reader turns NaN/inf into 0, which would hide broken exports, so
    floating-point NIfTI files are counted from their raw data with nibabel.
    """
    path = Path(path)
    if data is not None:
        bad = int(np.count_nonzero(~np.isfinite(data)))
        if bad:
            return bad
    if file_ending(path) not in (".nii", ".nii.gz"):
        if data is None:
            data, _ = read_image(path)
            return int(np.count_nonzero(~np.isfinite(data)))
        return 0
    import nibabel as nib

    try:
        nifti = nib.load(str(path))
        if nifti.get_data_dtype().kind not in "fc":
            return 0
        raw = np.asanyarray(nifti.dataobj)
    except Exception as exc:  # noqa: BLE001 - any nibabel failure means the file is unreadable
        raise ImageReadError(path, f"cannot be read as an image ({exc}); {_FIX}") from None
    return int(np.count_nonzero(~np.isfinite(raw)))


def _read_sitk(path: Path, max_bytes: int | None = None, as_float32: bool = True,
               nifti_transform: str | None = None) -> sitk.Image:
    _check_readable_file(path)
    ending = file_ending(path)
    grid = None
    if ending in (".nii", ".nii.gz"):  # before anything asks ITK, which prints its own complaints
        grid = check_nifti(path, compressed=ending == ".nii.gz", trust=nifti_transform)
    check_read_budget(path, max_bytes, as_float32)
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise _itk_read_error(path, exc) from None
    if image.GetPixelID() in (sitk.sitkComplexFloat32, sitk.sitkComplexFloat64):
        raise ImageReadError(path, "has complex-valued voxels; save the magnitude (or the channel you mean) as a "
                                   "real-valued image")
    if image.GetDimension() not in (2, 3, 4):
        raise ImageReadError(path, f"is a {image.GetDimension()}D image; only 2D, 3D and 4D (channels) are supported")
    if grid is not None:
        _set_grid(image, grid)
        log.info("%s: qform and sform disagree; using the %s as told", path, nifti_transform)
    return image


def _set_grid(image: sitk.Image, affine: np.ndarray) -> None:
    """Give `image` the spacing, direction and origin of a 4x4 LPS affine (spatial axes only)."""
    linear = affine[:3, :3]
    spacing = np.linalg.norm(linear, axis=0)
    dim = image.GetDimension()
    direction = np.eye(dim)
    direction[:3, :3] = linear / spacing
    image.SetDirection(tuple(float(v) for v in direction.ravel()))
    image.SetSpacing(tuple(float(v) for v in spacing) + tuple(image.GetSpacing()[3:]))
    image.SetOrigin(tuple(float(v) for v in affine[:3, 3]) + tuple(image.GetOrigin()[3:]))


def _check_readable_file(path: Path) -> None:
    if path.is_symlink() and not path.exists():
        raise ImageReadError(path, "is a symbolic link whose target does not exist (or a loop of links); point it "
                                   "at an image file")
    if path.exists() and not path.is_file():
        raise ImageReadError(path, "is not a regular file (a folder, device or socket, possibly through a symbolic "
                                   "link); point it at an image file")
    if not path.is_file():
        raise ImageReadError(path, "file not found; check the path or add the file")
    if file_ending(path) is None:
        raise ImageReadError(
            path, f"unsupported file ending; use one of {', '.join(SUPPORTED_ENDINGS)} (convert the file)"
        )
    if path.stat().st_size == 0:
        raise ImageReadError(path, f"cannot be read as an image (empty file, 0 bytes); {_FIX}")


def _geometry_of(image: sitk.Image, path: Path, shape_zyx: tuple[int, ...]) -> Geometry:
    """Geometry of the first three (or two) spatial axes, validated."""
    dim = image.GetDimension()
    spacing = list(image.GetSpacing())
    origin = list(image.GetOrigin())
    direction = np.array(image.GetDirection(), dtype=float).reshape(dim, dim)
    if dim == 2:
        spacing3 = (spacing[0], spacing[1], 1.0)
        origin3 = (origin[0], origin[1], 0.0)
        d3 = np.eye(3)
        d3[:2, :2] = direction
    else:
        spacing3 = (spacing[0], spacing[1], spacing[2])
        origin3 = (origin[0], origin[1], origin[2])
        d3 = direction[:3, :3]
    if not all(np.isfinite(s) and s > 0 for s in spacing3):
        raise ImageReadError(path, f"spacing {_fmt(spacing3)} in the header must be positive; fix the header")
    if not np.allclose(d3 @ d3.T, np.eye(3), atol=_ORTHONORMAL_ATOL):
        raise ImageReadError(
            path, "direction matrix in the header is not orthonormal (sheared or scaled axes); "
            "fix the header or resample the image onto an orthonormal grid"
        )
    return Geometry(
        spacing=tuple(float(s) for s in spacing3),  # type: ignore[arg-type]
        origin=tuple(float(o) for o in origin3),  # type: ignore[arg-type]
        direction=tuple(float(v) for v in d3.ravel()),
        shape=(int(shape_zyx[0]), int(shape_zyx[1]), int(shape_zyx[2])),
        file_dim=2 if dim == 2 else 3,
        is_2d=dim == 2 or 1 in shape_zyx,
    )


def _itk_read_error(path: Path, exc: RuntimeError) -> ImageReadError:
    """The one-line error for a file SimpleITK refuses; ITK's own wording only where nothing clearer is known."""
    if _NO_ORTHONORMAL in str(exc):
        return ImageReadError(
            path, "direction (sform) in the NIfTI header is not orthonormal (sheared or scaled axes) and no "
            "valid qform is present; fix the header or resample the image onto an orthonormal grid"
        )
    return ImageReadError(path, f"cannot be read as an image ({_short_reason(exc)}); {_FIX}")


def _short_reason(exc: RuntimeError) -> str:
    """The informative part of a SimpleITK/ITK exception, on one short line."""
    text = str(exc)
    if "Unable to determine ImageIO reader" in text:
        return "unknown file format or corrupt header"
    if "Zero-valued spacing" in text:
        return "zero spacing in the header"
    useful = []
    for line in text.splitlines():
        line = _ITK_PREFIX.sub("", line.strip()).strip(" :|")
        if line and not line.startswith(("Exception thrown", "Reason:")) and not _SOURCE_LINE.match(line):
            useful.append(line)
    return (useful[-1] if useful else "unknown error")[:160]


_NO_ORTHONORMAL = "No orthonormal definition found"
_ITK_PREFIX = re.compile(r"^(ITK ERROR|sitk::ERROR):\s*(\w+\(0x[0-9a-fA-F]+\):\s*)?")
_SOURCE_LINE = re.compile(r"^\S+\.(cxx|hxx|h|cpp):\d+:?$")


# ----------------------------------------------------------------------------------------------
# writing


def label_dtype(seg: np.ndarray) -> np.dtype:
    """Smallest on-disk integer type: uint8 below 256, uint16 below 65536, else int32."""
    if seg.size == 0:
        return np.dtype(np.uint8)
    lo, hi = int(seg.min()), int(seg.max())
    if lo >= 0 and hi < 256:
        return np.dtype(np.uint8)
    if lo >= 0 and hi < 65536:
        return np.dtype(np.uint16)
    return np.dtype(np.int32)


def write_label(seg: np.ndarray, geometry: Geometry, path: str | os.PathLike[str]) -> None:
    """Write a (Z, Y, X) integer label map atomically on exactly `geometry`'s grid."""
    seg = np.asarray(seg)
    if seg.dtype.kind == "f":
        if not np.all(np.isfinite(seg)) or np.any(seg != np.round(seg)):
            raise ValueError("write_label needs integer label values")
    _write(seg.astype(label_dtype(seg), copy=False), geometry, Path(path))


def write_image(array: np.ndarray, geometry: Geometry, path: str | os.PathLike[str]) -> None:
    """Write a (Z, Y, X) image, or (C, Z, Y, X) as a 4D NIfTI, atomically on `geometry`'s grid.

    Integer arrays keep their dtype (compact demo data, CT in HU); float arrays are float32.
    """
    array = np.asarray(array)
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    elif array.dtype.kind == "f" and array.dtype != np.float32:
        array = array.astype(np.float32)
    if array.ndim == 4:
        if array.shape[0] == 1:
            array = array[0]
        else:
            _write_4d(array, geometry, Path(path))
            return
    _write(array, geometry, Path(path))


def _to_sitk(array: np.ndarray, geometry: Geometry) -> sitk.Image:
    if tuple(array.shape) != tuple(geometry.shape):
        raise ValueError(f"array shape {array.shape} does not match the geometry's shape {geometry.shape}")
    if geometry.file_dim == 2:
        image = sitk.GetImageFromArray(np.ascontiguousarray(array[0]))
        d = np.array(geometry.direction).reshape(3, 3)[:2, :2]
        image.SetSpacing(geometry.spacing[:2])
        image.SetOrigin(geometry.origin[:2])
        image.SetDirection(tuple(float(v) for v in d.ravel()))
    else:
        image = sitk.GetImageFromArray(np.ascontiguousarray(array))
        image.SetSpacing(geometry.spacing)
        image.SetOrigin(geometry.origin)
        image.SetDirection(geometry.direction)
    return image


def _write(array: np.ndarray, geometry: Geometry, path: Path) -> None:
    _require_ending(path)
    image = _to_sitk(array, geometry)
    with atomic_path(path) as tmp:
        sitk.WriteImage(image, str(tmp), True)


def _write_4d(array: np.ndarray, geometry: Geometry, path: Path) -> None:
    if geometry.file_dim == 2:
        raise ValueError("multi-channel 2D files are not supported; write one file per channel")
    _require_ending(path)
    image = sitk.JoinSeries([_to_sitk(channel, geometry) for channel in array])
    with atomic_path(path) as tmp:
        sitk.WriteImage(image, str(tmp), True)


def _require_ending(path: Path) -> None:
    if file_ending(path) is None:
        raise ValueError(f"{path}: unsupported file ending; use one of {', '.join(SUPPORTED_ENDINGS)}")


def _fmt(values: Sequence[float]) -> str:
    return "[" + ", ".join(f"{v:.6g}" for v in values) + "]"
