"""The per-fold lock: a second trainer is refused, a dead owner's lock is taken over."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from autounet.errors import AutounetError
from autounet.training.lock import FoldLock, pid_alive


def test_acquire_release_and_refusal_naming_the_pid(tmp_path: Path) -> None:
    with FoldLock(tmp_path) as lock:
        owner = json.loads(lock.path.read_text())
        assert owner["pid"] == os.getpid()
        with pytest.raises(AutounetError, match=f"pid {os.getpid()}"):
            FoldLock(tmp_path).acquire()
    assert not (tmp_path / ".lock").exists()


def test_second_process_is_refused(tmp_path: Path) -> None:
    code = ("import sys; from autounet.training.lock import FoldLock\n"
            "from autounet.errors import AutounetError\n"
            "try:\n    FoldLock(sys.argv[1]).acquire()\nexcept AutounetError as e:\n    print(e); sys.exit(3)\n")
    with FoldLock(tmp_path):
        result = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True,
                                timeout=60)
    assert result.returncode == 3
    assert f"pid {os.getpid()}" in result.stdout and "another training" in result.stdout


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import socket

    pid = _dead_pid()
    assert not pid_alive(pid)
    (tmp_path / ".lock").write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "started": "x"}))
    with caplog.at_level(logging.WARNING), FoldLock(tmp_path) as lock:
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()
    assert f"pid {pid}" in caplog.text and "taking over" in caplog.text


def test_reused_pid_is_recognised_by_its_start_time(tmp_path: Path) -> None:
    import socket

    record = {"pid": os.getpid(), "host": socket.gethostname(), "start_ticks": -5, "started": "x"}
    (tmp_path / ".lock").write_text(json.dumps(record))
    if Path(f"/proc/{os.getpid()}/stat").exists():
        with FoldLock(tmp_path):
            pass
    else:
        pytest.skip("no /proc: process start times unknown")


def test_lock_of_another_host_is_not_broken(tmp_path: Path) -> None:
    (tmp_path / ".lock").write_text(json.dumps({"pid": 1, "host": "elsewhere.example", "started": "x"}))
    with pytest.raises(AutounetError, match="elsewhere.example.*delete"):
        FoldLock(tmp_path).acquire()


def test_fresh_unreadable_lock_is_respected_old_one_replaced(tmp_path: Path) -> None:
    lock_file = tmp_path / ".lock"
    lock_file.write_text("")
    with pytest.raises(AutounetError, match="starting"):
        FoldLock(tmp_path).acquire()
    os.utime(lock_file, (0, 0))
    with FoldLock(tmp_path):
        assert lock_file.read_text()
