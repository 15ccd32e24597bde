"""Small hand-made plans, cases, a toy network and run folders shared by the inference tests.

Importable as `inference_toys` (conftest.py puts this folder on sys.path), which also lets
build_network load `inference_toys:IndexNetwork` by import path, as a user's network would.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from autounet.io.geometry import Geometry
from autounet.planners.plans import ConfigurationPlan, IntensityProperties, NetworkPlan, Plans


def make_plans(spacing: list[float], transpose_forward: list[int] = (0, 1, 2), labels: dict[str, int] | None = None,
               patch: list[int] = (8, 8, 8), normalization: str = "ct", num_channels: int = 1) -> Plans:
    """One-channel plans whose 'ct' normalization is the identity (mean 0, std 1, wide clip)."""
    labels = labels or {"background": 0, "a": 3, "b": 7}
    forward = list(transpose_forward)
    backward = [forward.index(i) for i in range(3)]
    net = NetworkPlan(architecture="plain_unet", features_per_stage=[4, 8], kernel_sizes=[[3, 3, 3], [3, 3, 3]],
                      strides=[[1, 1, 1], [2, 2, 2]], n_conv_encoder=[1, 1], n_conv_decoder=[1])
    cfg = ConfigurationPlan(name="3d_fullres", data_identifier="3d_fullres", spacing=list(spacing),
                            patch_size=list(patch), batch_size=2, median_shape=[10, 10, 10], network=net,
                            normalization=[normalization] * num_channels,
                            use_mask_for_norm=[False] * num_channels, batch_dice=False,
                            estimated_memory_bytes=0, mirror_axes=[0, 1, 2])
    props = IntensityProperties(mean=0.0, std=1.0, median=0.0, min=-1e4, max=1e4,
                                percentile_00_5=-1e4, percentile_99_5=1e4)
    return Plans(task="Task99_Toy", channel_names={str(c): "CT" for c in range(num_channels)}, labels=labels,
                 transpose_forward=forward,
                 transpose_backward=backward, original_median_spacing=[1.0, 1.0, 1.0],
                 original_median_shape=[10, 10, 10],
                 foreground_intensity_properties={str(c): props for c in range(num_channels)},
                 gpu_memory_target_gb=1.0, configurations={"3d_fullres": cfg})


def labelled_case(shape=(9, 12, 10), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(label values (Z, Y, X) in {0, 3, 7}, image (1, Z, Y, X) = class index + 1 inside, 0 in a border).

    The zero border makes preprocessing crop; the image encodes the class index so that a toy
    "network" can recover the labels exactly from the normalized intensities.
    """
    rng = np.random.default_rng(seed)
    index = np.zeros(shape, dtype=np.int64)
    index[2:7, 3:9, 2:8] = 1
    index[3:5, 4:7, 4:8] = 2
    index[rng.random(shape) < 0.05] = 2
    values = np.array([0, 3, 7])[index]
    image = (index + 1).astype(np.float32)[None]
    image[:, 0] = 0
    image[:, :, :, -2:] = 0
    values[0] = 0
    values[:, :, -2:] = 0
    return values, image


def flipped_geometry() -> Geometry:
    """Anisotropic spacing, non-zero origin, axes flipped and permuted in the direction matrix."""
    return Geometry(spacing=(0.7, 1.3, 3.0), origin=(12.5, -40.0, 7.25),
                    direction=(-1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, -1.0, 0.0), shape=(9, 12, 10))


class IndexNetwork(nn.Module):
    """Reads the class index back from an intensity of index + 1: logit_k = -10 (x - (k + 1))^2 + offset_k.

    Pointwise, hence exact under tiling and mirroring; `offset` is a trainable-looking
    parameter so that checkpoints have a state dict and folds can differ.
    """

    def __init__(self, network_plan=None, in_channels: int = 1, num_classes: int = 3,
                 deep_supervision: bool = True) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.deep_supervision = deep_supervision
        self.offset = nn.Parameter(torch.zeros(num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        centres = torch.arange(1, self.num_classes + 1, dtype=x.dtype, device=x.device)
        shape = (1, -1) + (1,) * (x.ndim - 2)
        out = -10 * (x[:, :1] - centres.reshape(shape)) ** 2 + self.offset.reshape(shape)
        return [out] if self.deep_supervision else out


def write_run(results_task: Path, plans: Plans, run_name: str = "3d_fullres", folds=(0,),
              offsets=None, checkpoint: str = "checkpoint_final.pt", mirror_axes=(0, 1, 2)) -> Path:
    """A run folder as training leaves it: plans.json and fold_k/<checkpoint> with IndexNetwork weights."""
    from autounet.planners.plans import save_plans
    from autounet.core.checkpoint import save_checkpoint

    run_dir = results_task / run_name
    run_dir.mkdir(parents=True, exist_ok=True)
    save_plans(plans, run_dir / "plans.json")
    for i, fold in enumerate(folds):
        net = IndexNetwork(num_classes=plans.num_classes)
        if offsets is not None:
            with torch.no_grad():
                net.offset.copy_(torch.tensor(offsets[i], dtype=torch.float32))
        (run_dir / f"fold_{fold}").mkdir(exist_ok=True)
        save_checkpoint(run_dir / f"fold_{fold}" / checkpoint, {
            "format": 1, "network": net.state_dict(), "network_name": "inference_toys:IndexNetwork",
            "configuration": run_name.split("__")[0], "mirror_axes": list(mirror_axes)})
    return run_dir
