"""One trainer per fold: a lock file created atomically in the fold folder.

Two processes writing the same checkpoints would corrupt each other's run, so the second
refuses. The lock records pid, host and the process start time; when its owner is gone
(killed with SIGKILL, say) on this host, the next trainer takes it over with a warning, so a
crash never leaves the user to delete files by hand. On another host we cannot tell whether the
owner lives, and the error says which file to delete once it is known to be dead.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
from pathlib import Path
from types import TracebackType

from autounet.errors import AutounetError

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"
_UNREADABLE_GRACE_S = 30.0


def _process_start_ticks(pid: int) -> int | None:
    """Start time of a process in clock ticks since boot (Linux); None where unknown."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
    except OSError:
        return None
    fields = text.rsplit(")", 1)[-1].split()
    return int(fields[19]) if len(fields) > 19 else None


def _process_state(pid: int) -> str | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
    except OSError:
        return None
    fields = text.rsplit(")", 1)[-1].split()
    return fields[0] if fields else None


def pid_alive(pid: int, start_ticks: int | None = None) -> bool:
    """True if `pid` runs on this host (and, if given, is the same process, not a reused pid)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    if _process_state(pid) in ("Z", "X"):  # killed, waiting to be reaped by its parent
        return False
    if start_ticks is not None:
        current = _process_start_ticks(pid)
        if current is not None and current != start_ticks:
            return False
    return True


class FoldLock:
    """Context manager holding `<fold_dir>/.lock` for the lifetime of a training."""

    def __init__(self, fold_dir: str | Path) -> None:
        self.path = Path(fold_dir) / LOCK_NAME
        self._held = False

    def _owner_record(self) -> dict[str, object]:
        return {"pid": os.getpid(), "host": socket.gethostname(), "start_ticks": _process_start_ticks(os.getpid()),
                "started": time.strftime("%Y-%m-%d %H:%M:%S")}

    def _try_create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(self._owner_record(), fh)
            fh.flush()
            os.fsync(fh.fileno())
        return True

    def _read_owner(self) -> dict[str, object] | None:
        try:
            owner = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return owner if isinstance(owner, dict) else None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            if self._try_create():
                self._held = True
                return
            owner = self._read_owner()
            if owner is None:
                try:
                    age = time.time() - self.path.stat().st_mtime
                except FileNotFoundError:
                    continue
                if age < _UNREADABLE_GRACE_S:
                    raise AutounetError(f"{self.path}: another training is starting on this fold; "
                                        f"wait for it or delete {self.path} if no training runs")
                log.warning("%s: unreadable lock file older than %.0f s, taking it over", self.path, age)
            else:
                pid, host = int(owner.get("pid", -1)), str(owner.get("host", "?"))
                ticks = owner.get("start_ticks")
                if host != socket.gethostname():
                    raise AutounetError(
                        f"{self.path}: fold is locked by pid {pid} on host {host} (started {owner.get('started')}); "
                        f"wait for that training, or delete {self.path} if it is no longer running")
                if pid_alive(pid, ticks if isinstance(ticks, int) else None):
                    raise AutounetError(
                        f"{self.path}: another training (pid {pid}, started {owner.get('started')}) is running on "
                        f"this fold; wait for it to finish or stop it first")
                log.warning("%s: the training that held this fold (pid %d) is gone; taking over its lock",
                            self.path, pid)
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        raise AutounetError(f"{self.path}: could not take the fold lock (contended); try again")

    def release(self) -> None:
        if not self._held:
            return
        owner = self._read_owner()
        if owner is None or owner.get("pid") == os.getpid():
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        self._held = False

    def __enter__(self) -> FoldLock:
        self.acquire()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()
