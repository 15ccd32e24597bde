"""metrics.jsonl rows: derived from history, torn lines tolerated, rewritten on resume."""

from __future__ import annotations

import math
from pathlib import Path

from autounet.training.metrics_log import append_row, empty_history, history_row, read_rows, rewrite


def _history(n: int) -> dict[str, list]:
    h = empty_history()
    for i in range(n):
        h["train_loss"].append(1.0 - 0.1 * i)
        h["val_loss"].append(1.1 - 0.1 * i)
        h["pseudo_dice"].append([0.1 * i, float("nan")])
        h["ema_pseudo_dice"].append(0.05 * i)
        h["lr"].append(0.01)
        h["epoch_time"].append(2.0)
    return h


def test_history_row_names_classes_and_turns_nan_into_null() -> None:
    row = history_row(_history(2), 1, ["liver", "tumour"])
    assert row["epoch"] == 2
    assert row["pseudo_dice"] == {"liver": 0.1, "tumour": None}
    assert math.isclose(row["train_loss"], 0.9)


def test_append_read_and_torn_last_line(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    h = _history(2)
    for i in range(2):
        append_row(path, history_row(h, i, ["a", "b"]))
    with open(path, "a", encoding="utf-8") as fh:
        fh.write('{"epoch": 3, "train_lo')  # a kill in the middle of an append
    rows = read_rows(path)
    assert [r["epoch"] for r in rows] == [1, 2]


def test_rewrite_truncates_to_the_restored_history(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    for i in range(5):
        append_row(path, history_row(_history(5), i, ["a", "b"]))
    rewrite(path, _history(3), ["a", "b"])
    assert [r["epoch"] for r in read_rows(path)] == [1, 2, 3]
    assert read_rows(tmp_path / "absent.jsonl") == []
