"""Training through a CUDA out-of-memory error: the same batch, the network run on fewer samples at a time.

The planner's memory model is an estimate; when a step does not fit, the run should not be
lost. The failed step is redone on the *same* batch with the network run on chunks of half the
samples (then a quarter, ... down to one); the optimizer still steps once per batch, so the
effective batch size and the schedule are unchanged. A chunking that worked is kept for the
rest of the run.

The gradients are those of the whole batch's loss, not a sum of chunk losses (which would not be
the batch Dice's gradient, a Dice pooled over the batch): every chunk first runs without autograd
(little memory) and its outputs are kept; the loss of the whole batch is taken on those outputs
and differentiated to them only; then every chunk runs again with autograd and back-propagates
its slice of those output gradients. Exact because the network treats samples independently and
both passes alike (instance normalisation, no dropout); it costs one extra forward without
autograd per chunk, and only after an out-of-memory error.
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

#: A network's output: one tensor, or a deep-supervision list (full resolution first).
Outputs = torch.Tensor | Sequence[torch.Tensor]
#: Computes the gradients of the whole batch with the network run on at most the given number of
#: samples at a time; returns the batch's loss.
Step = Callable[[int], float]


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


def chunked_gradients(forward: Callable[[torch.Tensor], Outputs],
                      loss_of: Callable[[Outputs, list[torch.Tensor]], torch.Tensor],
                      scale: Callable[[torch.Tensor], torch.Tensor], data: torch.Tensor, targets: list[torch.Tensor],
                      chunk_size: int) -> float:
    """Backward of `scale(loss_of(forward(data), targets))` with `forward` run on `chunk_size` samples at a time.

    Outputs and their gradients of the whole batch are held (small next to the activations);
    the activations of one chunk at a time. Returns the (unscaled) loss of the whole batch.
    """
    parts = chunk_slices(data.shape[0], chunk_size)
    with torch.no_grad():
        chunks = [forward(data[part]) for part in parts]
    single = isinstance(chunks[0], torch.Tensor)
    lists = [[c] if isinstance(c, torch.Tensor) else list(c) for c in chunks]
    leaves = [torch.cat([c[i] for c in lists]).requires_grad_() for i in range(len(lists[0]))]
    del chunks, lists
    loss = loss_of(leaves[0] if single else leaves, targets)
    scale(loss).backward()
    grads = [leaf.grad for leaf in leaves]  # None for an output the loss does not use
    del leaves
    for part in parts:
        out = forward(data[part])
        outs = [out] if isinstance(out, torch.Tensor) else list(out)
        used = [(o, g[part]) for o, g in zip(outs, grads) if g is not None]
        torch.autograd.backward([o for o, _ in used], [g for _, g in used])
    return float(loss.detach().item())


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

    def run(self, batch_size: int, step: Step, zero_grad: Callable[[], None], epoch: int | None = None,
            iteration: int | None = None) -> float:
        """`step` with the whole batch, or after out-of-memory with halved chunks; returns the batch's loss."""
        if not self.enabled:
            return step(batch_size)
        size = batch_size if self.chunk_size is None else min(self.chunk_size, batch_size)
        while True:
            try:
                return step(size)
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
                    "forward/backward pass; redoing the step and continuing with %d per pass, gradients of the whole "
                    "batch accumulated (same effective batch and schedule). Peak memory %s vs the planner's "
                    "estimate %s (%s, patch size %s)", "?" if epoch is None else epoch + 1,
                    "?" if iteration is None else iteration + 1, size, batch_size, new, _gb(peak),
                    _gb(self.estimated_memory_bytes), self.where, self.patch_size)
        return new
