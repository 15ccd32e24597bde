"""One workspace root instead of several environment variables.

Resolution order: the `--workspace` argument, else `$AUTOUNET_HOME`, else `~/autounet`.
Inside it: `raw/` (tasks as given by the user), `preprocessed/<task>/` (fingerprint, plans,
splits, preprocessed arrays per configuration) and `results/<task>/` (trained runs).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

ENV_VAR = "AUTOUNET_HOME"


@dataclass(frozen=True)
class Workspace:
    root: Path

    @property
    def raw(self) -> Path:
        return self.root / "raw"

    @property
    def preprocessed_root(self) -> Path:
        return self.root / "preprocessed"

    @property
    def results_root(self) -> Path:
        return self.root / "results"

    def preprocessed(self, task: str) -> Path:
        """`preprocessed/<task>/`: fingerprint.json, plans.json, splits.json, dataset.json, <config>/."""
        return self.preprocessed_root / task

    def results(self, task: str) -> Path:
        """`results/<task>/`: one folder per trained run (see training.run_identity)."""
        return self.results_root / task

    def preprocessed_tasks(self) -> list[str]:
        """Tasks with plans (plans.json, or named plans plans__<name>.json) in the workspace, sorted."""
        if not self.preprocessed_root.is_dir():
            return []
        return sorted(p.name for p in self.preprocessed_root.iterdir()
                      if (p / "plans.json").is_file() or any(p.glob("plans__*.json")))

    def trained_tasks(self) -> list[str]:
        """Tasks with at least one finished or running fold in results/, sorted."""
        if not self.results_root.is_dir():
            return []
        return sorted(p.name for p in self.results_root.iterdir() if p.is_dir() and any(p.glob("*/fold_*")))


def resolve_workspace(cli_value: str | os.PathLike[str] | None = None) -> Workspace:
    """The workspace named on the command line, else $AUTOUNET_HOME, else ~/autounet."""
    if cli_value:
        root = Path(cli_value)
    elif os.environ.get(ENV_VAR):
        root = Path(os.environ[ENV_VAR])
    else:
        root = Path.home() / "autounet"
    return Workspace(root.expanduser().resolve())
