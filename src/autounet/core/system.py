"""Facts about the machine: RAM, disk, shared memory, devices. Used by doctor and defaults."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def available_ram_gb() -> float:
    """Available RAM in GB from /proc/meminfo (Linux) or os.sysconf; NaN if unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 1024**2
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 1024**3
    except (ValueError, OSError, AttributeError):
        return float("nan")


def total_ram_gb() -> float:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 1024**3
    except (ValueError, OSError, AttributeError):
        return float("nan")


def free_disk_gb(path: Path) -> float:
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free / 1024**3


def shm_size_gb() -> float | None:
    """Size of /dev/shm (data-loader workers pass batches through it); None if absent."""
    shm = Path("/dev/shm")
    if not shm.exists():
        return None
    return shutil.disk_usage(shm).total / 1024**3


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def cpu_threads(requested: int | None, world_size: int = 1) -> tuple[int, str]:
    """Threads for the network on a CPU (training or prediction), and why: all cores, shared among DDP ranks.

    Measured on an idle 2-core machine: a demo training step took 1.1 s with 2 threads and
    2.0 s with 1 (data-loading workers run at lower priority and need about 2% of a core).
    On a machine shared with other busy processes the pool's threads wait on each other and
    1 thread can be twice as fast: `--threads 1`.
    """
    cores = cpu_count()
    if requested is not None:
        return max(1, requested), "--threads"
    return max(1, cores // max(1, world_size)), f"{cores} core(s), {world_size} process(es)"


def case_memory_budget(memory_gb: float | None, workers: int) -> int:
    """Bytes one case may use while it is read, resampled or predicted: 80% of `memory_gb` (default:
    the available RAM; 4 GB where unknown) shared by the worker processes."""
    from autounet.errors import AutounetError
    from autounet.io.read_budget import per_case_budget

    if memory_gb is not None and not memory_gb > 0:
        raise AutounetError(f"--memory-gb: must be a positive number of GB, got {memory_gb}")
    if memory_gb is None:
        memory_gb = available_ram_gb()
        if memory_gb != memory_gb:  # unknown: assume a small machine rather than none
            memory_gb = 4.0
    return per_case_budget(memory_gb, workers)
