"""Trainer end to end on a tiny synthetic preprocessed task (CPU, seconds).

The task: 6 cases of 1x24x24x24 voxels, a bright cube labelled 1 on a noisy dark background,
already in the preprocessed layout (CaseStore) with plans for a 3-stage U-Net (features
4-16, patch 16^3, batch 2) and gt_segmentations. The helpers here are imported by
test_resume.py and test_ddp.py (and by the subprocess scripts they start). The toy loader
below (random crops, no augmentation) keeps these tests about the training loop and fast;
the real loader is covered by the data-loader tests.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from autounet.errors import AutounetError, CheckpointError
from autounet.io.atomic import write_json
from autounet.io.geometry import Geometry
from autounet.io.images import write_label
from autounet.io.json_schema import to_dict
from autounet.core.workspace import Workspace
from autounet.planners.plans import (
    ConfigurationPlan,
    IntensityProperties,
    NetworkPlan,
    Plans,
    load_plans,
    save_plans,
)
from autounet.preprocessing.case_properties import CaseProperties
from autounet.preprocessing.case_store import CaseStore
from autounet.core.checkpoint import load_checkpoint
from autounet.core.run_layout import BEST, FINAL, LATEST
from autounet.training.metrics_log import read_rows
from autounet.training.run_training import resolve_task_for_training, run_training
from autounet.training.run_identity import run_name
from autounet.training.settings import TrainingSettings
from autounet.training.pseudo_dice import confusion_counts, dice_from_counts
from autounet.training.trainer import Trainer, load_matching_weights, poly_lr

TASK = "Task90_Toy"
SIZE = 24


def toy_plans(two_d: bool = False) -> Plans:
    dims = 2 if two_d else 3
    name = "2d" if two_d else "3d_fullres"
    network = NetworkPlan(
        architecture="plain_unet",
        features_per_stage=[4, 8, 16],
        kernel_sizes=[[3] * dims] * 3,
        strides=[[1] * dims, [2] * dims, [2] * dims],
        n_conv_encoder=[1, 1, 1],
        n_conv_decoder=[1, 1],
    )
    cfg = ConfigurationPlan(
        name=name, data_identifier=name, spacing=[1.0] * dims, patch_size=[16] * dims, batch_size=2,
        median_shape=[SIZE] * dims, network=network, normalization=["zscore"], use_mask_for_norm=[False],
        batch_dice=False, estimated_memory_bytes=10_000_000,
    )
    stats = IntensityProperties(mean=0.0, std=1.0, median=0.0, min=-1.0, max=1.0, percentile_00_5=-1.0,
                                percentile_99_5=1.0)
    return Plans(task=TASK, channel_names={"0": "MR"}, labels={"background": 0, "cube": 1},
                 transpose_forward=[0, 1, 2], transpose_backward=[0, 1, 2], original_median_spacing=[1.0] * 3,
                 original_median_shape=[SIZE] * 3, foreground_intensity_properties={"0": stats},
                 gpu_memory_target_gb=8.0, configurations={name: cfg}, is_2d_data=two_d)


def make_toy_workspace(root: Path, two_d: bool = False, num_cases: int = 6) -> Workspace:
    """Write the synthetic preprocessed task into `root` and return its workspace."""
    ws = Workspace(Path(root))
    plans = toy_plans(two_d)
    pre = ws.preprocessed(TASK)
    pre.mkdir(parents=True)
    save_plans(plans, pre / "plans.json")
    write_json(pre / "dataset.json", {"name": TASK, "channel_names": {"0": "MR"},
                                      "labels": {"background": 0, "cube": 1}, "file_ending": ".nii.gz",
                                      "layout": "nnunet", "numTraining": num_cases})
    shape = (4, SIZE, SIZE) if two_d else (SIZE, SIZE, SIZE)
    store = CaseStore(pre / ("2d" if two_d else "3d_fullres"))
    rng = np.random.default_rng(0)
    for i in range(num_cases):
        seg = np.zeros(shape, dtype=np.int16)
        lo = [0 if two_d and a == 0 else int(rng.integers(3, 9)) for a in range(3)]
        hi = [shape[0] if two_d and a == 0 else lo[a] + int(rng.integers(8, 12)) for a in range(3)]
        seg[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = 1
        data = (seg.astype(np.float32) * 2.0 - 1.0 + rng.normal(0, 0.3, shape).astype(np.float32))[None]
        geometry = Geometry(spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), shape=shape)
        props = CaseProperties(case_id=f"case_{i}", geometry=geometry, shape_before_crop=list(shape),
                               bbox=[[0, s] for s in shape], shape_after_crop=list(shape), spacing=[1.0] * 3,
                               target_spacing=[1.0] * 3, shape_after_resample=list(shape))
        store.write_case(f"case_{i}", data, seg, props, {1: np.argwhere(seg == 1).astype(np.int32)})
        write_label(seg.astype(np.uint8), geometry, pre / "gt_segmentations" / f"case_{i}.nii.gz")
    return ws


class ToyLoader:
    """Random patches with per-scale targets; half of each batch centred on foreground."""

    def __init__(self, folder: Path, ids: list[str], plans: Plans, configuration: str,
                 scales: list[list[float]], seed: int) -> None:
        self.cfg = plans.configuration(configuration)
        self.store = CaseStore(folder)
        self.cases = [self.store.load(c, mmap=False)[:2] for c in ids]
        self.scales = scales
        self.rng = np.random.default_rng(seed)
        self.closed = False

    def _crop(self, data: np.ndarray, seg: np.ndarray, force_fg: bool) -> tuple[np.ndarray, np.ndarray]:
        patch = self.cfg.patch_size
        if len(patch) == 2:
            z = int(self.rng.integers(0, seg.shape[0]))
            data, seg = data[:, z], seg[z]
        if force_fg:
            fg = np.argwhere(seg == 1)
            centre = fg[self.rng.integers(0, len(fg))]
            start = [int(np.clip(c - p // 2, 0, s - p)) for c, p, s in zip(centre, patch, seg.shape)]
        else:
            start = [int(self.rng.integers(0, s - p + 1)) for p, s in zip(patch, seg.shape)]
        box = tuple(slice(b, b + p) for b, p in zip(start, patch))
        return data[(slice(None), *box)], seg[box]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while not self.closed:
            pairs = [self._crop(*self.cases[int(self.rng.integers(0, len(self.cases)))], force_fg=b % 2 == 1)
                     for b in range(self.cfg.batch_size)]
            data = torch.from_numpy(np.stack([p[0] for p in pairs]).astype(np.float32))
            seg = torch.from_numpy(np.stack([p[1] for p in pairs])[:, None].astype(np.int64))
            targets = []
            for scale in self.scales:
                size = [round(p * s) for p, s in zip(self.cfg.patch_size, scale)]
                targets.append(torch.nn.functional.interpolate(seg.float(), size=size, mode="nearest-exact").long())
            yield {"data": data, "target": targets, "keys": []}

    def close(self) -> None:
        self.closed = True


def toy_loader_builder(folder: Path, train_ids: list[str], val_ids: list[str], plans: Plans, configuration: str,
                       scales: list[list[float]], num_workers: int, seed: int, augment: bool = True,
                       **ignored: Any) -> tuple[ToyLoader, ToyLoader]:
    return (ToyLoader(folder, train_ids, plans, configuration, scales, seed),
            ToyLoader(folder, val_ids, plans, configuration, scales, seed + 1))


def fast_settings(**kwargs: Any) -> TrainingSettings:
    defaults: dict[str, Any] = dict(epochs=4, iters_per_epoch=6, val_iters=2, device="cpu", workers=0, seed=1)
    defaults.update(kwargs)
    return TrainingSettings(**defaults)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --------------------------------------------------------------------------- pure functions
def test_poly_lr_matches_formula() -> None:
    assert poly_lr(0.01, 0, 1000) == pytest.approx(0.01)
    assert poly_lr(0.01, 500, 1000) == pytest.approx(0.01 * 0.5**0.9)
    assert poly_lr(0.01, 999, 1000) == pytest.approx(0.01 * 0.001**0.9)


def test_confusion_counts_and_pseudo_dice_by_hand() -> None:
    # 1 sample, 3 classes, 4 voxels: prediction [0, 1, 1, 2], target [0, 1, 2, -1] (last ignored)
    pred = torch.tensor([0, 1, 1, 2])
    logits = torch.nn.functional.one_hot(pred, 3).T.float()[None]  # (1, 3, 4)
    target = torch.tensor([[[0, 1, 2, -1]]])
    counts = confusion_counts(logits, target, 3)
    # class 1: TP 1 (voxel 1), FP 1 (voxel 2), FN 0; class 2: TP 0, FP 0 (voxel 3 ignored), FN 1
    assert counts.tolist() == [[1, 0], [1, 0], [0, 1]]
    dice = dice_from_counts(counts)
    assert dice[0] == pytest.approx(2 / 3)
    assert dice[1] == 0.0
    assert math.isnan(dice_from_counts(torch.zeros(3, 1))[0])


def test_load_matching_weights_reports_skipped() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Linear(3, 4))
    source = {"0.weight": torch.ones(3, 2), "0.bias": torch.ones(3), "1.weight": torch.ones(5, 3)}
    loaded, skipped = load_matching_weights(model, source)
    assert loaded == ["0.weight", "0.bias"]
    assert skipped == ["1.weight", "1.bias"]
    assert torch.equal(model[0].weight, torch.ones(3, 2))


# --------------------------------------------------------------------------- task resolution
def test_resolve_task_infers_the_only_task_and_asks_for_t(tmp_path: Path) -> None:
    ws = make_toy_workspace(tmp_path, num_cases=2)
    assert resolve_task_for_training(ws, None) == TASK
    ws.preprocessed("Task91_Other").mkdir(parents=True)
    shutil.copy(ws.preprocessed(TASK) / "plans.json", ws.preprocessed("Task91_Other") / "plans.json")
    assert resolve_task_for_training(ws, "Task90") == TASK
    with pytest.raises(AutounetError, match="-t"):
        resolve_task_for_training(ws, None)


# --------------------------------------------------------------------------- training
def test_3d_training_loss_falls_and_writes_every_artifact(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ws = make_toy_workspace(tmp_path)
    settings = fast_settings(epochs=5, iters_per_epoch=8)
    with caplog.at_level(logging.INFO, logger="autounet"):
        fold_dir = run_training(ws, None, "3d_fullres", 0, settings, loader_builder=toy_loader_builder)
    assert fold_dir == ws.results(TASK) / "3d_fullres__5ep_8it" / "fold_0"
    rows = read_rows(fold_dir / "metrics.jsonl")
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4, 5]
    assert set(rows[0]) >= {"epoch", "train_loss", "val_loss", "pseudo_dice", "ema_pseudo_dice", "lr", "epoch_time"}
    assert set(rows[0]["pseudo_dice"]) == {"cube"}
    losses = [r["train_loss"] for r in rows]
    assert losses[-1] < losses[0] * 0.8, losses
    assert [r["lr"] for r in rows] == pytest.approx([poly_lr(0.01, e, 5) for e in range(5)])

    for name in (LATEST, BEST, FINAL, "progress.png", "training.log", "run.json"):
        assert (fold_dir / name).is_file(), name
    assert (fold_dir.parent / "plans.json").is_file() and (fold_dir.parent / "dataset.json").is_file()
    assert not (fold_dir / ".lock").exists()
    assert not list(fold_dir.glob(".tmp-*"))

    final = load_checkpoint(fold_dir / FINAL)
    assert final["epoch"] == 5 and final["configuration"] == "3d_fullres"
    assert final["network_name"] == "plain_unet" and final["mirror_axes"] == [0, 1, 2]
    manifest = json.loads((fold_dir / "run.json").read_text())
    assert manifest["status"] == "finished" and manifest["settings"]["epochs"] == 5

    log_text = (fold_dir / "training.log").read_text()
    assert "parameters; planner's memory estimate 0.01 GB" in log_text
    assert "pseudo Dice (patch-based proxy) [cube" in log_text and "ETA" in log_text
    assert "epoch 5/5" in log_text

    summary = json.loads((fold_dir / "validation" / "summary.json").read_text())
    val_cases = sorted(p.name for p in (fold_dir / "validation").glob("*.nii.gz"))
    splits = json.loads((ws.preprocessed(TASK) / "splits.json").read_text())
    assert val_cases == sorted(f"{c}.nii.gz" for c in splits[0]["val"])
    # A bright cube on a dark background: 40 iterations reach a clearly useful segmentation.
    assert summary["foreground_mean"]["Dice"] > 0.5
    assert "mean foreground Dice on" in caplog.text


def test_training_with_the_real_data_loader(tmp_path: Path) -> None:
    """The same loop fed by training.data_loader (augmentation, oversampling, workers=0)."""
    ws = make_toy_workspace(tmp_path)
    settings = fast_settings(epochs=2, iters_per_epoch=2, val_iters=1, validate_at_end=False)
    fold_dir = run_training(ws, TASK, "3d_fullres", 0, settings)
    rows = read_rows(fold_dir / "metrics.jsonl")
    assert [r["epoch"] for r in rows] == [1, 2]
    assert all(math.isfinite(r["train_loss"]) for r in rows)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_precision_is_applied_and_recorded(tmp_path: Path, precision: str) -> None:
    """An explicit --precision runs the network in it (bf16: autocast, no gradient scaler) and
    run.json records the precision the run used; it may change on --resume like the device."""
    ws = make_toy_workspace(tmp_path)
    settings = fast_settings(epochs=1, iters_per_epoch=2, val_iters=1, validate_at_end=False, precision=precision)
    fold_dir = run_training(ws, TASK, "3d_fullres", 0, settings, loader_builder=toy_loader_builder)
    assert json.loads((fold_dir / "run.json").read_text())["precision"] == precision
    assert math.isfinite(read_rows(fold_dir / "metrics.jsonl")[0]["train_loss"])
    plans = load_plans(ws.preprocessed(TASK) / "plans.json")
    trainer = Trainer(plans, "3d_fullres", ws.preprocessed(TASK) / "3d_fullres", fold_dir, [], [], settings,
                      loader_builder=toy_loader_builder)
    assert trainer.precision == precision and trainer.grad_scaler is None
    batch = next(iter(toy_loader_builder(ws.preprocessed(TASK) / "3d_fullres", ["case_0"], ["case_0"], plans,
                                         "3d_fullres", trainer.ds_scales, 0, 0)[0]))
    data, targets = trainer._to_device(batch)
    _, logits = trainer._forward_loss(data, targets)
    assert logits.dtype == (torch.bfloat16 if precision == "bf16" else torch.float32)
    assert "precision" not in TrainingSettings.identity_fields()


def test_fp16_path_with_gradient_scaler_trains_and_resumes_its_scale(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The CUDA default (fp16 autocast + gradient scaler) run on the CPU, where torch supports
    both too: scaled backward, unscale before clipping, scaler state saved in the checkpoint."""
    from autounet.training import trainer as trainer_module

    monkeypatch.setattr(trainer_module, "resolve_precision", lambda requested, device: "fp16")
    ws = make_toy_workspace(tmp_path)
    settings = fast_settings(epochs=2, iters_per_epoch=3, val_iters=1, validate_at_end=False)
    fold_dir = run_training(ws, TASK, "3d_fullres", 0, settings, loader_builder=toy_loader_builder)
    rows = read_rows(fold_dir / "metrics.jsonl")
    assert all(math.isfinite(r["train_loss"]) for r in rows)
    saved = load_checkpoint(fold_dir / FINAL)
    assert saved["grad_scaler"] is not None and saved["grad_scaler"]["scale"] > 0
    plans = load_plans(ws.preprocessed(TASK) / "plans.json")
    trainer = Trainer(plans, "3d_fullres", ws.preprocessed(TASK) / "3d_fullres", fold_dir, [], [], settings,
                      loader_builder=toy_loader_builder)
    assert trainer.grad_scaler is not None
    trainer.load_state(saved, fold_dir / FINAL)
    assert trainer.grad_scaler.get_scale() == pytest.approx(saved["grad_scaler"]["scale"])


def test_2d_training_runs_and_saves_probabilities(tmp_path: Path) -> None:
    ws = make_toy_workspace(tmp_path, two_d=True)
    settings = fast_settings(epochs=2, iters_per_epoch=4, save_probabilities=True)
    fold_dir = run_training(ws, TASK, "2d", 1, settings, loader_builder=toy_loader_builder)
    npz_files = list((fold_dir / "validation").glob("*.npz"))
    assert npz_files
    with np.load(npz_files[0], allow_pickle=False) as npz:
        assert npz["probabilities"].dtype == np.float16
        assert npz["probabilities"].shape == (2, 4, SIZE, SIZE)
        assert npz["label_values"].tolist() == [0, 1]
    assert load_checkpoint(fold_dir / FINAL)["mirror_axes"] == [0, 1]


def test_existing_checkpoints_need_resume_and_init_from_loads_weights(tmp_path: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    ws = make_toy_workspace(tmp_path)
    settings = fast_settings(epochs=1, iters_per_epoch=2, validate_at_end=False)
    fold_dir = run_training(ws, TASK, "3d_fullres", 0, settings, loader_builder=toy_loader_builder)
    # rerunning a finished fold says so and where its results are, and touches nothing
    stamp = (fold_dir / FINAL).stat().st_mtime_ns
    with caplog.at_level(logging.INFO, logger="autounet"):
        assert run_training(ws, TASK, "3d_fullres", 0, settings, loader_builder=toy_loader_builder) == fold_dir
    assert f"fold 0 is already trained: results in {fold_dir}" in caplog.text
    assert (fold_dir / FINAL).stat().st_mtime_ns == stamp
    caplog.clear()

    other = fast_settings(epochs=1, iters_per_epoch=3, validate_at_end=False, init_from=str(fold_dir / FINAL))
    with caplog.at_level(logging.INFO, logger="autounet"):
        run_training(ws, TASK, "3d_fullres", 0, other, loader_builder=toy_loader_builder)
    assert "initialised" in caplog.text and f"from {fold_dir / FINAL}" in caplog.text
    # an interrupted fold (checkpoints but no final one) needs --resume
    (fold_dir / FINAL).unlink()
    with pytest.raises(AutounetError, match="--resume"):
        run_training(ws, TASK, "3d_fullres", 0, settings, loader_builder=toy_loader_builder)


def test_init_from_a_corrupt_file_is_refused(tmp_path: Path) -> None:
    ws = make_toy_workspace(tmp_path, num_cases=3)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00garbage")
    settings = fast_settings(epochs=1, iters_per_epoch=1, validate_at_end=False, init_from=str(bad))
    with pytest.raises(CheckpointError, match="bad.pt"):
        run_training(ws, TASK, "3d_fullres", "all", settings, loader_builder=toy_loader_builder)
    run = ws.results(TASK) / run_name("3d_fullres", settings)
    assert run.name.startswith("3d_fullres__ft-bad-") and run.name.endswith("__1ep_1it")
    manifest = json.loads((run / "fold_all" / "run.json").read_text())
    assert manifest["status"] == "failed"


def _add_cascade_configurations(ws: Workspace) -> None:
    """3d_lowres (on the 3d_fullres arrays, for brevity) feeding a 3d_cascade_fullres stage."""
    plans_path = ws.preprocessed(TASK) / "plans.json"
    plans = json.loads(plans_path.read_text())
    low = dict(plans["configurations"]["3d_fullres"], name="3d_lowres", next_stage="3d_cascade_fullres")
    cascade = dict(plans["configurations"]["3d_fullres"], name="3d_cascade_fullres", previous_stage="3d_lowres")
    plans["configurations"].update({"3d_lowres": low, "3d_cascade_fullres": cascade})
    plans_path.write_text(json.dumps(plans))


def test_lowres_fold_writes_predictions_for_the_cascade(tmp_path: Path) -> None:
    ws = make_toy_workspace(tmp_path, num_cases=3)
    _add_cascade_configurations(ws)
    settings = fast_settings(epochs=1, iters_per_epoch=1, val_iters=1)
    run_training(ws, TASK, "3d_lowres", "all", settings, loader_builder=toy_loader_builder)
    folder = ws.results(TASK) / "3d_lowres__1ep_1it" / "predicted_next_stage"
    assert sorted(p.name for p in folder.iterdir()) == ["case_0.npz", "case_1.npz", "case_2.npz"]
    with np.load(folder / "case_0.npz", allow_pickle=False) as npz:
        assert npz["seg"].shape == (SIZE, SIZE, SIZE) and npz["seg"].dtype == np.int16
        assert set(np.unique(npz["seg"])) <= {0, 1}


def test_cascade_without_lowres_predictions_names_the_folder(tmp_path: Path) -> None:
    ws = make_toy_workspace(tmp_path, num_cases=3)
    _add_cascade_configurations(ws)
    settings = fast_settings(epochs=1, iters_per_epoch=1)
    expected = ws.results(TASK) / "3d_lowres__1ep_1it" / "predicted_next_stage"
    with pytest.raises(AutounetError, match=str(expected).replace("\\", "\\\\")):
        run_training(ws, TASK, "3d_cascade_fullres", "all", settings, loader_builder=toy_loader_builder)


def test_validation_patches_default_to_a_fifth_of_the_iterations() -> None:
    from autounet.training.settings import default_val_iters

    assert [default_val_iters(n) for n in (1, 2, 5, 6, 20, 250, 1000)] == [1, 1, 1, 2, 4, 50, 50]


def test_settings_are_validated() -> None:
    with pytest.raises(AutounetError, match="--epochs"):
        TrainingSettings(epochs=0).validate()
    with pytest.raises(AutounetError, match="--device"):
        TrainingSettings(device="tpu").validate()
    assert "device" not in TrainingSettings.identity_fields() and "epochs" in TrainingSettings.identity_fields()
    assert to_dict(TrainingSettings())["lr"] == 0.01


def test_tensorboard_mirrors_the_metrics_rows(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ws = make_toy_workspace(tmp_path)
    settings = fast_settings(epochs=2, iters_per_epoch=2, validate_at_end=False, tensorboard=True)
    fold_dir = run_training(ws, TASK, "3d_fullres", 0, settings, loader_builder=toy_loader_builder)
    events = EventAccumulator(str(fold_dir / "tensorboard"))
    events.Reload()
    rows = read_rows(fold_dir / "metrics.jsonl")
    losses = [(e.step, e.value) for e in events.Scalars("train_loss")]
    assert losses == [(r["epoch"], pytest.approx(r["train_loss"])) for r in rows]
    assert any(tag.startswith("pseudo_dice/") for tag in events.Tags()["scalars"])
