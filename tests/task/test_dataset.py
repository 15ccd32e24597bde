"""Finding tasks by name, reading both dataset.json layouts, and listing prediction inputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from autounet.errors import DatasetError
from autounet.io.geometry import Geometry
from autounet.io.images import write_image
from autounet.task.dataset import find_task, load_task, task_id_from_name
from autounet.task.prediction_inputs import list_prediction_inputs
from autounet.task.demo_data import convert_msd_to_nnunet
from autounet.core.workspace import Workspace

GEOM = Geometry(spacing=(1.0, 1.0, 2.0), origin=(0.0, 0.0, 0.0), shape=(3, 4, 5))


def _folders(root: Path, *names: str) -> None:
    for n in names:
        (root / n).mkdir(parents=True)


# ---------------------------------------------------------------------------------------------- find_task


@pytest.mark.parametrize("query", ["Task01", "1", "01", "Task001", "Task01_BrainTumour", "Dataset001_BrainTumour",
                                   "BrainTumour"])
def test_find_task_name_variants(tmp_path: Path, query: str) -> None:
    ws = Workspace(tmp_path / "ws")
    _folders(ws.raw, "Task01_BrainTumour", "Task02_Heart", "Dataset010_Liver")
    assert find_task(query, ws) == (ws.raw / "Task01_BrainTumour").resolve()


def test_find_task_dataset_folder_by_number(tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "ws")
    _folders(ws.raw, "Task01_BrainTumour", "Dataset010_Liver")
    assert find_task("10", ws) == (ws.raw / "Dataset010_Liver").resolve()
    assert find_task("Task10", ws) == (ws.raw / "Dataset010_Liver").resolve()


def test_find_task_by_path_and_in_current_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ws = Workspace(tmp_path / "ws")
    _folders(tmp_path / "here", "Task05_Prostate")
    assert find_task(str(tmp_path / "here" / "Task05_Prostate"), ws) == (tmp_path / "here" / "Task05_Prostate")
    monkeypatch.chdir(tmp_path / "here")
    assert find_task("Task05", ws) == (tmp_path / "here" / "Task05_Prostate").resolve()
    assert find_task("./Task05_Prostate", ws) == (tmp_path / "here" / "Task05_Prostate").resolve()


def test_find_task_prefers_workspace_over_current_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ws = Workspace(tmp_path / "ws")
    _folders(ws.raw, "Task05_Prostate")
    _folders(tmp_path / "here", "Task05_Prostate")
    monkeypatch.chdir(tmp_path / "here")
    assert find_task("5", ws) == (ws.raw / "Task05_Prostate").resolve()


def test_find_task_ambiguous_lists_matches(tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "ws")
    _folders(ws.raw, "Task03_Liver", "Dataset003_Liver")
    with pytest.raises(DatasetError, match="ambiguous") as info:
        find_task("3", ws)
    assert "Task03_Liver" in str(info.value) and "Dataset003_Liver" in str(info.value)
    assert find_task("Task03_Liver", ws) == (ws.raw / "Task03_Liver").resolve()


def test_find_task_none_lists_what_was_found_and_where(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ws = Workspace(tmp_path / "ws")
    _folders(ws.raw, "Task02_Heart")
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    with pytest.raises(DatasetError) as info:
        find_task("Task07", ws)
    message = str(info.value)
    assert "Task07" in message and "Task02_Heart" in message
    assert str(ws.raw) in message and str(tmp_path / "cwd") in message
    with pytest.raises(DatasetError, match="task folder not found"):
        find_task(str(tmp_path / "nowhere" / "Task07_X"), ws)


def test_task_id_from_name() -> None:
    assert task_id_from_name("Task04_Hippocampus") == 4
    assert task_id_from_name("Dataset120_X") == 120
    assert task_id_from_name("hippocampus") is None


# ---------------------------------------------------------------------------------------------- load_task


def test_load_msd_demo(demo_task_3d: Path) -> None:
    task = load_task(demo_task_3d)
    assert task.layout == "msd" and task.name == "Task01_Demo"
    assert task.channel_names == {"0": "MR"}
    assert task.labels == {"background": 0, "organ": 1, "lesion": 2}
    assert task.label_values == [0, 1, 2]
    assert task.file_ending == ".nii.gz"
    assert [c.case_id for c in task.training] == [f"demo_{i:03d}" for i in range(1, 9)]
    first = task.training[0]
    assert first.images == [demo_task_3d.resolve() / "imagesTr" / "demo_001.nii.gz"]
    assert first.label == demo_task_3d.resolve() / "labelsTr" / "demo_001.nii.gz"
    assert [c.case_id for c in task.test] == ["demo_009", "demo_010"]
    assert task.test[0].label == demo_task_3d.resolve() / "labelsTs" / "demo_009.nii.gz"
    assert task.to_json_dict() == {
        "name": "Task01_Demo", "channel_names": {"0": "MR"},
        "labels": {"background": 0, "organ": 1, "lesion": 2},
        "file_ending": ".nii.gz", "layout": "msd", "numTraining": 8,
    }


def test_both_layouts_load_to_the_same_cases(demo_task_3d: Path, tmp_path: Path) -> None:
    msd = load_task(demo_task_3d)
    nn_root = convert_msd_to_nnunet(demo_task_3d, tmp_path)
    assert nn_root.name == "Dataset001_Demo"
    nn = load_task(nn_root)
    assert nn.layout == "nnunet"
    assert (nn.channel_names, nn.labels, nn.file_ending) == (msd.channel_names, msd.labels, msd.file_ending)
    assert [c.case_id for c in nn.training] == [c.case_id for c in msd.training]
    assert [c.case_id for c in nn.test] == [c.case_id for c in msd.test]
    assert nn.training[0].images == [nn_root / "imagesTr" / "demo_001_0000.nii.gz"]
    assert nn.training[0].label == nn_root / "labelsTr" / "demo_001.nii.gz"
    assert nn.test[0].label == nn_root / "labelsTs" / "demo_009.nii.gz"
    assert nn.to_json_dict() | {"layout": "msd", "name": "Task01_Demo"} == msd.to_json_dict()


def test_msd_4d_multichannel_task(tmp_path: Path) -> None:
    root = tmp_path / "Task09_Two"
    write_image(np.zeros((2, 3, 4, 5), dtype=np.float32), GEOM, root / "imagesTr" / "a.nii.gz")
    write_image(np.zeros((3, 4, 5), dtype=np.uint8), GEOM, root / "labelsTr" / "a.nii.gz")
    (root / "dataset.json").write_text(json.dumps({
        "modality": {"0": "T1", "1": "FLAIR"}, "labels": {"0": "background", "1": "tumour"},
        "training": [{"image": "./imagesTr/a.nii.gz", "label": "./labelsTr/a.nii.gz"}], "test": [],
    }))
    task = load_task(root)
    assert task.channel_names == {"0": "T1", "1": "FLAIR"} and task.num_channels == 2
    assert task.training[0].images == [root / "imagesTr" / "a.nii.gz"]

    nn_root = convert_msd_to_nnunet(root, tmp_path / "out")
    assert sorted(p.name for p in (nn_root / "imagesTr").iterdir()) == ["a_0000.nii.gz", "a_0001.nii.gz"]


def test_nnunet_explicit_dataset_map(tmp_path: Path) -> None:
    root = tmp_path / "Dataset004_Map"
    root.mkdir()
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1}, "numTraining": 1,
        "file_ending": ".nii.gz",
        "dataset": {"c1": {"images": ["/abs/c1.nii.gz"], "label": "labels/c1.nii.gz"}},
    }))
    task = load_task(root)
    assert task.training[0].images == [Path("/abs/c1.nii.gz")]
    assert task.training[0].label == root / "labels" / "c1.nii.gz"


def _write_json(root: Path, text: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset.json").write_text(text)
    return root


NNUNET_OK = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1}, "numTraining": 0,
             "file_ending": ".nii.gz"}
MSD_OK = {"modality": {"0": "CT"}, "labels": {"0": "background", "1": "liver"},
          "training": [{"image": "./imagesTr/a.nii.gz", "label": "./labelsTr/a.nii.gz"}], "test": []}


@pytest.mark.parametrize(("text", "fragment"), [
    ('{"channel_names": {"0": "CT"},}', "not valid JSON"),
    (json.dumps({k: v for k, v in NNUNET_OK.items() if k != "file_ending"}), "missing required key 'file_ending'"),
    (json.dumps({k: v for k, v in MSD_OK.items() if k != "labels"}), "missing required key 'labels'"),
    (json.dumps({k: v for k, v in MSD_OK.items() if k != "training"}), "missing required key 'training'"),
    (json.dumps(NNUNET_OK | {"numTraining": 3}), "'numTraining' is 3 but"),
    (json.dumps(MSD_OK | {"numTraining": 2}), "'numTraining' is 2 but 'training' lists 1"),
    (json.dumps(MSD_OK | {"training": MSD_OK["training"] * 2}), "case id 'a' more than once"),
    (json.dumps(NNUNET_OK | {"labels": {"background": 0, "liver": "1"}}), "'labels.liver' must be an integer"),
    (json.dumps(NNUNET_OK | {"labels": {"background": 0, "tumour": [1, 2]}}), "'regions_class_order' is missing"),
    (json.dumps(MSD_OK | {"labels": {"0": "background", "one": "liver"}}), "'labels' key 'one' is not an integer"),
    (json.dumps(NNUNET_OK | {"labels": {"liver": 1}}), "must declare background as 0"),
    (json.dumps(NNUNET_OK | {"channel_names": {"0": "CT", "2": "PET"}}), "without gaps"),
    (json.dumps(NNUNET_OK | {"file_ending": ".png"}), "'file_ending' '.png' is not supported"),
    (json.dumps(MSD_OK | {"training": [{"label": "./labelsTr/a.nii.gz"}]}), "'training[0]' has no 'image' key"),
    ("[1, 2]", "must hold a JSON object"),
])
def test_bad_dataset_json_names_file_and_key(tmp_path: Path, text: str, fragment: str) -> None:
    root = _write_json(tmp_path / "Task01_X", text)
    with pytest.raises(DatasetError) as info:
        load_task(root)
    message = str(info.value)
    assert str(root / "dataset.json") in message
    assert fragment in message, message


def test_missing_dataset_json_and_folder(tmp_path: Path) -> None:
    (tmp_path / "Task01_X").mkdir()
    with pytest.raises(DatasetError, match=r"Task01_X/dataset\.json: file not found"):
        load_task(tmp_path / "Task01_X")
    with pytest.raises(DatasetError, match="task folder not found"):
        load_task(tmp_path / "Task02_Y")


def test_nnunet_counts_cases_and_rejects_unsuffixed_files(tmp_path: Path) -> None:
    root = _write_json(tmp_path / "Dataset005_X", json.dumps(NNUNET_OK | {"numTraining": 2}))
    for name in ("b_0000.nii.gz", "a_0000.nii.gz", "a_0001.nii.gz", ".tmp-c_0000.nii.gz", "._a_0000.nii.gz",
                 "notes.txt"):
        (root / "imagesTr").mkdir(exist_ok=True)
        (root / "imagesTr" / name).write_bytes(b"x")
    task = load_task(root)
    assert [c.case_id for c in task.training] == ["a", "b"]
    assert task.training[1].images == [root / "imagesTr" / "b_0000.nii.gz"]
    (root / "imagesTr" / "c.nii.gz").write_bytes(b"x")
    with pytest.raises(DatasetError, match=r"imagesTr/c\.nii\.gz: image files need a 4-digit channel suffix"):
        load_task(root)


# ---------------------------------------------------------------------------------------------- predict inputs


def test_prediction_inputs_channel_files(tmp_path: Path) -> None:
    for name in ("b_0000.nii.gz", "b_0001.nii.gz", "a_0000.nii.gz", "a_0001.nii.gz"):
        write_image(np.zeros((3, 4, 5), dtype=np.float32), GEOM, tmp_path / name)
    (tmp_path / ".tmp-a_0000-xyz.nii.gz").write_bytes(b"partial")
    (tmp_path / ".hidden.nii.gz").write_bytes(b"x")
    cases = list_prediction_inputs(tmp_path, num_channels=2)
    assert [c.case_id for c in cases] == ["a", "b"]
    assert cases[0].images == [tmp_path / "a_0000.nii.gz", tmp_path / "a_0001.nii.gz"]
    assert cases[0].label is None


def test_prediction_inputs_missing_channel_names_case_and_file(tmp_path: Path) -> None:
    for name in ("a_0000.nii.gz", "a_0001.nii.gz", "b_0000.nii.gz"):
        write_image(np.zeros((3, 4, 5), dtype=np.float32), GEOM, tmp_path / name)
    with pytest.raises(DatasetError, match=r"b_0001\.nii\.gz: channel 1 of case 'b' is missing"):
        list_prediction_inputs(tmp_path, num_channels=2)


def test_prediction_inputs_msd_files_and_single_file(tmp_path: Path) -> None:
    write_image(np.zeros((2, 3, 4, 5), dtype=np.float32), GEOM, tmp_path / "BRATS_001.nii.gz")
    write_image(np.zeros((2, 3, 4, 5), dtype=np.float32), GEOM, tmp_path / "BRATS_002.nii.gz")
    cases = list_prediction_inputs(tmp_path, num_channels=2)
    assert [c.case_id for c in cases] == ["BRATS_001", "BRATS_002"]
    assert list_prediction_inputs(tmp_path / "BRATS_002.nii.gz", 2)[0].images == [tmp_path / "BRATS_002.nii.gz"]
    with pytest.raises(DatasetError, match=r"BRATS_001\.nii\.gz: has 2 channel\(s\) but the model expects 1"):
        list_prediction_inputs(tmp_path, num_channels=1)


def test_prediction_inputs_numbered_msd_files_are_cases(tmp_path: Path) -> None:
    """'case_0001' without a 'case_0000' is a case number, not a channel suffix."""
    for name in ("case_0001.nii.gz", "case_0002.nii.gz"):
        write_image(np.zeros((3, 4, 5), dtype=np.float32), GEOM, tmp_path / name)
    assert [c.case_id for c in list_prediction_inputs(tmp_path, 1)] == ["case_0001", "case_0002"]


def test_prediction_inputs_empty_or_missing_folder(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "readme.txt").write_text("nothing")
    with pytest.raises(DatasetError, match=r"/in: no input images"):
        list_prediction_inputs(tmp_path / "in", num_channels=1)
    with pytest.raises(DatasetError, match="input not found"):
        list_prediction_inputs(tmp_path / "absent", num_channels=1)


def test_demo_task_copy_in_workspace_is_found_and_loaded(demo_task_2d: Path, tmp_path: Path) -> None:
    ws = Workspace(tmp_path)
    shutil.copytree(demo_task_2d, ws.raw / demo_task_2d.name)
    task = load_task(find_task("Task02", ws))
    assert task.name == "Task02_Demo2D" and len(task.training) == 12
