"""Run a function over many items in worker processes, with progress, ETA and tracebacks.

Why not a bare multiprocessing.Pool: a worker that raises must surface as an error naming
the item it was on with the worker's traceback, and a worker killed by the OS (out-of-memory
killer) must surface within seconds instead of hanging forever. Workers use the 'spawn'
start method so that behaviour is the same on Linux, macOS and Windows.
"""

from __future__ import annotations

import errno
import logging
import multiprocessing as mp
import os
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar


from autounet.core.progress import Progress
from autounet.errors import AutounetError, WorkerError

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


def _call_catching(fn: Callable[[Any], Any], item: Any) -> tuple[bool, Any]:
    """Run in the worker: return (True, result) or (False, formatted traceback)."""
    try:
        return True, fn(item)
    except AutounetError as exc:
        return False, ("autounet", str(exc))
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            where = f" ({exc.filename})" if exc.filename else ""
            return False, ("autounet", f"no space left on device{where}; free disk space and rerun - "
                                       "finished cases are kept")
        return False, ("traceback", traceback.format_exc())
    except BaseException:  # noqa: BLE001 - the parent re-raises with context
        return False, ("traceback", traceback.format_exc())


def default_num_workers(per_worker_gb: float = 2.0, cap: int | None = None) -> int:
    """Worker count from CPU cores and free RAM, so that workers never outgrow memory."""
    cores = os.cpu_count() or 1
    try:
        from autounet.core.system import available_ram_gb

        by_ram = max(1, int(available_ram_gb() // max(per_worker_gb, 0.1)))
    except Exception:  # noqa: BLE001 - best effort; fall back to cores
        by_ram = cores
    n = max(1, min(cores, by_ram))
    return min(n, cap) if cap else n


def run_parallel(
    fn: Callable[[T], R],
    items: Sequence[T],
    names: Sequence[str],
    num_workers: int,
    desc: str,
    show_progress: bool = True,
) -> list[R]:
    """Apply `fn` to every item (picklable, top-level `fn`), results in input order.

    num_workers == 0 runs in this process (supported, not a debug mode). A failing item
    raises WorkerError naming it; a dead worker raises WorkerError naming the items that
    were in flight and the probable cause.
    """
    if len(items) != len(names):
        raise ValueError("items and names differ in length")
    results: list[Any] = [None] * len(items)
    bar = Progress(len(items), desc, unit="case", enabled=show_progress)
    try:
        if num_workers <= 0 or len(items) <= 1:
            for i, item in enumerate(items):
                ok, value = _call_catching(fn, item)
                if not ok:
                    _raise_worker_failure(names[i], value)
                results[i] = value
                bar.update(1, names[i])
            return results
        ctx = mp.get_context("spawn")
        with ProcessPoolExecutor(max_workers=min(num_workers, len(items)), mp_context=ctx) as pool:
            pending: dict[Future[Any], int] = {pool.submit(_call_catching, fn, it): i for i, it in enumerate(items)}
            while pending:
                done, _ = wait(pending, timeout=5.0, return_when=FIRST_COMPLETED)
                for fut in done:
                    i = pending.pop(fut)
                    try:
                        ok, value = fut.result()
                    except BrokenProcessPool:
                        in_flight = sorted({names[i]} | {names[j] for j in pending.values()})
                        for other in pending:
                            other.cancel()
                        raise WorkerError(
                            ", ".join(in_flight[:5]) + (" ..." if len(in_flight) > 5 else ""),
                            "a worker process died without a Python error (killed by the OS, most likely "
                            "out of memory); rerun with fewer workers (-np) - finished cases are kept",
                        ) from None
                    if not ok:
                        for other in pending:
                            other.cancel()
                        _raise_worker_failure(names[i], value)
                    results[i] = value
                    bar.update(1, names[i])
        return results
    finally:
        bar.close()


def _raise_worker_failure(name: str, value: tuple[str, str]) -> None:
    kind, detail = value
    if kind == "autounet":
        raise WorkerError(name, detail)
    log.error("worker traceback for %s:\n%s", name, detail)
    last = detail.strip().splitlines()[-1] if detail.strip() else "unknown error"
    error = WorkerError(name, f"{last} (traceback above and in the log)")
    error.traceback = detail
    raise error
