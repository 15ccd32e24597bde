"""`autounet compare RUN_A RUN_B`: two runs' cross-validation Dice side by side, paired per case.

Made for ablations (`train ... --blocks se` against the same run without), fine-tuning against
training from scratch, or a preset against the default plans: the same cases were validated by
both, so the per-case difference says more than two means.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autounet.core.run_layout import FOLD_PREFIX, VALIDATION_FOLDER, validation_summary
from autounet.core.workspace import Workspace
from autounet.errors import AutounetError
from autounet.evaluation.paired import PairedDifference, paired_difference
from autounet.io.atomic import read_json
from autounet.io.images import strip_ending



@dataclass
class RunScores:
    """Per-case foreground Dice of one run's validated folds, and per target."""

    folder: Path
    case_dice: dict[str, float] = field(default_factory=dict)
    case_fold: dict[str, str] = field(default_factory=dict)
    target_dice: dict[str, dict[str, float]] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    #: target key ("1", or "1,2" for a region) -> its name in the run's plans
    target_names: dict[str, str] = field(default_factory=dict)


def resolve_run(workspace: Workspace, text: str, task: str | None) -> Path:
    """A run folder given as a path, or as a run name under the task's results."""
    path = Path(text)
    if path.is_dir():
        return path
    if task is not None:
        from autounet.core.task_names import match_task_names

        hits = match_task_names(task, workspace.trained_tasks())
        if len(hits) == 1 and (workspace.results(hits[0]) / text).is_dir():
            return workspace.results(hits[0]) / text
    raise AutounetError(f"compare: run '{text}' not found; give a run folder (results/<task>/<run>) or a run name "
                        f"with -t TASK")


def _case_score(row: dict[str, Any]) -> tuple[float, dict[str, float]]:
    per_target = {k: float(v.get("Dice", float("nan"))) for k, v in row["metrics"].items() if k != "0"}
    finite = [v for v in per_target.values() if not math.isnan(v)]
    return (sum(finite) / len(finite) if finite else float("nan")), per_target


def load_run_scores(folder: Path) -> RunScores:
    """Every fold's validation/summary.json of a run; refused where no fold was validated."""
    scores = RunScores(folder)
    summaries = sorted(p for p in map(validation_summary, folder.glob(f"{FOLD_PREFIX}*")) if p.is_file())
    if not summaries:
        raise AutounetError(f"{folder}: no fold has {VALIDATION_FOLDER}/summary.json; train folds with validation "
                            f"(without --skip-validation) first")
    for path in summaries:
        fold = path.parent.parent.name[len(FOLD_PREFIX):]
        summary = read_json(path, allow_nan=True)
        for row in summary.get("metric_per_case", []):
            case = strip_ending(Path(row["prediction_file"]).name)
            scores.case_dice[case], scores.target_dice[case] = _case_score(row)
            scores.case_fold[case] = fold
        manifest = path.parent.parent / "run.json"
        if manifest.is_file() and not scores.settings:
            scores.settings = dict(read_json(manifest).get("settings", {}))
    scores.target_names = _target_names(folder)
    return scores


def _target_names(folder: Path) -> dict[str, str]:
    """Names of the labels (or regions) from the run's own plans.json; none where it cannot be read."""
    from autounet.planners.plans import load_plans

    try:
        plans = load_plans(folder / "plans.json")
    except AutounetError:
        return {}
    if plans.regions:
        return {",".join(str(v) for v in r.values): r.name for r in plans.regions}
    return {str(value): name for name, value in plans.labels.items()}


def identity_differences(a: RunScores, b: RunScores) -> list[str]:
    """The settings that make the two runs different models, `name: A -> B`."""
    from autounet.training.settings import TrainingSettings

    return [f"{k}: {a.settings.get(k)!r} -> {b.settings.get(k)!r}" for k in TrainingSettings.identity_fields()
            if a.settings.get(k) != b.settings.get(k)]


def _mean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else float("nan")


def format_comparison(a: RunScores, b: RunScores, result: PairedDifference) -> str:
    """Per fold and per target means of the common cases, then the paired difference."""
    common = sorted(set(a.case_dice) & set(b.case_dice))
    lines = [f"A: {a.folder}", f"B: {b.folder}"]
    differences = identity_differences(a, b)
    if differences:
        lines.append("differ in: " + "; ".join(differences))
    lines += ["", f"{'fold':<6}{'cases':>6}{'A Dice':>10}{'B Dice':>10}{'B - A':>10}"]
    for fold in sorted({a.case_fold[c] for c in common}, key=lambda f: (not f.isdigit(), f)):
        cases = [c for c in common if a.case_fold[c] == fold]
        ma, mb = _mean([a.case_dice[c] for c in cases]), _mean([b.case_dice[c] for c in cases])
        lines.append(f"{fold:<6}{len(cases):>6}{ma:>10.4f}{mb:>10.4f}{mb - ma:>+10.4f}")
    ma, mb = _mean([a.case_dice[c] for c in common]), _mean([b.case_dice[c] for c in common])
    lines.append(f"{'all':<6}{len(common):>6}{ma:>10.4f}{mb:>10.4f}{mb - ma:>+10.4f}")
    targets = sorted({t for c in common for t in a.target_dice[c]})
    if len(targets) > 1:
        width = max(10, *(len(f"{t} {a.target_names.get(t, '')}") + 2 for t in targets))
        lines += ["", f"{'target':<{width}}{'A Dice':>10}{'B Dice':>10}{'B - A':>10}"]
        for t in targets:
            ta = _mean([a.target_dice[c].get(t, float("nan")) for c in common])
            tb = _mean([b.target_dice[c].get(t, float("nan")) for c in common])
            label = f"{t} {a.target_names.get(t, '')}".strip()
            lines.append(f"{label:<{width}}{ta:>10.4f}{tb:>10.4f}{tb - ta:>+10.4f}")
    only = sorted(set(a.case_dice) ^ set(b.case_dice))
    if only:
        lines.append(f"\n{len(only)} case(s) validated by one run only are left out (other folds trained)")
    lines += ["", result.describe()]
    return "\n".join(lines)


def compare_runs(workspace: Workspace, run_a: str, run_b: str, task: str | None = None) -> str:
    """The printed comparison of two runs."""
    a = load_run_scores(resolve_run(workspace, run_a, task))
    b = load_run_scores(resolve_run(workspace, run_b, task))
    return format_comparison(a, b, paired_difference(a.case_dice, b.case_dice))
