"""Pure helpers of benchmarks/convergence.py: reading both tools' learning curves and the verdict."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import convergence  # noqa: E402

NNUNET_LOG = """\
2026-12-06 19:40:56.071360: Epoch 0
2026-12-06 19:40:56.072000: Current learning rate: 0.01
2026-12-06 19:43:20.333581: train_loss 0.5643
2026-12-06 19:43:20.333769: val_loss 0.1044
2026-12-06 19:43:20.333828: Pseudo dice [np.float32(0.0), np.float32(0.0)]
2026-12-06 19:43:20.333893: Epoch time: 144.26 s
2026-12-06 19:45:43.683786: train_loss -0.068
2026-12-06 19:45:43.686785: val_loss -0.0495
2026-12-06 19:45:43.687008: Pseudo dice [0.3402, 1.2e-2]
"""


def test_nnunet_log_is_parsed_with_numpy_and_plain_reprs() -> None:
    curve = convergence.parse_nnunet_log(NNUNET_LOG)
    assert curve.train_loss == [0.5643, -0.068]
    assert curve.pseudo_dice == [[0.0, 0.0], [0.3402, 0.012]]
    assert math.isclose(curve.mean_pseudo[1], (0.3402 + 0.012) / 2)


def test_autounet_curve_reads_metrics_and_validation(tmp_path: Path) -> None:
    rows = [{"epoch": 2, "train_loss": 0.9, "pseudo_dice": {"a": 0.5, "b": float("nan")}},
            {"epoch": 1, "train_loss": 1.5, "pseudo_dice": {"a": 0.0, "b": 0.0}}]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (tmp_path / "validation").mkdir()
    (tmp_path / "validation" / "summary.json").write_text(json.dumps(
        {"mean": {"1": {"Dice": 0.8, "IoU": 0.7}, "2": {"Dice": 0.6}}}))
    curve = convergence.read_autounet_curve(tmp_path)
    assert curve.train_loss == [1.5, 0.9]
    assert curve.mean_pseudo == [0.0, 0.5]  # NaN (class neither predicted nor present) is skipped
    assert curve.validation_dice == {"1": 0.8, "2": 0.6}
    assert math.isclose(curve.validation_mean, 0.7)


def test_behind_epochs_counts_from_epoch_two_with_tolerance() -> None:
    ours = [0.0, 0.10, 0.50, 0.70]
    theirs = [0.5, 0.30, 0.52, 0.60]
    assert convergence.behind_epochs(ours, theirs, tolerance=0.05) == [2]
    assert convergence.behind_epochs(ours, theirs, tolerance=0.25) == []


def test_report_states_both_goals() -> None:
    ours = convergence.Curve([1.5, 0.9], [[0.1, 0.2], [0.6, 0.7]], {"1": 0.80, "2": 0.70}, 60.0)
    theirs = convergence.Curve([0.6, -0.2], [[0.3, 0.3], [0.6, 0.6]], {"1": 0.78, "2": 0.70}, 300.0)
    text = convergence.format_report("header", ours, theirs, tolerance=0.05)
    assert "difference autounet - nnU-Net: +0.0100; goal (>= -0.01): met" in text
    assert "from epoch 2 on: never (goal: never)" in text
    assert "    1   1.5000   1.6000" in text  # nnU-Net's loss shown in autounet's convention (+1)
    worse = convergence.Curve([1.5, 0.9], [[0.1, 0.2], [0.3, 0.3]], {"1": 0.5, "2": 0.5}, 60.0)
    text = convergence.format_report("header", worse, theirs, tolerance=0.05)
    assert "goal (>= -0.01): NOT met" in text and "from epoch 2 on: [2]" in text
