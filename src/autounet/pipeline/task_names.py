"""Resolve what a user typed (`Task01`, `1`, `Dataset001_X`, a full name) to a workspace task name.

Used by commands that work on stages after preprocessing (plans, train, find_best...), where
the task is identified by its folder under `preprocessed/` rather than its raw folder.
"""

from __future__ import annotations

import re
from pathlib import Path

from autounet.errors import AutounetError
from autounet.pipeline.workspace import Workspace

_ID_PATTERN = re.compile(r"^(?:Task|Dataset)?0*(\d+)(?:_.*)?$", re.IGNORECASE)


def task_id(name: str) -> int | None:
    """The integer id in `Task01`, `Task001_X`, `Dataset001_X` or `1`; None for other names."""
    m = _ID_PATTERN.match(name)
    return int(m.group(1)) if m else None


def match_task_names(query: str, candidates: list[str]) -> list[str]:
    """Candidates that `query` names: exact name first, else the same integer id."""
    if query in candidates:
        return [query]
    qid = task_id(query)
    if qid is None:
        return [c for c in candidates if c.lower() == query.lower()]
    return [c for c in candidates if task_id(c) == qid and (not query.count("_") or c == query)]


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
