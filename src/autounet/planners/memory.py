"""Peak training memory of a planned network, in bytes.

The network itself says what it produces: the planner builds it shape-only and asks its
blocks for their feature maps (`network_feature_maps`); this module only prices them.

The anchor sizes patches with a unit-less feature-map sum scaled by hand-tuned constants.
We keep that sum (`feature_map_voxels`, what a network's `feature_map_size` reports) but
plan against a byte model of what a training step actually holds at its peak - the start
of the backward pass, when every activation saved in the forward pass is alive:

* per conv block (conv -> InstanceNorm -> LeakyReLU in place; projections alike): the conv output (kept by the
  norm for its backward) and the norm output (overwritten in place by the nonlinearity and
  kept as the next conv's input): 2 tensors. Under autocast both are fp16 (2 bytes);
* decoder stages keep the concatenation of upsampled and skip features (2F channels); the
  transposed conv output itself is consumed by the concatenation and freed;
* residual blocks keep additionally the residual sum (the in-place ReLU reuses it) and, when
  strided, the average-pooled input of their projection; SE and attention gates keep their
  small conv outputs and the gated features;
* every segmentation head keeps its logits; the loss (computed in fp32 even under autocast)
  keeps a fp32 cast of the logits, the softmax and the log-softmax plus a one-hot target;
* the input batch (fp32, plus its fp16 cast kept by the first conv) and the targets;
* backward transients: a few gradient tensors of the largest activation;
* parameters, gradients and SGD momentum in fp32, plus autocast's fp16 weight cache;
* a cuDNN workspace allowance and the CUDA context (the latter is *not* seen by
  `torch.cuda.max_memory_allocated`; compare that figure with `MemoryBreakdown.allocated`).

All constants live in `MemoryConstants`; they follow from PyTorch's storage sizes and the
saved-tensor rules of its autograd formulas, except the workspace, context, transient and
safety figures, which are allowances to be calibrated by the memory benchmark.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from autounet.errors import PlansError
from autounet.networks import feature_maps as kinds
from autounet.networks.description import NetworkPlan
from autounet.networks.feature_maps import FeatureMap

if TYPE_CHECKING:
    from torch import nn

MIB = 1024**2


@dataclass(frozen=True)
class MemoryConstants:
    """Byte counts and allowances of the training memory model (see the module docstring)."""

    #: activation tensors kept per conv block: conv output + (norm output == in-place nonlinearity output)
    tensors_per_conv_block: int = 2
    #: bytes per activation element under mixed precision (fp16 autocast) and without it (fp32)
    amp_activation_bytes: int = 2
    fp32_activation_bytes: int = 4
    #: loss bytes per logit element: fp32 cast (4) + softmax (4) + log-softmax (4) + one-hot bool (1)
    loss_bytes_per_logit: int = 13
    #: target bytes per voxel and deep-supervision scale (float32 label map on the device)
    target_bytes_per_voxel: int = 4
    #: input bytes per element: fp32 batch (4), plus its fp16 cast kept by the first conv under autocast (2)
    input_bytes: int = 4
    amp_input_cast_bytes: int = 2
    #: backward transients: gradient tensors of the size of the largest activation alive at the peak
    backward_transient_tensors: int = 3
    #: bytes per parameter: fp32 weight + fp32 gradient + fp32 SGD momentum (12), fp16 autocast copy (+2)
    fp32_bytes_per_parameter: int = 12
    amp_extra_bytes_per_parameter: int = 2
    #: cuDNN convolution workspace allowance (allocated through PyTorch's caching allocator)
    workspace_bytes: int = 256 * MIB
    #: CUDA context + cuDNN/cuBLAS handles: device memory outside PyTorch's allocator
    context_bytes: int = 500 * MIB
    #: fraction of the device the planner fills, leaving room for allocator fragmentation
    planning_safety_margin: float = 0.85


DEFAULT_CONSTANTS = MemoryConstants()


@dataclass(frozen=True)
class MemoryBreakdown:
    """Peak training memory split by cause, in bytes (whole batch)."""

    activations: int
    loss: int
    inputs: int
    transient: int
    parameters: int
    workspace: int
    context: int

    @property
    def allocated(self) -> int:
        """What `torch.cuda.max_memory_allocated` should report (everything but the CUDA context)."""
        return self.activations + self.loss + self.inputs + self.transient + self.parameters + self.workspace

    @property
    def total(self) -> int:
        return self.allocated + self.context


#: Activation tensors each kind of feature map keeps alive at the start of the backward pass.
#: A transposed conv's output is consumed by the concatenation, which keeps the joined tensor.
_TENSORS_KEPT = {
    kinds.CONCAT: 1, kinds.RESIDUAL_SUM: 1, kinds.HEAD: 1, kinds.POOL: 1, kinds.GATE_CONV: 1,
    kinds.GATED: 1, kinds.TRANSPOSED_CONV: 0,
}


@functools.lru_cache(maxsize=64)
def _shape_only_network(plan_key: str, in_channels: int, num_classes: int) -> "nn.Module":
    """The planned network built on the meta device: its modules and parameter shapes, no storage."""
    # Imported here: torch costs seconds to import, and every preprocessing worker imports this module.
    import torch

    from autounet.networks.registry import build_network

    plan = NetworkPlan(**json.loads(plan_key))
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        return build_network(plan.architecture, plan, in_channels, num_classes, deep_supervision=True)


def network_feature_maps(network_plan: NetworkPlan, patch_size: Sequence[int], in_channels: int,
                         num_classes: int) -> list[FeatureMap]:
    """Every tensor one training sample produces, as the network's own blocks report it.

    The network is built shape-only (on the meta device, cached per topology) with deep
    supervision on, as in training; its `feature_maps(patch)` lists each block's outputs with
    the parameters that produced them, so this model never describes the U-Net a second time.
    """
    dims = len(patch_size)
    if network_plan.dims != dims:
        raise PlansError(f"patch_size {list(patch_size)} has {dims} axes but the network is {network_plan.dims}D")
    network = _shape_only_network(json.dumps(asdict(network_plan), sort_keys=True), in_channels, num_classes)
    report = getattr(network, "feature_maps", None)
    if report is None:
        raise PlansError(f"architecture '{network_plan.architecture}' does not report its feature maps, so it has "
                         "no memory model; use plain_unet or resenc_unet, or give the class a feature_maps(patch)")
    return list(report([int(p) for p in patch_size]))


def feature_map_voxels(network_plan: NetworkPlan, patch_size: Sequence[int], in_channels: int,
                       num_classes: int) -> int:
    """Sum of output channels x output voxels over every convolution (one sample): the anchor's proxy."""
    return kinds.proxy_size(network_feature_maps(network_plan, patch_size, in_channels, num_classes))


def parameter_count(network_plan: NetworkPlan, in_channels: int, num_classes: int) -> int:
    """Trainable parameters (weights, biases, norm affines); independent of the patch size."""
    patch = [math.prod(s[a] for s in network_plan.strides) for a in range(network_plan.dims)]
    return sum(m.parameters for m in network_feature_maps(network_plan, patch, in_channels, num_classes))


def estimate_training_memory(
    network_plan: NetworkPlan,
    patch_size: Sequence[int],
    batch_size: int,
    in_channels: int,
    num_classes: int,
    mixed_precision: bool = True,
    constants: MemoryConstants = DEFAULT_CONSTANTS,
) -> MemoryBreakdown:
    """Peak memory of one training step, split by cause (see the module docstring)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    c = constants
    maps = network_feature_maps(network_plan, patch_size, in_channels, num_classes)
    e = c.amp_activation_bytes if mixed_precision else c.fp32_activation_bytes
    convs = (kinds.CONV_BLOCK, kinds.PROJECTION)
    act = 0
    loss = 0
    for fmap in maps:
        kept = c.tensors_per_conv_block if fmap.kind in convs else _TENSORS_KEPT[fmap.kind]
        act += kept * fmap.elements * e
        if fmap.kind == kinds.HEAD:
            loss += fmap.elements * c.loss_bytes_per_logit + fmap.voxels * c.target_bytes_per_voxel
    input_voxels = math.prod(int(p) for p in patch_size)
    per_input = c.input_bytes + (c.amp_input_cast_bytes if mixed_precision else 0)
    inputs = in_channels * input_voxels * per_input
    largest = max((m.elements for m in maps if m.kind in convs), default=0)
    transient = c.backward_transient_tensors * largest * e
    per_param = c.fp32_bytes_per_parameter + (c.amp_extra_bytes_per_parameter if mixed_precision else 0)
    params = sum(m.parameters for m in maps) * per_param
    return MemoryBreakdown(
        activations=act * batch_size,
        loss=loss * batch_size,
        inputs=inputs * batch_size,
        transient=transient * batch_size,
        parameters=params,
        workspace=c.workspace_bytes,
        context=c.context_bytes,
    )


def estimate_training_memory_bytes(
    network_plan: NetworkPlan,
    patch_size: Sequence[int],
    batch_size: int,
    in_channels: int,
    num_classes: int,
    mixed_precision: bool = True,
) -> int:
    """Estimated peak device memory of training at this patch and batch size (incl. CUDA context)."""
    return estimate_training_memory(network_plan, patch_size, batch_size, in_channels, num_classes,
                                    mixed_precision).total


def max_batch_size(
    network_plan: NetworkPlan,
    patch_size: Sequence[int],
    in_channels: int,
    num_classes: int,
    budget_bytes: float,
    mixed_precision: bool = True,
) -> int:
    """Largest batch size whose estimate stays within `budget_bytes` (0 if not even 1 fits).

    The estimate is affine in the batch size, so it is solved directly rather than searched.
    """
    one = estimate_training_memory_bytes(network_plan, patch_size, 1, in_channels, num_classes, mixed_precision)
    two = estimate_training_memory_bytes(network_plan, patch_size, 2, in_channels, num_classes, mixed_precision)
    per_sample = two - one
    fixed = one - per_sample
    if budget_bytes < one:
        return 0
    return int((budget_bytes - fixed) // per_sample)
