"""CaseStore: atomic per-case files, finished-case detection, memory-mapped loading."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from autounet.errors import DatasetError
from autounet.io.geometry import Geometry
from autounet.preprocessing.case_properties import CaseProperties
from autounet.preprocessing.case_store import CaseStore


def _props(case_id: str) -> CaseProperties:
    return CaseProperties(
        case_id=case_id,
        geometry=Geometry(spacing=(1.0, 1.0, 2.0), origin=(0.0, 0.0, 0.0), shape=(3, 4, 5)),
        shape_before_crop=[3, 4, 5],
        bbox=[[0, 3], [0, 4], [0, 5]],
        shape_after_crop=[3, 4, 5],
        spacing=[2.0, 1.0, 1.0],
        target_spacing=[1.0, 1.0, 1.0],
        shape_after_resample=[6, 4, 5],
    )


def _write(store: CaseStore, case_id: str) -> tuple[np.ndarray, np.ndarray]:
    data = np.arange(2 * 6 * 4 * 5, dtype=np.float64).reshape(2, 6, 4, 5)
    seg = np.zeros((6, 4, 5), dtype=np.int64)
    seg[0] = -1
    seg[2:4, 1:3, 1:4] = 1
    locations = {1: np.array([[2, 1, 1], [3, 2, 3]]), 2: np.zeros((0, 3))}
    store.write_case(case_id, data, seg, _props(case_id), locations)
    return data, seg


def test_write_then_load_round_trips_with_contract_dtypes(tmp_path: Path) -> None:
    store = CaseStore(tmp_path / "3d_fullres")
    data, seg = _write(store, "case_1")
    loaded, loaded_seg, props = store.load("case_1")
    assert isinstance(loaded, np.memmap) and isinstance(loaded_seg, np.memmap)
    assert loaded.dtype == np.float32 and loaded_seg.dtype == np.int16
    np.testing.assert_array_equal(loaded, data.astype(np.float32))
    np.testing.assert_array_equal(loaded_seg, seg)
    assert props == _props("case_1")
    assert not loaded.flags.writeable

    eager, _, _ = store.load("case_1", mmap=False)
    assert not isinstance(eager, np.memmap)

    locations = store.locations("case_1")
    assert sorted(locations) == [1, 2]
    assert locations[1].dtype == np.int32 and locations[1].tolist() == [[2, 1, 1], [3, 2, 3]]
    assert locations[2].shape == (0, 3)


def test_only_finished_cases_are_listed(tmp_path: Path) -> None:
    store = CaseStore(tmp_path)
    _write(store, "b")
    _write(store, "a")
    (tmp_path / "c.npy").write_bytes(b"half")  # arrays without properties: unfinished
    _write(store, "d")
    (tmp_path / "d_locations.npz").unlink()  # properties without all arrays: unfinished
    assert store.case_ids() == ["a", "b"]
    assert store.is_finished("a") and not store.is_finished("c") and not store.is_finished("d")
    assert CaseStore(tmp_path / "missing").case_ids() == []


def test_loading_an_unfinished_case_names_the_file(tmp_path: Path) -> None:
    store = CaseStore(tmp_path)
    with pytest.raises(DatasetError, match="x.json.*plan_and_preprocess"):
        store.load("x")


def test_remove_temporary_files_leaves_finished_cases(tmp_path: Path) -> None:
    store = CaseStore(tmp_path)
    _write(store, "a")
    (tmp_path / ".tmp-a-123.npy").write_bytes(b"partial")
    assert store.remove_temporary_files() == 1
    assert not (tmp_path / ".tmp-a-123.npy").exists()
    assert store.case_ids() == ["a"]


def test_write_case_rejects_mismatched_shapes(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="case z"):
        CaseStore(tmp_path).write_case("z", np.zeros((1, 2, 2, 2)), np.zeros((2, 2, 3)), _props("z"), {})
