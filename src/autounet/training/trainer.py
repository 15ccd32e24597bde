"""The training loop: network from the plan, SGD with poly decay, deep supervision, checkpoints.

One `Trainer` trains one fold. Every epoch runs `iters_per_epoch` optimisation steps and
`val_iters` validation steps on random validation patches; the validation patches give a
*pseudo Dice* (TP/FP/FN summed over all patches per class), a cheap proxy for the real
validation done on whole cases at the end of the fold. After each epoch the state is written to
checkpoint_latest.pt (atomically), so a kill loses at most the epoch in progress and
`--resume` continues with the same weights, optimizer moments, schedule position, gradient
scaler, random states and history.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from autounet.errors import AutounetError, CheckpointError
from autounet.io.atomic import TMP_PREFIX
from autounet.io.json_schema import to_dict
from autounet.networks.precision import autocast, needs_grad_scaler, resolve_precision
from autounet.core.progress import Progress, format_duration
from autounet.core.system import cpu_threads
from autounet.planners.plans import ConfigurationPlan, Plans
from autounet.training import metrics_log
from autounet.core.checkpoint import (
    CHECKPOINT_FORMAT,
    capture_rng_state,
    load_checkpoint,
    load_matching_weights,
    restore_rng_state,
    save_checkpoint,
)
from autounet.core.run_layout import BEST, FINAL, LATEST
from autounet.training.distributed import (
    DistributedContext,
    all_reduce_mean,
    all_reduce_sum,
    per_rank_batch_size,
    rank_seed,
    unwrap_model,
    wrap_model,
)
from autounet.training.oom_recovery import OomRecovery, Outputs, chunked_gradients
from autounet.training.loss import DeepSupervisionLoss, deep_supervision_scales, deep_supervision_weights
from autounet.training.progress_plot import PLOT_NAME, plot_progress
from autounet.training.pseudo_dice import class_names, dice_from_counts, nan_mean
from autounet.training.targets import TargetMeaning
from autounet.training.tensorboard_log import TensorBoardLog
from autounet.training.settings import TrainingSettings

log = logging.getLogger(__name__)

NetworkBuilder = Callable[..., nn.Module]
# Called like training.data_loader.build_dataloaders (positional arguments, then augment,
# oversample_foreground and pin_memory as keywords, plus previous_stage_folder for a cascade);
# returns (train_batches, val_batches).
LoaderBuilder = Callable[..., tuple[Iterable[dict[str, Any]], Iterable[dict[str, Any]]]]


def resolve_device(name: str, ctx: DistributedContext | None = None) -> torch.device:
    """`auto` is CUDA when present, else CPU; an explicit device that is absent is an error."""
    local_rank = ctx.local_rank if ctx is not None else 0
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise AutounetError("--device cuda: no CUDA device is available; use --device cpu (slow) or check drivers")
        return torch.device("cuda", local_rank % max(1, torch.cuda.device_count()))
    if name == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise AutounetError("--device mps: Apple MPS is not available on this machine; use --device cpu")
        return torch.device("mps")
    if name == "cpu":
        return torch.device("cpu")
    raise AutounetError(f"--device: unknown device '{name}'; use cuda, cpu or mps")


def poly_lr(initial_lr: float, epoch: int, max_epochs: int, exponent: float = 0.9) -> float:
    """Polynomial decay, evaluated once per epoch: lr0 * (1 - epoch / max_epochs) ** exponent."""
    return initial_lr * (1.0 - epoch / max_epochs) ** exponent


def _default_network_builder() -> NetworkBuilder:
    from autounet.networks.registry import build_network

    return build_network


def _default_loader_builder() -> LoaderBuilder:
    from autounet.training.data_loader import build_dataloaders

    return build_dataloaders


def _default_workers() -> int:
    from autounet.training.data_loader import default_num_workers

    return int(default_num_workers())


@dataclass
class TrainingState:
    """What a checkpoint restores besides the tensors: position, EMA and history."""

    next_epoch: int = 0
    ema_dice: float | None = None
    best_ema_dice: float | None = None
    history: dict[str, list[Any]] = field(default_factory=metrics_log.empty_history)


class Trainer:
    """Trains one fold; rank 0 writes every file, other ranks only compute."""

    def __init__(
        self,
        plans: Plans,
        configuration_name: str,
        data_folder: Path,
        fold_dir: Path,
        train_ids: list[str],
        val_ids: list[str],
        settings: TrainingSettings,
        ctx: DistributedContext | None = None,
        in_channels: int | None = None,
        network_builder: NetworkBuilder | None = None,
        loader_builder: LoaderBuilder | None = None,
        previous_stage_dir: Path | None = None,
    ) -> None:
        """`previous_stage_dir` (cascade): the lower stage's predicted_next_stage folder, whose
        one-hot the loader appends to the image; `in_channels` must then include those K-1 channels."""
        settings.validate()
        self.plans = plans
        self.configuration_name = configuration_name
        self.cfg: ConfigurationPlan = plans.configuration(configuration_name)
        self.data_folder = Path(data_folder)
        self.fold_dir = Path(fold_dir)
        self.train_ids = list(train_ids)
        self.val_ids = list(val_ids)
        self.settings = settings
        self.ctx = ctx or DistributedContext()
        self.device = resolve_device(settings.device, self.ctx)
        if self.device.type == "cpu":
            threads, why = cpu_threads(settings.threads, self.ctx.world_size)
            torch.set_num_threads(threads)
            log.info("CPU threads for the network: %d (%s)", threads, why)
        self.num_classes = plans.num_outputs  # network outputs: classes, or one per region
        self.class_names = class_names(plans)
        self.previous_stage_dir = Path(previous_stage_dir) if previous_stage_dir is not None else None
        extra = plans.num_classes - 1 if self.previous_stage_dir is not None else 0
        self.in_channels = in_channels if in_channels is not None else plans.num_channels + extra
        self.network_name = settings.network or self.cfg.network.architecture
        self.mirror_axes = list(self.cfg.mirror_axes if self.cfg.mirror_axes is not None else range(self.cfg.dims))
        self.ds_scales = deep_supervision_scales(self.cfg.network.strides)
        self._network_builder = network_builder or _default_network_builder()
        self._loader_builder = loader_builder
        self.precision = resolve_precision(settings.precision, self.device)
        self.state = TrainingState()

        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = not settings.deterministic
            torch.backends.cudnn.deterministic = settings.deterministic

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(settings.seed)
            self.network = self._network_builder(
                self.network_name, copy.deepcopy(self.cfg.network), self.in_channels, self.num_classes,
                deep_supervision=True,
            ).to(self.device)
        self.model = wrap_model(self.network, self.ctx, self.device)
        self.optimizer = torch.optim.SGD(self.network.parameters(), lr=settings.lr, momentum=settings.momentum,
                                         nesterov=True, weight_decay=settings.weight_decay)
        self.grad_scaler = torch.amp.GradScaler(self.device.type) if needs_grad_scaler(self.precision) else None
        self.targets = TargetMeaning.from_plans(plans)
        base = self.targets.loss(self.cfg.batch_dice)
        self.base_loss = base
        self.loss = DeepSupervisionLoss(base, deep_supervision_weights(len(self.ds_scales),
                                                                        distributed=self.ctx.enabled))
        self.oom = OomRecovery(self.device, self.cfg.estimated_memory_bytes, f"{self.data_folder.parent / 'plans.json'}"
                               f": key configurations.{configuration_name}", plans.task, self.cfg.patch_size,
                               enabled=not self.ctx.enabled)  # a DDP rank cannot retry alone

    # ------------------------------------------------------------------ state
    def checkpoint_state(self) -> dict[str, Any]:
        """The checkpoint dict (docs/ARCHITECTURE.md, "Checkpoint format")."""
        return {
            "format": CHECKPOINT_FORMAT,
            "network": unwrap_model(self.model).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "grad_scaler": self.grad_scaler.state_dict() if self.grad_scaler is not None else None,
            "epoch": self.state.next_epoch,
            "best_ema_dice": self.state.best_ema_dice,
            "ema_dice": self.state.ema_dice,
            "history": self.state.history,
            "rng": capture_rng_state(),
            "network_name": self.network_name,
            "network_kwargs": {"network_plan": to_dict(self.cfg.network), "in_channels": self.in_channels,
                               "num_classes": self.num_classes},
            "configuration": self.configuration_name,
            "mirror_axes": self.mirror_axes,
            "num_epochs": self.settings.epochs,
            "iters_per_epoch": self.settings.iters_per_epoch,
            "settings": self.settings.as_dict(),
        }

    def load_state(self, state: dict[str, Any], path: Path) -> None:
        """Restore everything needed to continue exactly where `state` was taken."""
        try:
            self.network.load_state_dict(state["network"])
            self.optimizer.load_state_dict(state["optimizer"])
            if self.grad_scaler is not None and state.get("grad_scaler"):
                self.grad_scaler.load_state_dict(state["grad_scaler"])
            history = {k: list(state["history"][k]) for k in metrics_log.HISTORY_KEYS}
            self.state = TrainingState(next_epoch=int(state["epoch"]), ema_dice=state.get("ema_dice"),
                                       best_ema_dice=state.get("best_ema_dice"), history=history)
            restore_rng_state(state["rng"])
        except (KeyError, RuntimeError, ValueError, TypeError) as exc:
            raise CheckpointError(f"{path}: does not match this run's network or format ({exc}); "
                                  f"resume with the settings of the interrupted run") from None
        lengths = {k: len(v) for k, v in self.state.history.items()}
        if set(lengths.values()) != {self.state.next_epoch} and self.state.next_epoch:
            raise CheckpointError(f"{path}: history lengths {lengths} disagree with epoch {self.state.next_epoch}")

    def init_from(self, path: Path) -> tuple[int, list[str]]:
        """Start from pretrained weights: layers with equal name and shape; returns (tensors loaded, the
        layers left at their fresh initialisation), which are logged by name."""
        state = load_checkpoint(path)
        loaded, skipped = load_matching_weights(self.network, state["network"])
        if not loaded:
            raise CheckpointError(f"{path}: no layer matches this network (names or shapes differ); "
                                  f"was it trained with another architecture?")
        layers = sorted({name.rsplit(".", 1)[0] for name in skipped})
        log.info("initialised %d of %d tensors from %s", len(loaded), len(loaded) + len(skipped), path)
        if layers:
            log.info("re-initialised (other shape or not in the checkpoint, e.g. another channel or class "
                     "count): %s", ", ".join(layers))
        return len(loaded), layers

    def resume(self) -> bool:
        """Load checkpoint_latest (else final); False if the fold has none yet."""
        for name in (LATEST, FINAL):
            path = self.fold_dir / name
            if path.is_file():
                self.load_state(load_checkpoint(path, map_location=self.device), path)
                log.info("resuming from %s at epoch %d of %d", path, self.state.next_epoch + 1, self.settings.epochs)
                if self.ctx.is_main:
                    metrics_log.rewrite(self.fold_dir / metrics_log.METRICS_NAME, self.state.history,
                                        self.class_names)
                return True
        return False

    def _save(self, name: str) -> None:
        if self.ctx.is_main:
            save_checkpoint(self.fold_dir / name, self.checkpoint_state())

    # ------------------------------------------------------------------ loop
    def _build_loaders(self) -> tuple[Iterable[dict[str, Any]], Iterable[dict[str, Any]]]:
        plans = self.plans
        if self.ctx.enabled:
            plans = copy.deepcopy(plans)
            plans.configurations[self.configuration_name].batch_size = per_rank_batch_size(
                self.cfg.batch_size, self.ctx.world_size)
        workers = self.settings.workers if self.settings.workers is not None else _default_workers()
        builder = self._loader_builder or _default_loader_builder()
        cascade: dict[str, Any] = {}
        if self.previous_stage_dir is not None:
            cascade["previous_stage_folder"] = self.previous_stage_dir
        return builder(self.data_folder, self.train_ids, self.val_ids, plans, self.configuration_name,
                       self.ds_scales, workers, rank_seed(self.settings.seed, self.state.next_epoch, self.ctx.rank),
                       augment=self.settings.augment, oversample_foreground=self.settings.oversample,
                       pin_memory=self.device.type == "cuda", spatial_impl=self.settings.spatial_augmentation,
                       disabled_augmentations=tuple(self.settings.disabled_augmentations), **cascade)

    def _to_device(self, batch: dict[str, Any]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        non_blocking = self.device.type == "cuda"
        data = torch.as_tensor(batch["data"]).to(self.device, non_blocking=non_blocking)
        targets = [torch.as_tensor(t).to(self.device, non_blocking=non_blocking) for t in batch["target"]]
        return data, targets

    def _forward(self, data: torch.Tensor) -> Outputs:
        with autocast(self.precision, self.device):
            return self.model(data)

    def _loss_of(self, output: Outputs, targets: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, full-resolution logits) of the network's output: a deep-supervision list or one tensor."""
        with autocast(self.precision, self.device):
            if isinstance(output, (list, tuple)):
                return self.loss(list(output), targets), output[0]
            return self.base_loss(output, targets[0]), output

    def _forward_loss(self, data: torch.Tensor, targets: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return self._loss_of(self._forward(data), targets)

    def _gradients(self, data: torch.Tensor, targets: list[torch.Tensor], chunk_size: int) -> float:
        """Backward of the batch's loss (scaled for fp16), the network run on `chunk_size` samples at a time."""
        scale = self.grad_scaler.scale if self.grad_scaler is not None else (lambda loss: loss)
        if chunk_size < data.shape[0]:
            return chunked_gradients(self._forward, lambda out, t: self._loss_of(out, t)[0], scale, data, targets,
                                     chunk_size)
        loss, _ = self._forward_loss(data, targets)
        scale(loss).backward()
        return float(loss.detach().item())

    def train_step(self, batch: dict[str, Any], epoch: int | None = None, iteration: int | None = None) -> float:
        """One optimizer step on the batch (in chunks with accumulated gradients after an out-of-memory error)."""
        data, targets = self._to_device(batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.oom.run(data.shape[0], lambda chunk_size: self._gradients(data, targets, chunk_size),
                            lambda: self.optimizer.zero_grad(set_to_none=True), epoch, iteration)
        if self.grad_scaler is not None:
            self.grad_scaler.unscale_(self.optimizer)
        nn.utils.clip_grad_norm_(self.network.parameters(), self.settings.grad_clip)
        if self.grad_scaler is not None:
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            self.optimizer.step()
        return loss

    @torch.no_grad()
    def validation_step(self, batch: dict[str, Any]) -> tuple[float, torch.Tensor]:
        data, targets = self._to_device(batch)
        loss, full = self._forward_loss(data, targets)
        return float(loss.item()), self.targets.confusion_counts(full.float(), targets[0])

    def _next_batch(self, iterator: Iterator[dict[str, Any]], source: Iterable[dict[str, Any]]
                    ) -> tuple[dict[str, Any], Iterator[dict[str, Any]]]:
        try:
            return next(iterator), iterator
        except StopIteration:
            iterator = iter(source)
            return next(iterator), iterator

    def run_epoch(self, epoch: int, train_batches: Iterable[dict[str, Any]], val_batches: Iterable[dict[str, Any]],
                  iterators: dict[str, Iterator[dict[str, Any]]]) -> dict[str, Any]:
        """One epoch of training and patch validation; returns the epoch's metrics."""
        start = time.perf_counter()
        lr = poly_lr(self.settings.lr, epoch, self.settings.epochs, self.settings.lr_exponent)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.model.train()
        losses = []
        with Progress(self.settings.iters_per_epoch, f"epoch {epoch + 1}/{self.settings.epochs} training",
                      enabled=self.ctx.is_main, leave=False) as bar:
            for iteration in range(self.settings.iters_per_epoch):
                batch, iterators["train"] = self._next_batch(iterators["train"], train_batches)
                losses.append(self.train_step(batch, epoch, iteration))
                bar.update(1, f"loss {losses[-1]:.4f}")
        train_loss = all_reduce_mean(float(np.mean(losses)), self.ctx, self.device)

        self.model.eval()
        val_losses = []
        counts = torch.zeros((3, len(self.class_names)), dtype=torch.float64, device=self.device)
        with Progress(self.settings.val_iters, f"epoch {epoch + 1}/{self.settings.epochs} validation patches",
                      unit="patch", enabled=self.ctx.is_main, leave=False) as bar:
            for _ in range(self.settings.val_iters):
                batch, iterators["val"] = self._next_batch(iterators["val"], val_batches)
                loss, c = self.validation_step(batch)
                val_losses.append(loss)
                counts += c
                bar.update(1)
        val_loss = all_reduce_mean(float(np.mean(val_losses)) if val_losses else float("nan"), self.ctx, self.device)
        counts = all_reduce_sum(counts, self.ctx)
        dice = dice_from_counts(counts)
        mean_dice = nan_mean(dice)
        if math.isfinite(mean_dice):
            m = self.settings.ema_momentum
            ema = mean_dice if self.state.ema_dice is None else m * self.state.ema_dice + (1 - m) * mean_dice
            self.state.ema_dice = ema
        return {"train_loss": train_loss, "val_loss": val_loss, "pseudo_dice": dice,
                "ema_pseudo_dice": self.state.ema_dice if self.state.ema_dice is not None else float("nan"),
                "lr": lr, "epoch_time": time.perf_counter() - start}

    def _log_epoch(self, epoch: int, row: dict[str, Any], session_times: list[float]) -> None:
        remaining = self.settings.epochs - epoch - 1
        eta = float(np.mean(session_times)) * remaining
        dice = ", ".join(f"{n} {v:.4f}" for n, v in zip(self.class_names, row["pseudo_dice"]))
        log.info("epoch %d/%d | train loss %.4f | val loss %.4f | pseudo Dice (patch-based proxy) [%s] | EMA %.4f | "
                 "lr %.6f | %.1f s | ETA %s", epoch + 1, self.settings.epochs, row["train_loss"], row["val_loss"],
                 dice, row["ema_pseudo_dice"], row["lr"], row["epoch_time"], format_duration(eta))

    def _record(self, epoch: int, row: dict[str, Any]) -> bool:
        """Append the epoch to history; True if its EMA is a new best."""
        for key in metrics_log.HISTORY_KEYS:
            self.state.history[key].append(row[key])
        self.state.next_epoch = epoch + 1
        ema = self.state.ema_dice
        if ema is not None and (self.state.best_ema_dice is None or ema > self.state.best_ema_dice):
            self.state.best_ema_dice = ema
            return True
        return False

    def log_header(self) -> None:
        n_params = sum(p.numel() for p in self.network.parameters())
        log.info("training %s, fold folder %s: %d training and %d validation cases, %d epochs x %d iterations "
                 "+ %d validation patches, device %s (%s)%s", self.configuration_name, self.fold_dir,
                 len(self.train_ids), len(self.val_ids), self.settings.epochs, self.settings.iters_per_epoch,
                 self.settings.val_iters, self.device, self.precision,
                 f", {self.ctx.world_size} processes" if self.ctx.enabled else "")
        log.info("network %s: %s parameters; planner's memory estimate %.2f GB (patch %s, batch %d)",
                 self.network_name, f"{n_params:,}", self.cfg.estimated_memory_bytes / 1e9, self.cfg.patch_size,
                 self.cfg.batch_size)

    def fit(self) -> TrainingState:
        """Run the remaining epochs (all of them unless resumed) and write the final checkpoint."""
        if self.ctx.is_main:
            self.fold_dir.mkdir(parents=True, exist_ok=True)
            for stale in self.fold_dir.glob(TMP_PREFIX + "*"):
                stale.unlink(missing_ok=True)
        self.log_header()
        if self.state.next_epoch >= self.settings.epochs:
            log.info("all %d epochs are already trained", self.settings.epochs)
            if not (self.fold_dir / FINAL).is_file():
                self._save(FINAL)
            return self.state
        if self.state.next_epoch == 0 and self.ctx.is_main:  # a fresh start drops rows of an earlier attempt
            metrics_log.rewrite(self.fold_dir / metrics_log.METRICS_NAME, self.state.history, self.class_names)
        train_batches, val_batches = self._build_loaders()
        board = TensorBoardLog(self.fold_dir) if self.settings.tensorboard and self.ctx.is_main else None
        try:
            iterators = {"train": iter(train_batches), "val": iter(val_batches)}
            session_times: list[float] = []
            for epoch in range(self.state.next_epoch, self.settings.epochs):
                row = self.run_epoch(epoch, train_batches, val_batches, iterators)
                session_times.append(row["epoch_time"])
                is_best = self._record(epoch, row)
                if self.ctx.is_main:
                    self._log_epoch(epoch, row, session_times)
                    metrics_row = metrics_log.history_row(self.state.history, epoch, self.class_names)
                    metrics_log.append_row(self.fold_dir / metrics_log.METRICS_NAME, metrics_row)
                    if board is not None:
                        board.write(metrics_row)
                    plot_progress(self.fold_dir / PLOT_NAME, self.state.history)
                    self._save(LATEST)
                    if is_best:
                        log.info("new best EMA pseudo Dice %.4f", self.state.best_ema_dice)
                        self._save(BEST)
        finally:
            if board is not None:
                board.close()
            for loader in (train_batches, val_batches):
                close = getattr(loader, "close", None)
                if callable(close):
                    close()
        self._save(FINAL)
        return self.state
