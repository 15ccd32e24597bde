"""The description of a U-Net-like network that the networks are built from.

It lives with the networks, not with the plans: a network knows nothing of plans, and the
planner writes this description (the "network" entry of a configuration in plans.json)
after asking the networks what they need. Bounds keep a hand-edited description sane.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from math import prod

from autounet.errors import PlansError

MAX_FEATURES = 8192
MAX_CONVS_PER_STAGE = 64
#: Residual shortcuts when a block changes shape: "project" (autounet's default: pool when strided,
#: then always a 1x1 conv + norm) or "project_on_channel_change" (nnU-Net's BasicBlockD: pool when
#: strided, a bias-free 1x1 conv + norm only when the channel count changes; imported models use it).
RESIDUAL_SHORTCUTS = ("project", "project_on_channel_change")


@dataclass
class NetworkPlan:
    """Topology of a U-Net-like network; one entry per resolution stage.

    Encoder lists (features_per_stage, kernel_sizes, strides, n_conv_encoder) run from full
    resolution down to the bottleneck; `strides[0]` is all ones. `n_conv_decoder` has one
    entry per decoder stage, listed from the bottleneck upwards (entry 0 is the stage right
    after the bottleneck). `blocks` names optional extra blocks ("se", "attention_gate") for
    ablations; empty means the plain architecture. `residual_shortcut` (one of RESIDUAL_SHORTCUTS)
    only matters to residual encoders.
    """

    architecture: str
    features_per_stage: list[int]
    kernel_sizes: list[list[int]]
    strides: list[list[int]]
    n_conv_encoder: list[int]
    n_conv_decoder: list[int]
    blocks: list[str] = field(default_factory=list)
    residual_shortcut: str = RESIDUAL_SHORTCUTS[0]

    @property
    def n_stages(self) -> int:
        return len(self.features_per_stage)

    @property
    def dims(self) -> int:
        return len(self.kernel_sizes[0])

    def total_stride(self) -> list[int]:
        """Product of strides per axis: the patch must be divisible by this."""
        return [prod(s[a] for s in self.strides) for a in range(self.dims)]

    def validate(self, where: str) -> None:
        n = self.n_stages
        if n < 1:
            raise PlansError(f"{where}.features_per_stage: needs at least one stage")
        for key in ("kernel_sizes", "strides", "n_conv_encoder"):
            if len(getattr(self, key)) != n:
                raise PlansError(f"{where}.{key}: needs {n} entries (one per stage), got {len(getattr(self, key))}")
        if len(self.n_conv_decoder) != n - 1:
            raise PlansError(f"{where}.n_conv_decoder: needs {n - 1} entries (stages minus one)")
        bad_features = [f for f in self.features_per_stage if not 1 <= f <= MAX_FEATURES]
        if bad_features:
            raise PlansError(f"{where}.features_per_stage: each must be within 1..{MAX_FEATURES}, got {bad_features[:4]}")
        for key in ("n_conv_encoder", "n_conv_decoder"):
            if any(not 1 <= n <= MAX_CONVS_PER_STAGE for n in getattr(self, key)):
                raise PlansError(f"{where}.{key}: each must be within 1..{MAX_CONVS_PER_STAGE}")
        if self.residual_shortcut not in RESIDUAL_SHORTCUTS:
            raise PlansError(f"{where}.residual_shortcut: '{self.residual_shortcut}' is not one of {RESIDUAL_SHORTCUTS}")
        dims = self.dims
        for key in ("kernel_sizes", "strides"):
            for i, v in enumerate(getattr(self, key)):
                if len(v) != dims or any(x < 1 for x in v):
                    raise PlansError(f"{where}.{key}[{i}]: needs {dims} positive integers, got {v}")
