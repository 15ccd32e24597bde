"""Optional TensorBoard logging of the same per-epoch metrics as metrics.jsonl (`train --tensorboard`).

TensorBoard is an extra dependency (`pip install 'autounet[tensorboard]'`); metrics.jsonl and
progress.png stay the record of a run, this only mirrors their rows for people who watch runs there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from autounet.errors import AutounetError

FOLDER = "tensorboard"
SCALARS = ("train_loss", "val_loss", "ema_pseudo_dice", "lr", "epoch_time")


class TensorBoardLog:
    """Writes each metrics.jsonl row as scalars: the keys above and `pseudo_dice/<class or region>`."""

    def __init__(self, fold_dir: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise AutounetError("--tensorboard needs the tensorboard package; install it with "
                                "pip install 'autounet[tensorboard]' or train without --tensorboard") from None
        self.folder = fold_dir / FOLDER
        self.writer = SummaryWriter(log_dir=str(self.folder))

    def write(self, row: dict[str, Any]) -> None:
        epoch = int(row["epoch"])
        for key in SCALARS:
            if row.get(key) is not None:
                self.writer.add_scalar(key, float(row[key]), epoch)
        for name, value in row.get("pseudo_dice", {}).items():
            if value is not None:
                self.writer.add_scalar(f"pseudo_dice/{name}", float(value), epoch)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
