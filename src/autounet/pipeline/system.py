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
