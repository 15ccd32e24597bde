import json
import os
import time

import pytest

from autounet.errors import AutounetError
from autounet.inference.model_choice import choose_model, pick_run
from autounet.core.workspace import Workspace

from inference_toys import make_plans, write_run


@pytest.fixture
def ws(tmp_path):
    return Workspace(tmp_path / "ws")


def _train(ws, task, run_name, folds=(0,)):
    return write_run(ws.results(task), make_plans([1.0, 1.0, 1.0]), run_name, folds=folds)


def test_only_trained_task_and_default_configuration(ws, tmp_path):
    _train(ws, "Task01_A", "2d")
    _train(ws, "Task01_A", "3d_fullres", folds=(0, 1))
    choice = choose_model(ws, cwd=tmp_path)
    assert choice.task == "Task01_A"
    assert choice.configuration == "3d_fullres"
    assert choice.folds == {"3d_fullres": ["0", "1"]}
    assert choice.postprocessing is None
    assert any("only trained task" in r for r in choice.reason)


def test_only_other_configuration_is_used(ws, tmp_path):
    _train(ws, "Task01_A", "2d")
    assert choose_model(ws, cwd=tmp_path).configuration == "2d"


def test_several_tasks_need_t_or_cwd(ws, tmp_path):
    _train(ws, "Task01_A", "3d_fullres")
    _train(ws, "Task02_B", "3d_fullres")
    with pytest.raises(AutounetError, match="Task01_A, Task02_B.*-t"):
        choose_model(ws, cwd=tmp_path)
    assert choose_model(ws, task="Task02_B", cwd=tmp_path).task == "Task02_B"
    assert choose_model(ws, task="2", cwd=tmp_path).task == "Task02_B"
    with pytest.raises(AutounetError, match="Task03"):
        choose_model(ws, task="Task03", cwd=tmp_path)
    # standing in the task's folder (or its imagesTs) picks it
    task_dir = tmp_path / "raw" / "Task02_B"
    (task_dir / "imagesTs").mkdir(parents=True)
    (task_dir / "dataset.json").write_text(json.dumps({"name": "B"}))
    assert choose_model(ws, cwd=task_dir / "imagesTs").task == "Task02_B"
    other = tmp_path / "elsewhere"
    other.mkdir()
    (other / "dataset.json").write_text(json.dumps({"name": "Task01_A"}))
    assert choose_model(ws, cwd=other).task == "Task01_A"


def test_no_trained_task(ws, tmp_path):
    with pytest.raises(AutounetError, match="no trained model"):
        choose_model(ws, cwd=tmp_path)


def test_run_name_suffixes(ws, tmp_path):
    results = ws.results("Task01_A")
    _train(ws, "Task01_A", "3d_fullres__20ep_50it")
    run, why = pick_run(results, "3d_fullres")
    assert run.name == "3d_fullres__20ep_50it" and "only run" in why
    older = _train(ws, "Task01_A", "3d_fullres__5ep_10it")
    past = time.time() - 100
    os.utime(older / "fold_0" / "checkpoint_final.pt", (past, past))
    run, why = pick_run(results, "3d_fullres")
    assert run.name == "3d_fullres__20ep_50it" and "most recently" in why
    _train(ws, "Task01_A", "3d_fullres")
    assert pick_run(results, "3d_fullres")[0].name == "3d_fullres"
    assert pick_run(results, "3d_fullres__5ep_10it")[0].name == "3d_fullres__5ep_10it"
    assert choose_model(ws, configuration="3d_fullres__5ep_10it", cwd=tmp_path).run_dir == older


def test_best_configuration_and_postprocessing(ws, tmp_path):
    from autounet.postprocessing.rule import PostprocessingDecision, save_postprocessing

    _train(ws, "Task01_A", "3d_fullres")
    run2d = _train(ws, "Task01_A", "2d")
    decision = PostprocessingDecision(keep_largest_foreground=True, keep_largest_per_label=[], dice_before={},
                                      dice_after={}, foreground_mean_before=0.5, foreground_mean_after=0.6,
                                      decided_on="2d", num_cases=2)
    save_postprocessing(decision, run2d / "postprocessing.json")
    (ws.results("Task01_A") / "best_configuration.json").write_text(json.dumps({
        "task": "Task01_A",
        "selected": {"name": "2d", "kind": "single", "run_names": ["2d"], "configurations": ["2d"],
                     "folds": [0], "foreground_mean_dice": 0.6},
        "postprocessing": "2d/postprocessing.json", "postprocessing_summary": "", "candidates": []}))
    choice = choose_model(ws, cwd=tmp_path)
    assert choice.configuration == "2d"
    assert choice.postprocessing == run2d / "postprocessing.json"
    assert any("find_best_configuration" in r for r in choice.reason)
    assert choose_model(ws, cwd=tmp_path, postprocess=False).postprocessing is None
    # an explicit -c overrides the selection
    assert choose_model(ws, configuration="3d_fullres", cwd=tmp_path).configuration == "3d_fullres"


def test_unfinished_runs_are_not_candidates(ws, tmp_path):
    _train(ws, "Task01_A", "2d")
    run = ws.results("Task01_A") / "3d_fullres" / "fold_0"
    run.mkdir(parents=True)
    (run / "checkpoint_latest.pt").write_bytes(b"")
    assert choose_model(ws, cwd=tmp_path).configuration == "2d"
    with pytest.raises(AutounetError, match="3d_fullres"):
        choose_model(ws, configuration="3d_fullres", cwd=tmp_path)
