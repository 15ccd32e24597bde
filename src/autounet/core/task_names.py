"""Resolve what a user typed (`Task01`, `1`, `Dataset001_X`, a full name) to a workspace task name.

Used by commands that work on stages after preprocessing (plans, train, find_best...), where
the task is identified by its folder under `preprocessed/` rather than its raw folder.
"""

from __future__ import annotations

import re
from pathlib import Path

from autounet.errors import AutounetError
from autounet.core.workspace import Workspace

#: A task folder name: `Task01`, `Task001_Name`, `Dataset001_Name` (case-insensitive prefix).
TASK_FOLDER = re.compile(r"^(?P<prefix>Task|Dataset)(?P<id>\d+)(?:_(?P<name>.+))?$", re.IGNORECASE)


def parse_task_name(name: str) -> tuple[int | None, str | None]:
    """(id, name part) of `Task01_Liver` -> (1, 'Liver'), `1` -> (1, None), `Liver` -> (None, 'Liver')."""
    if name.isdigit():
        return int(name), None
    m = TASK_FOLDER.match(name)
    if m:
        return int(m.group("id")), m.group("name")
    return None, name


def task_id(name: str) -> int | None:
    """The integer id in `Task01`, `Task001_X`, `Dataset001_X` or `1`; None for other names."""
    return parse_task_name(name)[0]


def match_task_names(query: str, candidates: list[str]) -> list[str]:
    """Candidates that `query` names. The one rule every command uses (raw, preprocessed, trained).

    An exact name wins. Otherwise the query's id (`1`, `Task01`, `Dataset001`) must equal the
    candidate's and its name part (`Liver`, `Task01_Liver`) must equal the candidate's, ignoring
    case; so `Dataset004_Hippocampus` finds `Task04_Hippocampus` and `hippocampus` finds both.
    """
    if query in candidates:
        return [query]
    q_id, q_name = parse_task_name(query)
    found = []
    for candidate in candidates:
        c_id, c_name = parse_task_name(candidate)
        if q_id is not None and c_id != q_id:
            continue
        if q_name is not None and (c_name or "").lower() != q_name.lower():
            continue
        found.append(candidate)
    return found


def find_task_name(query: str | None, workspace: Workspace, require_preprocessed: bool = True) -> str:
    """The preprocessed (or trained) task that `query` names; None means 'the only one'."""
    candidates = workspace.preprocessed_tasks() if require_preprocessed else workspace.trained_tasks()
    where = workspace.preprocessed_root if require_preprocessed else workspace.results_root
    if query is not None and Path(query).is_dir() and (Path(query) / "dataset.json").is_file():
        query = Path(query).resolve().name
    if query is None:
        if len(candidates) == 1:
            return candidates[0]
        if not candidates:
            raise AutounetError(f"no task found in {where}; run `autounet plan_and_preprocess <task>` first")
        raise AutounetError(f"several tasks in {where} ({', '.join(candidates)}); choose one with -t")
    found = match_task_names(query, candidates)
    if len(found) == 1:
        return found[0]
    if not found:
        raise AutounetError(
            f"task '{query}' not found in {where} (found: {', '.join(candidates) or 'none'}); "
            "run `autounet plan_and_preprocess <task>` first")
    raise AutounetError(f"task '{query}' is ambiguous in {where}: {', '.join(found)}; give the full name")
