"""doctor: a task whose only fold is still running is not listed as trained."""

from __future__ import annotations

from pathlib import Path

from autounet.commands.doctor import doctor_report
from autounet.core.run_layout import FINAL, LATEST, fold_states
from autounet.core.workspace import Workspace


def test_running_folds_are_in_training_and_finished_ones_trained(tmp_path: Path) -> None:
    ws = Workspace(tmp_path)
    running = ws.results("Task01_Running") / "3d_fullres" / "fold_0"
    running.mkdir(parents=True)
    (running / LATEST).write_bytes(b"x")
    for fold in (0, 1):
        done = ws.results("Task02_Done") / "3d_fullres" / f"fold_{fold}"
        done.mkdir(parents=True)
        (done / FINAL).write_bytes(b"x")
    assert fold_states(ws) == {"Task01_Running": (0, 1), "Task02_Done": (2, 0)}
    report = doctor_report(ws)
    trained = next(line for line in report.splitlines() if line.strip().startswith("trained"))
    in_training = next(line for line in report.splitlines() if line.strip().startswith("in training"))
    assert "Task02_Done (2 folds)" in trained and "Task01_Running" not in trained
    assert "Task01_Running (1 fold)" in in_training
