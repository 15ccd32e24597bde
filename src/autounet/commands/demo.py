"""`autounet demo`: the whole pipeline on the synthetic demo task, on a CPU, in minutes.

Writes the demo task into the workspace, plans it for a small memory target (a CPU has no
GPU memory to plan for, and small patches keep a CPU epoch short), preprocesses, trains
fold 0 of the 3D (or 2D) configuration for a short budget that is recorded in the run's
name, predicts the held-out cases, evaluates them and writes the HTML report. Test-time
mirroring is off in the demo: on a CPU it multiplies prediction time by 8 in 3D.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from autounet.core.workspace import Workspace

log = logging.getLogger(__name__)

DEMO_GPU_MEMORY_GB = 2.0
DEMO_BUDGET = {"3d_fullres": (10, 30), "2d": (10, 40)}
DEMO_VAL_ITERS = 10


@dataclass
class DemoResult:
    task: str
    configuration: str
    dice: float
    seconds: float
    predictions: Path
    report: Path


def _step(number: int, total: int, text: str) -> None:
    log.info("[%d/%d] %s", number, total, text)


def run_demo(workspace: Workspace, two_d: bool = False, epochs: int | None = None,
             iters_per_epoch: int | None = None, device: str = "auto", workers: int | None = None) -> DemoResult:
    from autounet.evaluation.evaluate import evaluate_folder
    from autounet.inference.predict_folder import predict_folder
    from autounet.task.dataset import load_task
    from autounet.task.demo_data import write_demo_task
    from autounet.commands.plan_and_preprocess import plan_and_preprocess
    from autounet.reporting.html_report import write_report
    from autounet.training.run_training import run_training
    from autounet.training.settings import TrainingSettings

    start = time.monotonic()
    configuration = "2d" if two_d else "3d_fullres"
    default_epochs, default_iters = DEMO_BUDGET[configuration]
    total = 6

    _step(1, total, "writing the demo task")
    task_dir = write_demo_task(workspace.raw, two_d=two_d, seed=0)
    task = load_task(task_dir)

    _step(2, total, f"planning for {DEMO_GPU_MEMORY_GB:g} GB and preprocessing {configuration}")
    plan_and_preprocess(workspace, str(task_dir), gpu_memory_gb=DEMO_GPU_MEMORY_GB, configurations=[configuration])

    _step(3, total, f"training {configuration} fold 0")
    settings = TrainingSettings(epochs=epochs or default_epochs, iters_per_epoch=iters_per_epoch or default_iters,
                                val_iters=DEMO_VAL_ITERS, device=device, workers=workers,
                                validation_mirroring=False)
    fold_dir = run_training(workspace, task.name, configuration, 0, settings)

    _step(4, total, "predicting the held-out demo cases")
    predictions = workspace.results(task.name) / "demo_predictions"
    inputs = task_dir / "imagesTs"
    report = predict_folder(workspace, inputs, predictions, task=task.name, configuration=fold_dir.parent.name,
                            device=device, use_mirroring=False)
    if report.failed:
        from autounet.errors import AutounetError

        raise AutounetError(f"prediction failed for {', '.join(report.failed)}")

    _step(5, total, "evaluating against the demo's test labels")
    targets = [tuple(r.values) for r in task.regions] if task.regions else sorted(task.labels.values())
    summary = evaluate_folder(task_dir / "labelsTs", predictions, targets, ignore_label=task.ignore_label)
    dice = float(summary["foreground_mean"]["Dice"])

    _step(6, total, "writing the report")
    report_path = write_report(workspace, task.name)
    return DemoResult(task.name, configuration, dice, time.monotonic() - start, predictions, report_path)
