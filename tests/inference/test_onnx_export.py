"""ONNX export and the torch-free reference runner give what the PyTorch predictor gives.

Measured here (torch 2.13 CPU, onnxruntime 1.32, opset 17, legacy TorchScript exporter):
max |ONNX - PyTorch| logits on random input 4.3e-6 (3D plain U-Net) and 2.0e-6 (2D), 1.4e-5 and
1.2e-5 for the two folds of the trained demo run; on the demo test cases the runner's
fold-averaged, mirrored sliding-window logits differ from `Predictor`'s (fp32) by at most 3.8e-6
and its label maps equal `autounet predict`'s voxel for voxel (Dice 1.0 for both labels).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from autounet.cli import main
from autounet.core.checkpoint import save_checkpoint
from autounet.errors import AutounetError, PlansError
from autounet.inference.onnx_contract import INFERENCE_JSON, load_contract, require_onnxruntime
from autounet.inference.onnx_export import export_network, export_onnx, onnx_torch_difference, require_onnx
from autounet.inference.predictor import Predictor
from autounet.io.images import read_label, write_image
from autounet.networks.registry import build_network
from autounet.planners.plans import NetworkPlan, Plans, save_plans
from autounet.preprocessing.preprocessor import preprocess_case
from autounet.task.labels import Region

from inference_toys import flipped_geometry, labelled_case, make_plans

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

ROOT = Path(__file__).resolve().parents[2]
# Logit tolerance of an exported network against PyTorch (instance norm and convolutions run in a
# different order in onnxruntime; measured 1.1e-5 at most).
LOGIT_TOLERANCE = 1e-4


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """One thread: on a busy 2-core machine two torch threads made prediction 15x slower (measured)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def small_unet_plan(dims: int) -> NetworkPlan:
    return NetworkPlan(architecture="plain_unet", features_per_stage=[4, 8], kernel_sizes=[[3] * dims] * 2,
                       strides=[[1] * dims, [2] * dims], n_conv_encoder=[1, 1], n_conv_decoder=[1])


def toy_plans(dims: int, regions: bool = False) -> Plans:
    """Anisotropic, transposed plans of a small plain U-Net: 3d_fullres (optionally with two overlapping
    regions, 3+7 and 7), or a 2d configuration."""
    plans = make_plans([3.0, 1.3, 0.7], transpose_forward=[2, 0, 1])
    cfg = plans.configurations["3d_fullres"]
    if regions:
        return dataclasses.replace(plans, regions=[Region("a_or_b", [3, 7]), Region("b", [7])],
                                   regions_class_order=[3, 7])
    if dims == 3:
        return plans
    two_d = dataclasses.replace(cfg, name="2d", data_identifier="2d", spacing=[1.0, 1.1], patch_size=[8, 8],
                                median_shape=[10, 10], network=small_unet_plan(2), mirror_axes=[0, 1])
    return dataclasses.replace(plans, configurations={"2d": two_d})


def write_unet_run(results_task: Path, plans: Plans, folds=(0, 1)) -> Path:
    """A run folder of randomly initialised plain U-Nets (one per fold, different weights)."""
    configuration = next(iter(plans.configurations))
    cfg = plans.configurations[configuration]
    run_dir = results_task / configuration
    save_plans(plans, run_dir / "plans.json")
    for fold in folds:
        torch.manual_seed(fold)
        net = build_network("plain_unet", cfg.network, plans.num_channels, plans.num_outputs)
        save_checkpoint(run_dir / f"fold_{fold}" / "checkpoint_final.pt", {
            "format": 1, "network": net.state_dict(), "network_name": "plain_unet",
            "configuration": configuration, "mirror_axes": list(cfg.mirror_axes or [])})
    return run_dir


@pytest.mark.parametrize("dims", [3, 2])
def test_onnx_logits_equal_pytorch(tmp_path: Path, dims: int) -> None:
    torch.manual_seed(0)
    net = build_network("plain_unet", small_unet_plan(dims), in_channels=2, num_classes=3)
    shape = (2, *[16] * dims)
    export_network(net, tmp_path / "net.onnx", shape)
    assert net.deep_supervision is False
    diff = onnx_torch_difference(net, tmp_path / "net.onnx", shape, batch=3, seed=1)  # batch axis is dynamic
    assert diff < LOGIT_TOLERANCE


@pytest.fixture(params=[(3, False), (2, False), (3, True)], ids=["3d", "2d", "regions"])
def exported(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Path, Path, Path]:
    """(run folder, exported folder, one image file on a flipped anisotropic grid)."""
    run_dir = write_unet_run(tmp_path / "results" / "Task99_Toy", toy_plans(*request.param))
    out = tmp_path / "onnx"
    assert main(["--workspace", str(tmp_path), "export_onnx", str(run_dir), "-o", str(out)]) == 0
    _, image = labelled_case(shape=(9, 20, 14))
    image_file = tmp_path / "images" / "case_7.nii.gz"
    image_file.parent.mkdir()
    write_image(image[0] * 30.0, dataclasses.replace(flipped_geometry(), shape=(9, 20, 14)), image_file)
    return run_dir, out, image_file


def test_export_writes_every_fold_and_the_contract(exported: tuple[Path, Path, Path]) -> None:
    run_dir, out, _ = exported
    contract = load_contract(out)
    assert sorted(p.name for p in out.iterdir()) == ["fold_0.onnx", "fold_1.onnx", INFERENCE_JSON]
    assert [f.file for f in contract.folds] == ["fold_0.onnx", "fold_1.onnx"]
    plans = Predictor.from_run_folder(run_dir, device="cpu").plans
    cfg = next(iter(plans.configurations.values()))
    assert contract.patch_size == cfg.patch_size and contract.spacing == cfg.spacing
    assert contract.transpose_forward == [2, 0, 1] and contract.transpose_backward == [1, 2, 0]
    assert contract.label_values == [0, 3, 7] and contract.step_size == 0.5
    assert contract.output_activation == ("sigmoid" if plans.regions else "softmax")
    assert contract.regions == plans.regions and contract.regions_class_order == plans.regions_class_order
    assert contract.mirror_axes == cfg.mirror_axes
    assert contract.channels[0].normalization == "ct" and contract.channels[0].intensity_properties is not None


def test_runner_matches_the_pytorch_predictor(exported: tuple[Path, Path, Path], tmp_path: Path) -> None:
    from autounet.onnx_runner import OnnxModel, predict_with_onnx
    from autounet.io.images import read_image

    run_dir, out, image_file = exported
    predictor = Predictor.from_run_folder(run_dir, device="cpu", precision="fp32")  # as onnxruntime computes
    model = OnnxModel(out, threads=1)
    image, geometry = read_image(image_file)
    data, grid = model.preprocess(image, geometry)
    expected, _, props, _ = preprocess_case(image, None, geometry, predictor.plans, predictor.configuration)
    np.testing.assert_array_equal(data, expected)
    assert grid.bbox == props.bbox and grid.target_spacing == props.target_spacing
    logits = model.sliding_window(data)
    torch_logits = predictor.predict_preprocessed(data).numpy()
    assert np.abs(logits - torch_logits).max() < LOGIT_TOLERANCE

    written = predict_with_onnx(image_file.parent, tmp_path / "preds", out, threads=1)
    assert [p.name for p in written] == ["case_7.nii.gz"]
    seg, seg_geometry = read_label(written[0])
    torch_seg, _, _ = predictor.predict_case_files([image_file])
    assert seg_geometry == geometry
    assert (seg == torch_seg).mean() > 0.999
    assert len(np.unique(torch_seg)) > 1  # a real comparison, not two blank maps


def test_runner_does_not_import_torch(exported: tuple[Path, Path, Path], tmp_path: Path) -> None:
    _, out, image_file = exported
    code = ("import sys\nfrom autounet.onnx_runner import main\n"
            f"rc = main(['-i', {str(image_file)!r}, '-o', {str(tmp_path / 'p')!r}, '--model', {str(out)!r}, "
            "'--threads', '1'])\n"
            "assert rc == 0, rc\nassert 'torch' not in sys.modules, 'the runner imported torch'\nprint('ok')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("ok")
    assert (tmp_path / "p" / image_file.name).is_file()


def test_missing_extra_names_the_install_command(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = write_unet_run(tmp_path / "results" / "Task99_Toy", toy_plans(3), folds=(0,))
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if not installed
    with pytest.raises(AutounetError, match=r"pip install 'autounet\[onnx\]'"):
        require_onnxruntime()
    with pytest.raises(AutounetError, match=r"pip install 'autounet\[onnx\]'"):
        require_onnx()
    monkeypatch.setitem(sys.modules, "onnx", None)
    assert main(["--workspace", str(tmp_path), "export_onnx", str(run_dir), "-o", str(tmp_path / "o")]) == 2
    assert "needs the optional extra: pip install 'autounet[onnx]'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_contract_refuses_unknown_keys_and_bad_values(tmp_path: Path) -> None:
    run_dir = write_unet_run(tmp_path / "results" / "Task99_Toy", toy_plans(3), folds=(0,))
    export_onnx(run_dir, tmp_path / "onnx")
    path = tmp_path / "onnx" / INFERENCE_JSON
    good = json.loads(path.read_text(encoding="utf-8"))
    for change, message in [({"patch_sizes": [8, 8, 8]}, "unknown key(s) ['patch_sizes']"),
                            ({"step_size": 1.5}, "key step_size: must be in (0, 1]"),
                            ({"mirror_axes": [3]}, "key mirror_axes"),
                            ({"transpose_backward": [0, 1, 2]}, "key transpose_backward")]:
        path.write_text(json.dumps({**good, **change}), encoding="utf-8")
        with pytest.raises(PlansError) as info:
            load_contract(tmp_path / "onnx")
        assert str(path) in str(info.value) and message in str(info.value)


def test_export_by_task_and_configuration_and_its_refusals(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    write_unet_run(tmp_path / "results" / "Task99_Toy", toy_plans(3), folds=(0,))
    ws = ["--workspace", str(tmp_path)]
    assert main([*ws, "export-onnx", "-t", "Task99", "-c", "3d_fullres", "-o", str(tmp_path / "o")]) == 0
    assert [f.fold for f in load_contract(tmp_path / "o").folds] == ["0"]
    assert main([*ws, "export_onnx", "-t", "Task99", "-o", str(tmp_path / "o2"), "--opset", "9"]) == 2
    assert main([*ws, "export_onnx", str(tmp_path), "-o", str(tmp_path / "o3")]) == 2
    err = capsys.readouterr().err
    assert "--opset 9: choose an ONNX opset within 13..20" in err
    assert f"{tmp_path}: not a run folder (no plans.json)" in err


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


@pytest.mark.slow
def test_demo_model_runner_matches_autounet_predict(end_to_end_run: Any, tmp_path: Path) -> None:
    """The trained demo run of tests/test_end_to_end.py (two folds), exported and run on its test cases.

    Measured: Dice 1.0 for both labels on all three cases (0 voxels differ) against `predict --precision
    fp32`, and the same against `--precision auto`.
    """
    import nibabel as nib

    from autounet.onnx_runner import predict_with_onnx

    run = end_to_end_run
    out = tmp_path / "onnx"
    assert main(["--workspace", str(run.workspace), "export_onnx", str(run.run_dir), "-o", str(out)]) == 0
    images = run.task_dir / "imagesTs"
    reference = tmp_path / "predict"
    # the run's connected-component decision travels with the export, and both tools apply it
    assert (out / "postprocessing.json").is_file() == (run.run_dir / "postprocessing.json").is_file()
    assert main(["--workspace", str(run.workspace), "predict", "-i", str(images), "-o", str(reference),
                 "-t", "Task01_Demo", "-c", "3d_fullres", "--precision", "fp32", "--threads", "1"]) == 0
    written = predict_with_onnx(images, tmp_path / "onnx_preds", out, threads=1)
    assert len(written) == len(list(images.glob("*.nii.gz"))) == 3
    for path in written:
        mine, theirs = nib.load(path), nib.load(reference / path.name)
        assert mine.shape == theirs.shape
        np.testing.assert_allclose(mine.affine, theirs.affine, atol=1e-6)
        a, b = np.asarray(mine.dataobj), np.asarray(theirs.dataobj)
        for label in (1, 2):
            assert _dice(a == label, b == label) >= 0.999, (path.name, label)
