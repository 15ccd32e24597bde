"""Error messages of typed JSON loading: the file and the key path are named separately."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from autounet.errors import PlansError
from autounet.io.json_schema import from_dict, key_path


@dataclass
class _Inner:
    size: list[int]

    def validate(self, where: str) -> None:
        if any(s % 2 for s in self.size):
            raise PlansError(f"{where}.size: {self.size} must be even")


@dataclass
class _Outer:
    version: int
    parts: dict[str, _Inner] = field(default_factory=dict)

    def validate(self, where: str) -> None:
        if self.version != 1:
            raise PlansError(f"{where}.version: {self.version} is not supported")


def test_key_path_starts_after_the_file_then_joins_with_dots() -> None:
    assert key_path("/a/plans.json", "configurations") == "/a/plans.json: key configurations"
    assert key_path("/a/plans.json: key configurations", "2d") == "/a/plans.json: key configurations.2d"


def test_type_errors_name_file_and_nested_key() -> None:
    with pytest.raises(PlansError) as info:
        from_dict(_Outer, {"version": 1, "parts": {"a": {"size": [2, "x"]}}}, "/a/p.json")
    assert str(info.value) == "/a/p.json: key parts.a.size[1]: expected an integer, got 'x'"


def test_nested_validate_errors_name_file_and_key() -> None:
    with pytest.raises(PlansError) as info:
        from_dict(_Outer, {"version": 1, "parts": {"a": {"size": [3, 4]}}}, "/a/p.json")
    assert str(info.value) == "/a/p.json: key parts.a.size: [3, 4] must be even"


def test_top_level_validate_error_is_not_glued_to_the_file_name() -> None:
    with pytest.raises(PlansError) as info:
        from_dict(_Outer, {"version": 2}, "/a/p.json")
    assert str(info.value) == "/a/p.json: key version: 2 is not supported"


def test_missing_and_unknown_keys_name_the_file() -> None:
    with pytest.raises(PlansError, match=r"^/a/p\.json: missing required key 'version'$"):
        from_dict(_Outer, {}, "/a/p.json")
    with pytest.raises(PlansError, match=r"^/a/p\.json: key parts\.a: unknown key\(s\) \['extra'\]"):
        from_dict(_Outer, {"version": 1, "parts": {"a": {"size": [2], "extra": 0}}}, "/a/p.json")
