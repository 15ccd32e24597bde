import json

import pytest

from autounet.errors import AutounetError
from autounet.inference.predict_folder import predict_folder
from autounet.inference.presets import PRESETS, resolve_prediction_settings
from autounet.io.images import write_image
from autounet.core.workspace import Workspace

from inference_toys import flipped_geometry, labelled_case, make_plans, write_run


def test_presets_set_mirroring_folds_and_step():
    trained = ["0", "1", "2", "3", "4"]
    assert resolve_prediction_settings("accurate", None, None, None, trained) == (True, 0.5, None)
    assert resolve_prediction_settings("balanced", None, None, None, trained) == (False, 0.5, None)
    assert resolve_prediction_settings("fast", None, None, None, trained) == (False, 0.5, ["0"])
    assert resolve_prediction_settings("fast", None, None, None, ["all"]) == (False, 0.5, ["all"])
    assert set(PRESETS) == {"accurate", "balanced", "fast"}


def test_explicit_values_win_over_the_preset():
    trained = ["0", "1"]
    assert resolve_prediction_settings("fast", True, 0.25, ["1"], trained) == (True, 0.25, ["1"])
    assert resolve_prediction_settings("accurate", False, None, None, trained) == (False, 0.5, None)
    with pytest.raises(AutounetError, match="--preset must be one of accurate, balanced, fast"):
        resolve_prediction_settings("turbo", None, None, None, trained)


@pytest.mark.parametrize(("preset", "folds", "mirroring"), [("accurate", ["0", "1"], True),
                                                            ("balanced", ["0", "1"], False),
                                                            ("fast", ["0"], False)])
def test_predict_folder_applies_and_records_the_preset(tmp_path, preset, folds, mirroring):
    ws = Workspace(tmp_path / "ws")
    write_run(ws.results("Task99_Toy"), make_plans([3.0, 1.3, 0.7]), folds=(0, 1))
    (tmp_path / "in").mkdir()
    write_image(labelled_case(seed=0)[1][0], flipped_geometry(), tmp_path / "in" / "a_0000.nii.gz")
    report = predict_folder(ws, tmp_path / "in", tmp_path / "out", device="cpu", show_progress=False,
                            cwd=tmp_path, preset=preset, precision="fp32")
    assert report.written == ["a"]
    info = json.loads((tmp_path / "out" / "predict_info.json").read_text())
    assert info["preset"] == preset and info["folds"] == {"3d_fullres": folds}
    assert info["mirroring"] is mirroring and info["step_size"] == 0.5
