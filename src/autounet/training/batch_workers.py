"""Background batch production in worker processes that can fail loudly but never hang.

Design, and why:
- Workers are started with 'spawn' (same behaviour on every OS, no forked CUDA or thread state)
  from a picklable *spec*; each builds its own sampler and transforms seeded from
  (seed, stream, worker index), so results depend only on the seed and the worker count.
- Batch arrays travel through per-worker slots of shared memory; the pipes carry only small
  messages (slot number and case ids). A message smaller than the pipe's atomic write size is
  never half-written, so a worker killed at any moment cannot leave the parent blocked on a
  truncated message, and no large array is pickled.
- The parent reads the workers round-robin (deterministic order) and while waiting polls
  `is_alive()` of every worker, so a worker killed by a signal (the out-of-memory killer)
  surfaces as WorkerError within about a second, naming the worker, the signal and the cases
  it was on (kept in shared memory by the worker), instead of a hang.
- A Python exception in a worker is sent back with its traceback and raised in the parent.
- num_workers=0 produces batches in the calling process with the seed of worker 0, so it
  gives exactly the batches a single worker would.
"""

from __future__ import annotations

import contextlib

import ctypes
import logging
import multiprocessing as mp
import os
import queue as queue_module
import signal
import time
import traceback
from collections.abc import Sequence
from typing import Any, NoReturn, Protocol

import numpy as np

from autounet.errors import WorkerError
from autounet.core.system import shm_size_gb

log = logging.getLogger(__name__)

_CASES_BYTES = 2048
_POLL_S = 0.2
_STALL_WARNING_S = 120.0


class BatchSource(Protocol):
    """What a worker runs: choose the cases of a batch, then make it (numpy arrays)."""

    def choose_cases(self) -> list[str]: ...

    def make(self, case_ids: Sequence[str]) -> dict[str, Any]: ...


class BatchSourceSpec(Protocol):
    """A picklable description of a batch source (plain values, no closures)."""

    def build(self, seed: int) -> BatchSource: ...

    def batch_shapes(self) -> tuple[tuple[int, ...], list[tuple[int, ...]]]: ...


def worker_seed(seed: int, stream: int, index: int) -> int:
    """Independent seed of worker `index` of `stream` (0 = training, 1 = validation)."""
    return int(np.random.SeedSequence([seed, stream, index]).generate_state(1)[0])


class _SlotLayout:
    """Byte offsets of the data and target arrays inside one shared-memory slot."""

    def __init__(self, data_shape: Sequence[int], target_shapes: Sequence[Sequence[int]]) -> None:
        self.data_shape = tuple(int(s) for s in data_shape)
        self.target_shapes = [tuple(int(s) for s in t) for t in target_shapes]
        self.arrays: list[tuple[int, tuple[int, ...], np.dtype]] = []
        offset = 0
        entries = [(self.data_shape, np.dtype(np.float32))] + [(t, np.dtype(np.int16)) for t in self.target_shapes]
        for shape, dtype in entries:
            self.arrays.append((offset, shape, dtype))
            offset += int(np.prod(shape)) * dtype.itemsize
            offset = (offset + 63) // 64 * 64
        self.slot_bytes = offset

    def views(self, buffer: Any, slot: int) -> list[np.ndarray]:
        base = slot * self.slot_bytes
        return [
            np.frombuffer(buffer, dtype=dtype, count=int(np.prod(shape)), offset=base + off).reshape(shape)
            for off, shape, dtype in self.arrays
        ]


def _set_cases(shared: Any, case_ids: Sequence[str]) -> None:
    text = ", ".join(case_ids).encode("utf-8", errors="replace")[: _CASES_BYTES - 1]
    shared.value = text


def _get_cases(shared: Any) -> str:
    return bytes(shared.value).decode("utf-8", errors="replace")


def _worker_main(
    spec: BatchSourceSpec,
    seed: int,
    layout: _SlotLayout,
    buffer: Any,
    free_slots: Any,
    ready: Any,
    current_cases: Any,
    stop: Any,
    parent_pid: int,
) -> None:
    """Worker loop: make a batch, wait for a free slot, copy it in, announce it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it stops us
    with contextlib.suppress(OSError, AttributeError):
        os.nice(5)  # batches are cheap next to a training step: yield the cores to the network's threads
    case_ids: list[str] = []
    try:
        source = spec.build(seed)
        while not stop.is_set():
            case_ids = source.choose_cases()
            _set_cases(current_cases, case_ids)
            batch = source.make(case_ids)
            _set_cases(current_cases, [])
            slot = _wait_for_slot(free_slots, stop, parent_pid)
            if slot is None:
                return
            views = layout.views(buffer, slot)
            arrays = [batch["data"], *batch["target"]]
            if len(arrays) != len(views):
                raise ValueError(f"batch has {len(arrays) - 1} targets, expected {len(views) - 1}")
            for view, arr in zip(views, arrays):
                if view.shape != arr.shape:
                    raise ValueError(f"batch array of shape {arr.shape} does not fit the expected {view.shape}")
                view[...] = arr
            ready.put(("batch", slot, list(batch.get("keys", case_ids))))
    except BaseException:  # noqa: BLE001 - everything is reported to the parent
        ready.put(("error", list(case_ids), traceback.format_exc()))
        ready.close()
        ready.join_thread()


def _wait_for_slot(free_slots: Any, stop: Any, parent_pid: int) -> int | None:
    """A free slot number, or None when asked to stop or orphaned (the parent died)."""
    while not stop.is_set():
        if os.getppid() != parent_pid:
            return None
        try:
            return int(free_slots.get(timeout=_POLL_S))
        except queue_module.Empty:
            continue
    return None


def _to_torch(batch: dict[str, Any], pin_memory: bool, copy: bool) -> dict[str, Any]:
    """Numpy batch -> torch: float32 data, int64 targets (what losses index with)."""
    import torch

    data = torch.from_numpy(batch["data"])
    if pin_memory:
        data = torch.empty(data.shape, dtype=data.dtype, pin_memory=True).copy_(data)
    elif copy:
        data = data.clone()
    targets = [torch.from_numpy(t).long() for t in batch["target"]]
    if pin_memory:
        targets = [t.pin_memory() for t in targets]
    return {"data": data, "target": targets, "keys": list(batch["keys"])}


class BackgroundBatches:
    """Endless iterator of training batches made by `num_workers` processes (0: in this process).

    Yields `{"data": float32 (B, C, *patch), "target": [int64 (B, 1, *scale) per output scale],
    "keys": [case ids]}`. Use as a context manager, or call `close()`, to stop the workers.
    """

    def __init__(
        self,
        spec: BatchSourceSpec,
        num_workers: int,
        seed: int,
        queue_size: int = 2,
        pin_memory: bool = False,
        stream: int = 0,
        name: str = "batch",
    ) -> None:
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        self.name = name
        self.num_workers = num_workers
        self.pin_memory = bool(pin_memory) and _cuda_available()
        self._failure: WorkerError | None = None
        self._closed = False
        self._next_worker = 0
        self._processes: list[Any] = []
        self._local: BatchSource | None = None
        if num_workers == 0:
            self._local = spec.build(worker_seed(seed, stream, 0))
            return
        ctx = mp.get_context("spawn")
        data_shape, target_shapes = spec.batch_shapes()
        self._layout = _SlotLayout(data_shape, target_shapes)
        self._queue_size = max(1, int(queue_size))
        self._stop = ctx.Event()
        self._buffers, self._free, self._ready, self._cases = [], [], [], []
        try:
            for index in range(num_workers):
                buffer = ctx.RawArray(ctypes.c_uint8, self._layout.slot_bytes * self._queue_size)
                free, ready = ctx.Queue(), ctx.Queue()
                for slot in range(self._queue_size):
                    free.put(slot)
                cases = ctx.RawArray(ctypes.c_char, _CASES_BYTES)
                proc = ctx.Process(
                    target=_worker_main,
                    args=(spec, worker_seed(seed, stream, index), self._layout, buffer, free, ready, cases,
                          self._stop, os.getpid()),
                    name=f"autounet-{name}-worker-{index}",
                    daemon=True,
                )
                self._buffers.append(buffer)
                self._free.append(free)
                self._ready.append(ready)
                self._cases.append(cases)
                proc.start()
                self._processes.append(proc)
        except BaseException:
            self.close()
            raise
        log.debug("%s: started %d worker(s), %d slot(s) of %.1f MB each", name, num_workers, self._queue_size,
                  self._layout.slot_bytes / 1e6)

    def __iter__(self) -> BackgroundBatches:
        return self

    def __next__(self) -> dict[str, Any]:
        if self._failure is not None:
            raise self._failure
        if self._closed:
            raise StopIteration
        if self._local is not None:
            return self._next_local()
        index = self._next_worker
        self._next_worker = (index + 1) % self.num_workers
        started = time.monotonic()
        next_warning = started + _STALL_WARNING_S
        while True:
            self._check_workers()
            try:
                message = self._ready[index].get(timeout=_POLL_S)
            except queue_module.Empty:
                if time.monotonic() > next_warning:
                    log.warning("%s: still waiting for worker %d after %.0f s", self.name, index,
                                time.monotonic() - started)
                    next_warning += _STALL_WARNING_S
                continue
            if message[0] == "error":
                self._fail(self._error_from_message(index, message))
            _, slot, keys = message
            views = self._layout.views(self._buffers[index], slot)
            batch = {"data": views[0], "target": views[1:], "keys": keys}
            try:
                return _to_torch(batch, self.pin_memory, copy=True)
            finally:
                self._free[index].put(slot)

    def _next_local(self) -> dict[str, Any]:
        assert self._local is not None
        case_ids: list[str] = []
        try:
            case_ids = self._local.choose_cases()
            batch = self._local.make(case_ids)
        except Exception as exc:
            item = f"{self.name} batch in the main process on case(s) {', '.join(case_ids) or 'none'}"
            log.error("%s failed; traceback:\n%s", item, traceback.format_exc())
            raise WorkerError(item, _one_line(f"{type(exc).__name__}: {exc}")) from exc
        return _to_torch(batch, self.pin_memory, copy=False)

    def _check_workers(self) -> None:
        for index, proc in enumerate(self._processes):
            if not proc.is_alive():
                self._fail(self._death_error(index))

    def _death_error(self, index: int) -> WorkerError:
        """Why worker `index` is gone: its reported exception if it sent one, else its exit signal."""
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            try:
                message = self._ready[index].get(timeout=0.1)
            except queue_module.Empty:
                break
            if message[0] == "error":
                return self._error_from_message(index, message)
        proc = self._processes[index]
        cases = _get_cases(self._cases[index]) or "none (it was between batches)"
        code = proc.exitcode
        item = f"{self.name} worker {index} (pid {proc.pid}) on case(s) {cases}"
        if code is not None and code < 0:
            try:
                sig = signal.Signals(-code).name
            except ValueError:
                sig = f"signal {-code}"
            return WorkerError(item, f"killed by {sig}; {_probable_cause(sig)}")
        return WorkerError(item, f"exited unexpectedly with code {code}; see the log above for its output")

    def _error_from_message(self, index: int, message: tuple[Any, ...]) -> WorkerError:
        _, case_ids, detail = message
        last = detail.strip().splitlines()[-1] if detail.strip() else "unknown error"
        log.error("%s worker %d traceback:\n%s", self.name, index, detail)
        item = f"{self.name} worker {index} on case(s) {', '.join(case_ids) or 'none'}"
        return WorkerError(item, _one_line(last))

    def _fail(self, error: WorkerError) -> NoReturn:
        self._failure = error
        self.close()
        raise error

    def close(self) -> None:
        """Stop and reap the workers (idempotent); also called on garbage collection."""
        if self._closed:
            return
        self._closed = True
        if not self._processes:
            return
        self._stop.set()
        for proc in self._processes:
            proc.join(timeout=1.0)
        for proc in self._processes:
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=2.0)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=2.0)
        for q in self._free + self._ready:
            q.cancel_join_thread()
            q.close()

    def worker_pids(self) -> list[int]:
        """Process ids of the workers (for monitoring; empty with num_workers=0)."""
        return [p.pid for p in self._processes]

    def __enter__(self) -> BackgroundBatches:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - never raise from a finaliser
            pass


def _one_line(text: str) -> str:
    """An exception text on one line: the CLI's `error:` line; the traceback is in the log."""
    return " ".join(text.split())


def _probable_cause(signal_name: str) -> str:
    shm = shm_size_gb()
    shm_text = f"{shm:.1f} GB" if shm is not None else "absent"
    if signal_name == "SIGKILL":
        return ("most likely the out-of-memory killer (check `dmesg`); use fewer workers (--workers N) or free RAM "
                f"(/dev/shm: {shm_text})")
    if signal_name == "SIGBUS":
        return (f"most likely shared memory ran out (/dev/shm: {shm_text}); enlarge it (docker --shm-size) "
                "or use fewer workers (--workers N)")
    return f"it was stopped from outside (/dev/shm: {shm_text})"


def _cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())
