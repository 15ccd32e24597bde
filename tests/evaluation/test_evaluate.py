"""evaluate_case / evaluate_folder on small NIfTI files with hand-computed expectations."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from autounet.errors import AutounetError, DatasetError
from autounet.evaluation.evaluate import evaluate_case, evaluate_folder, labels_in_folder, parse_metrics
from autounet.evaluation.summary_table import format_summary
from autounet.io.geometry import Geometry
from autounet.io.images import write_label

SPACING_XYZ = (0.7, 0.5, 3.0)  # SimpleITK order; (z, y, x) = (3.0, 0.5, 0.7)


def _geometry(shape: tuple[int, int, int], spacing=SPACING_XYZ, origin=(10.0, -5.0, 2.0)) -> Geometry:
    return Geometry(spacing=spacing, origin=origin, direction=(-1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0), shape=shape)


def _write(seg: np.ndarray, path: Path, **kwargs) -> Path:
    write_label(seg.astype(np.uint8), _geometry(seg.shape, **kwargs), path)
    return path


@pytest.fixture()
def folders(tmp_path: Path) -> tuple[Path, Path]:
    """Three cases, labels 1 and 2:

    a: label 1 ref 8 voxels, pred 4 of them -> Dice 2*4/(8+4) = 2/3; label 2 both empty (NaN).
    b: label 1 perfect (4 voxels) -> 1; label 2 ref empty, pred 2 voxels -> 0.
    c: label 1 perfect (2 voxels) -> 1; label 2 perfect (3 voxels) -> 1.
    """
    ref_dir, pred_dir = tmp_path / "ref", tmp_path / "pred"
    shape = (2, 4, 4)
    a_ref = np.zeros(shape, np.uint8)
    a_ref[0, :2, :] = 1
    a_pred = np.zeros(shape, np.uint8)
    a_pred[0, :1, :] = 1
    b_ref = np.zeros(shape, np.uint8)
    b_ref[1, 0, :] = 1
    b_pred = b_ref.copy()
    b_pred[0, 3, :2] = 2
    c_ref = np.zeros(shape, np.uint8)
    c_ref[0, 0, :2] = 1
    c_ref[1, 2, :3] = 2
    for name, ref, pred in (("a", a_ref, a_pred), ("b", b_ref, b_pred), ("c", c_ref, c_ref)):
        _write(ref, ref_dir / f"{name}.nii.gz")
        _write(pred, pred_dir / f"{name}.nii.gz")
    return ref_dir, pred_dir


def test_parse_metrics():
    assert parse_metrics("dice,hd95,nsd:2") == ("dice", "hd95", "nsd:2")
    assert parse_metrics("hd95, NSD:1.5,iou") == ("dice", "hd95", "nsd:1.5")
    with pytest.raises(AutounetError, match="unknown metric 'jaccardx'"):
        parse_metrics("dice,jaccardx")
    with pytest.raises(AutounetError, match="tolerance"):
        parse_metrics("nsd")


def test_evaluate_folder_values_means_and_exclusions(folders):
    ref_dir, pred_dir = folders
    summary = evaluate_folder(ref_dir, pred_dir, [1, 2])
    per_case = {Path(c["prediction_file"]).name: c["metrics"] for c in summary["metric_per_case"]}
    assert per_case["a.nii.gz"]["1"]["Dice"] == pytest.approx(2 / 3)
    assert per_case["a.nii.gz"]["1"]["IoU"] == pytest.approx(0.5)
    a1 = per_case["a.nii.gz"]["1"]
    assert (a1["TP"], a1["FP"], a1["FN"]) == (4, 0, 4)
    assert per_case["a.nii.gz"]["1"]["TN"] == 32 - 8
    assert math.isnan(per_case["a.nii.gz"]["2"]["Dice"])
    assert per_case["b.nii.gz"]["2"]["Dice"] == 0.0
    assert per_case["b.nii.gz"]["2"]["n_pred"] == 2

    mean = summary["mean"]
    assert mean["1"]["Dice"] == pytest.approx((2 / 3 + 1 + 1) / 3)
    assert mean["2"]["Dice"] == pytest.approx((0 + 1) / 2)  # case a excluded
    assert mean["2"]["num_excluded_both_empty"] == 1
    assert mean["1"]["num_excluded_both_empty"] == 0
    assert summary["foreground_mean"]["Dice"] == pytest.approx(((2 / 3 + 2) / 3 + 0.5) / 2)
    # worst case first: b has foreground Dice (1 + 0) / 2 = 0.5, a has 2/3 (label 2 excluded)
    assert [w["case"] for w in summary["worst_cases"]] == ["b", "a", "c"]
    assert summary["worst_cases"][0]["foreground_dice"] == pytest.approx(0.5)

    on_disk = json.loads((pred_dir / "summary.json").read_text())
    assert on_disk["mean"]["2"]["Dice"] == pytest.approx(0.5)
    assert not list(pred_dir.glob(".tmp-*"))


def test_surface_metrics_in_mm(folders, tmp_path):
    ref_dir, pred_dir = folders
    out = tmp_path / "elsewhere" / "s.json"
    summary = evaluate_folder(ref_dir, pred_dir, [1], metrics="dice,hd95,nsd:1", num_workers=0, output_file=out)
    assert out.is_file() and not (pred_dir / "summary.json").exists()
    case_a = summary["metric_per_case"][0]["metrics"]["1"]
    # case a: reference rows y=0,1 of slice z=0, prediction row y=0: the missed row is 0.5 mm away.
    # Directed ref->pred distances: 4 zeros, 4 x 0.5 mm -> 95th percentile 0.5; NSD at 1 mm = 1.
    assert case_a["HD95"] == pytest.approx(0.5)
    assert case_a["NSD@1mm"] == pytest.approx(1.0)
    assert "HD95" in summary["foreground_mean"] and "NSD@1mm" in summary["mean"]["1"]


def test_parallel_workers_give_the_same_result(folders, tmp_path):
    ref_dir, pred_dir = folders
    inline = evaluate_folder(ref_dir, pred_dir, [1, 2], output_file=tmp_path / "inline.json")
    parallel = evaluate_folder(ref_dir, pred_dir, [1, 2], num_workers=2, output_file=tmp_path / "parallel.json")
    assert parallel["mean"]["1"]["Dice"] == pytest.approx(inline["mean"]["1"]["Dice"])
    assert parallel["foreground_mean"] == pytest.approx(inline["foreground_mean"])


def test_background_is_not_evaluated_and_labels_can_come_from_the_files(folders):
    ref_dir, pred_dir = folders
    assert labels_in_folder(ref_dir) == [0, 1, 2]
    summary = evaluate_folder(ref_dir, pred_dir, labels_in_folder(ref_dir))
    assert summary["labels"] == [1, 2] and set(summary["mean"]) == {"1", "2"}
    with pytest.raises(AutounetError, match="no foreground labels"):
        evaluate_folder(ref_dir, pred_dir, [0])


def test_missing_prediction_is_listed_unless_allowed(folders):
    ref_dir, pred_dir = folders
    (pred_dir / "c.nii.gz").unlink()
    (pred_dir / ".tmp-c-123.nii.gz").write_bytes(b"partial")  # an interrupted write is ignored
    (pred_dir / "c.npz").write_bytes(b"")  # probabilities are not predictions
    with pytest.raises(DatasetError, match=r"missing prediction\(s\) .*: c.nii.gz"):
        evaluate_folder(ref_dir, pred_dir, [1, 2])
    summary = evaluate_folder(ref_dir, pred_dir, [1, 2], allow_missing=True)
    assert summary["num_cases"] == 2
    assert summary["missing_predictions"] == ["c"]


def test_case_ids_restrict_the_evaluation_to_those_cases(folders):
    """A fold's validation: only its cases count, other references and stray predictions are ignored."""
    ref_dir, pred_dir = folders
    (pred_dir / "c.nii.gz").unlink()
    _write(np.zeros((2, 4, 4), np.uint8), pred_dir / "stale.nii.gz")  # e.g. from an earlier split
    summary = evaluate_folder(ref_dir, pred_dir, [1, 2], case_ids=["a", "b"])
    assert summary["num_cases"] == 2 and summary["missing_predictions"] == []
    assert summary["mean"]["1"]["Dice"] == pytest.approx((2 / 3 + 1) / 2)
    with pytest.raises(DatasetError, match=r"missing prediction\(s\) .*: c.nii.gz"):
        evaluate_folder(ref_dir, pred_dir, [1, 2], case_ids=["a", "c"])


def test_prediction_without_reference_is_an_error(folders):
    ref_dir, pred_dir = folders
    (ref_dir / "b.nii.gz").unlink()
    with pytest.raises(DatasetError, match="no reference for prediction.*b.nii.gz"):
        evaluate_folder(ref_dir, pred_dir, [1, 2], allow_missing=True)


@pytest.mark.parametrize(
    "kwargs, what",
    [({"spacing": (0.7, 0.5, 2.0)}, "spacing"), ({"origin": (10.0, -5.0, 5.0)}, "origin")],
)
def test_mismatched_grid_names_the_file_and_the_difference(folders, kwargs, what):
    ref_dir, pred_dir = folders
    seg = np.zeros((2, 4, 4), np.uint8)
    _write(seg, pred_dir / "b.nii.gz", **kwargs)
    with pytest.raises(DatasetError, match=rf"b\.nii\.gz: grid differs from reference .*{what}"):
        evaluate_case(ref_dir / "b.nii.gz", pred_dir / "b.nii.gz", [1])
    with pytest.raises(AutounetError, match=r"b\.nii\.gz"):
        evaluate_folder(ref_dir, pred_dir, [1])


def test_mismatched_shape_is_reported(folders):
    ref_dir, pred_dir = folders
    _write(np.zeros((2, 4, 5), np.uint8), pred_dir / "a.nii.gz")
    with pytest.raises(DatasetError, match=r"a\.nii\.gz: grid differs .*shape \(2, 4, 5\) vs reference \(2, 4, 4\)"):
        evaluate_case(ref_dir / "a.nii.gz", pred_dir / "a.nii.gz", [1])


def test_format_summary_shows_labels_foreground_mean_and_worst_cases(folders):
    ref_dir, pred_dir = folders
    summary = evaluate_folder(ref_dir, pred_dir, [1, 2], metrics="dice,hd95")
    text = format_summary(summary, {1: "liver", 2: "tumour"})
    lines = text.splitlines()
    assert lines[0].split()[:4] == ["label", "Dice", "IoU", "HD95"]
    liver = next(line for line in lines if line.startswith("1 liver"))
    assert f"{(2 / 3 + 2) / 3:.4f}" in liver
    tumour = next(line for line in lines if line.startswith("2 tumour"))
    assert tumour.split()[2] == "0.5000" and tumour.split()[-1] == "1"  # one case excluded
    assert any(line.startswith("foreground mean") for line in lines)
    assert "3 worst case(s)" in text and lines[-3].split() == ["b", "0.5000"]


def test_real_multiclass_prediction_matches_an_independent_dice(shared_data_dir, tmp_path):
    """TotalSegmentator's fast (3 mm) model output against its full model output, same grid.

    Non-contiguous label ids up to 117; each label's Dice is recomputed here from nibabel arrays
    (an independent reader), and a label value that occurs in neither file must be NaN and excluded.
    """
    nib = pytest.importorskip("nibabel")
    src = shared_data_dir / "totalsegmentator-reference"
    ref_file, pred_file = src / "example_seg.nii.gz", src / "example_seg_fast.nii.gz"
    if not (ref_file.is_file() and pred_file.is_file()):
        pytest.skip("TotalSegmentator reference segmentations not present")
    ref_dir, pred_dir = tmp_path / "ref", tmp_path / "pred"
    ref_dir.mkdir()
    pred_dir.mkdir()
    (ref_dir / "ct.nii.gz").symlink_to(ref_file)
    (pred_dir / "ct.nii.gz").symlink_to(pred_file)
    ref = np.asarray(nib.load(ref_file).dataobj)
    pred = np.asarray(nib.load(pred_file).dataobj)
    labels = sorted(int(v) for v in np.union1d(np.unique(ref), np.unique(pred)) if v != 0)
    unused = max(labels) + 1
    summary = evaluate_folder(ref_dir, pred_dir, [*labels, unused], metrics="dice,hd95",
                              output_file=tmp_path / "summary.json")
    case = summary["metric_per_case"][0]["metrics"]
    for v in labels:
        r, p = ref == v, pred == v
        expected = 2 * np.sum(r & p) / (r.sum() + p.sum())
        assert case[str(v)]["Dice"] == pytest.approx(expected), v
        if r.any() and p.any():
            assert 0.0 <= case[str(v)]["HD95"] < np.inf
    assert math.isnan(case[str(unused)]["Dice"]) and summary["mean"][str(unused)]["num_excluded_both_empty"] == 1
    assert summary["foreground_mean"]["Dice"] == pytest.approx(np.mean([case[str(v)]["Dice"] for v in labels]))
