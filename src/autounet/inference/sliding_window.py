"""Sliding-window prediction of a whole preprocessed case with a patch-trained network.

The network was trained on patches, so a case is covered by overlapping tiles of the patch
size (step = a fraction of the patch), each tile's logits weighted by a Gaussian that
favours the tile centre, summed, and divided by the summed weights. Test-time mirroring
averages the logits of every combination of flips along the axes mirrored in training.
Several networks (the folds of a cross-validation) may be passed: their logits are averaged
per tile, which equals averaging their full-volume logits because the weighting is linear.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import nn

from autounet.errors import AutounetError
from autounet.core.out_of_memory import is_out_of_memory, peak_memory_bytes, release_cached_memory
from autounet.inference.gaussian import gaussian_importance_map
from autounet.inference.tiling import WEIGHT_FLOOR, compute_steps, mirror_subsets, tile_weights
from autounet.inference.memory import (
    DEVICE_MEMORY_SAFETY,
    accumulator_dtype_bytes,
    estimate_prediction_memory_bytes,
    free_device_memory_bytes,
)
from autounet.networks.precision import autocast, resolve_precision

log = logging.getLogger(__name__)

#: On a CPU the mirrored views of a tile go through one forward while their activations (the network's
#: feature-map proxy, fp32) stay within this: small patches run much faster batched (8 views of a
#: 24x40x40 plain U-Net: 2.5-3x on 2 cores), large ones gain nothing and would multiply the memory.
CPU_VIEW_BATCH_BYTES = 1024**3

__all__ = ["WEIGHT_FLOOR", "compute_steps", "gaussian_importance_map", "mirror_subsets", "sliding_window_logits"]


def _unwrap(output: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    """Full-resolution logits of a network that may still return a deep-supervision list."""
    if isinstance(output, (list, tuple)):
        return output[0]
    return output


class ForwardBatch:
    """Inputs per network forward: halved when a forward runs out of device memory, down to 1, and
    kept smaller for the rest of the case (its host-accumulation redo included)."""

    def __init__(self, size: int) -> None:
        self.size = max(1, int(size))

    def halve(self, device: torch.device) -> None:
        before, self.size = self.size, (self.size + 1) // 2
        release_cached_memory(device)
        peak = peak_memory_bytes(device)
        log.warning("out of device memory in a forward of %d tiles; continuing with %d per forward (peak %s)",
                    before, self.size, "unknown" if peak is None else f"{peak / 1024**3:.2f} GiB")


def _forward_chunks(net: nn.Module, views: torch.Tensor, forward_batch: ForwardBatch, precision: str) -> torch.Tensor:
    """The network's fp32 logits of `views`, at most `forward_batch.size` at a time; a forward that runs
    out of memory is redone with half as many inputs, and at one input the error goes to the caller."""
    outs: list[torch.Tensor] = []
    start = 0
    while start < views.shape[0]:
        chunk = views[start:start + forward_batch.size]
        try:
            with autocast(precision, views.device):
                outs.append(_unwrap(net(chunk)).float())
            start += chunk.shape[0]
            continue
        except RuntimeError as exc:
            if not is_out_of_memory(exc) or forward_batch.size == 1:
                raise
        forward_batch.halve(views.device)  # outside the except block: the failed forward's tensors are freed
    return torch.cat(outs)


def _forward_tiles(networks: Sequence[nn.Module], tiles: torch.Tensor, mirror_axes: Sequence[int],
                   forward_batch: ForwardBatch, precision: str, sigmoid: bool = False) -> torch.Tensor:
    """Mean logits over networks and mirrorings for a batch of tiles (n, C, *patch) -> (n, K, *patch) fp32.

    With `sigmoid` (region outputs) each view's probabilities are averaged instead of its logits."""
    subsets = mirror_subsets(mirror_axes)
    n = tiles.shape[0]
    # Mirrored views of all tiles go through the network together: fewer, larger forwards.
    views = torch.cat([torch.flip(tiles, [a + 2 for a in s]) if s else tiles for s in subsets])
    total: torch.Tensor | None = None
    for net in networks:
        out = _forward_chunks(net, views, forward_batch, precision)
        for i, s in enumerate(subsets):
            part = out[i * n:(i + 1) * n]
            part = torch.flip(part, [a + 2 for a in s]) if s else part
            part = torch.sigmoid(part) if sigmoid else part
            total = part if total is None else total + part
    assert total is not None
    return total / (len(subsets) * len(networks))


def _batched(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _as_tensor(data: np.ndarray | torch.Tensor) -> torch.Tensor:
    if isinstance(data, torch.Tensor):
        return data.float()
    return torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))


def _resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@torch.inference_mode()
def sliding_window_logits(
    network: nn.Module | Sequence[nn.Module],
    data: np.ndarray | torch.Tensor,
    patch_size: Sequence[int],
    num_classes: int,
    step_size: float = 0.5,
    mirror_axes: Sequence[int] = (),
    use_gaussian: bool = True,
    device: str | torch.device | None = "auto",
    accumulate_on: str = "auto",
    batch_tiles: int | None = None,
    max_forward_batch: int | None = None,
    precision: str = "auto",
    sigmoid: bool = False,
    window_arithmetic: str = "autounet",
) -> torch.Tensor:
    """Logits (K, *spatial) float32 on the CPU for a preprocessed case `data` (C, *spatial); with
    `sigmoid` (region models) the mean of the sigmoid probabilities over mirrorings, folds and tiles.

    `patch_size` has as many entries as the network's spatial dimensions; a 2D network on
    3D data predicts every slice along axis 0. `mirror_axes` are spatial axes of the patch.
    `accumulate_on`: "device" keeps the sums on `device`, "cpu" in host memory, "auto" decides
    from the estimated memory and, if the device still runs out of memory, redoes the case
    with host accumulation. `batch_tiles` tiles (times the mirrorings) go through one forward,
    at most `max_forward_batch` inputs at a time (halved, down to 1, when a forward runs out of device
    memory; after that the host-accumulation redo of "auto"). `precision` as in `networks.precision`
    (`auto`: fp16 autocast on CUDA, bf16 on CPUs with native bfloat16, else fp32). `window_arithmetic` as
    in `planners.plans.WINDOW_ARITHMETIC`.
    """
    networks = list(network) if isinstance(network, (list, tuple)) else [network]
    if not networks:
        raise ValueError("need at least one network")
    if accumulate_on not in ("auto", "device", "cpu"):
        raise ValueError(f"accumulate_on must be 'auto', 'device' or 'cpu', got {accumulate_on!r}")
    dev = _resolve_device(device)
    resolved_precision = resolve_precision(precision, dev)
    for net in networks:
        net.eval()
        if hasattr(net, "deep_supervision"):
            net.deep_supervision = False
    x = _as_tensor(data)
    spatial = tuple(x.shape[1:])
    net_dims = len(patch_size)
    if len(spatial) not in (net_dims, net_dims + 1):
        raise ValueError(f"data of shape {tuple(x.shape)} does not fit a {net_dims}D patch {list(patch_size)}")
    if any(a < 0 or a >= net_dims for a in mirror_axes):
        raise ValueError(f"mirror axes {list(mirror_axes)} are not axes of a {net_dims}D patch")
    n_views = len(mirror_subsets(mirror_axes))
    if batch_tiles is None:
        batch_tiles = 1 if net_dims == 3 else max(1, 16 // n_views)
    if max_forward_batch is None:
        # On a GPU the mirrored views go through together (better occupancy); on a CPU only while their
        # activations are small (see CPU_VIEW_BATCH_BYTES), else one by one.
        together = dev.type == "cuda" or _views_fit_cpu(networks[0], patch_size, batch_tiles * n_views)
        max_forward_batch = batch_tiles * n_views if together else batch_tiles

    placement = accumulate_on
    if placement == "auto":
        placement = _auto_placement(networks, spatial, num_classes, patch_size, x.shape[0], dev,
                                    batch_tiles * n_views)
    args = (networks, x, tuple(int(p) for p in patch_size), num_classes, step_size, tuple(mirror_axes),
            use_gaussian, dev, batch_tiles, ForwardBatch(max_forward_batch), resolved_precision, sigmoid,
            window_arithmetic)
    if placement == "device" and dev.type == "cuda":
        try:
            return _predict(*args, acc_device=dev)
        except RuntimeError as exc:  # most often CUDA out of memory
            if accumulate_on == "device":
                raise
            log.warning("prediction with accumulation on %s failed (%s); redoing the case with host accumulation",
                        dev, str(exc).splitlines()[0])
            torch.cuda.empty_cache()
    try:
        return _predict(*args, acc_device=torch.device("cpu"))
    except RuntimeError as exc:
        if not is_out_of_memory(exc):
            raise
    hint = "free memory" if dev.type == "cpu" else "predict with --device cpu, or free the GPU's memory"
    raise AutounetError(f"--device {dev.type}: out of memory on {dev} even with one tile of {list(patch_size)} per "
                        f"forward and the sums in host memory; {hint}")


def _views_fit_cpu(network: nn.Module, patch_size: Sequence[int], views: int) -> bool:
    size_fn = getattr(network, "feature_map_size", None)
    if not callable(size_fn):
        return False
    try:
        proxy = int(size_fn(list(patch_size)))
    except Exception:  # noqa: BLE001 - an estimate only: a custom network without it goes view by view
        return False
    return proxy * 4 * views <= CPU_VIEW_BATCH_BYTES


def _auto_placement(networks: Sequence[nn.Module], spatial: tuple[int, ...], num_classes: int,
                    patch_size: Sequence[int], in_channels: int, dev: torch.device, forward_batch: int) -> str:
    if dev.type != "cuda":
        return "device"
    feature_map = None
    size_fn = getattr(networks[0], "feature_map_size", None)
    if callable(size_fn):
        try:
            feature_map = int(size_fn(list(patch_size)))
        except Exception:  # an estimate only: a custom network without this method still predicts
            feature_map = None
    estimate = estimate_prediction_memory_bytes(spatial, num_classes, patch_size, in_channels, feature_map,
                                                forward_batch)
    free = free_device_memory_bytes(dev)
    if free is not None:
        free += torch.cuda.memory_reserved(dev) - torch.cuda.memory_allocated(dev)
    fits = free is None or estimate.total < DEVICE_MEMORY_SAFETY * free
    log.info("estimated prediction memory %s; %s free on %s -> accumulating on %s", estimate.describe(),
             "unknown" if free is None else f"{free / 1024**3:.2f} GiB", dev, "device" if fits else "host")
    return "device" if fits else "cpu"


def _predict(networks: Sequence[nn.Module], x: torch.Tensor, patch_size: tuple[int, ...], num_classes: int,
             step_size: float, mirror_axes: tuple[int, ...], use_gaussian: bool, dev: torch.device,
             batch_tiles: int, forward_batch: ForwardBatch, precision: str, sigmoid: bool, window_arithmetic: str,
             acc_device: torch.device) -> torch.Tensor:
    spatial = tuple(x.shape[1:])
    slice_axis = len(spatial) == len(patch_size) + 1  # 2D network on 3D data
    tile_shape = ((1,) if slice_axis else ()) + patch_size
    lead = len(spatial) - len(patch_size)
    target = spatial[:lead] + tuple(max(s, p) for s, p in zip(spatial[lead:], patch_size))
    pad_before = [(t - s) // 2 for s, t in zip(spatial, target)]
    if target != spatial:
        pad = []
        for s, t, b in reversed(list(zip(spatial, target, pad_before))):
            pad += [b, t - s - b]
        x = torch.nn.functional.pad(x, pad)
    data_on = dev if acc_device == dev else torch.device("cpu")
    x = x.to(data_on)

    nnunet = window_arithmetic == "nnunet_fp16"
    acc_dtype = torch.float16 if nnunet or accumulator_dtype_bytes(target, num_classes) == 2 else torch.float32
    logits_sum = torch.zeros((num_classes, *target), dtype=acc_dtype, device=acc_device)
    weight_sum = torch.zeros(target, dtype=acc_dtype, device=acc_device)
    if use_gaussian and nnunet:  # nnU-Net 2.8.1 builds its Gaussian in half precision, without a floor
        weight_np = gaussian_importance_map(patch_size, dtype=np.float16).astype(np.float32)
    else:
        weight_np = tile_weights(patch_size, use_gaussian)
    weight = torch.from_numpy(weight_np).reshape(tile_shape)
    weight_dev = weight.to(dev)
    weight_acc = weight.to(acc_device, acc_dtype)

    if slice_axis:
        steps = [list(range(target[0]))] + compute_steps(target[1:], patch_size, step_size)
    else:
        steps = compute_steps(target, patch_size, step_size)
    corners = list(itertools.product(*steps))
    log.debug("sliding window: %d tiles of %s over %s, %d mirrorings, %d network(s) in %s, accumulating on %s (%s)",
              len(corners), list(tile_shape), list(target), len(mirror_subsets(mirror_axes)), len(networks),
              precision, acc_device, acc_dtype)
    for group in _batched(corners, batch_tiles):
        boxes = [tuple(slice(c, c + t) for c, t in zip(corner, tile_shape)) for corner in group]
        tiles = torch.stack([x[(slice(None),) + box] for box in boxes])
        if slice_axis:
            tiles = tiles[:, :, 0]
        tiles = tiles.to(dev, non_blocking=True)
        out = _forward_tiles(networks, tiles, mirror_axes, forward_batch, precision, sigmoid)
        if out.shape[1] != num_classes:
            raise ValueError(f"network returned {out.shape[1]} channels, expected {num_classes} classes")
        if slice_axis:
            out = out.unsqueeze(2)
        out = out * weight_dev
        # nnU-Net adds the fp32 products into its fp16 sums (one rounding per addition)
        out = out.to(acc_device) if nnunet else out.to(acc_device, acc_dtype)
        for i, box in enumerate(boxes):
            logits_sum[(slice(None),) + box] += out[i]
            weight_sum[box] += weight_acc

    crop = tuple(slice(b, b + s) for b, s in zip(pad_before, spatial))
    if nnunet:
        result = (logits_sum[(slice(None),) + crop] / weight_sum[crop]).float().cpu()
    else:
        result = (logits_sum[(slice(None),) + crop].float() / weight_sum[crop].float()).cpu()
    if not torch.isfinite(result).all():
        if acc_dtype == torch.float16:
            raise RuntimeError("non-finite logits after half-precision accumulation; the network's logits overflow")
        raise RuntimeError("non-finite logits in sliding-window prediction")
    return result
