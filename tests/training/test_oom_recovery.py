"""Training through an out-of-memory error, on the CPU with the error injected by a test double.

`OomInjector` wraps the real network and raises torch.cuda.OutOfMemoryError when a training
forward pass (gradients on) gets more samples than it allows, which is where a real GPU runs out.
The retried step must equal the full-batch step, for the per-sample Dice and the batch Dice alike:
the loss within 1e-6 relative (measured: identical) and the weight update within 1e-5 of its largest
change (float32 rounding: measured 1.8e-6 with the per-sample Dice, 3.6e-6 with the batch Dice; in
float64 the gradients agree to 1e-10, see the test with chunks of 2 and 1).
"""

from __future__ import annotations

import copy
import json
import logging
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from autounet.core.out_of_memory import is_out_of_memory
from autounet.errors import AutounetError
from autounet.networks.registry import build_network
from autounet.training.oom_recovery import OomRecovery, chunk_slices, chunked_gradients
from autounet.training.run_identity import RunManifest, load_manifest, save_manifest
from autounet.training.run_training import run_training
from autounet.training.trainer import Trainer

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the synthetic-task helpers live in test_trainer.py
from test_trainer import TASK, fast_settings, make_toy_workspace, toy_loader_builder, toy_plans  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class OomInjector(nn.Module):
    """A network that runs out of memory when a training forward gets more than `max_batch` samples."""

    def __init__(self, network: nn.Module, max_batch: int) -> None:
        super().__init__()
        self.network = network
        self.max_batch = max_batch
        self.seen: list[int] = []  # the batch size of every forward with autograd, failed ones included

    @property
    def deep_supervision(self) -> bool:
        return bool(self.network.deep_supervision)

    def forward(self, x: torch.Tensor) -> Any:
        if torch.is_grad_enabled():
            self.seen.append(x.shape[0])
            if x.shape[0] > self.max_batch:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")
        return self.network(x)


def injecting_builder(max_batch: int) -> Any:
    def build(*args: Any, **kwargs: Any) -> OomInjector:
        return OomInjector(build_network(*args, **kwargs), max_batch)
    return build


def _trainer(tmp_path: Path, max_batch: int, batch_dice: bool = False, batch_size: int = 4) -> Trainer:
    plans = toy_plans()
    cfg = plans.configurations["3d_fullres"]
    cfg.batch_dice, cfg.batch_size = batch_dice, batch_size
    # fp32: the CPU default bf16 rounds the gradients by ~0.5%, hiding what is compared here
    return Trainer(plans, "3d_fullres", tmp_path, tmp_path / "fold_0", [], [], fast_settings(precision="fp32"),
                   network_builder=injecting_builder(max_batch))


def _batch(trainer: Trainer, batch_size: int = 4, seed: int = 0) -> dict[str, Any]:
    """Noisy cubes of different sizes; the last sample has no foreground (where batch Dice differs most)."""
    gen = torch.Generator().manual_seed(seed)
    seg = torch.zeros((batch_size, 1, 16, 16, 16), dtype=torch.int64)
    for b in range(batch_size - 1):
        lo, size = 2 + b, 4 + 2 * b
        seg[b, :, lo:lo + size, lo:lo + size, lo:lo + size] = 1
    data = seg.float() * 2 - 1 + 0.3 * torch.randn(seg.shape, generator=gen)
    targets = []
    for scale in trainer.ds_scales:
        size = [round(16 * s) for s in scale]
        targets.append(nn.functional.interpolate(seg.float(), size=size, mode="nearest-exact").long())
    return {"data": data, "target": targets}


def _relative_gap(a: nn.Module, b: nn.Module) -> float:
    """max |a - b| / max |a| over all parameters."""
    pa = torch.cat([p.detach().flatten() for p in a.parameters()])
    pb = torch.cat([p.detach().flatten() for p in b.parameters()])
    return float((pa - pb).abs().max() / pa.abs().max())


def _step_pair(tmp_path: Path, batch_dice: bool) -> tuple[Trainer, Trainer, float, float, float]:
    """(full-batch trainer, injected trainer, full loss, injected loss, relative weight gap after one step)."""
    full = _trainer(tmp_path, max_batch=99, batch_dice=batch_dice)
    injected = _trainer(tmp_path, max_batch=1, batch_dice=batch_dice)
    assert _relative_gap(full.network, injected.network) == 0.0  # same seed, same initial weights
    before = copy.deepcopy(full.network)
    batch = _batch(full)
    loss_full = full.train_step(batch, 0, 0)
    loss_injected = injected.train_step(batch, 0, 0)
    step = _relative_gap(full.network, before)
    return full, injected, loss_full, loss_injected, _relative_gap(full.network, injected.network) / step


@pytest.mark.parametrize("batch_dice", [False, True])
def test_injected_oom_halves_the_batch_and_keeps_loss_and_update(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                                 batch_dice: bool) -> None:
    with caplog.at_level(logging.WARNING, logger="autounet"):
        full, injected, loss_full, loss_injected, gap = _step_pair(tmp_path, batch_dice)
    # 4 samples fail, 2 fail, then four passes of 1 (the passes without autograd are not counted)
    assert injected.network.seen == [4, 2, 1, 1, 1, 1]
    assert [(e.chunk_size_before, e.chunk_size_after) for e in injected.oom.events] == [(4, 2), (2, 1)]
    event = injected.oom.events[0]
    assert (event.epoch, event.iteration, event.batch_size, event.peak_memory_bytes,
            event.estimated_memory_bytes) == (0, 0, 4, None, 10_000_000)
    assert loss_injected == pytest.approx(loss_full, rel=1e-6)
    assert gap < 1e-5  # the weight update differs from the full-batch update by float rounding only
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert "continuing with 2 per pass" in warnings[0] and "planner's estimate 0.01 GB" in warnings[0]
    # the chunking is kept: the next step goes straight to chunks of 1, without a new event
    injected.network.seen.clear()
    injected.train_step(_batch(injected, seed=1), 0, 1)
    assert injected.network.seen == [1, 1, 1, 1] and len(injected.oom.events) == 2


def test_chunks_of_three_samples_and_a_network_without_deep_supervision(tmp_path: Path) -> None:
    """Batch 3 in chunks of 2 and 1 (unequal chunks), one output tensor: the loss and gradients of
    the whole batch, in float64 to show that the method is exact, not just close."""
    trainer = _trainer(tmp_path, max_batch=99, batch_dice=True, batch_size=3)
    net = trainer.network.network.double()
    net.deep_supervision = False
    data, targets = trainer._to_device(_batch(trainer, batch_size=3))
    data = data.double()
    loss = trainer._loss_of(net(data), targets)[0]
    loss.backward()
    expected = [None if p.grad is None else p.grad.clone() for p in net.parameters()]  # unused heads: None
    net.zero_grad(set_to_none=True)
    assert chunk_slices(3, 2) == [slice(0, 2), slice(2, 3)]
    chunked = chunked_gradients(net, lambda out, t: trainer._loss_of(out, t)[0], lambda x: x, data, targets, 2)
    assert chunked == pytest.approx(float(loss.detach()), rel=1e-12)
    assert sum(g is not None for g in expected) > 4
    for p, g in zip(net.parameters(), expected):
        assert (p.grad is None) == (g is None)
        if g is not None:
            torch.testing.assert_close(p.grad, g, rtol=1e-10, atol=1e-12)


def test_fp16_scaler_unscales_and_clips_once_after_accumulation(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from autounet.training import trainer as trainer_module

    monkeypatch.setattr(trainer_module, "resolve_precision", lambda requested, device: "fp16")
    full, injected, loss_full, loss_injected, gap = _step_pair(tmp_path, batch_dice=False)
    assert full.grad_scaler is not None and injected.grad_scaler is not None
    assert injected.grad_scaler.get_scale() == full.grad_scaler.get_scale()
    assert loss_injected == pytest.approx(loss_full, rel=1e-6)
    assert gap < 2e-3  # fp16 forwards of 1 and 4 samples round differently: measured 2.7e-4


def test_oom_with_one_sample_is_a_clear_error(tmp_path: Path) -> None:
    trainer = _trainer(tmp_path, max_batch=0, batch_size=2)
    with pytest.raises(AutounetError) as err:
        trainer.train_step(_batch(trainer, batch_size=2))
    assert str(err.value) == (
        f"{tmp_path.parent / 'plans.json'}: key configurations.3d_fullres: out of device memory even with 1 sample "
        f"per forward/backward pass (batch size 2, patch size [16, 16, 16]; peak unknown (not measured off CUDA), "
        f"planner's estimate 0.01 GB); plan again for less memory: `autounet plan_and_preprocess {TASK} "
        f"--gpu-memory <GB>` with fewer GB than this GPU has, then train again")


def test_other_errors_are_not_retried() -> None:
    recovery = OomRecovery(torch.device("cpu"), 0, "plans.json", TASK, [16, 16, 16])
    calls = []

    def step(chunk_size: int) -> float:
        calls.append(chunk_size)
        raise RuntimeError("Expected all tensors to be on the same device")

    with pytest.raises(RuntimeError, match="same device"):
        recovery.run(4, step, lambda: None)
    assert calls == [4] and recovery.events == []
    # under DistributedDataParallel the error is not caught: the other ranks could not follow a retry
    ddp = OomRecovery(torch.device("cpu"), 0, "plans.json", TASK, [16, 16, 16], enabled=False)
    with pytest.raises(torch.cuda.OutOfMemoryError):
        ddp.run(4, lambda chunk_size: (_ for _ in ()).throw(torch.cuda.OutOfMemoryError("x")), lambda: None)
    assert ddp.events == [] and ddp.chunk_size is None
    assert is_out_of_memory(RuntimeError("CUDA error: out of memory"))
    assert is_out_of_memory(torch.cuda.OutOfMemoryError("x"))
    assert not is_out_of_memory(ValueError("out of memory"))


def test_oom_events_land_in_run_json(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ws = make_toy_workspace(tmp_path, num_cases=5)
    settings = fast_settings(epochs=1, iters_per_epoch=2, val_iters=1, validate_at_end=False)
    with caplog.at_level(logging.INFO, logger="autounet"):
        fold_dir = run_training(ws, TASK, "3d_fullres", 0, settings, network_builder=injecting_builder(1),
                                loader_builder=toy_loader_builder)
    manifest = json.loads((fold_dir / "run.json").read_text())
    assert manifest["status"] == "finished"
    assert manifest["oom_events"] == [{"epoch": 0, "iteration": 0, "batch_size": 2, "chunk_size_before": 2,
                                       "chunk_size_after": 1, "peak_memory_bytes": None,
                                       "estimated_memory_bytes": 10_000_000}]
    assert "WARNING out of device memory at epoch 1 iteration 1" in (fold_dir / "training.log").read_text()

    failing = fast_settings(epochs=1, iters_per_epoch=2, val_iters=1, validate_at_end=False, seed=2)
    with pytest.raises(AutounetError, match="--gpu-memory"):
        run_training(ws, TASK, "3d_fullres", 1, failing, network_builder=injecting_builder(0),
                     loader_builder=toy_loader_builder)
    failed = load_manifest(fold_dir.parent / "fold_1")
    assert failed.status == "failed" and [(e.chunk_size_before, e.chunk_size_after) for e in failed.oom_events] == \
        [(2, 1)]


def test_run_json_without_oom_events_still_loads(tmp_path: Path) -> None:
    manifest = RunManifest.create(TASK, "3d_fullres", "0", fast_settings(), "cpu")
    save_manifest(manifest, tmp_path)
    data = json.loads((tmp_path / "run.json").read_text())
    del data["oom_events"]
    (tmp_path / "run.json").write_text(json.dumps(data))
    assert load_manifest(tmp_path).oom_events == []
