"""Progress where stderr is not a terminal: a line after the first step, then at most one per interval."""

from __future__ import annotations

import logging

import pytest

from autounet.core.progress import Progress, format_duration


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_non_terminal_progress_logs_first_step_then_every_interval_with_eta(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    with caplog.at_level(logging.INFO, logger="autounet.progress"):
        with Progress(100, "epoch 1/10 training", is_terminal=False, interval=30.0, clock=clock) as bar:
            for step in range(100):
                clock.now += 1.0  # one step per second: 100 s in all
                bar.update(1, f"loss {1 / (step + 1):.2f}")
    lines = [r.getMessage() for r in caplog.records]
    # after step 1 (t=1), then t=31, t=61, t=91, and the end (t=100)
    assert len(lines) == 5, lines
    assert lines[0].startswith("epoch 1/10 training: 1/100 it (1%), 1.00 it/s, elapsed 1s, ETA 1m39s, loss 1.00")
    assert lines[1].startswith("epoch 1/10 training: 31/100 it (31%)") and "ETA 1m09s" in lines[1]
    assert lines[-1].startswith("epoch 1/10 training: 100/100 it (100%)") and "ETA 0s" in lines[-1]


def test_short_phases_log_one_line_and_disabled_progress_none(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    with caplog.at_level(logging.INFO, logger="autounet.progress"):
        with Progress(5, "predict", unit="case", is_terminal=False, clock=clock) as bar:
            for _ in range(5):
                clock.now += 2.0
                bar.update()
        with Progress(5, "quiet", is_terminal=False, enabled=False, clock=clock) as bar:
            bar.update(5)
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["predict: 1/5 case (20%), 2.0 s/case, elapsed 2s, ETA 8s"]


def test_format_duration() -> None:
    assert [format_duration(s) for s in (0, 12.4, 247, 7500)] == ["0s", "12s", "4m07s", "2h05m"]
