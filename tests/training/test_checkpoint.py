"""Checkpoints: round trip, refusal of pickled objects, atomic replacement, full disk."""

from __future__ import annotations

import errno
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from autounet.errors import CheckpointError
from autounet.core import checkpoint as ckpt
from autounet.core.checkpoint import capture_rng_state, load_checkpoint, restore_rng_state, save_checkpoint


def _state(value: float = 1.0, **extra: Any) -> dict[str, Any]:
    return {"format": 1, "network": {"w": torch.full((3,), value)}, "network_name": "plain_unet",
            "configuration": "3d_fullres", "mirror_axes": [0, 1, 2], **extra}


def test_round_trip_with_rng_states(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint_latest.pt"
    save_checkpoint(path, _state(2.0, rng=capture_rng_state(), history={"lr": [0.01, 0.009]}))
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(99), np.random.seed(99), torch.manual_seed(99)
    loaded = load_checkpoint(path)
    restore_rng_state(loaded["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected
    assert torch.equal(loaded["network"]["w"], torch.full((3,), 2.0))
    assert loaded["history"] == {"lr": [0.01, 0.009]}


class _Payload:
    """Unpickling this would run a shell command that creates a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


def test_pickled_payload_is_refused_and_never_executed(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save(_state(payload=_Payload(marker)), path)
    with pytest.raises(CheckpointError,
                       match=r"evil\.pt: refused, the checkpoint holds a pickled Python object \((posix|os)\.system\)"):
        load_checkpoint(path)
    assert not marker.exists()


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 not really a zip", b"\x80\x02garbage"])
def test_truncated_or_garbage_files_name_the_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "broken.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="broken.pt"):
        load_checkpoint(path)


def test_truncated_real_checkpoint_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.pt"
    save_checkpoint(path, _state())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="c.pt"):
        load_checkpoint(path)


def test_foreign_or_incomplete_dicts_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.pt"
    torch.save({"state_dict": {}}, path)
    with pytest.raises(CheckpointError, match="format"):
        load_checkpoint(path)
    torch.save({"format": 1, "network": {}}, path)
    with pytest.raises(CheckpointError, match="network_name"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "absent.pt")


def test_failure_mid_write_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "checkpoint_latest.pt"
    save_checkpoint(path, _state(1.0))

    def half_written(obj: Any, f: Path) -> None:
        Path(f).write_bytes(b"PK\x03\x04partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt.torch, "save", half_written)
    with pytest.raises(CheckpointError, match="no space left.*previous checkpoint is unchanged"):
        save_checkpoint(path, _state(5.0))

    def io_error(obj: Any, f: Path) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(ckpt.torch, "save", io_error)
    with pytest.raises(CheckpointError, match="Input/output error"):
        save_checkpoint(path, _state(6.0))
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(path)["network"]["w"], torch.full((3,), 1.0))
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint_latest.pt"]


WRITER = """
import sys, torch
from autounet.core.checkpoint import save_checkpoint
big = torch.randn(8_000_000)
i = 0
while True:
    i += 1
    w = big + i
    save_checkpoint(sys.argv[1], {"format": 1, "network": {"w": w}, "network_name": "n",
                                  "configuration": "c", "mirror_axes": [], "i": i, "sum": float(w.double().sum())})
    print(i, flush=True)
"""


def test_sigkill_during_writes_never_leaves_an_unloadable_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint_latest.pt"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        proc.stdout.readline()  # the first checkpoint is complete
        time.sleep(random.uniform(0.05, 0.3))  # now most likely in the middle of writing another
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    state = load_checkpoint(path)
    assert state["i"] >= 1
    w = state["network"]["w"]
    assert w.numel() == 8_000_000
    assert float(w.double().sum()) == pytest.approx(state["sum"])


def test_other_load_failures_are_one_plain_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Torch's text reaches the user without terminal escape codes or line breaks."""
    path = tmp_path / "c.pt"
    save_checkpoint(path, _state())

    def fail(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("\x1b[1mPytorchStreamReader failed\x1b[0m reading\n\tthe zip archive")

    monkeypatch.setattr(torch, "load", fail)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert str(info.value) == (f"{path}: not a loadable checkpoint (PytorchStreamReader failed reading); "
                               f"it is truncated or corrupt; use another checkpoint or retrain")


def test_weights_only_refusal_without_a_named_global_never_suggests_unsafe_loading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pickle

    path = tmp_path / "c.pt"
    save_checkpoint(path, _state())

    def fail(*args: Any, **kwargs: Any) -> None:
        raise pickle.UnpicklingError("Weights only load failed. This file can still be loaded, \x1b[1mdo it\x1b[0m.\n"
                                     "\tWeightsUnpickler error: Unsupported operand 149. Check the docs.")

    monkeypatch.setattr(torch, "load", fail)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert str(info.value) == (f"{path}: refused, the checkpoint holds data the weights-only loader does not accept "
                               f"(Unsupported operand 149); use a checkpoint written by autounet")
