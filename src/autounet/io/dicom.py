"""Reading DICOM series (SimpleITK/GDCM) and writing DICOM Segmentation objects (highdicom).

How a DICOM series is named wherever autounet takes an image path:
- a folder that holds exactly one series (one DICOM file per slice; other files are ignored), or
- `<folder>/<SeriesInstanceUID>.dcm-series`, a reference (no such file exists) to one of several
  series stored side by side in `<folder>`; `series_references` makes them.

The grid comes from the slices themselves: the slice spacing is the step between the
ImagePositionPatient positions projected on the slice normal, never the SliceThickness tag
(which is the thickness of the reconstructed slab and often differs from the step). A series
whose slices are unevenly spaced, have a gap (a missing slice) or do not share one
ImageOrientationPatient has no single grid and is refused with one line naming the folder.
Reading works with SimpleITK alone; only DICOM-SEG output needs the `dicom` extra.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from autounet.errors import AutounetError, ImageReadError
from autounet.io.atomic import atomic_path
from autounet.io.geometry import Geometry

log = logging.getLogger(__name__)

SERIES_REF_ENDING = ".dcm-series"
SPACING_RTOL = 1e-2
"""Slice steps may differ by 1% (positions are stored as rounded decimal strings) before a series
counts as unevenly spaced."""
SPACING_ATOL_MM = 1e-3
GAP_FACTOR = 1.5
"""A step this many times the typical step is a missing slice rather than uneven spacing."""
ORIENTATION_ATOL = 1e-3
_EXTRA = "pip install 'autounet[dicom]'"
_TAG_POSITION = "0020|0032"
_TAG_ORIENTATION = "0020|0037"
_TAG_PIXEL_SPACING = "0028|0030"
_TAG_FRAMES = "0028|0008"
_SEG_REFERENCE_TAGS = (("0008|0016", "SOPClassUID"), ("0008|0018", "SOPInstanceUID"),
                       ("0020|000d", "StudyInstanceUID"), ("0020|000e", "SeriesInstanceUID"))
_TAG_SLICE_STEP = ("0018|0088", "0018|0050")  # SpacingBetweenSlices, SliceThickness: single slices only


@dataclass(frozen=True)
class SliceGrid:
    """Where the slices of a series lie: their order along the normal and the grid they span."""

    order: list[int]
    spacing_z: float
    origin: tuple[float, float, float]
    direction: tuple[float, ...]


# ----------------------------------------------------------------------------------------------
# naming series


def is_series_reference(path: str | os.PathLike[str]) -> bool:
    """Whether `path` names a DICOM series: a folder, or a `<folder>/<uid>.dcm-series` reference."""
    path = Path(path)
    return path.is_dir() or (path.name.endswith(SERIES_REF_ENDING) and path.parent.is_dir())


def series_ids(folder: str | os.PathLike[str]) -> list[str]:
    """SeriesInstanceUIDs of the DICOM files directly in `folder` (GDCM's scan; no DICOM: [])."""
    return list(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))


def series_references(folder: str | os.PathLike[str]) -> dict[str, Path]:
    """Case id -> series reference for the series directly in `folder`.

    One series: the folder itself, under the folder's name. Several: one
    `<uid>.dcm-series` reference each, under its SeriesInstanceUID.
    """
    folder = Path(folder)
    uids = series_ids(folder)
    if len(uids) == 1:
        return {folder.name: folder}
    if "" in uids:
        raise ImageReadError(folder, "holds several DICOM series, one of them without a SeriesInstanceUID; "
                                     "put each series into its own sub-folder")
    return {uid: folder / f"{uid}{SERIES_REF_ENDING}" for uid in sorted(uids)}


def series_in_folder(folder: str | os.PathLike[str]) -> list[tuple[str, Path]]:
    """(name, reference) of every DICOM series in `folder`, for prediction inputs.

    Each sub-folder holding DICOM files is one series named by the sub-folder (a folder with
    several series is refused when read); series stored directly in `folder` are named as by
    `series_references`.
    """
    folder = Path(folder)
    entries = [(sub.name, sub) for sub in sorted(folder.iterdir())
               if sub.is_dir() and not sub.name.startswith(".") and series_ids(sub)]
    if series_ids(folder):
        entries.extend(series_references(folder).items())
    return entries


def series_files(ref: str | os.PathLike[str]) -> list[Path]:
    """The DICOM files of the series `ref` names (GDCM's order; `slice_grid` decides the real one)."""
    ref = Path(ref)
    if ref.is_dir():
        folder, uids = ref, series_ids(ref)
        if not uids:
            raise ImageReadError(folder, "holds no DICOM series (no readable DICOM files directly in the folder); "
                                         "put the series' .dcm files there")
        if len(uids) > 1:
            raise ImageReadError(folder, f"holds {len(uids)} DICOM series ({', '.join(uids[:3])}"
                                         f"{' ...' if len(uids) > 3 else ''}); put one series per folder")
        uid = uids[0]
    else:
        folder, uid = ref.parent, ref.name[: -len(SERIES_REF_ENDING)]
        if uid not in series_ids(folder):
            raise ImageReadError(ref, f"no DICOM series with SeriesInstanceUID {uid} in {folder}; check the folder")
    return [Path(f) for f in sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid)]


# ----------------------------------------------------------------------------------------------
# geometry


def slice_grid(positions: Sequence[Sequence[float]], orientations: Sequence[Sequence[float]],
               where: str | os.PathLike[str], single_step: float = 1.0) -> SliceGrid:
    """Order, spacing, origin and direction of slices from ImagePositionPatient/ImageOrientationPatient.

    Slices are sorted by their position projected on the normal (row x column direction); the
    first one is the origin. `single_step` is the z spacing of a one-slice series. Uneven steps,
    gaps and mixed orientations raise ImageReadError naming `where`.
    """
    iop = np.asarray(orientations, dtype=float)
    pos = np.asarray(positions, dtype=float)
    if np.any(np.abs(iop - iop[0]) > ORIENTATION_ATOL):
        bad = int(np.argmax(np.any(np.abs(iop - iop[0]) > ORIENTATION_ATOL, axis=1)))
        raise ImageReadError(where, f"mixed slice orientations: ImageOrientationPatient {_fmt(iop[bad])} of one "
                                    f"slice differs from {_fmt(iop[0])}; give each orientation its own series")
    row, col = iop[0, :3], iop[0, 3:]
    normal = np.cross(row, col)
    if not np.isclose(np.linalg.norm(normal), 1.0, atol=ORIENTATION_ATOL) or abs(row @ col) > ORIENTATION_ATOL:
        raise ImageReadError(where, f"ImageOrientationPatient {_fmt(iop[0])} is not two orthogonal unit vectors; "
                                    "fix the DICOM header")
    depth = pos @ normal
    order = [int(i) for i in np.argsort(depth, kind="stable")]
    steps = np.diff(depth[order])
    if steps.size == 0:
        spacing = float(single_step)
    else:
        _check_steps(steps, float(np.median(steps)), depth[order], where)
        spacing = float(depth[order[-1]] - depth[order[0]]) / len(steps)  # the mean step: rounding averages out
    direction = np.stack([row, col, normal], axis=1)  # columns: x, y, z axes (SimpleITK, row-major)
    return SliceGrid(order=order, spacing_z=spacing, origin=tuple(float(v) for v in pos[order[0]]),  # type: ignore
                     direction=tuple(float(v) for v in direction.ravel()))


def _check_steps(steps: np.ndarray, spacing: float, depth: np.ndarray, where: str | os.PathLike[str]) -> None:
    if np.any(steps <= SPACING_ATOL_MM):
        i = int(np.argmax(steps <= SPACING_ATOL_MM))
        raise ImageReadError(where, f"two slices lie at the same position ({depth[i]:.6g} mm along the normal); "
                                    "remove the duplicate slice or split the series")
    if np.any(steps > GAP_FACTOR * spacing):
        i = int(np.argmax(steps > GAP_FACTOR * spacing))
        raise ImageReadError(where, f"missing slice(s): a gap of {steps[i]:.6g} mm between the slices at "
                                    f"{depth[i]:.6g} and {depth[i + 1]:.6g} mm where the slice spacing is "
                                    f"{spacing:.6g} mm; add the missing slices")
    tol = SPACING_RTOL * spacing + SPACING_ATOL_MM
    if np.any(np.abs(steps - spacing) > tol):
        raise ImageReadError(where, f"non-uniform slice spacing: steps between slice positions range from "
                                    f"{steps.min():.6g} to {steps.max():.6g} mm; resample the series onto a "
                                    "regular grid")


def _numbers(reader: sitk.ImageFileReader, tag: str, count: int, path: Path, name: str) -> list[float]:
    if not reader.HasMetaDataKey(tag):
        raise ImageReadError(path, f"DICOM slice has no {name} ({tag.replace('|', ',')}); it cannot be placed in "
                                   "a 3D grid - remove it from the series folder")
    try:
        values = [float(v) for v in reader.GetMetaData(tag).strip().split("\\")]
    except ValueError:
        values = []
    if len(values) != count or not all(np.isfinite(values)):
        raise ImageReadError(path, f"DICOM {name} {reader.GetMetaData(tag).strip()!r} is not {count} numbers; "
                                   "fix the DICOM header")
    return values


def _single_slice_step(reader: sitk.ImageFileReader) -> float:
    """z spacing of a one-slice series, which has no position steps: SpacingBetweenSlices, else SliceThickness."""
    for tag in _TAG_SLICE_STEP:
        try:
            step = abs(float(reader.GetMetaData(tag).strip())) if reader.HasMetaDataKey(tag) else 0.0
        except ValueError:
            step = 0.0
        if step > 0 and np.isfinite(step):
            return step
    return 1.0


def _slice_header(path: Path) -> sitk.ImageFileReader:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.SetImageIO("GDCMImageIO")
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        raise ImageReadError(path, "cannot be read as a DICOM slice (corrupt header); replace the file") from None
    return reader


# ----------------------------------------------------------------------------------------------
# reading


def read_series_info(ref: str | os.PathLike[str]) -> tuple[list[Path], Geometry]:
    """The series' files in slice order and its grid, from the headers only."""
    ref = Path(ref)
    files = series_files(ref)
    where = ref  # the folder, or the folder and the UID
    headers = [_slice_header(f) for f in files]
    positions, orientations = [], []
    for f, reader in zip(files, headers):
        frames = reader.GetMetaData(_TAG_FRAMES).strip() if reader.HasMetaDataKey(_TAG_FRAMES) else "1"
        if frames not in ("", "1"):
            raise ImageReadError(f, f"multi-frame DICOM ({frames} frames in one file) is not supported; export the "
                                    "series as one file per slice")
        positions.append(_numbers(reader, _TAG_POSITION, 3, f, "ImagePositionPatient"))
        orientations.append(_numbers(reader, _TAG_ORIENTATION, 6, f, "ImageOrientationPatient"))
    rows_cols = {tuple(reader.GetSize()[:2]) for reader in headers}
    if len(rows_cols) > 1:
        raise ImageReadError(where, f"slices of different sizes {sorted(rows_cols)} (columns, rows); give each size "
                             "its own series")
    first = headers[0]
    step = _single_slice_step(first) if len(files) == 1 else 1.0
    grid = slice_grid(positions, orientations, where, single_step=step)
    dy, dx = _numbers(first, _TAG_PIXEL_SPACING, 2, files[0], "PixelSpacing") \
        if first.HasMetaDataKey(_TAG_PIXEL_SPACING) else (1.0, 1.0)
    if dx <= 0 or dy <= 0:
        raise ImageReadError(files[0], f"DICOM PixelSpacing {dy:g}\\{dx:g} must be positive; fix the DICOM header")
    cols, rows = next(iter(rows_cols))
    geometry = Geometry(spacing=(dx, dy, grid.spacing_z), origin=grid.origin, direction=grid.direction,
                        shape=(len(files), rows, cols), file_dim=3, is_2d=len(files) == 1 or 1 in (rows, cols))
    return [files[i] for i in grid.order], geometry


def read_series(ref: str | os.PathLike[str], max_bytes: int | None = None) -> tuple[np.ndarray, Geometry]:
    """A DICOM series as float32 (1, Z, Y, X) with rescale slope/intercept applied, and its grid."""
    files, geometry = read_series_info(ref)
    need = int(np.prod(geometry.shape)) * 12  # GDCM's buffer, the float32 image and numpy's copy
    if max_bytes is not None and need > max_bytes:
        raise ImageReadError(ref, f"needs about {need / 2**30:.2f} GiB of memory to read, more than the "
                                  f"{max_bytes / 2**30:.2f} GiB one case may use; free memory or raise --memory-gb")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(f) for f in files])
    reader.SetOutputPixelType(sitk.sitkFloat32)
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        reason = str(exc).strip().splitlines()[-1][:160] if str(exc).strip() else "unknown error"
        raise ImageReadError(ref, f"DICOM series cannot be read ({reason}); re-export the series") from None
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ImageReadError(ref, "DICOM series with colour (multi-component) pixels is not supported; export it as "
                                  "greyscale")
    data = sitk.GetArrayFromImage(image).astype(np.float32, copy=False)
    if data.shape != geometry.shape:
        raise ImageReadError(ref, f"DICOM pixel data of shape {list(data.shape)} does not match the headers' "
                                  f"{list(geometry.shape)}; re-export the series")
    return np.ascontiguousarray(data[None]), geometry


# ----------------------------------------------------------------------------------------------
# DICOM-SEG output


def require_dicom_extra() -> None:
    """Refuse at once (before any prediction) when highdicom/pydicom are missing."""
    try:
        import highdicom  # noqa: F401
        import pydicom  # noqa: F401
    except ImportError:
        raise AutounetError(f"DICOM-SEG output needs the optional extra: {_EXTRA}") from None


def check_seg_source(ref: str | os.PathLike[str]) -> None:
    """Refuse a series a DICOM-SEG cannot reference (UIDs blanked, e.g. by anonymisation), before predicting."""
    files = series_files(ref)
    for f in files:
        reader = _slice_header(f)
        missing = [name for tag, name in _SEG_REFERENCE_TAGS
                   if not (reader.HasMetaDataKey(tag) and reader.GetMetaData(tag).strip(" \0"))]
        if missing:
            raise AutounetError(f"{ref}: DICOM slice {f.name} has no {', '.join(missing)} (anonymised?), which a "
                                f"DICOM-SEG must reference; use the default nifti output for this series")


def write_dicom_seg(seg: np.ndarray, ref: str | os.PathLike[str], label_names: Mapping[int, str],
                    path: str | os.PathLike[str], software_version: str = "unknown") -> None:
    """Write label map `seg` (Z, Y, X, on the series' grid) as a DICOM Segmentation referencing series `ref`.

    Each foreground label value becomes one segment (numbered 1..K in label order) named by
    `label_names`; a label absent from `seg` is still described, so segment numbers are stable.
    """
    require_dicom_extra()
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes
    from pydicom.sr.coding import Code

    files, geometry = read_series_info(ref)
    if tuple(seg.shape) != tuple(geometry.shape):
        raise ValueError(f"segmentation shape {seg.shape} differs from the series' {geometry.shape}")
    sources = [pydicom.dcmread(str(f), stop_before_pixels=True) for f in files]
    for ds in sources:  # an empty SpecificCharacterSet (seen in real exports) means the default; highdicom refuses ''
        if "SpecificCharacterSet" in ds and not ds.SpecificCharacterSet:
            del ds.SpecificCharacterSet
    values = sorted(v for v in label_names if v != 0)
    numbers = np.zeros(max([0, *values, int(seg.max(initial=0))]) + 1, dtype=np.uint16)
    numbers[values] = np.arange(1, len(values) + 1)
    tissue = Code("85756007", "SCT", "Tissue")  # generic: autounet knows label names, not their codes
    algorithm = hd.AlgorithmIdentificationSequence(name="autounet", version=software_version,
                                                   family=codes.cid7162.ArtificialIntelligence)
    descriptions = [hd.seg.SegmentDescription(
        segment_number=i + 1, segment_label=label_names[v][:64],
        segmented_property_category=tissue, segmented_property_type=tissue,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algorithm,
    ) for i, v in enumerate(values)]
    with warnings.catch_warnings(record=True) as caught:  # highdicom's remarks on the source's tags
        warnings.simplefilter("always")
        try:
            result = hd.seg.Segmentation(
                source_images=sources, pixel_array=numbers[np.asarray(seg, dtype=np.int64)],
                segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=descriptions,
                series_instance_uid=hd.UID(), series_number=9901, sop_instance_uid=hd.UID(), instance_number=1,
                manufacturer="autounet", manufacturer_model_name="autounet", software_versions=software_version,
                device_serial_number="0", series_description="autounet segmentation", omit_empty_frames=False,
            )
        except (ValueError, KeyError, AttributeError, TypeError) as exc:
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise AutounetError(f"{ref}: cannot write a DICOM-SEG referencing this series ({reason}); use the "
                                f"default nifti output") from None
    for w in caught:
        log.debug("%s: highdicom: %s", ref, w.message)
    with atomic_path(Path(path)) as tmp:
        result.save_as(str(tmp))


def _fmt(values: Sequence[float]) -> str:
    return "[" + ", ".join(f"{float(v):.6g}" for v in values) + "]"
