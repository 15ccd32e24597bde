"""progress.png: training curves redrawn after every epoch.

Uses matplotlib's object API with the Agg canvas (no pyplot global state, no display), and
writes atomically so an image viewer never shows a half-written file.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from autounet.io.atomic import atomic_path

PLOT_NAME = "progress.png"


def _mean_dice(per_class: list[float]) -> float:
    finite = [v for v in per_class if v is not None and math.isfinite(v)]
    return sum(finite) / len(finite) if finite else float("nan")


#: Every point is drawn with a marker, so that a run of one or two epochs (a line needs two points)
#: is readable too.
MARKER = {"marker": "o", "markersize": 4}


def plot_progress(path: str | Path, history: dict[str, list[Any]]) -> None:
    """Three panels: losses with pseudo Dice (and its EMA); epoch time; learning rate."""
    epochs = list(range(1, len(history["train_loss"]) + 1))
    fig = Figure(figsize=(10, 11), dpi=72)
    FigureCanvasAgg(fig)
    ax_loss, ax_time, ax_lr = fig.subplots(3, 1)
    fig.subplots_adjust(left=0.09, right=0.91, bottom=0.05, top=0.97, hspace=0.3)  # fixed: tight_layout is slow

    ax_loss.plot(epochs, history["train_loss"], color="tab:blue", label="train loss", **MARKER)
    ax_loss.plot(epochs, history["val_loss"], color="tab:red", label="val loss", **MARKER)
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("loss")
    ax_dice = ax_loss.twinx()
    ax_dice.plot(epochs, [_mean_dice(d) for d in history["pseudo_dice"]], color="tab:green", linestyle="dotted",
                 label="pseudo Dice (patch-based proxy)", **MARKER)
    ax_dice.plot(epochs, history["ema_pseudo_dice"], color="tab:green", label="pseudo Dice EMA", **MARKER)
    ax_dice.set_ylabel("pseudo Dice")
    ax_dice.set_ylim(0, 1)
    handles = ax_loss.get_legend_handles_labels()[0] + ax_dice.get_legend_handles_labels()[0]
    ax_loss.legend(handles=handles, loc="center right")

    ax_time.plot(epochs, history["epoch_time"], color="tab:purple", **MARKER)
    ax_time.set_xlabel("epoch")
    ax_time.set_ylabel("epoch time [s]")

    ax_lr.plot(epochs, history["lr"], color="tab:orange", **MARKER)
    ax_lr.set_xlabel("epoch")
    ax_lr.set_ylabel("learning rate")
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
