"""Which trained model `autounet predict` uses when the user says nothing else.

Task: the one whose folder the user stands in (a dataset.json in the current or parent
folder naming a trained task), else the only trained task, else an error listing them.
Configuration: what find_best_configuration chose, else 3d_fullres, else the one with
trained folds. Every rule that fires is recorded in `ModelChoice.reason`, so the user
can see why a model was picked.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from autounet.errors import AutounetError
from autounet.core.run_layout import CHECKPOINT_FILES, FOLD_PREFIX, configuration_of_run, trained_folds
from autounet.core.task_names import match_task_names
from autounet.core.workspace import Workspace
from autounet.planners.plans import CONFIGURATION_NAMES

log = logging.getLogger(__name__)

POSTPROCESSING_FILE = "postprocessing.json"
DEFAULT_CONFIGURATION = "3d_fullres"


@dataclass
class ModelChoice:
    """The runs to ensemble (one, or several for an ensemble of configurations) and why."""

    task: str
    run_dirs: list[Path]
    configuration: str
    folds: dict[str, list[str]]
    postprocessing: Path | None
    reason: list[str] = field(default_factory=list)

    @property
    def run_dir(self) -> Path:
        return self.run_dirs[0]

    def describe(self) -> str:
        runs = ", ".join(f"{d.name} (folds {', '.join(self.folds[d.name])})" for d in self.run_dirs)
        pp = self.postprocessing.name if self.postprocessing else "none"
        return f"task {self.task}: {runs}; postprocessing: {pp}"


def _read_name(dataset_json: Path) -> str | None:
    try:
        data = json.loads(dataset_json.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    name = data.get("name") if isinstance(data, dict) else None
    return name if isinstance(name, str) else None


def _task_from_cwd(workspace: Workspace, trained: list[str], cwd: Path) -> str | None:
    """A trained task named by a dataset.json in `cwd` or its parent (by folder or by 'name')."""
    for folder in (cwd, cwd.parent):
        js = folder / "dataset.json"
        if not js.is_file():
            continue
        names = {folder.name}
        name = _read_name(js)
        if name:
            names.add(name)
        for task in trained:
            normalised = _read_name(workspace.preprocessed(task) / "dataset.json")
            if task in names or (normalised is not None and normalised in names):
                return task
    return None


def _match_task(query: str, trained: list[str]) -> str | None:
    """The one trained task `query` names (the rule of every command), None if none or several."""
    hits = match_task_names(query, trained)
    return hits[0] if len(hits) == 1 else None


def choose_task(workspace: Workspace, task: str | None, cwd: Path, reason: list[str]) -> str:
    trained = workspace.trained_tasks()
    listing = ", ".join(trained) if trained else "none"
    if task is not None:
        match = _match_task(task, trained)
        if match is None:
            raise AutounetError(f"task '{task}' has no trained model in {workspace.results_root} "
                                f"(trained tasks: {listing}); train it first or pick one with -t")
        reason.append(f"task {match} given with -t")
        return match
    found = _task_from_cwd(workspace, trained, cwd)
    if found:
        reason.append(f"task {found} from the dataset.json in {cwd}")
        return found
    if len(trained) == 1:
        reason.append(f"task {trained[0]}: the only trained task in the workspace")
        return trained[0]
    if not trained:
        raise AutounetError(f"no trained model in {workspace.results_root}; train one with `autounet train` "
                            f"or point --workspace at the right folder")
    raise AutounetError(f"several tasks are trained ({listing}); choose one with -t")


def pick_run(results_dir: Path, configuration: str, checkpoint: str = "final",
             prefer_suffix: str = "") -> tuple[Path, str]:
    """The run folder of `configuration` to use, and why.

    `configuration` may be a full run name (`3d_fullres__20ep_50it`). Otherwise among the runs
    of the configuration with trained folds: the one with `prefer_suffix`, else the
    default-length run (no suffix), else the only one, else the most recently trained.
    """
    results_dir = Path(results_dir)
    exact = results_dir / configuration
    if "__" in configuration and trained_folds(exact, checkpoint):
        return exact, f"run {configuration} given"
    runs = sorted(p for p in results_dir.glob(f"{configuration}*")
                  if p.is_dir() and configuration_of_run(p) == configuration and trained_folds(p, checkpoint))
    if not runs:
        raise AutounetError(f"{results_dir}: no run of {configuration} has a fold with "
                            f"{CHECKPOINT_FILES[checkpoint]}; train it or choose another with -c")
    by_name = {p.name: p for p in runs}
    if prefer_suffix and f"{configuration}__{prefer_suffix}" in by_name:
        return by_name[f"{configuration}__{prefer_suffix}"], f"run {configuration}__{prefer_suffix} (same budget)"
    if configuration in by_name:
        return by_name[configuration], f"run {configuration} (default training length)"
    if len(runs) == 1:
        return runs[0], f"run {runs[0].name}: the only run of {configuration}"

    def newest(p: Path) -> float:
        return max(c.stat().st_mtime for c in p.glob(f"{FOLD_PREFIX}*/{CHECKPOINT_FILES[checkpoint]}"))

    best = max(runs, key=newest)
    return best, (f"run {best.name}: the most recently trained of {len(runs)} runs of {configuration} "
                  f"({', '.join(p.name for p in runs)}); pass -c <run name> to choose another")


def _best_configuration(workspace: Workspace, task: str) -> dict | None:
    try:
        from autounet.core.run_layout import load_best_configuration
    except ImportError:  # evaluation not installed in this build
        return None
    return load_best_configuration(workspace, task)


def choose_model(workspace: Workspace, task: str | None = None, configuration: str | None = None,
                 cwd: Path | None = None, checkpoint: str = "final", postprocess: bool = True) -> ModelChoice:
    """Apply the model-choice rules (see the module docstring); errors say what to pass instead."""
    cwd = Path.cwd() if cwd is None else Path(cwd)
    reason: list[str] = []
    task = choose_task(workspace, task, cwd, reason)
    results = workspace.results(task)
    run_dirs: list[Path]
    postprocessing: Path | None = None
    best = _best_configuration(workspace, task) if configuration is None else None
    if best is not None:
        selected = best["selected"]
        run_dirs = [results / name for name in selected["run_names"]]
        missing = [d.name for d in run_dirs if not trained_folds(d, checkpoint)]
        if missing:
            raise AutounetError(f"{results / 'best_configuration.json'}: selected run(s) {missing} have no "
                                f"{CHECKPOINT_FILES[checkpoint]}; re-run find_best_configuration or pass -c")
        config_name = "+".join(configuration_of_run(d) for d in run_dirs)
        reason.append(f"{selected.get('name', config_name)} chosen by find_best_configuration")
        postprocessing = Path(best["postprocessing"])
    else:
        if configuration is None:
            trained_configs = sorted({configuration_of_run(p) for p in results.iterdir()
                                      if p.is_dir() and trained_folds(p, checkpoint)},
                                     key=lambda c: (CONFIGURATION_NAMES.index(c) if c in CONFIGURATION_NAMES
                                                    else len(CONFIGURATION_NAMES), c))
            if not trained_configs:
                raise AutounetError(f"{results}: no fold has {CHECKPOINT_FILES[checkpoint]}; finish training "
                                    f"or pass --checkpoint latest")
            if DEFAULT_CONFIGURATION in trained_configs:
                configuration = DEFAULT_CONFIGURATION
                reason.append(f"{configuration}: the default (find_best_configuration has not run)")
            else:
                configuration = trained_configs[0]
                others = f" (also trained: {', '.join(trained_configs[1:])})" if len(trained_configs) > 1 else ""
                reason.append(f"{configuration}: the trained configuration{others}")
        run_dir, why = pick_run(results, configuration, checkpoint)
        reason.append(why)
        run_dirs = [run_dir]
        config_name = configuration_of_run(run_dir)
        candidate = run_dir / POSTPROCESSING_FILE
        postprocessing = candidate if candidate.is_file() else None
    if not postprocess:
        postprocessing = None
        reason.append("postprocessing disabled")
    elif postprocessing is None or not postprocessing.is_file():
        postprocessing = None
        reason.append("no postprocessing decision (find_best_configuration has not run for it)")
    folds = {d.name: trained_folds(d, checkpoint) for d in run_dirs}
    return ModelChoice(task=task, run_dirs=run_dirs, configuration=config_name, folds=folds,
                       postprocessing=postprocessing, reason=reason)
