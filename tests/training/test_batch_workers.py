"""Background batch workers: shapes, determinism, and failures that surface fast instead of hanging."""

from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from autounet.errors import DatasetError, WorkerError
from autounet.io.geometry import Geometry
from autounet.preprocessing.case_properties import CaseProperties
from autounet.preprocessing.case_store import CaseStore
from autounet.training.batch_workers import BackgroundBatches
from autounet.training.data_loader import BatchSpec

SCALES = ((1.0, 1.0, 1.0), (0.5, 0.5, 0.5))


def write_cases(folder: Path, n: int, shape: tuple[int, int, int] = (16, 24, 24)) -> list[str]:
    """n small preprocessed cases, each with a foreground cube, in the workspace layout."""
    store = CaseStore(folder)
    ids = []
    for i in range(n):
        seg = np.zeros(shape, dtype=np.int16)
        seg[4:8, 6:10, 6:10] = 1
        data = np.random.default_rng(i).normal(size=(1, *shape)).astype(np.float32)
        props = CaseProperties(
            case_id=f"case{i}", geometry=Geometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), shape=shape),
            shape_before_crop=list(shape), bbox=[[0, s] for s in shape], shape_after_crop=list(shape),
            spacing=[1.0] * 3, target_spacing=[1.0] * 3, shape_after_resample=list(shape),
        )
        store.write_case(f"case{i}", data, seg, props, {1: np.argwhere(seg == 1).astype(np.int32)})
        ids.append(f"case{i}")
    return ids


def spec_for(folder: Path, ids: list[str]) -> BatchSpec:
    return BatchSpec(folder=str(folder), case_ids=tuple(ids), patch_size=(8, 16, 16), batch_size=2,
                     deep_supervision_scales=SCALES)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_batches_have_the_documented_shapes_and_types(tmp_path: Path, num_workers: int) -> None:
    ids = write_cases(tmp_path, 3)
    with BackgroundBatches(spec_for(tmp_path, ids), num_workers, seed=0) as batches:
        for _ in range(4):
            batch = next(batches)
            assert batch["data"].shape == (2, 1, 8, 16, 16) and batch["data"].dtype == torch.float32
            assert [tuple(t.shape) for t in batch["target"]] == [(2, 1, 8, 16, 16), (2, 1, 4, 8, 8)]
            assert all(t.dtype == torch.int64 for t in batch["target"])
            assert len(batch["keys"]) == 2 and set(batch["keys"]) <= set(ids)


def test_zero_workers_gives_exactly_the_batches_of_one_worker(tmp_path: Path) -> None:
    ids = write_cases(tmp_path, 3)
    with BackgroundBatches(spec_for(tmp_path, ids), 0, seed=4) as inline, \
            BackgroundBatches(spec_for(tmp_path, ids), 1, seed=4) as worker:
        for _ in range(3):
            a, b = next(inline), next(worker)
            assert a["keys"] == b["keys"]
            assert torch.equal(a["data"], b["data"])
            assert all(torch.equal(x, y) for x, y in zip(a["target"], b["target"]))


def _break_case(folder: Path, case_id: str) -> None:
    CaseStore(folder).data_path(case_id).write_bytes(b"not a numpy file")


@pytest.mark.parametrize("num_workers", [0, 1])
def test_exception_in_a_worker_is_one_line_naming_the_case_with_the_traceback_logged(
    tmp_path: Path, num_workers: int, caplog: pytest.LogCaptureFixture
) -> None:
    ids = write_cases(tmp_path, 2)
    _break_case(tmp_path, "case1")  # not case0: the parent reads case0's header to size the buffers
    with BackgroundBatches(spec_for(tmp_path, ids), num_workers, seed=0) as batches:
        with pytest.raises(WorkerError) as info, caplog.at_level(logging.ERROR):
            for _ in range(100):  # until a batch draws the broken case
                next(batches)
    message = str(info.value)
    assert "case1" in info.value.item
    assert "DatasetError" in message and "case1" in message and "cannot be read" in message
    assert "\n" not in message and "Traceback" not in message
    assert any("Traceback (most recent call last)" in r.getMessage() and r.levelno == logging.ERROR
               for r in caplog.records)


def test_unreadable_first_case_is_a_dataset_error_before_any_worker_starts(tmp_path: Path) -> None:
    ids = write_cases(tmp_path, 1)
    _break_case(tmp_path, "case0")
    with pytest.raises(DatasetError, match="case0.*cannot be read"):
        BackgroundBatches(spec_for(tmp_path, ids), 2, seed=0)


def test_killed_worker_is_reported_within_seconds(tmp_path: Path) -> None:
    ids = write_cases(tmp_path, 2)
    with BackgroundBatches(spec_for(tmp_path, ids), 2, seed=0) as batches:
        next(batches)
        pid = batches.worker_pids()[1]
        os.kill(pid, signal.SIGKILL)
        start = time.monotonic()
        with pytest.raises(WorkerError) as info:
            for _ in range(1000):
                next(batches)
        elapsed = time.monotonic() - start
        assert elapsed < 10
        assert "worker 1" in info.value.item and f"pid {pid}" in info.value.item
        assert "SIGKILL" in str(info.value) and "memory" in str(info.value)
        with pytest.raises(WorkerError):  # the iterator stays failed instead of hanging
            next(batches)


def test_close_stops_every_worker(tmp_path: Path) -> None:
    ids = write_cases(tmp_path, 2)
    batches = BackgroundBatches(spec_for(tmp_path, ids), 2, seed=0)
    next(batches)
    processes = list(batches._processes)
    batches.close()
    assert all(not p.is_alive() for p in processes)
    with pytest.raises(StopIteration):
        next(batches)
