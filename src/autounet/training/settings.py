"""Every knob of a training run in one dataclass, so that the CLI, the manifest and resume agree.

Fields marked `identity=False` may change between an interrupted run and its `--resume`
(where it runs, how many loader workers); every other field defines *what* is trained and
must stay the same, otherwise the resumed run would silently be a different experiment.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from pathlib import Path

from autounet.errors import AutounetError
from autounet.networks.attention import validate_blocks
from autounet.networks.precision import PRECISIONS
from autounet.planners.plans import check_plans_name
from autounet.training.augmentation_switches import AUGMENTATION_NAMES, SPATIAL_IMPLEMENTATIONS

DEFAULT_EPOCHS = 1000
DEFAULT_ITERS_PER_EPOCH = 250
MAX_DEFAULT_VAL_ITERS = 50


def default_val_iters(iters_per_epoch: int) -> int:
    """Validation patches per epoch when not given: a fifth of the training iterations (the reference's
    250 : 50), at most 50, at least 1, so that a 2-iteration test epoch does not validate 50 patches."""
    return min(MAX_DEFAULT_VAL_ITERS, max(1, -(-iters_per_epoch // 5)))
DEVICES = ("auto", "cuda", "cpu", "mps")


def _free(default: Any) -> Any:
    """A field that may differ on --resume (does not change the experiment)."""
    return field(default=default, metadata={"identity": False})


@dataclass
class TrainingSettings:
    """Settings of one training run; defaults follow the reference method (section 5)."""

    epochs: int = DEFAULT_EPOCHS
    iters_per_epoch: int = DEFAULT_ITERS_PER_EPOCH
    val_iters: int = MAX_DEFAULT_VAL_ITERS
    seed: int = 12345
    #: which plans of the task (`default`, `resenc-l`, `from-Task01_X`, ...)
    plans: str = "default"
    network: str | None = None
    #: optional blocks switched on instead of the plans' own (`["se"]`); [] = none; None = as planned
    blocks: list[str] | None = None
    lr: float = 0.01
    lr_exponent: float = 0.9
    momentum: float = 0.99
    weight_decay: float = 3e-5
    grad_clip: float = 12.0
    oversample: float = 0.33
    augment: bool = True
    spatial_augmentation: str = "affine"
    disabled_augmentations: list[str] = field(default_factory=list)
    ema_momentum: float = 0.9
    deterministic: bool = False
    init_from: str | None = None
    device: str = _free("auto")
    workers: int | None = _free(None)
    save_probabilities: bool = _free(False)
    resume: bool = _free(False)
    validate_at_end: bool = _free(True)
    validation_mirroring: bool = _free(True)
    threads: int | None = _free(None)
    precision: str = _free("auto")
    tensorboard: bool = _free(False)

    def validate(self, where: str = "training settings") -> None:
        """Reject impossible values with a message naming the option."""
        positive = {"epochs": self.epochs, "iters_per_epoch": self.iters_per_epoch}
        for name, value in positive.items():
            if value < 1:
                raise AutounetError(f"{where}: --{name.replace('_', '-')} must be at least 1, got {value}")
        if self.val_iters < 0:
            raise AutounetError(f"{where}: val_iters must be >= 0, got {self.val_iters}")
        if self.device not in DEVICES:
            raise AutounetError(f"{where}: --device must be one of {', '.join(DEVICES)}, got '{self.device}'")
        if self.precision not in PRECISIONS:
            raise AutounetError(f"{where}: --precision must be one of {', '.join(PRECISIONS)}, got '{self.precision}'")
        if self.workers is not None and self.workers < 0:
            raise AutounetError(f"{where}: --workers must be >= 0, got {self.workers}")
        if self.lr <= 0 or self.grad_clip <= 0:
            raise AutounetError(f"{where}: lr and grad_clip must be positive")
        if not 0.0 <= self.oversample <= 1.0:
            raise AutounetError(f"{where}: oversample must be within [0, 1], got {self.oversample}")
        if self.spatial_augmentation not in SPATIAL_IMPLEMENTATIONS:
            raise AutounetError(f"{where}: spatial_augmentation must be one of {', '.join(SPATIAL_IMPLEMENTATIONS)}, "
                                f"got '{self.spatial_augmentation}'")
        unknown = [n for n in self.disabled_augmentations if n not in AUGMENTATION_NAMES]
        if unknown:
            raise AutounetError(f"{where}: disabled_augmentations: unknown {unknown}; known: "
                                f"{', '.join(AUGMENTATION_NAMES)}")
        if not 0.0 <= self.ema_momentum < 1.0:
            raise AutounetError(f"{where}: ema_momentum must be within [0, 1), got {self.ema_momentum}")
        check_plans_name(self.plans, "--plans")
        if self.blocks is not None:
            validate_blocks(self.blocks, "--blocks")
        if self.init_from is not None and not Path(self.init_from).is_file():
            raise AutounetError(f"--init-from: {self.init_from} is not a file; pass a checkpoint_final.pt of a "
                                f"trained fold")

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @staticmethod
    def identity_fields() -> list[str]:
        """Names of the settings that define the experiment (must match on resume)."""
        return [f.name for f in dataclasses.fields(TrainingSettings) if f.metadata.get("identity", True)]
