"""--resume after SIGKILL: the run continues from the last finished epoch and completes.

Training runs in a subprocess (the script below) that is killed with SIGKILL as soon as its
first checkpoint appears, then again during the resumed run, then resumed to the end.
"""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from autounet.core.checkpoint import load_checkpoint
from autounet.core.run_layout import FINAL, LATEST
from autounet.training.metrics_log import read_rows
from autounet.training.run_training import run_training
from autounet.training.trainer import Trainer, poly_lr

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # the synthetic-task helpers live in test_trainer.py
from test_trainer import TASK, fast_settings, make_toy_workspace, toy_loader_builder  # noqa: E402
EPOCHS = 8

SCRIPT = f"""
import sys
from pathlib import Path
sys.path.insert(0, {str(HERE)!r})
import torch
torch.set_num_threads(1)
from autounet.core.workspace import Workspace
from autounet.training.run_training import run_training
from test_trainer import fast_settings, toy_loader_builder
settings = fast_settings(epochs={EPOCHS}, iters_per_epoch=3, val_iters=1, validate_at_end=False,
                         resume=sys.argv[2] == "1")
run_training(Workspace(Path(sys.argv[1])), None, "3d_fullres", 0, settings, loader_builder=toy_loader_builder)
"""


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _epoch_of(path: Path) -> int:
    return int(load_checkpoint(path)["epoch"]) if path.is_file() else 0


def _train_then_kill(root: Path, fold_dir: Path, resume: bool, after_epoch: int) -> int:
    """Start training, SIGKILL it once checkpoint_latest has passed `after_epoch`; return its epoch."""
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, str(root), "1" if resume else "0"])
    latest = fold_dir / LATEST
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if _epoch_of(latest) > after_epoch:
                    break
            except Exception:  # noqa: BLE001 - the file is being replaced right now; look again
                pass
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "training ended before it could be killed"
    return _epoch_of(latest)


def test_sigkill_twice_then_resume_finishes_with_consistent_history(tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    ws = make_toy_workspace(tmp_path)
    fold_dir = ws.results(TASK) / f"3d_fullres__{EPOCHS}ep_3it" / "fold_0"

    first = _train_then_kill(tmp_path, fold_dir, resume=False, after_epoch=0)
    assert 1 <= first < EPOCHS
    assert (fold_dir / ".lock").exists()  # the killed owner could not clean up
    second = _train_then_kill(tmp_path, fold_dir, resume=True, after_epoch=first)
    assert first < second < EPOCHS

    settings = fast_settings(epochs=EPOCHS, iters_per_epoch=3, val_iters=1, validate_at_end=False, resume=True)
    with caplog.at_level(logging.INFO, logger="autounet"):
        run_training(ws, None, "3d_fullres", 0, settings, loader_builder=toy_loader_builder)
    assert f"at epoch {second + 1} of {EPOCHS}" in caplog.text
    assert "taking over its lock" in caplog.text

    final = load_checkpoint(fold_dir / FINAL)
    assert final["epoch"] == EPOCHS
    rows = read_rows(fold_dir / "metrics.jsonl")
    assert [r["epoch"] for r in rows] == list(range(1, EPOCHS + 1))
    assert [r["lr"] for r in rows] == pytest.approx([poly_lr(0.01, e, EPOCHS) for e in range(EPOCHS)])
    assert final["history"]["lr"] == pytest.approx([r["lr"] for r in rows])
    manifest = json.loads((fold_dir / "run.json").read_text())
    assert manifest["status"] == "finished" and len(manifest["resumed"]) == 2
    assert not list(fold_dir.glob(".tmp-*")) and not (fold_dir / ".lock").exists()


def test_resume_restores_weights_optimizer_and_position(tmp_path: Path) -> None:
    ws = make_toy_workspace(tmp_path)
    settings = fast_settings(epochs=3, iters_per_epoch=2, val_iters=1, validate_at_end=False)
    fold_dir = run_training(ws, TASK, "3d_fullres", 0, settings, loader_builder=toy_loader_builder)
    saved = load_checkpoint(fold_dir / LATEST)

    from autounet.planners.plans import load_plans

    plans = load_plans(ws.preprocessed(TASK) / "plans.json")
    trainer = Trainer(plans, "3d_fullres", ws.preprocessed(TASK) / "3d_fullres", fold_dir, [], [], settings,
                      loader_builder=toy_loader_builder)
    assert trainer.resume()
    assert trainer.state.next_epoch == 3
    assert trainer.state.history == saved["history"]
    assert trainer.state.best_ema_dice == saved["best_ema_dice"]
    for name, tensor in trainer.network.state_dict().items():
        assert torch.equal(tensor, saved["network"][name]), name
    momentum = trainer.optimizer.state_dict()["state"]
    assert momentum and all(torch.equal(momentum[k]["momentum_buffer"], v["momentum_buffer"])
                            for k, v in saved["optimizer"]["state"].items())
    assert torch.equal(torch.get_rng_state(), saved["rng"]["torch"])


def test_resume_with_a_different_setting_is_refused(tmp_path: Path) -> None:
    ws = make_toy_workspace(tmp_path)
    settings = fast_settings(epochs=1, iters_per_epoch=1, val_iters=1, validate_at_end=False)
    run_training(ws, TASK, "3d_fullres", 0, settings, loader_builder=toy_loader_builder)
    changed = fast_settings(epochs=1, iters_per_epoch=1, val_iters=1, validate_at_end=False, resume=True,
                            weight_decay=1e-4)
    from autounet.errors import AutounetError

    with pytest.raises(AutounetError, match="'weight_decay'"):
        run_training(ws, TASK, "3d_fullres", 0, changed, loader_builder=toy_loader_builder)
