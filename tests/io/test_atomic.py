from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from autounet.errors import DatasetError
from autounet.io.atomic import atomic_path, is_temporary, read_json, save_npy, write_json


def test_failed_write_leaves_no_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            assert is_temporary(tmp) and tmp.parent == tmp_path
            raise RuntimeError("crash mid-write")
    assert list(tmp_path.iterdir()) == []


def test_failed_rewrite_keeps_previous_content(tmp_path: Path) -> None:
    target = tmp_path / "plans.json"
    write_json(target, {"a": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("{broken")
            raise RuntimeError
    assert read_json(target) == {"a": 1}


def test_suffix_follows_target_for_format_detection(tmp_path: Path) -> None:
    with atomic_path(tmp_path / "case.nii.gz") as tmp:
        assert tmp.name.endswith(".nii.gz")
        tmp.write_bytes(b"x")
    assert (tmp_path / "case.nii.gz").read_bytes() == b"x"


def test_npy_round_trip_is_memory_mappable(tmp_path: Path) -> None:
    arr = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    save_npy(tmp_path / "a.npy", arr)
    loaded = np.load(tmp_path / "a.npy", mmap_mode="r")
    assert isinstance(loaded, np.memmap) and np.array_equal(loaded, arr)


def test_read_json_names_file_and_position(tmp_path: Path) -> None:
    bad = tmp_path / "dataset.json"
    bad.write_text('{"a": 1 "b": 2}')
    with pytest.raises(DatasetError, match=r"dataset.json: not valid JSON \(line 1, column 9"):
        read_json(bad)
    bad.write_text('{\n  "a": [1, 2,\n  ],\n  "b": 1,\n}\n')
    with pytest.raises(DatasetError, match=r"dataset.json: not valid JSON: trailing comma at line 2; remove it"):
        read_json(bad)
    bad.write_text('{\n  "a": [1, 2],\n  "b": 1,\n}\n')
    with pytest.raises(DatasetError, match=r"dataset.json: not valid JSON: trailing comma at line 3; remove it"):
        read_json(bad)
    with pytest.raises(DatasetError, match="file not found"):
        read_json(tmp_path / "missing.json")


def test_read_json_accepts_a_byte_order_mark_and_refuses_duplicate_keys(tmp_path: Path) -> None:
    """Windows editors write a BOM (accepted); a key given twice used to let the last one win silently."""
    bom = tmp_path / "bom.json"
    bom.write_bytes(b"\xef\xbb\xbf" + b'{"a": 1}')
    assert read_json(bom) == {"a": 1}
    twice = tmp_path / "twice.json"
    twice.write_text('{"labels": {"0": "bg"}, "x": {"labels": 1, "y": 2, "y": 3}}', encoding="utf-8")
    with pytest.raises(DatasetError, match="key 'y' appears twice in one object"):
        read_json(twice)


def test_read_json_refuses_nan_unless_allowed(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    path.write_text('{"dice": NaN}', encoding="utf-8")
    with pytest.raises(DatasetError, match="'NaN' is not a JSON number"):
        read_json(path)
    value = read_json(path, allow_nan=True)["dice"]
    assert value != value


def test_read_json_refuses_deep_nesting_and_devices(tmp_path: Path) -> None:
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 50_000 + "]" * 50_000, encoding="utf-8")
    with pytest.raises(DatasetError, match="nested too deeply"):
        read_json(deep)
    with pytest.raises(DatasetError, match="not a regular file"):
        read_json("/dev/null")
