"""The one-way layers of pyproject.toml ([tool.importlinter]) hold, and would catch a wrong import.

Run by hand with `lint-imports` in the repository root.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"


def _lint(src: Path) -> subprocess.CompletedProcess[str]:
    """lint-imports on the autounet package found under `src`, with the project's contracts."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    code = "import sys; from importlinter.cli import lint_imports; sys.exit(lint_imports(no_cache=True, no_logo=True))"
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)


def test_layer_contracts_are_kept() -> None:
    result = _lint(SRC)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "5 kept, 0 broken" in result.stdout


def test_a_network_importing_the_planner_breaks_the_contracts(tmp_path: Path) -> None:
    shutil.copytree(SRC / "autounet", tmp_path / "autounet", ignore=shutil.ignore_patterns("__pycache__"))
    unet = tmp_path / "autounet" / "networks" / "unet.py"
    unet.write_text(unet.read_text(encoding="utf-8") + "\nfrom autounet.planners.plans import Plans  # noqa\n",
                    encoding="utf-8")

    result = _lint(tmp_path)

    assert result.returncode != 0
    assert "autounet.networks.unet -> autounet.planners.plans" in result.stdout
    assert "BROKEN" in result.stdout


def test_the_onnx_runner_importing_the_predictor_breaks_the_contracts(tmp_path: Path) -> None:
    """The runner must run without torch; a chain to a module that imports torch is caught before any test runs."""
    shutil.copytree(SRC / "autounet", tmp_path / "autounet", ignore=shutil.ignore_patterns("__pycache__"))
    runner = tmp_path / "autounet" / "onnx_runner.py"
    extra = "\nfrom autounet.inference.predictor import Predictor  # noqa\n"
    runner.write_text(runner.read_text(encoding="utf-8") + extra, encoding="utf-8")

    result = _lint(tmp_path)

    assert result.returncode != 0
    assert "autounet.onnx_runner -> autounet.inference.predictor" in result.stdout
