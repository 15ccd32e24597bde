"""Planners by name: the default U-Net planner and the reference's residual-encoder presets.

`autounet plan_and_preprocess TASK --planner resenc-l` plans like the reference's ResEnc L
planner: the residual-encoder U-Net, a 24 GB GPU memory target and no cap on how much of the
dataset one batch may cover. The memory target is the only scale the presets differ by; our
byte model of training memory (planners.memory) turns it into patch and batch sizes, as it does
for the default planner. `--gpu-memory` still overrides a preset's target, as the reference's
`-gpu_memory_target` does.
"""

from __future__ import annotations

from dataclasses import dataclass

from autounet.errors import PlansError
from autounet.planners.experiment_planner import BATCH_CAP_FRACTION
from autounet.planners.plans import DEFAULT_PLANS_NAME


@dataclass(frozen=True)
class PlannerPreset:
    """What a named planner fixes; None leaves the GPU memory to --gpu-memory or the GPU present."""

    architecture: str
    gpu_memory_gb: float | None
    batch_cap_fraction: float
    description: str


PLANNERS: dict[str, PlannerPreset] = {
    DEFAULT_PLANS_NAME: PlannerPreset("plain_unet", None, BATCH_CAP_FRACTION,
                                      "plain U-Net; GPU memory from --gpu-memory or the GPU present; one batch "
                                      "covers at most 5% of the dataset"),
    "resenc": PlannerPreset("resenc_unet", None, BATCH_CAP_FRACTION,
                            "residual-encoder U-Net with the default planner's memory target and 5% batch cap"),
    "resenc-m": PlannerPreset("resenc_unet", 8.0, 1.0,
                              "residual-encoder U-Net for 8 GB (the reference's ResEnc M; 9-11 GB GPUs), no batch cap"),
    "resenc-l": PlannerPreset("resenc_unet", 24.0, 1.0,
                              "residual-encoder U-Net for 24 GB (the reference's ResEnc L), no batch cap"),
    "resenc-xl": PlannerPreset("resenc_unet", 40.0, 1.0,
                               "residual-encoder U-Net for 40 GB (the reference's ResEnc XL), no batch cap"),
}


def planner_preset(name: str) -> PlannerPreset:
    """The preset called `name`; the error lists them."""
    try:
        return PLANNERS[name]
    except KeyError:
        raise PlansError(f"--planner: '{name}' is not a planner; use one of {', '.join(PLANNERS)}") from None
