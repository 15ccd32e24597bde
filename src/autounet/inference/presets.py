"""Named speed/accuracy trade-offs for `predict --preset`, so users need not know the knobs.

Prediction time is the number of network forwards: window positions x mirrorings (8 in 3D,
4 in 2D) x folds (5 after a full cross-validation). The presets drop the largest factor
first; what each costs in Dice depends on the task, so measure it on your cross-validation
(`autounet evaluate`) before relying on a faster preset:

- `accurate`: the reference method: every trained fold, mirroring on the training axes, step 0.5.
- `balanced`: every fold, no mirroring (8x fewer forwards in 3D, 4x in 2D).
- `fast`: the first trained fold only and no mirroring (another 5x fewer with five folds).

The step stays 0.5 in every preset: fewer windows save less than these and cost accuracy at
the window borders. Explicit `--disable-tta`, `-f` and `--step-size` override a preset.
"""

from __future__ import annotations

from dataclasses import dataclass

from autounet.errors import AutounetError


@dataclass(frozen=True)
class Preset:
    name: str
    mirroring: bool
    all_folds: bool
    step_size: float


PRESETS: dict[str, Preset] = {
    "accurate": Preset("accurate", mirroring=True, all_folds=True, step_size=0.5),
    "balanced": Preset("balanced", mirroring=False, all_folds=True, step_size=0.5),
    "fast": Preset("fast", mirroring=False, all_folds=False, step_size=0.5),
}
DEFAULT_PRESET = "accurate"


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise AutounetError(f"--preset must be one of {', '.join(PRESETS)}, got '{name}'")
    return PRESETS[name]


def resolve_prediction_settings(preset: str, use_mirroring: bool | None, step_size: float | None,
                                folds: list[str] | None, trained: list[str]) -> tuple[bool, float, list[str] | None]:
    """(mirroring, step size, folds) from a preset, with every explicitly given value winning.

    `trained` lists the trained folds in order; `fast` takes the first of them. None for folds
    means "every trained fold".
    """
    p = get_preset(preset)
    mirroring = p.mirroring if use_mirroring is None else use_mirroring
    step = p.step_size if step_size is None else step_size
    if folds is None and not p.all_folds and trained:
        folds = [trained[0]]
    return mirroring, step, folds
