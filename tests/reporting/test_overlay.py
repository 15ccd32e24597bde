"""Overlay pictures: slice choice, panels, class colours, and `autounet overlay` on a demo case."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from autounet.cli import main
from autounet.io.geometry import Geometry
from autounet.io.images import read_label, write_label
from autounet.reporting.overlay import (
    CLASS_COLOURS,
    class_colour,
    largest_foreground_slice,
    render_overlay,
    slice_axis,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _rgb(png: bytes) -> np.ndarray:
    assert png.startswith(PNG_SIGNATURE)
    with Image.open(io.BytesIO(png)) as image:
        return np.asarray(image.convert("RGB"), dtype=int)


def _pixels_near(pixels: np.ndarray, colour: str, tolerance: int = 40) -> int:
    target = np.array([int(colour[i:i + 2], 16) for i in (1, 3, 5)])
    return int(np.count_nonzero(np.abs(pixels - target).max(axis=2) <= tolerance))


def _case() -> tuple[np.ndarray, np.ndarray]:
    """A (6, 20, 20) ramp image; organ (1) largest in slice 3, a lesion (2) inside it there."""
    image = np.broadcast_to(np.linspace(0.0, 100.0, 20), (6, 20, 20)).astype(np.float32)
    seg = np.zeros((6, 20, 20), dtype=np.uint8)
    seg[2, 8:12, 8:12] = 1
    seg[3, 4:16, 4:16] = 1
    seg[3, 8:12, 8:12] = 2
    seg[4, 6:14, 6:14] = 1
    return image, seg


def test_largest_foreground_slice_counts_along_the_axis() -> None:
    seg = np.zeros((4, 3, 5), dtype=np.uint8)
    seg[1, 0, 0:2] = 1          # slice 1 of axis 0: 2 voxels
    seg[2, :, 4] = 2            # slice 2 of axis 0: 3 voxels, all in x = 4
    seg[3, 1, 1:5] = 1          # slice 3 of axis 0: 4 voxels
    assert largest_foreground_slice(seg, 0) == 3
    assert largest_foreground_slice(seg, 2) == 4   # x = 4 holds 3 + 1 voxels
    assert largest_foreground_slice(seg, 1) == 1   # y = 1 holds 1 + 4 voxels


def test_largest_foreground_slice_of_an_empty_map_is_the_middle() -> None:
    assert largest_foreground_slice(np.zeros((7, 4, 4), dtype=np.uint8), 0) == 3
    assert largest_foreground_slice(np.zeros((7, 4, 4), dtype=np.uint8), 1) == 2


def test_slice_axis_cuts_across_the_coarsest_axis() -> None:
    assert slice_axis((3.0, 1.0, 1.0)) == 0
    assert slice_axis((0.8, 0.8, 2.5)) == 2
    assert slice_axis((2.0, 2.0, 1.0)) == 0     # ties: the first
    assert slice_axis(None) == 0
    assert slice_axis((1.0, 3.0, 1.0), (10, 40, 40)) == 1


def test_slice_axis_of_2d_data_is_its_singleton_axis() -> None:
    # the demo's 2D cases: nominal slice spacing 1.0, in-plane spacing up to 1.3
    assert slice_axis((1.0, 1.2, 1.3), (1, 80, 90)) == 0
    assert slice_axis((0.7, 0.7, 5.0), (64, 64, 1)) == 2


def test_class_colour_follows_the_class_not_the_slice() -> None:
    assert class_colour(1) == CLASS_COLOURS[0]
    assert class_colour(2) == CLASS_COLOURS[1]
    labels = {0: "background", 5: "liver", 117: "tumour"}
    assert class_colour(5, labels) == CLASS_COLOURS[0]
    assert class_colour(117, labels) == CLASS_COLOURS[1]


def test_render_overlay_draws_one_panel_per_label_map() -> None:
    image, seg = _case()
    one = _rgb(render_overlay(image, seg, spacing_zyx=(2.0, 1.0, 1.0)))
    two = _rgb(render_overlay(image[None], seg, seg, spacing_zyx=(2.0, 1.0, 1.0), label_names={1: "organ"}))
    assert two.shape[0] == one.shape[0]
    assert two.shape[1] == 2 * one.shape[1]


def test_render_overlay_outlines_each_class_in_its_colour() -> None:
    image, seg = _case()
    pixels = _rgb(render_overlay(image, seg, spacing_zyx=(2.0, 1.0, 1.0)))
    assert _pixels_near(pixels, class_colour(1)) > 20
    assert _pixels_near(pixels, class_colour(2)) > 10
    empty = _rgb(render_overlay(image, np.zeros_like(seg), spacing_zyx=(2.0, 1.0, 1.0)))
    saturated = np.count_nonzero(empty.max(axis=2) - empty.min(axis=2) > 60)
    assert saturated == 0, "an empty label map must draw no outlines"


def test_render_overlay_of_2d_data_shows_the_plane() -> None:
    image = np.broadcast_to(np.linspace(0.0, 100.0, 24), (1, 20, 24)).astype(np.float32)
    seg = np.zeros((1, 20, 24), dtype=np.uint8)
    seg[0, 5:15, 6:18] = 1
    pixels = _rgb(render_overlay(image, seg, spacing_zyx=(1.0, 1.2, 1.3)))
    assert _pixels_near(pixels, class_colour(1)) > 20


def test_render_overlay_rejects_a_map_of_another_shape() -> None:
    image, seg = _case()
    with pytest.raises(ValueError, match="prediction shape"):
        render_overlay(image, seg, seg[:, :10])


def test_cli_overlay_of_a_demo_case(demo_task_3d: Path, tmp_path: Path) -> None:
    image = demo_task_3d / "imagesTr" / "demo_001.nii.gz"
    label = demo_task_3d / "labelsTr" / "demo_001.nii.gz"
    single, double = tmp_path / "one.png", tmp_path / "two.png"
    assert main(["overlay", "-i", str(image), "-s", str(label), "-o", str(single)]) == 0
    assert main(["overlay", "-i", str(image), "-s", str(label), "-o", str(double), "--second", str(label)]) == 0
    one, two = _rgb(single.read_bytes()), _rgb(double.read_bytes())
    assert two.shape[1] == 2 * one.shape[1]
    assert _pixels_near(one, class_colour(1)) > 20, "the organ is not outlined"
    assert not list(tmp_path.glob(".tmp-*"))


def test_cli_overlay_names_the_label_map_of_the_wrong_shape(demo_task_3d: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    image = demo_task_3d / "imagesTr" / "demo_001.nii.gz"
    seg, geometry = read_label(demo_task_3d / "labelsTr" / "demo_001.nii.gz")
    cropped = tmp_path / "cropped_label.nii.gz"
    write_label(seg[:, :-3], Geometry(geometry.spacing, geometry.origin, geometry.direction,
                                      shape=seg[:, :-3].shape), cropped)
    out = tmp_path / "out.png"
    assert main(["overlay", "-i", str(image), "-s", str(cropped), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "cropped_label.nii.gz" in err
    assert not out.exists()
    assert main(["overlay", "-i", str(image), "-s", str(demo_task_3d / "labelsTr" / "demo_001.nii.gz"),
                 "-o", str(out), "--second", str(cropped)]) == 2
    assert "cropped_label.nii.gz" in capsys.readouterr().err
