"""End to end: `autounet plan_and_preprocess Task01` on demo tasks and on small tasks built from real data.

Most runs call `autounet.cli.main` in-process with `-np 0` (inline workers: same code path per
case, no process start-up) so the module stays fast; one test runs the verbatim command line
as a real subprocess with the default worker count. Every run is checked against the input
files read independently with SimpleITK: geometry, shapes, dtypes, label indices, sampled
class locations and the reference label copies.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from autounet import cli
from autounet.io.geometry import Geometry
from autounet.task.dataset import load_task
from autounet.task.demo_data import convert_msd_to_nnunet, write_demo_task
from autounet.task.fingerprint import load_fingerprint
from autounet.core.workspace import Workspace
from autounet.planners.plans import Plans, load_plans
from autounet.preprocessing.case_store import CaseStore

from real_data_tasks import REAL_TASK_BUILDERS, RealTask

REPO_SRC = Path(__file__).resolve().parents[2] / "src"
CaseFiles = dict[str, tuple[Path, Path]]  # case id -> (image file, label file)



def run_cli(workspace: Path, *args: str) -> int:
    return cli.main(["--workspace", str(workspace), *args])


def plan_and_preprocess(workspace: Path, task: str = "Task01", *extra: str) -> int:
    """The command under test, inline workers, fixed 8 GB target so that plans do not depend on the host's GPU."""
    return run_cli(workspace, "plan_and_preprocess", task, "-np", "0", "--gpu-memory", "8", "--no-progress", *extra)


def training_files(task_dir: Path) -> CaseFiles:
    """Case id -> (first image file, label file) as the task's dataset.json lists them."""
    return {c.case_id: (Path(c.images[0]), Path(c.label)) for c in load_task(task_dir).training if c.label}


def assert_geometry_matches(geometry: Geometry, reference: sitk.Image) -> None:
    """The geometry kept for a case is the input file's, as SimpleITK reads it."""
    np.testing.assert_allclose(geometry.spacing, reference.GetSpacing(), rtol=1e-6)
    np.testing.assert_allclose(geometry.origin, reference.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(geometry.direction, reference.GetDirection(), atol=1e-6)
    assert tuple(geometry.shape) == tuple(reversed(reference.GetSize()))


def check_preprocessed(workspace: Path, task_name: str, cases: CaseFiles) -> Plans:
    """Assert the whole contract of a finished run against the raw files; returns the plans."""
    out = Workspace(workspace).preprocessed(task_name)
    plans = load_plans(out / "plans.json")
    num_classes = plans.num_classes
    forward = plans.transpose_forward
    fingerprint = load_fingerprint(out / "fingerprint.json")
    assert sorted(c.case_id for c in fingerprint.cases) == sorted(cases)

    references = {case_id: sitk.ReadImage(str(image)) for case_id, (image, _) in cases.items()}
    for fp_case in fingerprint.cases:
        ref = references[fp_case.case_id]
        assert fp_case.shape == list(reversed(ref.GetSize()))
        assert sum(fp_case.label_voxel_counts.values()) == int(np.prod(ref.GetSize()))

    for identifier in sorted({cfg.data_identifier for cfg in plans.configurations.values()}):
        store = CaseStore(out / identifier)
        assert store.case_ids() == sorted(cases), identifier
        for case_id, ref in references.items():
            data, seg, props = store.load(case_id)
            ref_shape = tuple(reversed(ref.GetSize()))  # (Z, Y, X)
            assert data.dtype == np.float32 and seg.dtype == np.int16
            assert data.shape == (plans.num_channels, *props.shape_after_resample)
            assert seg.shape == data.shape[1:]
            assert np.isfinite(data).all()
            assert seg.min() >= -1 and seg.max() < num_classes
            assert_geometry_matches(props.geometry, ref)
            assert props.shape_before_crop == [ref_shape[a] for a in forward]
            assert props.spacing == pytest.approx([ref.GetSpacing()[2 - a] for a in forward])
            for (lo, hi), before, after in zip(props.bbox, props.shape_before_crop, props.shape_after_crop):
                assert 0 <= lo < hi <= before and hi - lo == after
            for index, coords in store.locations(case_id).items():
                assert 1 <= index < num_classes
                assert coords.dtype == np.int32 and coords.shape[1] == 3
                assert (seg[tuple(coords.T)] == index).all()

    for case_id, (_, label_path) in cases.items():
        reference = sitk.ReadImage(str(label_path))
        copy = sitk.ReadImage(str(out / "gt_segmentations" / f"{case_id}.nii.gz"))
        np.testing.assert_array_equal(sitk.GetArrayViewFromImage(copy), sitk.GetArrayViewFromImage(reference))
        np.testing.assert_allclose(copy.GetOrigin(), reference.GetOrigin(), atol=1e-4)
    return plans


def assert_labels_map_back(workspace: Path, task_name: str, configuration: str, cases: CaseFiles) -> int:
    """Where a case was not resampled, label_values[index] must reproduce the raw label exactly.

    Returns how many cases could be checked this way (the caller asserts it is not zero).
    """
    out = Workspace(workspace).preprocessed(task_name)
    plans = load_plans(out / "plans.json")
    values = np.asarray(plans.label_values)
    store = CaseStore(out / plans.configuration(configuration).data_identifier)
    checked = 0
    for case_id, (_, label_path) in cases.items():
        _, seg, props = store.load(case_id, mmap=False)
        if props.shape_after_resample != props.shape_after_crop:
            continue
        raw = sitk.GetArrayFromImage(sitk.ReadImage(str(label_path))).transpose(plans.transpose_forward)
        raw = raw[tuple(slice(lo, hi) for lo, hi in props.bbox)]
        inside = seg >= 0
        np.testing.assert_array_equal(values[seg[inside]], raw[inside])
        assert (raw[~inside] == 0).all()
        checked += 1
    return checked


def file_times(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------- the 3D demo task


@pytest.fixture(scope="module")
def demo_workspace(tmp_path_factory: pytest.TempPathFactory, demo_task_3d: Path) -> Path:
    """A workspace with the 3D demo task in raw/, after one full run (read-only for the tests)."""
    ws = tmp_path_factory.mktemp("ws_demo")
    shutil.copytree(demo_task_3d, ws / "raw" / demo_task_3d.name)
    assert plan_and_preprocess(ws) == 0
    return ws


def test_demo_task_in_workspace(demo_workspace: Path, demo_task_3d: Path) -> None:
    plans = check_preprocessed(demo_workspace, "Task01_Demo", training_files(demo_task_3d))
    assert set(plans.configurations) >= {"2d", "3d_fullres"}
    assert plans.label_values == [0, 1, 2] and plans.channel_names == {"0": "MR"}
    assert not plans.is_2d_data
    assert (demo_workspace / "preprocessed" / "Task01_Demo" / "dataset.json").is_file()


def test_plans_command_prints_every_configuration(demo_workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plans = load_plans(demo_workspace / "preprocessed" / "Task01_Demo" / "plans.json")
    capsys.readouterr()
    assert run_cli(demo_workspace, "plans", "Task01") == 0
    lines = capsys.readouterr().out.splitlines()
    for name, cfg in plans.configurations.items():
        row = [line for line in lines if line.split()[:1] == [name]]
        assert row, f"no row for {name}"
        assert "x".join(str(p) for p in cfg.patch_size) in row[0].split()
        assert str(cfg.batch_size) in row[0].split()


def test_rerun_reuses_fingerprint_and_skips_finished_cases(demo_workspace: Path, tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    shutil.copytree(demo_workspace, ws)
    out = ws / "preprocessed" / "Task01_Demo"
    before = file_times(out)

    assert plan_and_preprocess(ws) == 0
    after = file_times(out)
    assert after["fingerprint.json"] == before["fingerprint.json"]
    unchanged = {k: v for k, v in before.items() if k not in ("plans.json", "dataset.json")}
    assert {k: after[k] for k in unchanged} == unchanged

    # an interrupted case (its properties, written last, missing) is redone; nothing else is
    (out / "3d_fullres" / "demo_003.json").unlink()
    assert plan_and_preprocess(ws) == 0
    again = file_times(out)
    assert (out / "3d_fullres" / "demo_003.json").is_file()
    assert again["3d_fullres/demo_003.npy"] != before["3d_fullres/demo_003.npy"]
    assert again["3d_fullres/demo_004.npy"] == before["3d_fullres/demo_004.npy"]
    assert again["2d/demo_003.npy"] == before["2d/demo_003.npy"]


def test_clean_recomputes_everything_identically(demo_workspace: Path, tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    shutil.copytree(demo_workspace, ws)
    out = ws / "preprocessed" / "Task01_Demo"
    before = file_times(out)
    stray = out / "3d_fullres" / "stale_case.npy"
    np.save(stray, np.zeros(3))

    assert plan_and_preprocess(ws, "Task01", "--clean") == 0
    after = file_times(out)
    assert not stray.exists()
    assert after["fingerprint.json"] != before["fingerprint.json"]
    assert after["3d_fullres/demo_001.npy"] != before["3d_fullres/demo_001.npy"]
    old = np.load(demo_workspace / "preprocessed" / "Task01_Demo" / "3d_fullres" / "demo_001.npy")
    np.testing.assert_array_equal(np.load(out / "3d_fullres" / "demo_001.npy"), old)
    assert (out / "fingerprint.json").read_text() == (
        demo_workspace / "preprocessed" / "Task01_Demo" / "fingerprint.json").read_text()


def test_plan_only_writes_no_preprocessed_data(tmp_path: Path, demo_task_3d: Path) -> None:
    shutil.copytree(demo_task_3d, tmp_path / "raw" / demo_task_3d.name)
    assert plan_and_preprocess(tmp_path, "Task01", "--plan-only") == 0
    out = tmp_path / "preprocessed" / "Task01_Demo"
    load_plans(out / "plans.json")
    assert sorted(p.name for p in out.iterdir()) == ["dataset.json", "fingerprint.json", "plans.json"]


def test_failed_integrity_check_writes_nothing(tmp_path: Path, demo_task_3d: Path, capsys: pytest.CaptureFixture[str]) -> None:
    task = tmp_path / "raw" / demo_task_3d.name
    shutil.copytree(demo_task_3d, task)
    bad_label = task / "labelsTr" / "demo_002.nii.gz"
    label = sitk.ReadImage(str(bad_label))
    values = sitk.GetArrayFromImage(label)
    values[0, 0, 0] = 7  # not declared in dataset.json
    undeclared = sitk.GetImageFromArray(values)
    undeclared.CopyInformation(label)
    sitk.WriteImage(undeclared, str(bad_label))
    truncated = task / "imagesTr" / "demo_005.nii.gz"
    truncated.write_bytes(truncated.read_bytes()[:200])
    capsys.readouterr()

    assert plan_and_preprocess(tmp_path) == 2
    err = capsys.readouterr().err
    message = err[err.index("error: "):]  # after the progress bar, the one error with every problem listed
    assert message.count("error: ") == 1
    assert str(bad_label) in message and str(truncated) in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]


# --------------------------------------------------------------------------- other layouts


def test_nnunet_layout_copy_gives_the_same_plans_and_data(
    tmp_path: Path, demo_task_3d: Path, demo_workspace: Path
) -> None:
    converted = convert_msd_to_nnunet(demo_task_3d, tmp_path / "raw")
    assert converted.name == "Dataset001_Demo"
    assert plan_and_preprocess(tmp_path) == 0
    plans = check_preprocessed(tmp_path, converted.name, training_files(converted))
    msd_out = demo_workspace / "preprocessed" / "Task01_Demo"
    msd_plans = load_plans(msd_out / "plans.json")
    assert set(plans.configurations) == set(msd_plans.configurations)
    for name, cfg in plans.configurations.items():
        other = msd_plans.configurations[name]
        assert (cfg.spacing, cfg.patch_size, cfg.batch_size) == (other.spacing, other.patch_size, other.batch_size)
        ours = np.load(tmp_path / "preprocessed" / converted.name / cfg.data_identifier / "demo_006.npy")
        np.testing.assert_array_equal(ours, np.load(msd_out / cfg.data_identifier / "demo_006.npy"))


def test_2d_demo_task_plans_only_2d(tmp_path: Path, demo_task_2d: Path) -> None:
    shutil.copytree(demo_task_2d, tmp_path / "raw" / demo_task_2d.name)
    assert plan_and_preprocess(tmp_path, "Task02") == 0
    plans = check_preprocessed(tmp_path, demo_task_2d.name, training_files(demo_task_2d))
    assert list(plans.configurations) == ["2d"] and plans.is_2d_data
    assert len(plans.configuration("2d").patch_size) == 2
    store = CaseStore(tmp_path / "preprocessed" / demo_task_2d.name / "2d")
    for case_id in store.case_ids():
        data, _, props = store.load(case_id)
        assert data.shape[1] == 1 and props.geometry.is_2d
    assert sorted(p.name for p in (tmp_path / "preprocessed" / demo_task_2d.name).iterdir()) == [
        "2d", "dataset.json", "fingerprint.json", "gt_segmentations", "plans.json"]


def test_verbatim_command_line_in_a_subprocess(tmp_path: Path) -> None:
    """`autounet plan_and_preprocess Task01`, nothing else: workspace from $AUTOUNET_HOME, task in the cwd, default workers."""
    cwd = tmp_path / "here"
    task = write_demo_task(cwd, num_training=3, num_test=0, seed=5)
    env = {**os.environ, "AUTOUNET_HOME": str(tmp_path / "home"),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_SRC), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-m", "autounet", "plan_and_preprocess", "Task01"],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / "home" / "preprocessed" / task.name
    assert f"plans: {out / 'plans.json'}" in done.stdout
    plans = load_plans(out / "plans.json")
    for cfg in plans.configurations.values():
        assert CaseStore(out / cfg.data_identifier).case_ids() == ["demo_001", "demo_002", "demo_003"]
    assert not (tmp_path / "home" / "raw").exists()  # the task was read where it lay


# --------------------------------------------------------------------------- real data


@pytest.mark.parametrize("name", sorted(REAL_TASK_BUILDERS))
def test_real_data_task(name: str, tmp_path: Path, shared_data_dir: Path) -> None:
    """Each labelled real set as a 4-case task (see real_data_tasks.py for how each was cut)."""
    folder = "Task01_" + "".join(part.capitalize() for part in name.split("-"))
    real: RealTask = REAL_TASK_BUILDERS[name](shared_data_dir, tmp_path / "raw" / folder)
    assert plan_and_preprocess(tmp_path) == 0, real.how
    cases = {c: (real.image_path(c), real.label_path(c)) for c in real.case_ids}
    plans = check_preprocessed(tmp_path, folder, cases)

    assert set(plans.configurations) >= {"2d", "3d_fullres"}
    assert plans.label_values == real.label_values
    assert plans.channel_names == {"0": real.modality}
    assert plans.configuration("3d_fullres").normalization == ["ct" if real.modality == "CT" else "zscore"]
    fullres = plans.configuration("3d_fullres")
    if real.anisotropic:
        assert fullres.spacing[0] == max(fullres.spacing) > 3 * min(fullres.spacing)
        assert fullres.network.kernel_sizes[0][0] == 1  # no convolution across the thick slices at full resolution
    if name == "totalsegmentator-ct":
        assert max(real.label_values) == 117 and len(real.label_values) > 30
        assert assert_labels_map_back(tmp_path, folder, "3d_fullres", cases) == len(cases)
    if name == "dcmqi-ct3slice":
        # in-plane (3.2 mm after subsampling) is coarser than the 1 mm slice distance: an in-plane axis goes first
        assert plans.transpose_forward[0] in (1, 2)
    stored = json.loads((tmp_path / "preprocessed" / folder / "dataset.json").read_text())
    assert stored["labels"] == plans.labels
