import doctest

import numpy as np
import pytest
import torch

from autounet.errors import AutounetError, CheckpointError
from autounet.inference import predictor as predictor_module
from autounet.core.run_layout import fold_name, trained_folds
from autounet.inference.predictor import Predictor

from inference_toys import IndexNetwork, flipped_geometry, labelled_case, make_plans, write_run


@pytest.fixture
def run_dir(tmp_path):
    plans = make_plans([3.0, 1.3, 0.7])
    # fold offsets that cancel on average: only logit averaging recovers the labels exactly
    run = write_run(tmp_path / "results" / "Task99_Toy", plans, folds=(0, 1),
                    offsets=[[0.0, 8.0, 0.0], [0.0, -8.0, 0.0]])
    (run / "fold_2").mkdir()
    (run / "fold_2" / "checkpoint_latest.pt").write_bytes(b"")  # unfinished fold: not used by default
    return run


def test_loads_every_finished_fold(run_dir):
    p = Predictor.from_run_folder(run_dir, device="cpu")
    assert p.folds == ["0", "1"]
    assert len(p.networks) == 2 and all(not n.deep_supervision for n in p.networks)
    assert p.mirror_axes == [0, 1, 2]
    assert Predictor.from_run_folder(run_dir, device="cpu", use_mirroring=False).mirror_axes == []
    assert trained_folds(run_dir, "latest") == ["2"]


def test_fold_ensemble_averages_logits(run_dir):
    p = Predictor.from_run_folder(run_dir, device="cpu")
    data = np.random.default_rng(0).uniform(0.5, 3.5, size=(1, 5, 9, 6)).astype(np.float32)
    logits = p.predict_preprocessed(data)
    with torch.no_grad():
        x = torch.from_numpy(data)[None]
        expected = sum(net(x)[0] for net in p.networks) / 2
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-4)
    single = Predictor.from_run_folder(run_dir, folds=[0], device="cpu").predict_preprocessed(data)
    assert (single[1] - logits[1]).min() > 7.9  # fold 0 alone keeps its +8 on class 1


def test_predict_array_round_trip(run_dir):
    values, image = labelled_case()
    geometry = flipped_geometry()
    p = Predictor.from_run_folder(run_dir, device="cpu")
    seg = p.predict_array(image, spacing=geometry.spacing_zyx, direction=geometry.direction, origin=geometry.origin)
    np.testing.assert_array_equal(seg, values)
    seg2, probs = p.predict_array(image[0], spacing=geometry.spacing_zyx, return_probabilities=True)
    np.testing.assert_array_equal(seg2, values)
    assert probs.shape == (3, *values.shape) and probs.dtype == np.float16
    np.testing.assert_allclose(probs.astype(np.float32).sum(0), 1.0, atol=1e-2)


def test_docstring_example_runs(run_dir):
    """The documented in-memory API example, executed as written."""
    _, image = labelled_case()
    finder = doctest.DocTestFinder()
    (test,) = [t for t in finder.find(Predictor, globs={"run_dir": run_dir, "image": image[0]})
               if t.name.endswith("Predictor")]
    runner = doctest.DocTestRunner()
    result = runner.run(test)
    assert result.attempted >= 4 and result.failed == 0


def test_predict_array_rejects_bad_input(run_dir):
    p = Predictor.from_run_folder(run_dir, device="cpu")
    with pytest.raises(AutounetError, match="spacing"):
        p.predict_array(np.zeros((4, 4, 4), np.float32), spacing=(1.0, 0.0, 1.0))
    with pytest.raises(AutounetError, match="shape"):
        p.predict_array(np.zeros((4, 4), np.float32), spacing=(1.0, 1.0, 1.0))


def test_missing_fold_and_checkpoint(run_dir, tmp_path):
    with pytest.raises(CheckpointError, match="fold"):
        Predictor.from_run_folder(run_dir, folds=[3], device="cpu")
    with pytest.raises(CheckpointError, match="checkpoint_best.pt"):
        Predictor.from_run_folder(run_dir, checkpoint="best", device="cpu")
    with pytest.raises(AutounetError, match="not found"):
        Predictor.from_run_folder(tmp_path / "nowhere", device="cpu")


def test_fold_names():
    assert fold_name(0) == "0" and fold_name("3") == "3" and fold_name("all") == "all" and fold_name("fold_1") == "1"
    with pytest.raises(AutounetError):
        fold_name("x")


def test_cascade_stacks_previous_stage(tmp_path):
    """The cascade input is the image plus one-hot foreground channels of the lowres prediction."""
    from autounet.planners.plans import ConfigurationPlan

    plans = make_plans([3.0, 1.3, 0.7])
    base = plans.configurations["3d_fullres"]
    low = ConfigurationPlan(**{**base.__dict__, "name": "3d_lowres", "data_identifier": "3d_lowres",
                               "spacing": [3.0, 2.6, 1.4], "next_stage": "3d_cascade_fullres"})
    casc = ConfigurationPlan(**{**base.__dict__, "name": "3d_cascade_fullres", "data_identifier": "3d_fullres",
                                "previous_stage": "3d_lowres"})
    plans.configurations.update({"3d_lowres": low, "3d_cascade_fullres": casc})
    results = tmp_path / "results" / "Task99_Toy"
    write_run(results, plans, "3d_lowres")
    write_run(results, plans, "3d_cascade_fullres")
    p = Predictor.from_run_folder(results / "3d_cascade_fullres", device="cpu")
    assert p.previous_stage is not None and p.previous_stage.configuration == "3d_lowres"
    seen = []
    original = IndexNetwork.forward

    def spy(self, x):
        seen.append(x.shape[1])
        return original(self, x)

    values, image = labelled_case()
    geometry = flipped_geometry()
    IndexNetwork.forward = spy
    try:
        seg = p.predict_array(image, spacing=geometry.spacing_zyx)
    finally:
        IndexNetwork.forward = original
    assert 3 in seen and 1 in seen  # the cascade network got 1 image + 2 one-hot channels
    assert (seg == values).mean() > 0.99


def test_previous_stage_segmentation_is_argmax_of_resized_logits():
    logits = torch.zeros(3, 2, 2, 2)
    logits[2, 1] = 5.0
    seg = predictor_module.previous_stage_segmentation(logits, (4, 2, 2))
    assert seg.shape == (4, 2, 2) and seg.dtype == np.int16
    # output z centres sit at input z = -0.25 (clamped to 0), 0.25, 0.75, 1.25: only the first sees no class 2
    assert (seg[0] == 0).all() and (seg[1:] == 2).all()
