from __future__ import annotations

from pathlib import Path

import pytest

from autounet.errors import AutounetError
from autounet.pipeline.task_names import find_task_name, match_task_names, task_id
from autounet.pipeline.workspace import Workspace


@pytest.mark.parametrize(("name", "expected"), [("Task01", 1), ("1", 1), ("Task01_BrainTumour", 1),
                                                 ("Dataset001_BrainTumour", 1), ("Task104_X", 104), ("Liver", None)])
def test_task_id(name: str, expected: int | None) -> None:
    assert task_id(name) == expected


def test_match_by_id_and_exact_name() -> None:
    names = ["Task01_Demo", "Task02_Demo2D", "Dataset003_Liver"]
    assert match_task_names("Task01", names) == ["Task01_Demo"]
    assert match_task_names("1", names) == ["Task01_Demo"]
    assert match_task_names("Dataset003_Liver", names) == ["Dataset003_Liver"]
    assert match_task_names("3", names) == ["Dataset003_Liver"]
    assert match_task_names("Task09", names) == []


def _preprocessed(ws: Workspace, *names: str) -> None:
    for n in names:
        (ws.preprocessed(n)).mkdir(parents=True)
        (ws.preprocessed(n) / "plans.json").write_text("{}")


def test_find_task_name_only_one_and_errors(tmp_path: Path) -> None:
    ws = Workspace(tmp_path)
    with pytest.raises(AutounetError, match="no task found"):
        find_task_name(None, ws)
    _preprocessed(ws, "Task01_Demo")
    assert find_task_name(None, ws) == "Task01_Demo"
    _preprocessed(ws, "Task02_Demo2D")
    with pytest.raises(AutounetError, match="several tasks"):
        find_task_name(None, ws)
    assert find_task_name("2", ws) == "Task02_Demo2D"
    with pytest.raises(AutounetError, match="Task01_Demo, Task02_Demo2D"):
        find_task_name("Task07", ws)
