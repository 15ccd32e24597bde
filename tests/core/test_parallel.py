"""The worker pool surfaces failures with the item's name instead of hanging."""

from __future__ import annotations

import math
import os
import time

import pytest

from autounet.errors import WorkerError
from autounet.core.parallel import run_parallel


@pytest.mark.parametrize("workers", [0, 2])
def test_results_in_input_order(workers: int) -> None:
    assert run_parallel(math.sqrt, [16.0, 4.0, 9.0], ["a", "b", "c"], workers, "t", show_progress=False) == [4.0, 2.0, 3.0]


@pytest.mark.parametrize("workers", [0, 2])
def test_exception_names_item_and_carries_traceback(workers: int) -> None:
    with pytest.raises(WorkerError) as info:
        run_parallel(math.sqrt, [4.0, -1.0], ["case_ok", "case_bad"], workers, "t", show_progress=False)
    assert info.value.item == "case_bad"
    assert "math domain error" in str(info.value) and "\n" not in str(info.value)
    assert info.value.traceback is not None and "Traceback" in info.value.traceback


def test_dead_worker_is_reported_not_hung() -> None:
    start = time.monotonic()
    with pytest.raises(WorkerError, match="died without a Python error"):
        run_parallel(os._exit, [3, 3], ["case_1", "case_2"], 2, "t", show_progress=False)
    assert time.monotonic() - start < 30


def _no_space(_: object) -> None:
    raise OSError(28, "No space left on device", "/full/disk/case.npy")


def test_disk_full_in_a_worker_is_one_clear_line() -> None:
    with pytest.raises(WorkerError) as info:
        run_parallel(_no_space, [1], ["case_1"], 0, "t", show_progress=False)
    assert str(info.value) == ("worker failed on case_1: no space left on device (/full/disk/case.npy); "
                               "free disk space and rerun - finished cases are kept")
