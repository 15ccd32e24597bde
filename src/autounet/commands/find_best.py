"""Choose what `predict` uses: the best single run or pair of runs by cross-validation Dice.

For every trained run of a task the folds' validation predictions are gathered into
`<run>/crossval_results/` and evaluated against `preprocessed/<task>/gt_segmentations/`; every pair
of runs whose folds all saved probabilities is ensembled into `results/<task>/ensembles/<a>+<b>/`
and evaluated too. The candidate with the highest foreground-mean Dice wins (an exact tie prefers
a single run: cheaper to predict); the postprocessing is decided on the winner's cross-validation
predictions. The result goes to `results/<task>/best_configuration.json` (paths in it are relative
to `results/<task>/`, so a moved workspace keeps working) and a readable `best_configuration.txt`.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autounet.errors import DatasetError
from autounet.evaluation.evaluate import evaluate_folder, list_label_files, target_key
from autounet.evaluation.summary_table import format_candidates
from autounet.inference.ensemble import ensemble_folders
from autounet.io.atomic import is_temporary, write_json, write_text
from autounet.io.images import strip_ending
from autounet.core.run_layout import BEST_CONFIGURATION_FILE, VALIDATION_FOLDER, fold_folder_name
from autounet.core.workspace import Workspace, resolve_workspace
from autounet.planners.plans import Plans, load_plans
from autounet.postprocessing.decision import determine_postprocessing
from autounet.postprocessing.rule import save_postprocessing

log = logging.getLogger(__name__)

CROSSVAL_FOLDER = "crossval_results"
ENSEMBLES_FOLDER = "ensembles"
POSTPROCESSING_FILE = "postprocessing.json"


@dataclass
class TrainedRun:
    """One run folder with the folds whose validation predictions exist."""

    name: str
    folder: Path
    folds: list[int]
    missing_folds: list[int]
    crossval_dir: Path = field(init=False)

    def __post_init__(self) -> None:
        self.crossval_dir = self.folder / CROSSVAL_FOLDER

    @property
    def configuration(self) -> str:
        """The configuration part of the run name (`3d_fullres__50ep_100it` -> `3d_fullres`)."""
        return self.name.split("__", 1)[0]


def _as_workspace(workspace: Workspace | str | os.PathLike[str]) -> Workspace:
    return workspace if isinstance(workspace, Workspace) else resolve_workspace(workspace)


def _validation_dir(run_folder: Path, fold: int) -> Path:
    return run_folder / fold_folder_name(fold) / VALIDATION_FOLDER


def discover_runs(results_dir: Path, configurations: Sequence[str] | None,
                  folds: Sequence[int]) -> list[TrainedRun]:
    """Run folders with validation predictions for at least one requested fold, sorted by name.

    `configurations` filters by run name or by configuration name.
    """
    if not results_dir.is_dir():
        raise DatasetError(f"{results_dir}: no results for this task; train it first (autounet train)")
    runs: list[TrainedRun] = []
    for folder in sorted(p for p in results_dir.iterdir() if p.is_dir() and p.name != ENSEMBLES_FOLDER):
        if not any(folder.glob("fold_*")):
            continue
        if configurations and folder.name not in configurations and folder.name.split("__", 1)[0] not in configurations:
            continue
        present = [k for k in folds if _validation_dir(folder, k).is_dir()
                   and list_label_files(_validation_dir(folder, k))]
        missing = [k for k in folds if k not in present]
        if not present:
            log.warning("%s: no validation predictions for folds %s; skipped", folder, list(folds))
            continue
        if missing:
            log.warning("%s: folds %s have no validation predictions (not trained or not finished); "
                        "using folds %s", folder.name, missing, present)
        runs.append(TrainedRun(folder.name, folder, present, missing))
    if not runs:
        which = f" matching {list(configurations)}" if configurations else ""
        raise DatasetError(
            f"{results_dir}: no trained run{which} has validation predictions for folds {list(folds)}; "
            "train folds first (autounet train) or choose the folds with -f"
        )
    return runs


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def gather_crossval(run: TrainedRun) -> tuple[list[str], bool]:
    """Collect the folds' validation predictions (and probabilities) into `<run>/crossval_results/`.

    Rebuilt from scratch each time so that a previous call with other folds leaves nothing stale.
    Returns (case ids, whether every case has saved probabilities).
    """
    if run.crossval_dir.exists():
        shutil.rmtree(run.crossval_dir)
    run.crossval_dir.mkdir(parents=True)
    seen: dict[str, int] = {}
    all_probabilities = True
    for fold in run.folds:
        vdir = _validation_dir(run.folder, fold)
        for name, path in list_label_files(vdir).items():
            case = strip_ending(name)
            if case in seen:
                raise DatasetError(f"{path}: case {case} is also in the validation of fold {seen[case]}; "
                                   "cross-validation folds must not overlap (check splits.json)")
            seen[case] = fold
            _link_or_copy(path, run.crossval_dir / name)
            npz = vdir / f"{case}.npz"
            if npz.is_file() and not is_temporary(npz):
                _link_or_copy(npz, run.crossval_dir / npz.name)
            else:
                all_probabilities = False
    return sorted(seen), all_probabilities


def _task_plans(ws: Workspace, task: str, runs: list[TrainedRun]) -> Plans:
    """Plans of the task from the first run folder (self-contained copy), else the preprocessed folder."""
    for run in runs:
        if (run.folder / "plans.json").is_file():
            return load_plans(run.folder / "plans.json")
    return load_plans(ws.preprocessed(task) / "plans.json")


def _candidate(name: str, kind: str, runs: list[TrainedRun], folder: Path, summary: dict[str, Any],
               results_dir: Path) -> dict[str, Any]:
    return {
        "name": name,
        "kind": kind,
        "run_names": [r.name for r in runs],
        "configurations": [r.configuration for r in runs],
        "folds": sorted(set.intersection(*(set(r.folds) for r in runs))),
        "folder": folder.relative_to(results_dir).as_posix(),
        "num_cases": summary["num_cases"],
        "foreground_mean_dice": summary["foreground_mean"]["Dice"],
        "per_label": {label: entry["Dice"] for label, entry in summary["mean"].items()},
    }


def _score(candidate: dict[str, Any]) -> tuple[float, bool]:
    dice = candidate["foreground_mean_dice"]
    return (-math.inf if dice is None or math.isnan(dice) else dice, candidate["kind"] == "single")


def find_best_configuration(
    workspace: Workspace | str | os.PathLike[str],
    task: str,
    configurations: Sequence[str] | None = None,
    folds: Sequence[int] = (0, 1, 2, 3, 4),
    allow_ensembles: bool = True,
    num_workers: int = 0,
) -> dict[str, Any]:
    """Evaluate every trained run (and pair of runs), pick the best, decide its postprocessing.

    Returns the content written to `results/<task>/best_configuration.json`.
    """
    ws = _as_workspace(workspace)
    results_dir = ws.results(task)
    gt_dir = ws.preprocessed(task) / "gt_segmentations"
    if not gt_dir.is_dir():
        raise DatasetError(f"{gt_dir}: reference segmentations not found; run `autounet plan_and_preprocess {task}`")
    runs = discover_runs(results_dir, configurations, folds)
    plans = _task_plans(ws, task, runs)
    fg_labels = plans.evaluation_targets
    ignore = plans.ignore_label

    candidates: list[dict[str, Any]] = []
    probability_cases: dict[str, list[str]] = {}
    for run in runs:
        cases, has_probabilities = gather_crossval(run)
        summary = evaluate_folder(gt_dir, run.crossval_dir, fg_labels, num_workers=num_workers, allow_missing=True,
                                  ignore_label=ignore)
        candidates.append(_candidate(run.name, "single", [run], run.crossval_dir, summary, results_dir))
        log.info("%s (folds %s): foreground Dice %.4f", run.name, run.folds, summary["foreground_mean"]["Dice"])
        if has_probabilities:
            probability_cases[run.name] = cases
        else:
            log.info("%s: not every fold saved probabilities; it is left out of ensembles", run.name)

    if allow_ensembles:
        for a, b in itertools.combinations([r for r in runs if r.name in probability_cases], 2):
            if probability_cases[a.name] != probability_cases[b.name]:
                log.warning("%s and %s cover different cases (folds %s vs %s); not ensembled",
                            a.name, b.name, a.folds, b.folds)
                continue
            name = f"{a.name}+{b.name}"
            out = results_dir / ENSEMBLES_FOLDER / name
            if out.exists():
                shutil.rmtree(out)
            ensemble_folders([a.crossval_dir, b.crossval_dir], out, num_workers=num_workers)
            summary = evaluate_folder(gt_dir, out, fg_labels, num_workers=num_workers, allow_missing=True,
                                      ignore_label=ignore)
            candidates.append(_candidate(name, "ensemble", [a, b], out, summary, results_dir))
            log.info("%s: foreground Dice %.4f", name, summary["foreground_mean"]["Dice"])

    best = max(candidates, key=_score)
    best_folder = results_dir / best["folder"]
    decision = determine_postprocessing(best_folder, gt_dir, fg_labels, num_workers=num_workers, ignore_label=ignore)
    pp_path = (results_dir / best["run_names"][0] if best["kind"] == "single" else best_folder) / POSTPROCESSING_FILE
    save_postprocessing(decision, pp_path)
    log.info("selected %s; postprocessing: %s", best["name"], decision.describe())

    result: dict[str, Any] = {
        "task": task,
        "selected": {
            "name": best["name"],
            "kind": best["kind"],
            "run_names": best["run_names"],
            "configurations": best["configurations"],
            "folds": best["folds"],
            "foreground_mean_dice": best["foreground_mean_dice"],
        },
        "postprocessing": pp_path.relative_to(results_dir).as_posix(),
        "postprocessing_summary": decision.describe(),
        "candidates": sorted(candidates, key=_score, reverse=True),
    }
    write_json(results_dir / BEST_CONFIGURATION_FILE, result)
    label_names = {target_key(t): name for t, name in zip(fg_labels, plans.output_names)}
    table = format_candidates(candidates, label_names, selected=best["name"])
    write_text(results_dir / "best_configuration.txt",
               f"Model selection for {task} (cross-validation, foreground-mean Dice)\n\n{table}\n\n"
               f"postprocessing: {decision.describe()}\n")
    return result
