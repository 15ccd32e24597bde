"""The CLI's own parsing: the verbatim command lines of the design must parse."""

from __future__ import annotations

import pytest

from autounet.cli import build_parser, parse_folds
from autounet.errors import AutounetError


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["train", "3d_fullres", "fold", "0"], [0]),
        (["train", "3d_fullres", "0"], [0]),
        (["train", "2d", "--fold", "3"], [3]),
        (["train", "3d_fullres", "fold", "all"], ["all"]),
        (["train", "3d_fullres", "--folds", "0-4"], [0, 1, 2, 3, 4]),
        (["train", "3d_fullres", "--folds", "0,2"], [0, 2]),
    ],
)
def test_train_fold_forms(argv: list[str], expected: list[object]) -> None:
    args = build_parser().parse_args(argv)
    assert parse_folds(args.fold_words, args.fold, args.folds) == expected


@pytest.mark.parametrize(
    "argv",
    [["train", "3d_fullres"], ["train", "3d_fullres", "fold", "0", "--fold", "1"], ["train", "2d", "--folds", "4-1"],
     ["train", "2d", "fold", "x"]],
)
def test_train_fold_errors(argv: list[str]) -> None:
    args = build_parser().parse_args(argv)
    with pytest.raises(AutounetError):
        parse_folds(args.fold_words, args.fold, args.folds)


def test_predict_verbatim_line_parses() -> None:
    args = build_parser().parse_args(["predict", "-i", "imagesTs", "-o", "preds"])
    assert (args.input, args.output, args.checkpoint, args.preset) == ("imagesTs", "preds", "final", "accurate")
    assert args.step_size is None and args.disable_tta is False  # the preset decides: step 0.5, mirroring


def test_plan_and_preprocess_verbatim_line_parses() -> None:
    args = build_parser().parse_args(["plan_and_preprocess", "Task01"])
    assert args.task == "Task01" and args.plan_only is False


def test_workspace_before_or_after_command() -> None:
    parser = build_parser()
    assert parser.parse_args(["--workspace", "/a", "doctor"]).workspace == "/a"
    assert parser.parse_args(["doctor", "--workspace", "/b"]).workspace == "/b"
    assert parser.parse_args(["doctor"]).workspace is None
