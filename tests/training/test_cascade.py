"""The 3d_lowres -> 3d_cascade_fullres cascade: shared resampling, loader channels, end to end (CPU).

The end-to-end task: 4 cases of 1x16^3 voxels at 1 mm (two cubes labelled 1 and 2 on noise),
preprocessed with `preprocess_case` for a 3d_fullres grid (1 mm, also the cascade's data)
and a 3d_lowres grid (2 mm, 8^3), with a hand-written 2-fold splits.json. The 3d_lowres folds
each write their validation cases' predictions; the cascade needs both folds' worth.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from autounet.errors import AutounetError, DatasetError
from autounet.preprocessing.cascade import (
    cascade_input,
    foreground_one_hot,
    load_previous_stage,
    next_stage_segmentation,
    save_next_stage,
)
from autounet.inference.predictor import Predictor, previous_stage_segmentation
from autounet.io.atomic import write_json
from autounet.io.geometry import Geometry
from autounet.io.images import write_label
from autounet.core.workspace import Workspace
from autounet.planners.plans import ConfigurationPlan, IntensityProperties, NetworkPlan, Plans, save_plans
from autounet.preprocessing.case_store import CaseStore
from autounet.preprocessing.preprocessor import preprocess_case
from autounet.preprocessing.resampling import resample_probabilities
from autounet.training.transforms import (
    MoveSegChannelToOneHotData,
    binary_morphology,
    remove_random_component,
)
from autounet.core.checkpoint import load_checkpoint
from autounet.core.run_layout import FINAL
from autounet.training.data_loader import BatchSpec
from autounet.training.run_training import find_previous_stage_dir, run_training
from autounet.training.settings import TrainingSettings

TASK = "Task91_Cascade"
SIZE = 16
CASES = [f"case_{i}" for i in range(4)]
SPLITS = [{"train": CASES[:2], "val": CASES[2:]}, {"train": CASES[2:], "val": CASES[:2]}]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --------------------------------------------------------------------------- pure functions
def test_next_stage_segmentation_upsamples_logits_by_hand() -> None:
    logits = np.zeros((3, 2, 1, 1), dtype=np.float32)
    logits[1, 0] = 4.0  # class 1 in the first voxel, class 2 in the second
    logits[2, 1] = 4.0
    seg = next_stage_segmentation(logits, (4, 1, 1))
    # output centres sit at input z = 0 (clamped), 0.25, 0.75, 1: class 1 wins the first half
    assert seg.dtype == np.int16 and seg[:, 0, 0].tolist() == [1, 1, 2, 2]
    same = next_stage_segmentation(torch.from_numpy(logits), (2, 1, 1))
    assert same[:, 0, 0].tolist() == [1, 2]


def test_next_stage_segmentation_equals_argmax_of_resampled_logits() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4, 3, 5, 6)).astype(np.float32)
    spacing, target = [6.0, 2.0, 2.0], [3.0, 1.0, 1.0]  # anisotropic: z resampled separately (nearest)
    expected = resample_probabilities(logits, (6, 10, 12), spacing, target).argmax(0)
    seg = next_stage_segmentation(logits, (6, 10, 12), spacing, target)
    np.testing.assert_array_equal(seg, expected)
    # the predictor's name for it is the same function
    np.testing.assert_array_equal(previous_stage_segmentation(logits, (6, 10, 12), spacing, target), expected)


def test_foreground_one_hot_and_cascade_input() -> None:
    seg = np.array([[[0, 1, 2, 2]]], dtype=np.int16)
    onehot = foreground_one_hot(seg, 3)
    assert onehot.shape == (2, 1, 1, 4) and onehot.dtype == np.float32
    assert onehot[0, 0, 0].tolist() == [0, 1, 0, 0] and onehot[1, 0, 0].tolist() == [0, 0, 1, 1]
    data = np.full((1, 1, 1, 4), 7.0, dtype=np.float32)
    stacked = cascade_input(data, seg, 3)
    assert stacked.shape == (3, 1, 1, 4) and (stacked[0] == 7).all()
    with pytest.raises(ValueError, match="does not match"):
        cascade_input(data, seg[:, :, :2], 3)


def test_previous_stage_files_are_checked(tmp_path: Path) -> None:
    save_next_stage(np.ones((2, 3, 4)), tmp_path, "a")
    assert load_previous_stage(tmp_path, "a", expected_shape=(2, 3, 4)).dtype == np.int16
    with pytest.raises(DatasetError, match="retrain 3d_lowres"):
        load_previous_stage(tmp_path, "a", expected_shape=(2, 3, 5))
    (tmp_path / "b.npz").write_bytes(b"not a zip")
    with pytest.raises(DatasetError, match="b.npz"):
        load_previous_stage(tmp_path, "b")


def _cube(size: int, lo: int, hi: int) -> np.ndarray:
    mask = np.zeros((size,) * 3, dtype=bool)
    mask[lo:hi, lo:hi, lo:hi] = True
    return mask


def test_binary_morphology_by_hand() -> None:
    point = _cube(7, 3, 4)
    assert binary_morphology(point, "dilate", 1).sum() == 7  # centre + 6 face neighbours
    assert binary_morphology(point, "dilate", 1.5).sum() == 19  # + 12 edge neighbours (sqrt 2)
    cube = _cube(7, 2, 5)
    eroded = binary_morphology(cube, "erode", 1)
    assert eroded.sum() == 1 and eroded[3, 3, 3]
    speck = cube.copy()
    speck[0, 0, 6] = True
    opened = binary_morphology(speck, "open", 1)
    assert not opened[0, 0, 6] and opened.sum() == 7  # the speck is gone, the cube is rounded
    gap = _cube(9, 3, 6)
    gap[:, :, 4] = False  # a one-voxel slit through the cube
    closed = binary_morphology(gap, "close", 1)
    assert closed[4, 4, 4] and not closed[4, 4, 1]
    edge = np.zeros((1, 1, 3), dtype=bool)
    edge[0, 0, :] = True
    assert not binary_morphology(edge, "erode", 1).any()  # beyond the array is background
    with pytest.raises(ValueError, match="operation"):
        binary_morphology(point, "shrink", 1)


@pytest.mark.parametrize("operation", ["dilate", "erode", "open", "close"])
def test_binary_morphology_equals_scipy_with_a_ball(operation: str) -> None:
    from scipy import ndimage

    rng = np.random.default_rng(1)
    mask = np.zeros((20, 20, 20), dtype=bool)
    mask[6:14, 6:14, 6:14] = rng.random((8, 8, 8)) < 0.6  # far enough from the border for radius 2
    grid = np.indices((5, 5, 5)) - 2
    ball = (grid**2).sum(0) <= 4
    scipy_op = {"dilate": ndimage.binary_dilation, "erode": ndimage.binary_erosion,
                "open": ndimage.binary_opening, "close": ndimage.binary_closing}[operation]
    np.testing.assert_array_equal(binary_morphology(mask, operation, 2), scipy_op(mask, structure=ball))


def test_remove_random_component_spares_large_components() -> None:
    mask = np.zeros((10, 10, 10), dtype=bool)
    mask[:6, :6, :6] = True  # 216 voxels > 15 % of 1000
    mask[9, 9, 8:] = True  # 2 voxels
    out = remove_random_component(mask, 0.15)
    assert out.sum() == 216 and not out[9, 9, 8:].any()
    big_only = mask.copy()
    big_only[9, 9, 8:] = False
    np.testing.assert_array_equal(remove_random_component(big_only, 0.15), big_only)


def test_move_seg_channel_to_one_hot_data() -> None:
    data = np.zeros((1, 1, 1, 1, 3), dtype=np.float32)
    seg = np.array([[[[[1, 0, 0]]], [[[2, 2, 0]]]]], dtype=np.int16)  # (B=1, S=2, 1, 1, 3)
    out = MoveSegChannelToOneHotData(3)(data=data, seg=seg)
    assert out["seg"].shape == (1, 1, 1, 1, 3) and out["seg"].ravel().tolist() == [1, 0, 0]
    assert out["data"].shape == (1, 3, 1, 1, 3)
    assert out["data"][0, 1].ravel().tolist() == [0, 0, 0] and out["data"][0, 2].ravel().tolist() == [1, 1, 0]


# --------------------------------------------------------------------------- a tiny cascade task
def _network(dims: int = 3) -> NetworkPlan:
    return NetworkPlan(architecture="plain_unet", features_per_stage=[4, 8], kernel_sizes=[[3] * dims] * 2,
                       strides=[[1] * dims, [2] * dims], n_conv_encoder=[1, 1], n_conv_decoder=[1])


def _configuration(name: str, data_identifier: str, spacing: float, patch: int, **links: str) -> ConfigurationPlan:
    return ConfigurationPlan(name=name, data_identifier=data_identifier, spacing=[spacing] * 3, patch_size=[patch] * 3,
                             batch_size=2, median_shape=[int(SIZE / spacing)] * 3, network=_network(),
                             normalization=["zscore"], use_mask_for_norm=[False], batch_dice=False,
                             estimated_memory_bytes=1_000_000, **links)


def cascade_plans() -> Plans:
    stats = IntensityProperties(mean=0.0, std=1.0, median=0.0, min=-1.0, max=1.0, percentile_00_5=-1.0,
                                percentile_99_5=1.0)
    configs = {
        "3d_fullres": _configuration("3d_fullres", "3d_fullres", 1.0, 8),
        "3d_lowres": _configuration("3d_lowres", "3d_lowres", 2.0, 8, next_stage="3d_cascade_fullres"),
        "3d_cascade_fullres": _configuration("3d_cascade_fullres", "3d_fullres", 1.0, 8, previous_stage="3d_lowres"),
    }
    return Plans(task=TASK, channel_names={"0": "MR"}, labels={"background": 0, "big": 1, "small": 2},
                 transpose_forward=[0, 1, 2], transpose_backward=[0, 1, 2], original_median_spacing=[1.0] * 3,
                 original_median_shape=[SIZE] * 3, foreground_intensity_properties={"0": stats},
                 gpu_memory_target_gb=8.0, configurations=configs, is_2d_data=False)


def toy_case(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(image (1, 16, 16, 16), labels): a 6^3 cube of label 1 and a 4^3 cube of label 2 on noise."""
    rng = np.random.default_rng(seed)
    seg = np.zeros((SIZE,) * 3, dtype=np.int16)
    a, b = int(rng.integers(1, 4)), int(rng.integers(9, 11))
    seg[a:a + 6, a:a + 6, a:a + 6] = 1
    seg[b:b + 4, b:b + 4, 2:6] = 2
    image = (seg * 1.5 + rng.normal(0, 0.3, seg.shape)).astype(np.float32)[None]
    return image, seg


def make_cascade_workspace(root: Path) -> Workspace:
    ws = Workspace(root)
    plans = cascade_plans()
    pre = ws.preprocessed(TASK)
    pre.mkdir(parents=True)
    save_plans(plans, pre / "plans.json")
    write_json(pre / "dataset.json", {"name": TASK, "channel_names": {"0": "MR"}, "labels": plans.labels,
                                      "file_ending": ".nii.gz", "layout": "nnunet", "numTraining": len(CASES)})
    write_json(pre / "splits.json", SPLITS)
    geometry = Geometry(spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), shape=(SIZE,) * 3)
    for i, case_id in enumerate(CASES):
        image, seg = toy_case(i)
        for configuration in ("3d_fullres", "3d_lowres"):
            data, seg_idx, props, locations = preprocess_case(image, seg, geometry, plans, configuration,
                                                              case_id=case_id)
            CaseStore(pre / configuration).write_case(case_id, data, seg_idx, props, locations)
        write_label(seg.astype(np.uint8), geometry, pre / "gt_segmentations" / f"{case_id}.nii.gz")
    return ws


def tiny_settings() -> TrainingSettings:
    return TrainingSettings(epochs=1, iters_per_epoch=2, val_iters=1, device="cpu", workers=0, seed=3)


def test_loader_appends_previous_stage_one_hot(tmp_path: Path) -> None:
    ws = make_cascade_workspace(tmp_path)
    pre = ws.preprocessed(TASK)
    store = CaseStore(pre / "3d_fullres")
    previous = tmp_path / "previous"
    for case_id in CASES:  # a perfect first stage: its one-hot must equal the target's
        save_next_stage(store.load(case_id, mmap=False)[1].clip(0), previous, case_id)
    common = dict(folder=str(pre / "3d_fullres"), case_ids=tuple(CASES), patch_size=(8, 8, 8), batch_size=4,
                  previous_stage_folder=str(previous), num_classes=3)
    plain = BatchSpec(**common, augment=False)
    assert plain.batch_shapes()[0] == (4, 3, 8, 8, 8)
    batch = plain.build(seed=0).make(CASES)
    target = batch["target"][0][:, 0]
    assert batch["data"].shape == (4, 3, 8, 8, 8)
    for k in (1, 2):
        np.testing.assert_array_equal(batch["data"][:, k], (target == k).astype(np.float32))
    augmented = BatchSpec(**common, augment=True).build(seed=1)
    for _ in range(3):
        onehot = augmented.make(augmented.choose_cases())["data"][:, 1:]
        assert onehot.shape == (4, 2, 8, 8, 8) and set(np.unique(onehot)) <= {0.0, 1.0}
        assert onehot.sum(1).max() <= 1  # still a one-hot after morphology and component removal
    with pytest.raises(ValueError, match="num_classes"):
        BatchSpec(**{**common, "num_classes": 0})


def test_previous_stage_run_with_other_budget_is_a_fallback(tmp_path: Path) -> None:
    results = tmp_path / "results"
    other = results / "3d_lowres__5ep_5it" / "predicted_next_stage"
    for case_id in CASES:
        save_next_stage(np.zeros((2, 2, 2)), other, case_id)
    found = find_previous_stage_dir(results, TASK, "3d_cascade_fullres", "3d_lowres", tiny_settings(), CASES)
    assert found == other


def test_cascade_trains_on_lowres_predictions_and_predicts(tmp_path: Path) -> None:
    ws = make_cascade_workspace(tmp_path)
    settings = tiny_settings()
    results = ws.results(TASK)
    expected = results / "3d_lowres__1ep_2it" / "predicted_next_stage"
    with pytest.raises(AutounetError) as missing_all:
        run_training(ws, TASK, "3d_cascade_fullres", 0, settings)
    assert str(expected) in str(missing_all.value) and "--folds 0,1" in str(missing_all.value)
    assert "--epochs 1 --iters-per-epoch 2" in str(missing_all.value)
    with pytest.raises(AutounetError, match="--folds 0,1"):  # fold all names the folds of splits.json too
        run_training(ws, TASK, "3d_cascade_fullres", "all", settings)

    run_training(ws, TASK, "3d_lowres", 0, settings)
    with pytest.raises(AutounetError) as missing_some:  # fold 0 wrote case_2 and case_3 only
        run_training(ws, TASK, "3d_cascade_fullres", 0, settings)
    assert str(expected) in str(missing_some.value) and "--folds 1 " in str(missing_some.value)

    run_training(ws, TASK, "3d_lowres", 1, settings)
    assert sorted(p.name for p in expected.iterdir()) == [f"{c}.npz" for c in CASES]
    assert load_previous_stage(expected, "case_0").shape == (SIZE,) * 3  # the fullres grid, not 8^3

    fold_dir = run_training(ws, TASK, "3d_cascade_fullres", 0, settings)
    state = load_checkpoint(fold_dir / FINAL)
    assert state["network_kwargs"]["in_channels"] == 3  # 1 image channel + 2 foreground one-hot channels
    assert sorted(p.name for p in (fold_dir / "validation").glob("*.nii.gz")) == ["case_2.nii.gz", "case_3.nii.gz"]

    predictor = Predictor.from_run_folder(fold_dir.parent, device="cpu", use_mirroring=False)
    assert predictor.previous_stage is not None
    assert predictor.previous_stage.run_dir == expected.parent and predictor.previous_stage.folds == ["0", "1"]
    image, _ = toy_case(0)
    seg = predictor.predict_array(image, spacing=(1.0, 1.0, 1.0))
    assert seg.shape == (SIZE,) * 3 and set(np.unique(seg)) <= {0, 1, 2}
