"""Progress of long phases: a bar on a terminal, periodic log lines everywhere else.

A progress bar written to a log file, a CI console or `nohup` output is either nothing (tqdm
switches itself off there) or a wall of carriage returns. Where stderr is not a terminal, this
writes one log line after the first step (so a run shows within seconds that data is flowing)
and then at most one every `interval` seconds, each with the count, the rate and an ETA, and a
last line when a phase that took longer than that ends.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

log = logging.getLogger("autounet.progress")

LOG_INTERVAL_S = 30.0


def format_duration(seconds: float) -> str:
    """'2h05m', '4m07s', '12s'."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class Progress:
    """Count `total` steps of a phase called `desc`; use as a context manager, call `update()`."""

    def __init__(self, total: int, desc: str, unit: str = "it", enabled: bool = True,
                 is_terminal: bool | None = None, interval: float = LOG_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic, leave: bool = True) -> None:
        self.total, self.desc, self.unit, self.interval, self.clock = total, desc, unit, interval, clock
        self.done = 0
        self.postfix = ""
        terminal = sys.stderr.isatty() if is_terminal is None else is_terminal
        self._bar: Any = None
        self._logging = enabled and not terminal
        if enabled and terminal:
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=unit, leave=leave, dynamic_ncols=True)
        self._start = clock()
        self._last: float | None = None

    def update(self, n: int = 1, postfix: str = "") -> None:
        self.done += n
        self.postfix = postfix
        if self._bar is not None:
            if postfix:
                self._bar.set_postfix_str(postfix, refresh=False)
            self._bar.update(n)
            return
        now = self.clock()
        if self._logging and (self._last is None or now - self._last >= self.interval):
            self._log(now)

    def _log(self, now: float) -> None:
        self._last = now
        elapsed = now - self._start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else float("nan")
        pace = f"{rate:.2f} {self.unit}/s" if rate >= 1 else (f"{1 / rate:.1f} s/{self.unit}" if rate else "")
        tail = f", {self.postfix}" if self.postfix else ""
        eta_text = format_duration(eta) if eta == eta else "?"
        log.info("%s: %d/%d %s (%.0f%%), %s, elapsed %s, ETA %s%s", self.desc, self.done, self.total, self.unit,
                 100 * self.done / max(self.total, 1), pace, format_duration(elapsed), eta_text, tail)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
            return
        now = self.clock()
        if self._logging and self._last is not None and now - self._start >= self.interval and now != self._last:
            self._log(now)
        self._logging = False

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
