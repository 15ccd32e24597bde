"""Peak training memory of a planned network, in bytes.

The anchor sizes patches with a unit-less feature-map sum scaled by hand-tuned constants.
We keep that sum (`feature_map_voxels`, what a network's `feature_map_size` reports) but
plan against a byte model of what a training step actually holds at its peak - the start
of the backward pass, when every activation saved in the forward pass is alive:

* per conv block (conv -> InstanceNorm -> LeakyReLU in place): the conv output (kept by the
  norm for its backward) and the norm output (overwritten in place by the nonlinearity and
  kept as the next conv's input): 2 tensors. Under autocast both are fp16 (2 bytes);
* decoder stages keep the concatenation of upsampled and skip features (2F channels); the
  transposed conv output itself is consumed by the concatenation and freed;
* residual blocks keep additionally the residual sum (the in-place ReLU reuses it);
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

import math
from collections.abc import Sequence
from dataclasses import dataclass

from autounet.errors import PlansError
from autounet.planners.plans import NetworkPlan

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
class Layer:
    """One module output of the network for one sample: what it is, channels, voxels, parameters."""

    kind: str  # conv | transposed_conv | head | projection | concat | residual_sum
    channels: int
    voxels: int
    parameters: int

    @property
    def elements(self) -> int:
        return self.channels * self.voxels


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


def _conv_params(cin: int, cout: int, kernel: Sequence[int]) -> int:
    """Conv weight + bias + affine InstanceNorm."""
    return cin * cout * math.prod(kernel) + cout + 2 * cout


def network_layers(network_plan: NetworkPlan, patch_size: Sequence[int], in_channels: int,
                   num_classes: int) -> list[Layer]:
    """Every module output of the U-Net described by `network_plan`, for one sample.

    Plain U-Net: `n_conv_encoder[s]` conv blocks per encoder stage (the first strided), then
    per decoder stage (bottleneck upwards) a transposed conv, the concatenation with the skip,
    `n_conv_decoder[i]` conv blocks and a 1x1 segmentation head. resenc_unet: encoder stages
    hold `n_conv_encoder[s]` residual blocks of two convs; the first block of a stage adds a
    1x1 projection on the skip path when stride or channel count changes.
    """
    dims = len(patch_size)
    if network_plan.dims != dims:
        raise PlansError(f"patch_size {list(patch_size)} has {dims} axes but the network is {network_plan.dims}D")
    if network_plan.architecture not in ("plain_unet", "resenc_unet"):
        raise PlansError(f"architecture '{network_plan.architecture}' has no memory model; "
                         "use plain_unet or resenc_unet")
    shapes: list[list[int]] = []
    shape = [int(p) for p in patch_size]
    for stride in network_plan.strides:
        shape = [math.ceil(s / st) for s, st in zip(shape, stride)]
        shapes.append(shape)
    voxels = [math.prod(s) for s in shapes]
    feats = network_plan.features_per_stage
    n = network_plan.n_stages
    layers: list[Layer] = []
    cin = in_channels
    for s in range(n):
        f, v, k = feats[s], voxels[s], network_plan.kernel_sizes[s]
        if network_plan.architecture == "plain_unet":
            for _ in range(network_plan.n_conv_encoder[s]):
                layers.append(Layer("conv", f, v, _conv_params(cin, f, k)))
                cin = f
        else:
            for b in range(network_plan.n_conv_encoder[s]):
                layers.append(Layer("conv", f, v, _conv_params(cin, f, k)))
                layers.append(Layer("conv", f, v, _conv_params(f, f, k)))
                if b == 0 and (cin != f or any(st != 1 for st in network_plan.strides[s])):
                    layers.append(Layer("projection", f, v, _conv_params(cin, f, [1] * dims)))
                layers.append(Layer("residual_sum", f, v, 0))
                cin = f
    for i, s in enumerate(range(n - 2, -1, -1)):
        f, v, k = feats[s], voxels[s], network_plan.kernel_sizes[s]
        stride = network_plan.strides[s + 1]
        layers.append(Layer("transposed_conv", f, v, feats[s + 1] * f * math.prod(stride) + f))
        layers.append(Layer("concat", 2 * f, v, 0))
        cin = 2 * f
        for _ in range(network_plan.n_conv_decoder[i]):
            layers.append(Layer("conv", f, v, _conv_params(cin, f, k)))
            cin = f
        layers.append(Layer("head", num_classes, v, f * num_classes + num_classes))
    return layers


def feature_map_voxels(network_plan: NetworkPlan, patch_size: Sequence[int], in_channels: int,
                       num_classes: int) -> int:
    """Sum of output channels x output voxels over every conv, transposed conv and head (one sample).

    The anchor's unit-less size proxy; a network's `feature_map_size(patch)` must report the same.
    """
    counted = ("conv", "transposed_conv", "head", "projection")
    return sum(layer.elements for layer in network_layers(network_plan, patch_size, in_channels, num_classes)
               if layer.kind in counted)


def parameter_count(network_plan: NetworkPlan, in_channels: int, num_classes: int) -> int:
    """Trainable parameters (weights, biases, norm affines); independent of the patch size."""
    patch = [math.prod(s[a] for s in network_plan.strides) for a in range(network_plan.dims)]
    return sum(layer.parameters for layer in network_layers(network_plan, patch, in_channels, num_classes))


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
    layers = network_layers(network_plan, patch_size, in_channels, num_classes)
    e = c.amp_activation_bytes if mixed_precision else c.fp32_activation_bytes
    act = 0
    loss = 0
    for layer in layers:
        if layer.kind in ("conv", "projection"):
            act += c.tensors_per_conv_block * layer.elements * e
        elif layer.kind in ("concat", "residual_sum", "head"):
            act += layer.elements * e
        if layer.kind == "head":
            loss += layer.elements * c.loss_bytes_per_logit + layer.voxels * c.target_bytes_per_voxel
    input_voxels = math.prod(int(p) for p in patch_size)
    per_input = c.input_bytes + (c.amp_input_cast_bytes if mixed_precision else 0)
    inputs = in_channels * input_voxels * per_input
    largest = max(layer.elements for layer in layers if layer.kind in ("conv", "projection"))
    transient = c.backward_transient_tensors * largest * e
    per_param = c.fp32_bytes_per_parameter + (c.amp_extra_bytes_per_parameter if mixed_precision else 0)
    params = sum(layer.parameters for layer in layers) * per_param
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
