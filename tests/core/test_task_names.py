from __future__ import annotations

from pathlib import Path

import pytest

from autounet.errors import AutounetError
from autounet.core.task_names import find_task_name, match_task_names, task_id
from autounet.core.workspace import Workspace


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


def test_match_across_layouts_and_by_name_part() -> None:
    names = ["Task04_Hippocampus", "Task05_Prostate", "mytask"]
    assert match_task_names("Dataset004_Hippocampus", names) == ["Task04_Hippocampus"]
    assert match_task_names("hippocampus", names) == ["Task04_Hippocampus"]
    assert match_task_names("Task004", names) == ["Task04_Hippocampus"]
    assert match_task_names("Task04_Prostate", names) == []  # id and name must both agree
    assert match_task_names("MyTask", names) == ["mytask"]
    assert match_task_names("Task04_Hippocampus", names + ["Dataset004_Hippocampus"]) == ["Task04_Hippocampus"]


HIPPO, PROSTATE = "Task04_Hippocampus", "Task05_Prostate"


@pytest.mark.parametrize(("query", "expected"), [
    ("Task04", HIPPO), ("4", HIPPO), ("004", HIPPO), ("Task004", HIPPO), ("Task04_Hippocampus", HIPPO),
    ("Dataset004_Hippocampus", HIPPO), ("hippocampus", HIPPO), ("Task05", PROSTATE), ("Prostate", PROSTATE),
    ("Task09", None), ("Task05_Hippocampus", None)])
def test_every_stage_resolves_a_task_name_alike(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, query: str,
                                                expected: str | None) -> None:
    """plan_and_preprocess (raw folders), train (preprocessed) and predict (trained) agree on what a name means."""
    from autounet.errors import DatasetError
    from autounet.inference.model_choice import choose_task
    from autounet.task.dataset import find_task

    ws = Workspace(tmp_path / "ws")
    tasks = (HIPPO, PROSTATE)
    for name in tasks:
        (ws.raw / name).mkdir(parents=True)
        (ws.results(name) / "3d_fullres" / "fold_0").mkdir(parents=True)
    _preprocessed(ws, *tasks)
    monkeypatch.chdir(tmp_path)
    outcomes = []
    for resolve in (lambda: find_task(query, ws).name, lambda: find_task_name(query, ws),
                    lambda: choose_task(ws, query, tmp_path, [])):
        try:
            outcomes.append(resolve())
        except (AutounetError, DatasetError):
            outcomes.append(None)
    assert outcomes == [expected] * 3
