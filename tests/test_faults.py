"""Faults survived: preprocessing and prediction killed mid-way (kill -9), then rerun.

Each run is a real subprocess. A small wrapper patches one writer so that the kill lands at
a known point: in the middle of writing a case's arrays (a half-written temporary file is
left behind) or between cases. The rerun must complete, and no truncated file may ever be
taken for a finished one.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from autounet.preprocessing.case_store import CaseStore

from autounet.io.atomic import TMP_PREFIX

SRC = Path(__file__).resolve().parents[1] / "src"


def _run(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return _run(f"import sys; from autounet.cli import main; sys.exit(main({args!r}))", cwd)


@pytest.fixture()
def workspace(tmp_path: Path, demo_task_3d: Path) -> Path:
    ws = tmp_path / "ws"
    shutil.copytree(demo_task_3d, ws / "raw" / demo_task_3d.name)
    return ws


def test_preprocessing_killed_mid_write_then_rerun_completes(workspace: Path) -> None:
    """SIGKILL while the third case's image array is half written; the rerun finishes cleanly."""
    killed = _run(f"""
        import os, signal
        import numpy as np
        import autounet.io.atomic as atomic
        calls = {{"n": 0}}
        original = atomic.save_npy
        def dying_save_npy(path, array):
            calls["n"] += 1
            if calls["n"] == 5:
                with atomic.atomic_path(path, suffix=".npy", durable=False) as tmp:
                    with open(tmp, "wb") as fh:
                        fh.write(b"\\x93NUMPY half")
                        fh.flush()
                        os.kill(os.getpid(), signal.SIGKILL)
            return original(path, array)
        atomic.save_npy = dying_save_npy
        import autounet.preprocessing.case_store as store
        store.save_npy = dying_save_npy
        from autounet.cli import main
        main(["--workspace", {str(workspace)!r}, "plan_and_preprocess", "Task01", "-np", "0", "-c", "3d_fullres",
              "--no-progress"])
    """, cwd=workspace)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    folder = workspace / "preprocessed" / "Task01_Demo" / "3d_fullres"
    leftovers = [p.name for p in folder.iterdir() if p.name.startswith(TMP_PREFIX)]
    assert leftovers, "the kill should have left a half-written temporary file"
    finished_before = CaseStore(folder).case_ids()
    assert len(finished_before) < 8

    rerun = _cli(["--workspace", str(workspace), "plan_and_preprocess", "Task01", "-np", "0", "-c", "3d_fullres",
                  "--no-progress"], cwd=workspace)
    assert rerun.returncode == 0, rerun.stderr
    assert not [p for p in folder.iterdir() if p.name.startswith(TMP_PREFIX)]
    cases = CaseStore(folder).case_ids()
    assert len(cases) == 8 and set(finished_before) <= set(cases)
    for case in cases:
        data = np.load(folder / f"{case}.npy", mmap_mode="r")
        seg = np.load(folder / f"{case}_seg.npy", mmap_mode="r")
        assert data.shape[1:] == seg.shape and np.isfinite(np.asarray(data)).all()


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, demo_task_3d: Path) -> Path:
    """A (barely) trained 3d_fullres fold 0 on the small demo task, shared by the prediction tests."""
    workspace = tmp_path_factory.mktemp("faults") / "ws"
    shutil.copytree(demo_task_3d, workspace / "raw" / demo_task_3d.name)
    for args in (["plan_and_preprocess", "Task01", "-np", "0", "-c", "3d_fullres", "--gpu-memory", "1",
                  "--no-progress"],
                 ["train", "3d_fullres", "fold", "0", "--epochs", "1", "--iters-per-epoch", "1", "--val-iters", "1",
                  "--workers", "0", "--skip-validation"]):
        done = _cli(["--workspace", str(workspace), *args], cwd=workspace)
        assert done.returncode == 0, done.stderr
    return workspace


def test_prediction_killed_between_cases_then_continue(trained: Path) -> None:
    """SIGKILL after the first written prediction; `--continue` writes only the rest."""
    images = trained / "raw" / "Task01_Demo" / "imagesTs"
    out = trained / "preds_killed"
    killed = _run(f"""
        import os, signal
        import autounet.inference.predict_folder as pf
        original = pf.save_prediction
        def save_then_die(seg, geometry, path):
            original(seg, geometry, path)
            os.kill(os.getpid(), signal.SIGKILL)
        pf.save_prediction = save_then_die
        from autounet.cli import main
        main(["--workspace", {str(trained)!r}, "predict", "-i", {str(images)!r}, "-o", {str(out)!r},
              "--disable-tta", "--no-postprocessing"])
    """, cwd=trained)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    written = sorted(p.name for p in out.glob("*.nii.gz"))
    assert len(written) == 1
    first_mtime = (out / written[0]).stat().st_mtime_ns

    time.sleep(0.05)
    rerun = _cli(["--workspace", str(trained), "predict", "-i", str(images), "-o", str(out), "--disable-tta",
                  "--no-postprocessing", "--continue"], cwd=trained)
    assert rerun.returncode == 0, rerun.stderr
    expected = sorted(p.name for p in images.glob("*.nii.gz"))
    assert sorted(p.name for p in out.glob("*.nii.gz")) == expected
    assert (out / written[0]).stat().st_mtime_ns == first_mtime, "a finished prediction was redone"
    assert not [p for p in out.iterdir() if p.name.startswith(TMP_PREFIX)]


def _disk_full(*_: object, **__: object) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


def test_disk_full_while_preprocessing_is_one_line_and_keeps_finished_cases(
        workspace: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import autounet.preprocessing.case_store as case_store
    from autounet.cli import main

    original = case_store.save_npy
    calls = {"n": 0}

    def fill_up(path: Path, array: np.ndarray) -> None:
        calls["n"] += 1
        if calls["n"] > 4:
            _disk_full()
        original(path, array)

    monkeypatch.setattr(case_store, "save_npy", fill_up)
    code = main(["--workspace", str(workspace), "plan_and_preprocess", "Task01", "-np", "0", "-c", "3d_fullres",
                 "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "no space left on device" in err[0] and "rerun" in err[0]
    folder = workspace / "preprocessed" / "Task01_Demo" / "3d_fullres"
    finished = CaseStore(folder).case_ids()  # the case files and the folder's stamp, .preprocessing.json
    assert len(finished) == 2 and len(list(folder.glob("*.json"))) == 3
    assert not [p for p in folder.iterdir() if p.name.startswith(TMP_PREFIX)]
    for case in finished:
        assert np.load(folder / f"{case}.npy", mmap_mode="r").ndim == 4


def test_disk_full_while_predicting_stops_with_one_line_and_keeps_finished(
        trained: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import autounet.inference.predict_folder as predict_folder
    from autounet.cli import main

    original = predict_folder.save_prediction
    calls = {"n": 0}

    def fill_up(seg: np.ndarray, geometry: object, path: Path) -> None:
        calls["n"] += 1
        if calls["n"] > 1:
            _disk_full()
        original(seg, geometry, path)

    monkeypatch.setattr(predict_folder, "save_prediction", fill_up)
    out = trained / "preds_full"
    code = main(["--workspace", str(trained), "predict", "-i", str(trained / "raw" / "Task01_Demo" / "imagesTs"),
                 "-o", str(out), "--disable-tta", "--no-postprocessing"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "no space left on device" in err[-1] and "--continue" in err[-1]
    assert len(list(out.glob("*.nii.gz"))) == 1
    assert not [p for p in out.iterdir() if p.name.startswith(TMP_PREFIX)]
