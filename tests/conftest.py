"""Fixtures shared by every test directory: small demo tasks and the real data folder.

The demo tasks are session-scoped (generated once per run, about a second): treat them as
read-only and copy them (`shutil.copytree`) before changing anything.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
from collections.abc import Iterator
from typing import Any
from pathlib import Path

import pytest

from autounet.task.demo_data import write_demo_task

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

# The suite runs with --import-mode=importlib, which puts no test folder on sys.path; the
# refusal catalogues share their harness (refusals.py) from here.
_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)


@pytest.fixture(scope="session")
def demo_task_3d(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small 3D MSD-layout demo task `Task01_Demo` (8 training, 2 test cases, seed 0)."""
    return write_demo_task(tmp_path_factory.mktemp("demo3d"), num_training=8, num_test=2, seed=0)


@pytest.fixture(scope="session")
def demo_task_2d(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small 2D MSD-layout demo task `Task02_Demo2D` (12 training, 2 test cases, seed 0)."""
    return write_demo_task(tmp_path_factory.mktemp("demo2d"), two_d=True, num_training=12, num_test=2, seed=0)


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """`../shared/data` beside the repository; the test is skipped where it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real test data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _drop_cli_log_handler() -> Iterator[None]:
    """cli.main binds a stdout log handler to the root logger on its first call (to the stdout
    of that moment, e.g. capsys's); drop it after each test so the next one's capture is clean."""
    root = logging.getLogger()
    level = root.level
    yield
    for handler in [h for h in root.handlers if getattr(h, "_autounet", False)]:
        root.removeHandler(handler)
    root.setLevel(level)


@pytest.fixture(scope="session")
def end_to_end_run(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The trained run of tests/test_end_to_end.py, built once per session, for other test modules.

    Test modules are imported with importlib mode and cannot import each other, so the module
    is loaded here once; its own marker file keeps the training from running twice.
    """
    name = "autounet_tests_end_to_end"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).parent / "test_end_to_end.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name].end_to_end_run(tmp_path_factory)


@pytest.fixture(scope="session")
def planned_workspace(demo_task_3d: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A planned workspace with a tiny two-channel 'trained' run (refusals.build_planned_workspace); read-only."""
    from refusals import build_planned_workspace

    return build_planned_workspace(demo_task_3d, tmp_path_factory.mktemp("planned") / "ws")


@pytest.fixture
def predict_scene(planned_workspace: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A private copy of the planned workspace and an empty prediction input folder; cwd is its root."""
    import shutil

    from refusals import Scene

    scene = Scene(tmp_path.resolve())
    shutil.copytree(planned_workspace, scene.ws)
    scene.images.mkdir()
    monkeypatch.chdir(scene.root)
    return scene
