"""The README's Python API example runs as written against a trained model.

The example is taken from README.md's "Python API" section (first ```python block). Its two
path lines, `run_dir = ...` and
`image_file = ...`, are pointed at the end-to-end run of tests/test_end_to_end.py; everything
else runs verbatim.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from autounet.evaluation.metrics import dice
from autounet.io.images import read_label

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SECTION = re.compile(r"^##[ \t]+Python API[ \t]*$(.*?)(?=^##[ \t]|\Z)", re.MULTILINE | re.DOTALL)
PYTHON_BLOCK = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)



def api_example(markdown: str) -> str | None:
    """The first python block of the markdown's "## Python API" section, if it has one."""
    section = SECTION.search(markdown)
    block = PYTHON_BLOCK.search(section.group(1)) if section else None
    return block.group(1) if block else None


def point_example_at(code: str, run_dir: Path, image_file: Path) -> str:
    """Replace the example's `run_dir = ...` and `image_file = ...` lines by real paths."""
    for name, value in (("run_dir", run_dir), ("image_file", image_file)):
        code, count = re.subn(rf"^{name} = .*$", f"{name} = Path({str(value)!r})", code, flags=re.MULTILINE)
        assert count == 1, f"the Python API example must set `{name} = ...` on one line (found {count})"
    return code


def _example_source() -> tuple[str, str]:
    path = ROOT / "README.md"
    code = api_example(path.read_text(encoding="utf-8"))
    if code is None:
        pytest.fail("no ```python block under a '## Python API' heading in README.md")
    return code, path.name


def test_api_example_is_found_in_markdown() -> None:
    text = "# x\n\n## Python API\n\nintro\n\n```python\nrun_dir = 1\n```\n\n## Next\n\n```python\nother\n```\n"
    assert api_example(text) == "run_dir = 1\n"
    assert api_example("## Other\n\n```python\nx = 1\n```\n") is None
    assert point_example_at("run_dir = Path.home()\nimage_file = 'a'\n", Path("/r"), Path("/i.nii.gz")) == (
        "run_dir = Path('/r')\nimage_file = Path('/i.nii.gz')\n")


def test_readme_api_example_runs(end_to_end_run: Any, capsys: pytest.CaptureFixture[str]) -> None:
    run = end_to_end_run
    code, source = _example_source()
    case = sorted((run.task_dir / "imagesTs").glob("*.nii.gz"))[0]
    namespace: dict[str, Any] = {"__name__": "__readme_example__"}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # see tests/test_end_to_end.py: one thread is faster on a shared 2-core CPU
    try:
        exec(compile(point_example_at(code, run.run_dir, case), f"<{source}: Python API>", "exec"), namespace)
    finally:
        torch.set_num_threads(threads)

    image, seg, probabilities = namespace["image"], namespace["seg"], namespace["probabilities"]
    assert "label map" in capsys.readouterr().out
    assert seg.shape == image.shape[1:]
    assert probabilities.shape == (3, *image.shape[1:])
    np.testing.assert_allclose(probabilities.astype(np.float32).sum(axis=0), 1.0, atol=1e-2)
    assert set(np.unique(seg).tolist()) <= {0, 1, 2}
    np.testing.assert_array_equal(seg, np.asarray(namespace["label_values"])[probabilities.argmax(axis=0)])
    # the same model as `autounet predict`, which only adds the connected-component cleanup
    cli_prediction, _ = read_label(run.predictions / case.name)
    assert np.mean(seg == cli_prediction) > 0.98
    reference, _ = read_label(run.task_dir / "labelsTs" / case.name)
    assert dice(reference == 1, seg == 1) > 0.6
