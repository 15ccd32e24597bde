"""metrics.jsonl: one JSON object per finished epoch, for plots, dashboards and comparisons.

The rows are derived from the trainer's history, which is also stored in every checkpoint;
on --resume the file is rewritten from the restored history so that it never holds epochs
the checkpoint does not know about (the ones lost by a kill).
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

from autounet.io.atomic import write_text

log = logging.getLogger(__name__)

METRICS_NAME = "metrics.jsonl"
HISTORY_KEYS = ("train_loss", "val_loss", "pseudo_dice", "ema_pseudo_dice", "lr", "epoch_time")


def empty_history() -> dict[str, list[Any]]:
    return {k: [] for k in HISTORY_KEYS}


def _clean(value: float) -> float | None:
    """NaN/inf are not JSON; an undefined value (no foreground seen) becomes null."""
    return None if value is None or not math.isfinite(value) else float(value)


def history_row(history: dict[str, list[Any]], index: int, class_names: list[str]) -> dict[str, Any]:
    """The metrics.jsonl row of epoch `index` (0-based); its "epoch" is the 1-based epoch count."""
    dice = history["pseudo_dice"][index]
    return {
        "epoch": index + 1,
        "train_loss": _clean(history["train_loss"][index]),
        "val_loss": _clean(history["val_loss"][index]),
        "pseudo_dice": {name: _clean(v) for name, v in zip(class_names, dice)},
        "ema_pseudo_dice": _clean(history["ema_pseudo_dice"][index]),
        "lr": float(history["lr"][index]),
        "epoch_time": float(history["epoch_time"][index]),
    }


def append_row(path: str | Path, row: dict[str, Any]) -> None:
    """Append one row and flush it to disk (a kill loses at most this row)."""
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(row) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def rewrite(path: str | Path, history: dict[str, list[Any]], class_names: list[str]) -> None:
    """Replace the file atomically with the rows of `history` (used on resume)."""
    n = len(history["train_loss"])
    text = "".join(json.dumps(history_row(history, i, class_names)) + "\n" for i in range(n))
    write_text(path, text)


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """All complete rows; a torn last line (kill during append) is skipped with a warning."""
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            log.warning("%s: line %d is incomplete and was skipped", path, i + 1)
    return rows
