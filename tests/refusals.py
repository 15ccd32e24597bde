"""The harness of the refusal catalogues (test_bad_inputs.py, test_hostile_inputs.py).

Each catalogue case builds one broken input in a private copy of the demo task (the session
fixtures are shared and never changed), runs the command through `autounet.cli.main`, and
`assert_refused` checks what a user sees:

- a non-zero exit code;
- the error names the offending file or key: one line `error: ...` that is the last line on
  stderr, or, for the integrity check (which lists every problem of a task at once), a first
  line `error: N problem(s) found in the task; nothing was written:` followed by exactly N
  lines `  - <problem>`, each naming a file;
- no traceback, and nothing was written anywhere: the workspace (raw/, preprocessed/, results/)
  and the prediction input/output folders are byte-for-byte and mtime-for-mtime as before;
- the message is the one listed in the README's troubleshooting section (the table).

Importable by name because tests/conftest.py puts this folder on sys.path.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
import re
import shutil
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from autounet.cli import main
from autounet.task.demo_data import convert_msd_to_nnunet
from autounet.planners.plans import NetworkPlan, load_plans, save_plans

TASK = "Task01_Demo"
NNUNET_TASK = "Dataset001_Demo"
TROUBLESHOOTING = Path(__file__).resolve().parents[1] / "README.md"
_INTEGRITY_HEAD = re.compile(r"^error: (\d+) problem\(s\) found in the task; nothing was written:$")

# ----------------------------------------------------------------------------------------------
# scene: a private workspace plus prediction folders, all under one temporary root


@dataclass(frozen=True)
class Scene:
    """Where a case builds its broken input; everything under `root` must stay untouched by the command."""

    root: Path

    @property
    def ws(self) -> Path:
        return self.root / "ws"

    @property
    def task(self) -> Path:
        return self.ws / "raw" / TASK

    @property
    def images(self) -> Path:
        """Prediction input folder."""
        return self.root / "images"

    @property
    def predictions(self) -> Path:
        """Prediction output folder (must not appear after a refused run)."""
        return self.root / "predictions"

    @property
    def dataset_json(self) -> Path:
        return self.task / "dataset.json"

    @property
    def preprocessed_plans(self) -> Path:
        return self.ws / "preprocessed" / TASK / "plans.json"

    @property
    def run_plans(self) -> Path:
        return self.ws / "results" / TASK / "3d_fullres" / "plans.json"

    def image(self, case: str = "demo_001") -> Path:
        return self.task / "imagesTr" / f"{case}.nii.gz"

    def label(self, case: str = "demo_001") -> Path:
        return self.task / "labelsTr" / f"{case}.nii.gz"

    def held_out_image(self) -> Path:
        return self.task / "imagesTs" / "demo_009.nii.gz"


@dataclass(frozen=True)
class Expect:
    """The command line to run (without --workspace) and the texts the error must contain."""

    argv: list[str]
    names: tuple[str, ...]


def plan_and_preprocess_argv(task: str = TASK) -> list[str]:
    return ["plan_and_preprocess", task, "-np", "0", "--no-progress"]


def predict_argv(scene: Scene, output: Path | None = None) -> list[str]:
    return ["predict", "-i", str(scene.images), "-o", str(output or scene.predictions), "--device", "cpu",
            "--disable-tta"]


# ----------------------------------------------------------------------------------------------
# editing helpers


def edit_json(path: Path, change: Callable[[dict], None]) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    change(data)
    path.write_text(json.dumps(data, indent=2), encoding="utf-8")


def edit_nifti_header(path: Path, *edits: tuple[int, str, tuple[float, ...]]) -> None:
    """Overwrite fields (byte offset, struct format, values) of a little-endian NIfTI-1 .nii.gz in
    place, bypassing every writer."""
    raw = bytearray(gzip.decompress(path.read_bytes()))
    assert struct.unpack_from("<i", raw, 0)[0] == 348, "expected a little-endian NIfTI-1 header"
    for offset, fmt, values in edits:
        struct.pack_into("<" + fmt, raw, offset, *values)
    path.write_bytes(gzip.compress(bytes(raw)))


def patch_nifti_pixdim(path: Path, axis: int, value: float) -> None:
    """Overwrite pixdim[axis] (1 = x) of a NIfTI-1 .nii.gz.

    The sform is switched off (sform_code 0): it still holds the old voxel size, and a header
    whose two transforms disagree is refused for that reason before its spacing is looked at.
    """
    edit_nifti_header(path, (76 + 4 * axis, "f", (value,)), (254, "h", (0,)))


def held_out_as_two_channels(scene: Scene) -> None:
    """The prediction input folder with the held-out case as channels _0000 and _0001."""
    scene.images.mkdir()
    shutil.copyfile(scene.held_out_image(), scene.images / "demo_009_0000.nii.gz")
    shutil.copyfile(scene.held_out_image(), scene.images / "demo_009_0001.nii.gz")


def to_nnunet(scene: Scene, change: Callable[[Path], None] | None = None) -> Path:
    """Replace the MSD task in raw/ by its nnU-Net layout version and apply `change` to it."""
    out = convert_msd_to_nnunet(scene.task, scene.ws / "raw")
    shutil.rmtree(scene.task)
    if change is not None:
        change(out)
    return out



@dataclass(frozen=True)
class Case:
    """One row of the catalogue. `planned`: the workspace already holds plans and a trained run;
    `documented`: the README's troubleshooting table quotes the message."""

    build: Callable[[Scene], Expect]
    planned: bool = False
    integrity: bool = False
    documented: bool = True

    @property
    def id(self) -> str:
        return self.build.__name__


def build_planned_workspace(demo_task: Path, ws: Path) -> Path:
    """A workspace with plans for the demo task and a tiny untrained two-channel 3d_fullres 'trained' run.

    The run's plans are hand-made small (2 stages, 4/8 features, patch 16^3) so that the
    checkpoint is a few kB; two channels let prediction-time channel errors show.
    """
    from autounet.networks.registry import build_network
    from autounet.core.checkpoint import save_checkpoint

    shutil.copytree(demo_task, ws / "raw" / TASK)
    rc = main(plan_and_preprocess_argv() + ["--plan-only", "--workspace", str(ws)])
    assert rc == 0
    plans = load_plans(ws / "preprocessed" / TASK / "plans.json")
    cfg = plans.configurations["3d_fullres"]
    network = NetworkPlan(architecture="plain_unet", features_per_stage=[4, 8], kernel_sizes=[[3, 3, 3]] * 2,
                          strides=[[1, 1, 1], [2, 2, 2]], n_conv_encoder=[1, 1], n_conv_decoder=[1])
    tiny = dataclasses.replace(cfg, patch_size=[16, 16, 16], network=network, normalization=cfg.normalization * 2,
                               use_mask_for_norm=cfg.use_mask_for_norm * 2, next_stage=None, previous_stage=None)
    intensity = plans.foreground_intensity_properties["0"]
    run_plans = dataclasses.replace(plans, channel_names={"0": "MR", "1": "MR"},
                                    foreground_intensity_properties={"0": intensity, "1": intensity},
                                    configurations={"3d_fullres": tiny})
    run_dir = ws / "results" / TASK / "3d_fullres"
    save_plans(run_plans, run_dir / "plans.json")
    net = build_network("plain_unet", network, in_channels=2, num_classes=run_plans.num_classes)
    save_checkpoint(run_dir / "fold_0" / "checkpoint_final.pt", {
        "format": 1, "network": net.state_dict(), "network_name": "plain_unet", "configuration": "3d_fullres",
        "mirror_axes": [0, 1, 2]})
    return ws


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every folder and file under `root` with its size and mtime: any write changes it."""
    out: dict[str, tuple[int, int]] = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            st = path.lstat()
            out[str(path.relative_to(root))] = (st.st_size if name in files else -1, st.st_mtime_ns)
    return out


def normalise(text: str, scene: Scene) -> str:
    """A message with this run's temporary paths replaced by `<ws>` and `<dir>`, as in the docs table."""
    return text.replace(str(scene.ws), "<ws>").replace(str(scene.root), "<dir>")


def documented_lines(block: list[str], case: Case) -> list[str]:
    """The lines of an error the troubleshooting table quotes: the message, or the head and first problem."""
    if case.integrity:
        return [block[0], block[1].strip()]
    return block


def assert_refused(case: Case, scene: Scene, demo_task: Path, planned_workspace: Callable[[], Path],
                   capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Build `case` in `scene`, run its command, and check the refusal (see the module docstring)."""
    if case.planned:
        shutil.copytree(planned_workspace(), scene.ws)
    else:
        shutil.copytree(demo_task, scene.task)
    expect = case.build(scene)
    monkeypatch.chdir(scene.root)
    before = snapshot(scene.root)
    capsys.readouterr()

    rc = main([*expect.argv, "--workspace", str(scene.ws)])

    captured = capsys.readouterr()
    stderr = captured.err
    assert rc != 0, stderr
    assert "Traceback" not in stderr + captured.out, stderr
    lines = stderr.rstrip("\n").splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("error:")]
    assert len(starts) == 1, f"expected exactly one 'error:' line on stderr:\n{stderr}"
    block = lines[starts[0]:]
    if case.integrity:
        head = _INTEGRITY_HEAD.match(block[0])
        assert head, f"integrity errors start with the problem count:\n{stderr}"
        problems = block[1:]
        assert len(problems) == int(head.group(1)), stderr
        assert all(p.startswith("  - ") and str(scene.ws) in p for p in problems), f"a problem names no file:\n{stderr}"
        assert any(all(n in p for n in expect.names) for p in problems), f"no problem names {expect.names}:\n{stderr}"
    else:
        assert len(block) == 1, f"the error must be the last line on stderr, and one line:\n{stderr}"
        missing = [n for n in expect.names if n not in block[0]]
        assert not missing, f"the error does not name {missing}:\n{block[0]}"
    assert snapshot(scene.root) == before, "the refused command wrote or changed files"

    if not case.documented:
        return
    table = TROUBLESHOOTING.read_text(encoding="utf-8").replace("\\|", "|")
    for line in documented_lines(block, case):
        assert normalise(line, scene) in table, f"README.md (Troubleshooting) lacks this message of {case.id}:\n" \
                                                 f"{normalise(line, scene)}"


def run_failing_prediction(scene: Scene, capsys: pytest.CaptureFixture[str]) -> str:
    """Predict scene.images; return the last stderr line after checking exit code and untouched workspace."""
    before = snapshot(scene.ws)
    capsys.readouterr()
    rc = main([*predict_argv(scene), "--workspace", str(scene.ws)])
    captured = capsys.readouterr()
    assert rc != 0, captured.err
    assert "Traceback" not in captured.err + captured.out, captured.err
    assert snapshot(scene.ws) == before, "prediction changed the workspace"
    assert not any(p.name.startswith("demo_009.") for p in scene.predictions.iterdir()), \
        "a prediction was written for the broken case"
    return captured.err.rstrip("\n").splitlines()[-1]
