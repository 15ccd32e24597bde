"""`import_nnunet`: nnU-Net v2 models run in autounet with the same network, plans and predictions.

The fixtures are real nnunetv2 2.8.1 plans (nnUNetPlans and nnUNetResEncUNetMPlans of a small
generated dataset, as `nnUNetv2_plan_and_preprocess` / `nnUNetv2_plan_experiment` wrote them).
nnunetv2 itself is not needed: dynamic-network-architectures (the package nnU-Net builds its networks
with, a test-only dependency) gives the reference networks and the state-dict layout, and the
results folders are written here the way nnUNetv2_train writes them.
"""

from __future__ import annotations

import argparse
import copy
import json
import pydoc
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from autounet.cli import main
from autounet.commands.nnunet_import import import_nnunet
from autounet.commands.nnunet_plans import translate_plans
from autounet.commands.nnunet_weights import load_nnunet_checkpoint, map_state_dict
from autounet.core.checkpoint import load_checkpoint
from autounet.core.workspace import Workspace
from autounet.errors import AutounetError, CheckpointError
from autounet.inference.predictor import Predictor
from autounet.networks.registry import build_network

dna = pytest.importorskip("dynamic_network_architectures")

FIXTURES = Path(__file__).parent / "fixtures"
PLAIN_PLANS = json.loads((FIXTURES / "nnunet_plans_2.8.1.json").read_text())
RESENC_PLANS = json.loads((FIXTURES / "nnunet_resenc_m_plans_2.8.1.json").read_text())
DATASET = json.loads((FIXTURES / "nnunet_dataset.json").read_text())
TASK = "Dataset501_Bench"
# ResEnc with the channel count capped (as nnU-Net caps it at 320 / 512): strided blocks whose channels do not
# change, where nnU-Net's shortcut only pools.
CAPPED_RESENC = copy.deepcopy(RESENC_PLANS)
CAPPED_RESENC["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]["features_per_stage"] = [8, 16, 16, 16]


def reference_network(plans: dict[str, Any], configuration: str, outputs: int = 3) -> torch.nn.Module:
    """The network nnU-Net builds from the plans' architecture entry (what nnunetv2 does, in short)."""
    arch = plans["configurations"][configuration]["architecture"]
    kwargs = dict(arch["arch_kwargs"])
    for key in arch["_kw_requires_import"]:
        if kwargs[key] is not None:
            kwargs[key] = pydoc.locate(kwargs[key])
    cls = pydoc.locate(arch["network_class_name"])
    return cls(input_channels=1, num_classes=outputs, deep_supervision=True, **kwargs)


def randomize(network: torch.nn.Module, seed: int) -> None:
    """Non-trivial weights everywhere (norm scales and biases too), so no mapping error can hide."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in network.named_parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * (0.2 if p.ndim > 1 else 0.5) + name.endswith("norm.weight"))


def nnunet_logits(networks: dict[str, torch.nn.Module], x: torch.Tensor) -> torch.Tensor:
    """nnU-Net 2.8.1's arithmetic for an input of exactly one tile: each fold's Gaussian-weighted logits
    summed and divided in fp16 (Gaussian rounded to fp16), then the folds averaged in fp16."""
    from autounet.inference.gaussian import gaussian_importance_map

    w = torch.from_numpy(gaussian_importance_map(x.shape[2:], dtype=np.float16).astype(np.float32))
    with torch.no_grad():
        folds = [(net(x)[0][0] * w).half() / w.half() for net in networks.values()]
    total = folds[0]
    for fold in folds[1:]:
        total += fold
    return (total / len(folds)).float()


def translated(plans: dict[str, Any], configuration: str, dataset: dict[str, Any] | None = None):
    return translate_plans(plans, dataset or DATASET, configuration, [0, 1, 2][: len(
        plans["configurations"][configuration]["patch_size"])], "plans.json")


# --------------------------------------------------------------------------- plans translation


def test_real_plans_translate_to_autounet_plans() -> None:
    plans, name = translated(PLAIN_PLANS, "3d_fullres")
    cfg = plans.configuration("3d_fullres")
    assert name == "plain_unet" and plans.task == TASK
    assert cfg.spacing == pytest.approx([2.6199814081192017, 1.3844438195228577, 1.4006162881851196])
    assert cfg.patch_size == [24, 40, 40] and cfg.batch_size == 2 and cfg.median_shape == [22, 36, 37]
    assert cfg.network.features_per_stage == [32, 64, 128, 256]
    assert cfg.network.strides == [[1, 1, 1], [2, 2, 2], [2, 2, 2], [1, 2, 2]]
    assert cfg.network.n_conv_encoder == [2, 2, 2, 2] and cfg.network.n_conv_decoder == [2, 2, 2]
    assert cfg.normalization == ["zscore"] and cfg.use_mask_for_norm == [False]
    rs = cfg.resampling
    assert (rs.order_data, rs.order_seg, rs.order_probabilities, rs.order_z, rs.anisotropy_threshold) == (3, 1, 1, 0, 3)
    assert plans.labels == {"background": 0, "organ": 1, "lesion": 2} and plans.regions is None
    assert plans.transpose_forward == [0, 1, 2] and cfg.mirror_axes == [0, 1, 2]
    props = plans.foreground_intensity_properties["0"]
    assert (props.mean, props.std, props.percentile_00_5, props.percentile_99_5) == \
        pytest.approx((169.7076416015625, 37.117862701416016, 97.0, 293.0))
    two_d, _ = translated(PLAIN_PLANS, "2d")
    assert two_d.configuration("2d").patch_size == [40, 40] and two_d.configuration("2d").network.dims == 2
    resenc, resenc_name = translated(RESENC_PLANS, "3d_fullres")
    assert resenc_name == "resenc_unet"
    assert resenc.configuration("3d_fullres").network.n_conv_encoder == [1, 3, 4, 6]
    assert resenc.configuration("3d_fullres").network.residual_shortcut == "project_on_channel_change"


def test_transposed_plans_store_the_untransposed_median_spacing_and_ct_settings() -> None:
    plans = copy.deepcopy(PLAIN_PLANS)
    plans["transpose_forward"], plans["transpose_backward"] = [2, 0, 1], [1, 2, 0]
    plans["original_median_spacing_after_transp"] = [3.0, 1.0, 2.0]
    plans["configurations"]["3d_fullres"]["normalization_schemes"] = ["CTNormalization"]
    out, _ = translated(plans, "3d_fullres")
    assert out.original_median_spacing == [1.0, 2.0, 3.0]  # (z, y, x) before the transposition
    assert out.configuration("3d_fullres").normalization == ["ct"]


def test_region_labels_become_autounet_regions() -> None:
    dataset = dict(DATASET, labels={"background": 0, "whole": [1, 2], "core": 2}, regions_class_order=[1, 2])
    plans, _ = translated(PLAIN_PLANS, "3d_fullres", dataset)
    assert [(r.name, r.values) for r in plans.regions] == [("whole", [1, 2]), ("core", [2])]
    assert plans.regions_class_order == [1, 2] and plans.num_outputs == 2


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("key, value, message", [
    ("network_class_name", "my_package.MyUNet", "unknown network 'my_package.MyUNet'"),
    ("norm_op", "torch.nn.modules.batchnorm.BatchNorm3d", "unsupported op 'torch.nn.modules.batchnorm.BatchNorm3d'"),
    ("nonlin", "torch.nn.GELU", "unsupported op 'torch.nn.GELU'"),
    ("dropout_op", "torch.nn.Dropout3d", "arch_kwargs.dropout_op: unsupported value 'torch.nn.Dropout3d'"),
    ("my_extra", 1, "unknown argument(s) ['my_extra']"),
])
def test_unreproducible_architectures_are_refused(key: str, value: Any, message: str) -> None:
    plans = copy.deepcopy(PLAIN_PLANS)
    arch = plans["configurations"]["3d_fullres"]["architecture"]
    (arch if key == "network_class_name" else arch["arch_kwargs"])[key] = value
    with pytest.raises(AutounetError) as err:
        translated(plans, "3d_fullres")
    assert message in str(err.value) and "autounet cannot reproduce this nnU-Net model" in str(err.value)


def test_unknown_normalization_is_refused() -> None:
    plans = copy.deepcopy(PLAIN_PLANS)
    plans["configurations"]["3d_fullres"]["normalization_schemes"] = ["MyNormalization"]
    with pytest.raises(AutounetError, match=r"normalization_schemes\[0\]: unknown normalization 'MyNormalization'"):
        translated(plans, "3d_fullres")


# --------------------------------------------------------------------------- weights


@pytest.mark.parametrize("plans, configuration, shape", [
    (PLAIN_PLANS, "3d_fullres", (8, 16, 16)), (PLAIN_PLANS, "2d", (16, 24)),
    (RESENC_PLANS, "3d_fullres", (8, 16, 16)), (RESENC_PLANS, "2d", (16, 24)),
    (CAPPED_RESENC, "3d_fullres", (8, 16, 16)),
], ids=["plain-3d", "plain-2d", "resenc-3d", "resenc-2d", "resenc-3d-capped"])
def test_imported_network_gives_the_reference_logits(plans, configuration, shape) -> None:
    reference = reference_network(plans, configuration)
    randomize(reference, 1)
    ours_plans, name = translated(plans, configuration)
    ours = build_network(name, ours_plans.configuration(configuration).network, 1, 3, deep_supervision=True)
    ours.load_state_dict(map_state_dict(reference.state_dict(), ours, "test"))
    x = torch.randn(2, 1, *shape, generator=torch.Generator().manual_seed(2))
    reference.eval(), ours.eval()
    with torch.no_grad():
        expected, got = reference(x), ours(x)
    assert len(got) == len(expected)  # every deep-supervision head, full resolution first
    for e, g in zip(expected, got):
        assert torch.allclose(g, e, rtol=1e-4, atol=1e-4 * float(e.abs().max())), float((g - e).abs().max())


# --------------------------------------------------------------------------- results folders and zips

TINY_ARCH = {"n_stages": 2, "features_per_stage": [4, 8], "kernel_sizes": [[3, 3, 3], [3, 3, 3]],
             "strides": [[1, 1, 1], [2, 2, 2]], "n_conv_per_stage": [1, 1], "n_conv_per_stage_decoder": [1]}


def write_results_folder(root: Path, trainer: str = "nnUNetTrainer", extra: dict[str, Any] | None = None,
                         folds: tuple[str, ...] = ("0", "1"), dataset: dict[str, Any] | None = None,
                         outputs: int = 3) -> tuple[Path, dict[str, torch.nn.Module]]:
    """A tiny 3d_fullres model folder laid out (and pickled) like nnUNetv2_train writes it."""
    plans = copy.deepcopy(PLAIN_PLANS)
    cfg = plans["configurations"]["3d_fullres"]
    cfg["architecture"]["arch_kwargs"].update(TINY_ARCH)
    cfg["patch_size"] = [8, 16, 16]
    folder = root / TASK / f"{trainer}__nnUNetPlans__3d_fullres"
    folder.mkdir(parents=True)
    (folder / "plans.json").write_text(json.dumps(plans))
    (folder / "dataset.json").write_text(json.dumps(dataset or DATASET))
    networks = {}
    for i, fold in enumerate(folds):
        net = reference_network(plans, "3d_fullres", outputs)
        randomize(net, 10 + i)
        state = {"network_weights": net.state_dict(), "optimizer_state": {}, "grad_scaler_state": None,
                 "logging": {"ema_fg_dice": [np.float64(0.5)]}, "_best_ema": np.float32(0.5), "current_epoch": 3,
                 "init_args": {"plans": plans, "configuration": "3d_fullres", "fold": int(fold),
                               "dataset_json": DATASET, "device": torch.device("cpu")},
                 "trainer_name": trainer, "inference_allowed_mirroring_axes": (0, 1, 2), **(extra or {})}
        (folder / f"fold_{fold}").mkdir()
        torch.save(state, folder / f"fold_{fold}" / "checkpoint_final.pth")
        networks[fold] = net.eval()
    return folder, networks


def test_results_folder_imports_and_predicts_like_the_reference(tmp_path: Path) -> None:
    folder, networks = write_results_folder(tmp_path / "nnunet")
    ws = tmp_path / "ws"
    assert main(["--workspace", str(ws), "import_nnunet", str(folder.parent)]) == 0
    run_dir = ws / "results" / TASK / "3d_fullres__nnUNetTrainer__nnUNetPlans"
    state = load_checkpoint(run_dir / "fold_1" / "checkpoint_final.pt")
    assert state["network_name"] == "plain_unet" and state["mirror_axes"] == [0, 1, 2]
    manifest = json.loads((run_dir / "fold_0" / "run.json").read_text())
    assert manifest["status"] == "finished" and manifest["imported_from"]["trainer"] == "nnUNetTrainer"
    # A case on the plans' grid (no resampling), nonzero everywhere (no crop), of exactly one patch:
    # the prediction must be the argmax of the two folds' mean logits on the z-scored image, computed
    # with nnU-Net's fp16 sums (in fp32, near-ties of these random networks resolve differently).
    spacing = PLAIN_PLANS["configurations"]["3d_fullres"]["spacing"]
    image = np.random.default_rng(0).uniform(50, 300, (8, 16, 16)).astype(np.float32)
    predictor = Predictor.from_run_folder(run_dir, device="cpu", use_mirroring=False, precision="fp32")
    seg = predictor.predict_array(image, spacing=spacing)
    x = torch.from_numpy((image - image.mean(dtype=np.float64)) / image.std(dtype=np.float64)).float()[None, None]
    expected = nnunet_logits(networks, x).argmax(0).numpy()
    assert seg.shape == image.shape and (seg == expected).mean() == 1.0
    assert set(np.unique(expected)) == {0, 1, 2}  # the check is not vacuous


def test_region_model_predicts_like_nnunet(tmp_path: Path) -> None:
    """nnU-Net averages region logits over folds and applies the sigmoid last (`region_averaging` logits).

    Three folds: with two, the mean sigmoid exceeds 0.5 exactly where the mean logit exceeds 0."""
    dataset = dict(DATASET, labels={"background": 0, "whole": [1, 2], "core": 2}, regions_class_order=[1, 2])
    folder, networks = write_results_folder(tmp_path / "nnunet", dataset=dataset, outputs=2, folds=("0", "1", "2"))
    (run,) = import_nnunet(folder, Workspace(tmp_path / "ws"))
    spacing = PLAIN_PLANS["configurations"]["3d_fullres"]["spacing"]
    image = np.random.default_rng(3).uniform(50, 300, (8, 16, 16)).astype(np.float32)
    predictor = Predictor.from_run_folder(run.run_dir, device="cpu", use_mirroring=False, precision="fp32")
    assert predictor.plans.region_averaging == "logits"
    seg = predictor.predict_array(image, spacing=spacing)
    x = torch.from_numpy((image - image.mean(dtype=np.float64)) / image.std(dtype=np.float64)).float()[None, None]
    logits = nnunet_logits(networks, x).numpy()
    expected = np.zeros(image.shape, dtype=np.uint8)
    expected[logits[0] > 0] = 1
    expected[logits[1] > 0] = 2
    assert set(np.unique(expected)) == {0, 1, 2}
    assert (seg == expected).mean() == 1.0


def test_predict_command_uses_the_imported_run(tmp_path: Path) -> None:
    from autounet.io.geometry import Geometry
    from autounet.io.images import read_image, write_image

    folder, _ = write_results_folder(tmp_path / "nnunet", folds=("0",))
    ws = tmp_path / "ws"
    import_nnunet(folder, Workspace(ws))
    (tmp_path / "in").mkdir()
    geometry = Geometry(spacing=(1.4, 1.38, 2.62), origin=(0.0, 0.0, 0.0), direction=tuple(np.eye(3).ravel()),
                        shape=(10, 18, 20))
    image = np.random.default_rng(1).uniform(50, 300, (10, 18, 20)).astype(np.float32)
    write_image(image, geometry, tmp_path / "in" / "case_0000.nii.gz")
    assert main(["--workspace", str(ws), "predict", "-t", "Dataset501", "-i", str(tmp_path / "in"),
                 "-o", str(tmp_path / "out"), "--device", "cpu"]) == 0
    seg, geo = read_image(tmp_path / "out" / "case.nii.gz")
    assert seg.shape[1:] == image.shape and geo.spacing == pytest.approx(geometry.spacing)


def test_zip_from_export_imports_only_the_model_files(tmp_path: Path) -> None:
    folder, _ = write_results_folder(tmp_path / "nnunet", folds=("0",))
    archive = tmp_path / "model.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in folder.rglob("*"):
            zf.write(path, path.relative_to(tmp_path / "nnunet").as_posix())
        zf.writestr(f"{TASK}/{folder.name}/fold_0/postprocessing.pkl", b"not unpickled")
    runs = import_nnunet(archive, Workspace(tmp_path / "ws"))
    assert [r.folds for r in runs] == [["0"]]
    assert sorted(p.name for p in runs[0].run_dir.rglob("*") if p.is_file()) == \
        ["checkpoint_final.pt", "dataset.json", "plans.json", "run.json"]


def test_zip_with_path_traversal_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr(f"{TASK}/nnUNetTrainer__nnUNetPlans__3d_fullres/plans.json", "{}")
        zf.writestr("../../outside/plans.json", "{}")
    with pytest.raises(AutounetError, match=r"refused, member '../../outside/plans.json' contains '..'"):
        import_nnunet(archive, Workspace(tmp_path / "ws"))
    assert not (tmp_path / "outside").exists()
    assert not any((tmp_path / "ws" / "results").iterdir())


def test_checkpoint_with_a_disallowed_global_is_refused(tmp_path: Path) -> None:
    folder, _ = write_results_folder(tmp_path / "nnunet", extra={"args": argparse.Namespace(x=1)}, folds=("0",))
    with pytest.raises(CheckpointError, match=r"refused, the checkpoint holds a pickled Python object "
                                              r"\(argparse.Namespace\)"):
        load_nnunet_checkpoint(folder / "fold_0" / "checkpoint_final.pth")
    with pytest.raises(CheckpointError, match="argparse.Namespace"):
        import_nnunet(folder, Workspace(tmp_path / "ws"))
    assert not (tmp_path / "ws" / "results" / TASK / "3d_fullres__nnUNetTrainer__nnUNetPlans").exists()


def test_custom_trainer_names_and_changed_architectures_are_refused(tmp_path: Path) -> None:
    folder, _ = write_results_folder(tmp_path / "a", trainer="MyTrainer", folds=("0",))
    with pytest.raises(AutounetError, match="trainer 'MyTrainer' is not nnU-Net's nnUNetTrainer or a variant"):
        import_nnunet(folder, Workspace(tmp_path / "ws"))
    folder, _ = write_results_folder(tmp_path / "b", trainer="nnUNetTrainerWide", folds=("0",))
    path = folder / "fold_0" / "checkpoint_final.pth"
    state = torch.load(path, weights_only=False)
    state["network_weights"]["encoder.stages.0.0.convs.0.norm.running_mean"] = torch.zeros(4)
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="weight 'encoder.stages.0.0.convs.0.norm.running_mean' has no "
                                              "counterpart in autounet's PlainUNet"):
        import_nnunet(folder, Workspace(tmp_path / "ws"))
