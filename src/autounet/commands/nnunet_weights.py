"""Read an nnU-Net v2 checkpoint safely and map its weights onto autounet's networks.

nnU-Net checkpoints are pickles. They are loaded weights-only, with an allow-list of exactly
the non-tensor types nnunetv2 2.8.1 writes into them (numpy scalars, e.g. the EMA Dice, and
their dtypes); any other pickled global is refused, never unpickled.

The state dict of dynamic_network_architectures' PlainConvUNet / ResidualEncoderUNet is renamed
onto autounet's PlainUNet / ResidualEncoderUNet key by key; every key must find its place with
the same shape, so a trainer that changed the architecture behind the plans' back (another norm,
extra layers) is refused instead of being loaded into the wrong network.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from autounet.core.checkpoint import load_weights_only
from autounet.errors import CheckpointError

NETWORK_WEIGHTS = "network_weights"
#: Keys that duplicate others in nnU-Net's state dicts (`all_modules` repeats conv/norm, the decoder
#: keeps a reference to the encoder).
_DUPLICATES = re.compile(r"(\.all_modules\.|^decoder\.encoder\.)")
_ENCODER_RULES = [
    (re.compile(r"^encoder\.stages\.(\d+)\.0\.convs\.(\d+)\.(conv|norm)\.(weight|bias)$"),
     "encoder.stages.{0}.{1}.{2}.{3}"),
    (re.compile(r"^encoder\.stem\.convs\.0\.(conv|norm)\.(weight|bias)$"), "encoder.stem.{0}.{1}"),
    (re.compile(r"^encoder\.stages\.(\d+)\.blocks\.(\d+)\.(conv1|conv2)\.(conv|norm)\.(weight|bias)$"),
     "encoder.stages.{0}.{1}.{2}.{3}.{4}"),
    (re.compile(r"^encoder\.stages\.(\d+)\.blocks\.(\d+)\.skip\.(\d+)\.(conv|norm)\.(weight|bias)$"),
     "encoder.stages.{0}.{1}.shortcut.{2}.{3}.{4}"),
]
_DECODER_RULES = [
    (re.compile(r"^decoder\.stages\.(\d+)\.convs\.(\d+)\.(conv|norm)\.(weight|bias)$"), "decoder.convs.{i}.{1}.{2}.{3}"),
    (re.compile(r"^decoder\.transpconvs\.(\d+)\.(weight|bias)$"), "decoder.upsample.{i}.{1}"),
    (re.compile(r"^decoder\.seg_layers\.(\d+)\.(weight|bias)$"), "decoder.heads.{i}.{1}"),
]


def allowed_globals() -> list[Any]:
    """The non-tensor types of an nnunetv2 2.8.1 checkpoint (numpy scalars and dtypes), under the names
    numpy 1.x and 2.x pickle them with."""
    core = getattr(np, "_core", None) or np.core
    scalar = core.multiarray.scalar
    allowed: list[Any] = [np.dtype, (scalar, "numpy.core.multiarray.scalar"),
                          (scalar, "numpy._core.multiarray.scalar")]
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        allowed += [getattr(dtypes, name) for name in ("Float16DType", "Float32DType", "Float64DType", "Int32DType",
                                                       "Int64DType", "BoolDType") if hasattr(dtypes, name)]
    return allowed


def load_nnunet_checkpoint(path: Path) -> dict[str, Any]:
    """The checkpoint's dict, loaded weights-only with `allowed_globals`; its weights must be finite."""
    state = load_weights_only(path, "cpu", allowed_globals(), source="nnU-Net v2 (nnUNetv2_train)")
    if not isinstance(state, dict) or not isinstance(state.get(NETWORK_WEIGHTS), dict):
        raise CheckpointError(f"{path}: no '{NETWORK_WEIGHTS}' in it; not an nnU-Net v2 checkpoint")
    broken = [k for k, t in state[NETWORK_WEIGHTS].items()
              if isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if broken:
        raise CheckpointError(f"{path}: weight {broken[0]} holds NaN/inf; the training diverged, use another fold")
    return state


def mirror_axes_of(state: dict[str, Any], path: Path) -> list[int]:
    """`inference_allowed_mirroring_axes` as a list (None, as nnU-Net writes for no mirroring, gives [])."""
    axes = state.get("inference_allowed_mirroring_axes")
    if axes is None:
        return []
    if not isinstance(axes, (list, tuple)) or not all(isinstance(a, int) for a in axes):
        raise CheckpointError(f"{path}: 'inference_allowed_mirroring_axes' is {axes!r}, not a list of axes")
    return [int(a) for a in axes]


def _target_key(key: str, n_decoder: int) -> str | None:
    for pattern, template in _ENCODER_RULES:
        match = pattern.match(key)
        if match:
            return template.format(*match.groups())
    for pattern, template in _DECODER_RULES:
        match = pattern.match(key)
        if match:
            stage = int(match.group(1))
            if stage >= n_decoder:
                return None
            return template.format(*match.groups(), i=n_decoder - 1 - stage)
    return None


def map_state_dict(weights: dict[str, torch.Tensor], network: torch.nn.Module, where: str) -> dict[str, torch.Tensor]:
    """nnU-Net's weights under `network`'s keys; refused when a key has no place or a shape differs.

    A bias the nnU-Net network does not have (conv_bias false) is filled with zeros: every such
    convolution is followed by an InstanceNorm, which cancels a constant bias, or is a transposed conv
    or seg head where a zero bias is no bias.
    """
    target = network.state_dict()
    n_decoder = len(getattr(getattr(network, "decoder", None), "convs", []))
    mapped: dict[str, torch.Tensor] = {}
    for key, tensor in weights.items():
        if _DUPLICATES.search(key):
            continue
        new = _target_key(key, n_decoder)
        if new is None or new not in target:
            raise CheckpointError(f"{where}: weight '{key}' has no counterpart in autounet's "
                                  f"{type(network).__name__}; the trainer changed the architecture")
        if tuple(tensor.shape) != tuple(target[new].shape):
            raise CheckpointError(f"{where}: weight '{key}' has shape {list(tensor.shape)}, the plans' network needs "
                                  f"{list(target[new].shape)}; the plans do not describe this checkpoint")
        mapped[new] = tensor.detach().to(target[new].dtype)
    for key, tensor in target.items():
        if key in mapped:
            continue
        if key.endswith(".bias") and key.replace(".bias", ".weight") in mapped:
            mapped[key] = torch.zeros_like(tensor)
            continue
        raise CheckpointError(f"{where}: the checkpoint lacks weights for autounet's '{key}'; "
                              f"the plans do not describe this checkpoint")
    return mapped
