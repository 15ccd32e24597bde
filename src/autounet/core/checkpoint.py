"""Checkpoints that survive kill -9 and full disks, and never execute code when loaded.

Writing goes to a temporary file beside the target and is renamed over it only when
complete, so the previous checkpoint stays loadable until the new one is whole. Loading uses
`torch.load(weights_only=True)`: only tensors and plain Python values are accepted, a file
carrying pickled objects is refused. Random-number-generator states are converted to plain
ints, lists and tensors for the same reason (see docs/ARCHITECTURE.md, "Checkpoint format").
"""

from __future__ import annotations

import errno
import logging
import pickle
import random
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from autounet.errors import CheckpointError
from autounet.io.atomic import atomic_path

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1
INFERENCE_KEYS = ("network", "network_name", "configuration", "mirror_axes")


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write `state` atomically; on failure the previous file at `path` is left untouched."""
    path = Path(path)
    try:
        with atomic_path(path, suffix=".pt") as tmp:
            torch.save(state, tmp)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise CheckpointError(
                f"{path}: no space left on device while writing the checkpoint; the previous checkpoint "
                f"is unchanged; free disk space and continue with --resume"
            ) from exc
        raise CheckpointError(f"{path}: could not write the checkpoint ({exc.strerror or exc}); "
                              f"the previous checkpoint is unchanged") from exc


def load_weights_only(path: str | Path, map_location: str | torch.device = "cpu",
                      allowed_globals: Sequence[Any] = (), source: str = "autounet") -> Any:
    """torch.load(weights_only=True) with only `allowed_globals` added to torch's allow-list, for this
    load alone; a refused or unreadable file raises CheckpointError naming the file (and the global)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        with torch.serialization.safe_globals(list(allowed_globals)):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        refused = _refused_global(str(exc))
        if refused is not None:
            raise CheckpointError(
                f"{path}: refused, the checkpoint holds a pickled Python object ({refused}) that could run code "
                f"when loaded; use a checkpoint written by {source}"
            ) from None
        if "WeightsUnpickler error:" in str(exc):
            detail = _one_line(str(exc).split("WeightsUnpickler error:", 1)[1].split(". ", 1)[0])
            raise CheckpointError(
                f"{path}: refused, the checkpoint holds data the weights-only loader does not accept ({detail}); "
                f"use a checkpoint written by {source}"
            ) from None
        raise _unloadable(path, exc) from None
    except Exception as exc:  # noqa: BLE001 - torch raises many types for bad files
        raise _unloadable(path, exc) from None


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint without unpickling arbitrary objects; errors name the file."""
    path = Path(path)
    state = load_weights_only(path, map_location)
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{path}: not an autounet checkpoint of format {CHECKPOINT_FORMAT} "
                              f"(found {found!r}); it was written by another program or version")
    missing = [k for k in INFERENCE_KEYS if k not in state]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks key(s) {missing}; it is incomplete")
    network = state["network"]
    if not isinstance(network, dict):
        raise CheckpointError(f"{path}: 'network' holds {type(network).__name__}, not the network's weights; "
                              f"use a checkpoint written by autounet")
    broken = [name for name, t in network.items()
              if isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if broken:
        raise CheckpointError(f"{path}: {len(broken)} weight tensor(s) hold NaN/inf (e.g. {broken[0]}): the training "
                              f"diverged or the file was damaged; use another checkpoint or retrain")
    return state


_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_GLOBAL = re.compile(r"GLOBAL (\S+)")


def _refused_global(message: str) -> str | None:
    """The `module.name` torch's weights-only unpickler refused, if its message names one."""
    match = _GLOBAL.search(message)
    return match.group(1) if match else None


def _one_line(text: str, limit: int = 200) -> str:
    """Torch's text reduced to one plain line: no terminal escape codes, no line breaks."""
    plain = " ".join(_ANSI_ESCAPE.sub("", text).split())
    return plain[:limit]


def _unloadable(path: Path, exc: Exception) -> CheckpointError:
    """The error for a checkpoint torch cannot read (truncated, corrupt, or not a checkpoint at all)."""
    first = _ANSI_ESCAPE.sub("", str(exc)).strip().splitlines()
    reason = _one_line(first[0]) if first else type(exc).__name__
    return CheckpointError(f"{path}: not a loadable checkpoint ({reason}); it is truncated or corrupt; "
                           f"use another checkpoint or retrain")


def capture_rng_state() -> dict[str, Any]:
    """Python, numpy and torch global RNG states as weights_only-loadable values."""
    version, mt, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": {"version": version, "state": list(mt), "gauss": gauss},
        "numpy": {"name": np_name, "keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
                  "pos": int(np_pos), "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of `capture_rng_state` (CUDA states only where the device count matches)."""
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    nps = state["numpy"]
    np.random.set_state((nps["name"], nps["keys"].numpy().astype(np.uint32), nps["pos"], nps["has_gauss"],
                         nps["gauss"]))
    torch.set_rng_state(state["torch"].cpu())
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])


def load_matching_weights(model: nn.Module, source: dict[str, torch.Tensor]) -> tuple[list[str], list[str]]:
    """Copy every parameter/buffer whose name and shape match; return (loaded, skipped) names."""
    own = model.state_dict()
    loaded, skipped = [], []
    update = {}
    for name, value in own.items():
        other = source.get(name)
        if other is not None and tuple(other.shape) == tuple(value.shape):
            update[name] = other
            loaded.append(name)
        else:
            skipped.append(name)
    own.update(update)
    model.load_state_dict(own)
    return loaded, skipped
