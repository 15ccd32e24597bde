"""The layout of a trained run, spelled once: fold folders, checkpoint files, run names, and where
the chosen model (best_configuration.json) lives.

    results/<task>/<configuration>[__<budget>]/fold_<k>/checkpoint_{final,best,latest}.pt
    results/<task>/best_configuration.json

Training writes this layout, prediction, model selection and model sharing read it; none of
them spells a file name of its own.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from autounet.core.workspace import Workspace, resolve_workspace
from autounet.errors import AutounetError, DatasetError
from autounet.io.atomic import read_json

FOLD_PREFIX = "fold_"
LATEST = "checkpoint_latest.pt"
BEST = "checkpoint_best.pt"
FINAL = "checkpoint_final.pt"
CHECKPOINT_FILES = {"final": FINAL, "best": BEST, "latest": LATEST}
BEST_CONFIGURATION_FILE = "best_configuration.json"
VALIDATION_FOLDER = "validation"
"""fold_<k>/validation/: the fold's validation cases predicted whole, and their summary.json."""
RUN_NAME_SEPARATOR = "__"
"""`3d_fullres__20ep_50it`: the configuration, then the training budget where it is not the default."""


def fold_name(fold: int | str) -> str:
    """'0'..'4' or 'all' from an int or a CLI string; anything else is refused."""
    text = str(fold).strip()
    if text.removeprefix(FOLD_PREFIX) == "all":
        return "all"
    try:
        return str(int(text.removeprefix(FOLD_PREFIX)))
    except ValueError:
        raise AutounetError(f"fold '{fold}' is not a fold number or 'all'") from None


def fold_folder_name(fold: int | str) -> str:
    return f"{FOLD_PREFIX}{fold}"


def validation_summary(fold_dir: Path) -> Path:
    """fold_<k>/validation/summary.json: the evaluation of the fold's validation predictions."""
    return Path(fold_dir) / VALIDATION_FOLDER / "summary.json"


def trained_folds(run_dir: Path, checkpoint: str = "final") -> list[str]:
    """Folds of a run that have the requested checkpoint, numeric folds first, in order."""
    if checkpoint not in CHECKPOINT_FILES:
        raise AutounetError(f"checkpoint '{checkpoint}' is not one of {sorted(CHECKPOINT_FILES)}")
    names = [p.name[len(FOLD_PREFIX):] for p in Path(run_dir).glob(FOLD_PREFIX + "*")
             if (p / CHECKPOINT_FILES[checkpoint]).is_file()]
    return sorted(names, key=lambda n: (not n.isdigit(), int(n) if n.isdigit() else 0, n))


def fold_states(workspace: Workspace) -> dict[str, tuple[int, int]]:
    """Per task in results/: (folds with a final checkpoint, folds still without one: running or stopped)."""
    states: dict[str, tuple[int, int]] = {}
    if not workspace.results_root.is_dir():
        return states
    for task in sorted(p for p in workspace.results_root.iterdir() if p.is_dir()):
        folds = [f for f in task.glob(f"*/{FOLD_PREFIX}*") if f.is_dir()]
        finished = sum(1 for f in folds if (f / FINAL).is_file())
        if folds:
            states[task.name] = (finished, len(folds) - finished)
    return states


def configuration_of_run(run_dir: Path) -> str:
    """`3d_fullres__20ep_50it` -> `3d_fullres` (run names carry the configuration first)."""
    return Path(run_dir).name.split(RUN_NAME_SEPARATOR, 1)[0]


def load_best_configuration(workspace: Workspace | str | os.PathLike[str], task: str) -> dict[str, Any] | None:
    """best_configuration.json of a task with "postprocessing" made absolute; None if never written."""
    ws = workspace if isinstance(workspace, Workspace) else resolve_workspace(workspace)
    results_dir = ws.results(task)
    path = results_dir / BEST_CONFIGURATION_FILE
    if not path.is_file():
        return None
    data = read_json(path, allow_nan=True)
    if not isinstance(data, dict) or "selected" not in data or "postprocessing" not in data:
        raise DatasetError(f"{path}: not a best-configuration file; re-run `autounet find_best_configuration {task}`")
    data["postprocessing"] = str(results_dir / data["postprocessing"])
    return data
