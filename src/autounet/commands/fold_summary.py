"""What the folds of a fan-out left behind, read for the parent's progress lines and summary table.

Only files a fold writes anyway are read (metrics.jsonl, validation/summary.json, its log), so
the table is the same whether a fold ran here or was started by hand.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from autounet.core.progress import format_duration
from autounet.core.run_layout import validation_summary
from autounet.errors import AutounetError
from autounet.io.atomic import read_json
from autounet.training.metrics_log import METRICS_NAME


@dataclasses.dataclass
class FoldOutcome:
    """How one fold's child ended; `status` is finished, failed, interrupted or not started."""

    fold: str
    status: str
    slot: str = ""
    pid: int | None = None
    seconds: float = 0.0
    exit_code: int | None = None
    dice: float | None = None
    error: str | None = None
    log_path: Path | None = None


@dataclasses.dataclass
class FanoutResult:
    outcomes: list[FoldOutcome]
    seconds: float
    interrupted: bool = False

    @property
    def failed(self) -> list[FoldOutcome]:
        return [o for o in self.outcomes if o.status != "finished"]


def fold_progress(fold_dir: Path, epochs: int) -> str:
    """'epoch 3/10' from the last complete row of metrics.jsonl; 'starting' before the first epoch ends."""
    done = 0
    try:
        lines = (fold_dir / METRICS_NAME).read_text(encoding="utf-8").splitlines()
    except OSError:
        lines = []
    for line in reversed(lines):
        try:
            done = int(json.loads(line)["epoch"])
            break
        except (ValueError, KeyError, TypeError):
            continue  # a row being appended right now
    if done == 0:
        return "starting"
    return "validating" if done >= epochs else f"epoch {done + 1}/{epochs}"


def validation_dice(fold_dir: Path) -> float | None:
    """Mean foreground Dice of fold_k/validation/summary.json (None without validation)."""
    path = validation_summary(fold_dir)
    try:
        value = read_json(path, allow_nan=True)["foreground_mean"]["Dice"]
    except (OSError, ValueError, KeyError, TypeError, AutounetError):
        return None
    return float(value) if value is not None else None


def last_error_line(log_path: Path, offset: int = 0) -> str | None:
    """The last `error: ...` line a child wrote after `offset`, else its last line (a traceback's exception)."""
    try:
        with open(log_path, "rb") as fh:
            fh.seek(offset)
            text = fh.read().decode("utf-8", errors="replace")
    except OSError:
        return None
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("=== ")]
    errors = [line for line in lines if line.startswith("error:")]
    return (errors or lines or [None])[-1]


def format_fanout_summary(result: FanoutResult) -> str:
    """One row per fold: status, validation Dice, wall time, slot, pid, and what went wrong."""
    rows = [("fold", "status", "val Dice", "time", "where", "pid", "note")]
    for o in result.outcomes:
        dice = f"{o.dice:.4f}" if o.dice is not None else "-"
        time_text = format_duration(o.seconds) if o.status != "not started" else "-"
        note = o.error or ("stopped; continue it with --resume" if o.status == "interrupted" else "")
        if o.status in ("failed", "interrupted") and o.log_path is not None:
            note = f"{note} (log: {o.log_path})".strip()
        rows.append((o.fold, o.status, dice, time_text, o.slot or "-", str(o.pid or "-"), note))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r[:-1], widths)) + ("  " + r[-1] if r[-1] else "") for r in rows]
    finished = sum(o.status == "finished" for o in result.outcomes)
    lines.append(f"{finished} of {len(result.outcomes)} fold(s) finished in {format_duration(result.seconds)}"
                 + (" (interrupted)" if result.interrupted else ""))
    return "\n".join(line.rstrip() for line in lines)
