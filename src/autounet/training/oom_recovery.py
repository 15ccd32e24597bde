"""Training through a CUDA out-of-memory error: the same batch in smaller chunks, gradients accumulated.

The planner's memory model is an estimate; when a step does not fit, the run should not be
lost. The failed step is redone on the *same* batch split into chunks of half the size (then a
quarter, ... down to one sample); each chunk's loss is scaled by its share of the samples
before backward, so the gradients add up to those of the whole batch and the optimizer still
steps once per batch: effective batch size and schedule are unchanged. A chunking that worked
is kept for the rest of the run.

Exact for losses that are means over samples, which is ours with `batch_dice` False: the soft
Dice is averaged per sample and the cross-entropy per voxel, and every sample of a batch has
the same number of voxels (instance normalisation keeps samples independent in the network).
Approximations, documented rather than hidden:
- `batch_dice` True pools the Dice sums over the batch; chunked, each chunk pools its own samples
  and the chunk Dice losses are averaged. tests/training/test_oom_recovery.py measures the gap.
- voxels ignored in the targets (padding, the ignore label) weight the cross-entropy by the valid
  voxels of each chunk instead of the whole batch.
Under DistributedDataParallel a rank cannot change its number of backward passes alone (the
others would wait for it), so there the error is not caught.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from autounet.core.out_of_memory import is_out_of_memory, peak_memory_bytes, release_cached_memory
from autounet.errors import AutounetError, PlansError

log = logging.getLogger(__name__)

#: Runs forward and backward on the samples `part` of the batch with the loss multiplied by `weight`
#: (their share of the batch); returns the unscaled loss times `weight`.
ChunkStep = Callable[[slice, float], float]


@dataclass
class OomEvent:
    """One out-of-memory retry, as recorded in run.json (`oom_events`)."""

    epoch: int | None
    iteration: int | None
    batch_size: int
    #: samples per forward/backward pass before and after the error
    chunk_size_before: int
    chunk_size_after: int
    #: torch.cuda.max_memory_allocated when the error was caught (None off CUDA)
    peak_memory_bytes: int | None
    #: the plans' estimate for this configuration (ConfigurationPlan.estimated_memory_bytes)
    estimated_memory_bytes: int

    def validate(self, where: str) -> None:
        if not 1 <= self.chunk_size_after < self.chunk_size_before <= self.batch_size:
            raise PlansError(f"{where}: need 1 <= chunk_size_after < chunk_size_before <= batch_size, got "
                             f"{self.chunk_size_after}, {self.chunk_size_before}, {self.batch_size}")


def chunk_slices(batch_size: int, chunk_size: int) -> list[slice]:
    """Consecutive slices of at most `chunk_size` samples covering the batch."""
    return [slice(start, min(start + chunk_size, batch_size)) for start in range(0, batch_size, chunk_size)]


def _gb(value: int | None) -> str:
    return "unknown (not measured off CUDA)" if value is None else f"{value / 1e9:.2f} GB"


class OomRecovery:
    """Runs a training step's forward/backward passes and halves the chunk size on out-of-memory."""

    def __init__(self, device: torch.device, estimated_memory_bytes: int, where: str, task: str,
                 patch_size: Sequence[int], enabled: bool = True) -> None:
        """`where` names the plans key of the configuration (for the error), `task` the task to re-plan."""
        self.device = device
        self.estimated_memory_bytes = int(estimated_memory_bytes)
        self.where = where
        self.task = task
        self.patch_size = list(patch_size)
        self.enabled = enabled
        #: samples per pass once an error forced smaller chunks (None: the whole batch)
        self.chunk_size: int | None = None
        self.events: list[OomEvent] = []

    def run(self, batch_size: int, chunk_step: ChunkStep, zero_grad: Callable[[], None],
            epoch: int | None = None, iteration: int | None = None) -> float:
        """Accumulate the gradients of the whole batch; returns its loss (the weighted mean over chunks)."""
        if not self.enabled:
            return chunk_step(slice(0, batch_size), 1.0)
        size = batch_size if self.chunk_size is None else min(self.chunk_size, batch_size)
        while True:
            try:
                return sum(chunk_step(part, (part.stop - part.start) / batch_size)
                           for part in chunk_slices(batch_size, size))
            except RuntimeError as exc:
                if not is_out_of_memory(exc):
                    raise
            # Outside the except block: the traceback, and the activations its frames hold, are gone.
            zero_grad()
            release_cached_memory(self.device)
            size = self._shrink(batch_size, size, epoch, iteration)

    def _shrink(self, batch_size: int, size: int, epoch: int | None, iteration: int | None) -> int:
        peak = peak_memory_bytes(self.device)
        if size == 1:
            raise AutounetError(
                f"{self.where}: out of device memory even with 1 sample per forward/backward pass (batch size "
                f"{batch_size}, patch size {self.patch_size}; peak {_gb(peak)}, planner's estimate "
                f"{_gb(self.estimated_memory_bytes)}); plan again for less memory: `autounet plan_and_preprocess "
                f"{self.task} --gpu-memory <GB>` with fewer GB than this GPU has, then train again")
        new = (size + 1) // 2
        self.events.append(OomEvent(epoch, iteration, batch_size, size, new, peak, self.estimated_memory_bytes))
        self.chunk_size = new
        log.warning("out of device memory at epoch %s iteration %s with %d of the batch's %d samples per "
                    "forward/backward pass; redoing the step and continuing with %d per pass, gradients "
                    "accumulated (same effective batch and schedule). Peak memory %s vs the planner's estimate %s "
                    "(%s, patch size %s)", "?" if epoch is None else epoch + 1,
                    "?" if iteration is None else iteration + 1, size, batch_size, new, _gb(peak),
                    _gb(self.estimated_memory_bytes), self.where, self.patch_size)
        return new
