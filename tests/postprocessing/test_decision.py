"""Postprocessing decisions on hand-made predictions with a known answer; storing and applying them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from autounet.errors import AutounetError, PlansError
from autounet.evaluation.metrics import dice
from autounet.io.geometry import Geometry
from autounet.io.images import read_label, write_label
from autounet.postprocessing.connected_components import keep_largest_foreground_component
from autounet.postprocessing.decision import determine_postprocessing, postprocess_folder
from autounet.postprocessing.rule import PostprocessingDecision, apply_postprocessing, load_postprocessing, save_postprocessing

SHAPE = (4, 10, 10)
GEOMETRY = Geometry(spacing=(0.8, 0.8, 2.5), origin=(1.0, 2.0, 3.0),
                    direction=(1.0, 0, 0, 0, -1.0, 0, 0, 0, 1.0), shape=SHAPE)


def _write_pairs(tmp_path: Path, pairs: dict[str, tuple[np.ndarray, np.ndarray]]) -> tuple[Path, Path]:
    ref_dir, pred_dir = tmp_path / "ref", tmp_path / "pred"
    for name, (ref, pred) in pairs.items():
        write_label(ref, GEOMETRY, ref_dir / f"{name}.nii.gz")
        write_label(pred, GEOMETRY, pred_dir / f"{name}.nii.gz")
    return ref_dir, pred_dir


def _organ() -> np.ndarray:
    """Label 1 (16 voxels) with label 3 (8 voxels) attached: one foreground component."""
    seg = np.zeros(SHAPE, np.uint8)
    seg[1, 2:6, 2:6] = 1
    seg[1, 2:6, 6:8] = 3
    return seg


def test_removing_a_spurious_component_is_accepted(tmp_path):
    ref = _organ()
    pred = ref.copy()
    pred[3, 9, 8:10] = 1  # 2 false-positive voxels far away
    ref_dir, pred_dir = _write_pairs(tmp_path, {"a": (ref, pred), "b": (ref, ref)})
    decision = determine_postprocessing(pred_dir, ref_dir, [0, 1, 3])
    assert decision.keep_largest_foreground is True
    assert decision.keep_largest_per_label == []  # nothing left to remove after step A
    dice_a = 2 * 16 / (16 + 18)
    assert decision.dice_before["1"] == pytest.approx((dice_a + 1) / 2)
    assert decision.dice_after["1"] == pytest.approx(1.0)
    assert decision.dice_after["3"] == decision.dice_before["3"] == pytest.approx(1.0)
    assert decision.foreground_mean_before == pytest.approx(((dice_a + 1) / 2 + 1) / 2)
    assert decision.foreground_mean_after == pytest.approx(1.0)
    assert decision.num_cases == 2


def test_removing_a_real_small_component_is_rejected(tmp_path):
    ref = _organ()
    ref[3, 9, 8:10] = 1  # the small separate component is real foreground
    pred = ref.copy()
    ref_dir, pred_dir = _write_pairs(tmp_path, {"a": (ref, pred)})
    decision = determine_postprocessing(pred_dir, ref_dir, [1, 3])
    assert decision.keep_largest_foreground is False
    assert decision.keep_largest_per_label == []
    assert decision.is_identity
    assert decision.dice_after == decision.dice_before == {"1": 1.0, "3": 1.0}


def test_per_label_cleanup_where_the_foreground_step_cannot_help(tmp_path):
    # A stray label-3 voxel touches the label-1 region: the foreground stays one component (step A
    # changes nothing, so it is rejected), but label 3 has two components and the stray one is wrong.
    ref = _organ()
    pred = ref.copy()
    pred[1, 1, 2] = 3
    ref_dir, pred_dir = _write_pairs(tmp_path, {"a": (ref, pred)})
    decision = determine_postprocessing(pred_dir, ref_dir, [1, 3])
    assert decision.keep_largest_foreground is False
    assert decision.keep_largest_per_label == [3]
    assert decision.dice_before["3"] == pytest.approx(2 * 8 / (8 + 9))
    assert decision.dice_after["3"] == pytest.approx(1.0)
    assert decision.dice_after["1"] == pytest.approx(1.0)


def _fg_mean_dice(pairs: dict[str, tuple[np.ndarray, np.ndarray]], labels: list[int]) -> tuple[float, dict[int, float]]:
    per_label = {}
    for v in labels:
        values = [dice(ref == v, pred == v) for ref, pred in pairs.values()]
        per_label[v] = float(np.nanmean(values))
    return float(np.mean(list(per_label.values()))), per_label


def test_no_class_may_get_worse_even_if_the_mean_improves(tmp_path):
    # Cases a1, a2: a spurious 12-voxel label-1 blob far from the organ (removing it helps label 1).
    # Case b: label 3 is one voxel apart from the label-1 region, so step A deletes it (label 3 worse).
    # Cases c1..c4: label 3 only, perfect (they dilute label 3's loss so that the mean improves).
    organ_fp = _organ()
    organ_fp[3, 0:3, 0:4] = 1
    ref_b = np.zeros(SHAPE, np.uint8)
    ref_b[1, 2:6, 2:6] = 1
    ref_b[3, 8, 8] = 3
    only_3 = np.zeros(SHAPE, np.uint8)
    only_3[2, 4:6, 4:6] = 3
    pairs = {"a1": (_organ(), organ_fp), "a2": (_organ(), organ_fp.copy()), "b": (ref_b, ref_b.copy())}
    pairs.update({f"c{i}": (only_3, only_3.copy()) for i in range(4)})

    # the scenario really is "mean improves, one class gets worse" under step A
    before, before_per_label = _fg_mean_dice(pairs, [1, 3])
    after, after_per_label = _fg_mean_dice(
        {k: (r, keep_largest_foreground_component(p)) for k, (r, p) in pairs.items()}, [1, 3])
    assert after > before and after_per_label[3] < before_per_label[3]

    ref_dir, pred_dir = _write_pairs(tmp_path, pairs)
    decision = determine_postprocessing(pred_dir, ref_dir, [1, 3], num_workers=2)
    assert decision.keep_largest_foreground is False
    # label 1 alone improves by keeping its largest component; label 3 is left alone
    assert decision.keep_largest_per_label == [1]
    assert decision.dice_before["1"] == pytest.approx(before_per_label[1])
    assert decision.dice_after["1"] == pytest.approx(1.0)
    assert decision.dice_after["3"] == decision.dice_before["3"] == pytest.approx(1.0)


def test_decision_json_round_trip_and_validation(tmp_path):
    decision = PostprocessingDecision(
        keep_largest_foreground=True, keep_largest_per_label=[3], dice_before={"1": 0.5, "3": float("nan")},
        dice_after={"1": 0.75, "3": float("nan")}, foreground_mean_before=0.5, foreground_mean_after=0.75,
        decided_on="somewhere", num_cases=4,
    )
    path = tmp_path / "postprocessing.json"
    save_postprocessing(decision, path)
    loaded = load_postprocessing(path)
    assert loaded.keep_largest_per_label == [3] and loaded.keep_largest_foreground
    assert loaded.dice_after["1"] == 0.75 and np.isnan(loaded.dice_after["3"])

    data = json.loads(path.read_text().replace("NaN", "null").replace("null", "0.0"))
    data["keep_largest_per_label"] = [0]
    path.write_text(json.dumps(data))
    with pytest.raises(PlansError, match=r"postprocessing\.json: key keep_largest_per_label"):
        load_postprocessing(path)
    data["keep_largest_per_label"] = []
    data["extra"] = 1
    path.write_text(json.dumps(data))
    with pytest.raises(PlansError, match="unknown key"):
        load_postprocessing(path)


def test_apply_postprocessing_chains_the_steps():
    seg = _organ()
    seg[3, 9, 9] = 1  # separate foreground blob: removed by step A
    seg[1, 1, 2] = 3  # stray label 3 touching label 1: removed by the per-label step
    decision = PostprocessingDecision(True, [3], {}, {}, 0.0, 0.0, "test", 1)
    np.testing.assert_array_equal(apply_postprocessing(seg, decision), _organ())
    identity = PostprocessingDecision(False, [], {}, {}, 0.0, 0.0, "test", 1)
    np.testing.assert_array_equal(apply_postprocessing(seg, identity), seg)


def test_postprocess_folder_writes_same_names_and_grid(tmp_path):
    seg = _organ()
    seg[3, 9, 9] = 1
    in_dir, out_dir = tmp_path / "in", tmp_path / "out"
    write_label(seg, GEOMETRY, in_dir / "case_7.nii.gz")
    (in_dir / ".tmp-case_8-x.nii.gz").write_bytes(b"partial")
    decision_path = tmp_path / "pp.json"
    save_postprocessing(PostprocessingDecision(True, [], {}, {}, 0.0, 0.0, "test", 1), decision_path)

    with pytest.raises(AutounetError, match="must differ"):
        postprocess_folder(in_dir, in_dir, decision_path)
    written = postprocess_folder(in_dir, out_dir, decision_path)
    assert [p.name for p in written] == ["case_7.nii.gz"]
    out, geometry = read_label(out_dir / "case_7.nii.gz")
    np.testing.assert_array_equal(out, _organ())
    assert geometry.spacing == pytest.approx(GEOMETRY.spacing)
    assert geometry.direction == pytest.approx(GEOMETRY.direction)
    assert geometry.origin == pytest.approx(GEOMETRY.origin)


def test_missing_decision_file_says_what_to_do(tmp_path):
    with pytest.raises(AutounetError, match="find_best_configuration"):
        load_postprocessing(tmp_path / "nope.json")
