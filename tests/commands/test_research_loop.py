"""The researcher's loop through the CLI: a preset's plans, an ablation pair with `compare`, plans
transferred to another task and fine-tuned from the first task's checkpoint.

One small workspace is trained once for the module (demo cases subsampled by 2, 1 epoch of 2
iterations, one torch thread): the assertions are about names, files and which layers load,
not about accuracy.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import torch

from autounet.cli import main
from autounet.core.checkpoint import load_checkpoint
from autounet.planners.plans import load_named_plans, load_plans
from autounet.task.demo_data import write_demo_task
from small_tasks import subsample_task

pytestmark = pytest.mark.slow

BUDGET = ["--epochs", "1", "--iters-per-epoch", "2", "--val-iters", "1", "--workers", "0", "--disable-tta"]
BASE_RUN = "3d_fullres__1ep_2it"


def cli(workspace: Path, argv: Sequence[str]) -> int:
    return main(["--workspace", str(workspace), *argv])


@pytest.fixture(scope="module")
def loop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Task01 planned and trained twice on fold 0: as planned, and with `--blocks se`."""
    workspace = tmp_path_factory.mktemp("loop")
    for seed, name, extra in ((0, "Task01_Demo", {}), (4, "Task07_Regions", {"regions": True}),
                              (8, "Task08_Same", {})):
        task = write_demo_task(workspace / "raw", num_training=5, num_test=1, seed=seed, name=name, **extra)
        subsample_task(task)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert cli(workspace, ["plan_and_preprocess", "Task01", "--gpu-memory", "1", "-c", "3d_fullres", "-np", "0",
                               "--no-progress"]) == 0
        assert cli(workspace, ["train", "3d_fullres", "fold", "0", *BUDGET]) == 0
        assert cli(workspace, ["train", "3d_fullres", "fold", "0", "--blocks", "se", *BUDGET]) == 0
        yield workspace
    finally:
        torch.set_num_threads(threads)


def test_ablation_runs_get_their_own_folders_and_manifests(loop: Path) -> None:
    results = loop / "results" / "Task01_Demo"
    assert sorted(p.name for p in results.iterdir() if p.is_dir()) == [BASE_RUN, "3d_fullres__se__1ep_2it"]
    plain = json.loads((results / BASE_RUN / "fold_0" / "run.json").read_text())
    se = json.loads((results / "3d_fullres__se__1ep_2it" / "fold_0" / "run.json").read_text())
    assert (plain["blocks"], se["blocks"]) == ([], ["se"])
    assert plain["plans_name"] == se["plans_name"] == "default"
    assert se["settings"]["blocks"] == ["se"] and plain["settings"]["blocks"] is None
    assert plain["plans_hash"] != se["plans_hash"]  # the run's plans carry the block that was switched on
    assert load_plans(results / "3d_fullres__se__1ep_2it" / "plans.json").configuration("3d_fullres").network.blocks \
        == ["se"]
    # the task's own plans are untouched by --blocks
    preprocessed = loop / "preprocessed" / "Task01_Demo"
    assert load_named_plans(preprocessed).configuration("3d_fullres").network.blocks == []


def test_ablation_pair_starts_from_identical_shared_weights(loop: Path) -> None:
    """Same seed: every layer the two networks share starts equal, so the pair differs by the block only."""
    from autounet.networks.registry import build_network

    plans = load_named_plans(loop / "preprocessed" / "Task01_Demo")
    net_plan = plans.configuration("3d_fullres").network
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(12345)
        plain = build_network("plain_unet", net_plan, 1, 3).state_dict()
    net_plan.blocks = ["se"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(12345)
        se = build_network("plain_unet", net_plan, 1, 3).state_dict()
    shared = set(plain) & set(se)
    assert len(shared) == len(plain) and len(se) > len(plain)
    assert all(torch.equal(plain[k], se[k]) for k in shared)


def test_compare_prints_both_runs_and_the_paired_difference(loop: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(loop, ["compare", BASE_RUN, "3d_fullres__se__1ep_2it", "-t", "Task01"]) == 0
    out = capsys.readouterr().out
    assert "differ in: blocks: None -> ['se']" in out
    lines = {line.split()[0]: line.split() for line in out.splitlines() if line[:4] in ("0   ", "all ")}
    summary = json.loads((loop / "results" / "Task01_Demo" / BASE_RUN / "fold_0" / "validation" /
                          "summary.json").read_text())
    cases = summary["num_cases"]
    assert lines["all"][1] == lines["0"][1] == str(cases)
    assert float(lines["all"][2]) == pytest.approx(summary["foreground_mean"]["Dice"], abs=1e-4)
    assert f"paired per-case difference B - A over {cases} cases" in out
    assert [line.split()[:2] for line in out.splitlines() if line.startswith(("1 ", "2 "))] == \
        [["1", "organ"], ["2", "lesion"]]


def test_rerunning_a_finished_fold_says_so(loop: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = (loop / "results" / "Task01_Demo" / BASE_RUN / "fold_0" / "checkpoint_final.pt").stat().st_mtime_ns
    assert cli(loop, ["train", "3d_fullres", "fold", "0", *BUDGET]) == 0
    out = capsys.readouterr().out
    assert "fold 0 is already trained" in out and "next: autounet find_best_configuration" in out
    assert (loop / "results" / "Task01_Demo" / BASE_RUN / "fold_0" / "checkpoint_final.pt").stat().st_mtime_ns \
        == before


def test_a_run_folder_trained_with_other_plans_is_refused(loop: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Re-planning for another GPU and training fold 1 into the same folder would mix two models."""
    preprocessed = loop / "preprocessed" / "Task01_Demo"
    saved = (preprocessed / "plans.json").read_text()
    try:
        assert cli(loop, ["plan_and_preprocess", "Task01", "--gpu-memory", "1.5", "-c", "3d_fullres", "-np", "0",
                          "--no-progress"]) == 0
        if load_plans(preprocessed / "plans.json").content_hash() == load_plans(
                loop / "results" / "Task01_Demo" / BASE_RUN / "plans.json").content_hash():
            pytest.skip("1.5 GB planned the same patch and batch as 1 GB for this task")
        capsys.readouterr()
        assert cli(loop, ["train", "3d_fullres", "fold", "1", *BUDGET]) == 2
        err = capsys.readouterr().err
        assert "its folds were trained with other default plans" in err and "--plans-name" in err
        assert not (loop / "results" / "Task01_Demo" / BASE_RUN / "fold_1").exists()
    finally:
        (preprocessed / "plans.json").write_text(saved)


def test_preset_plans_are_stored_beside_the_default_and_share_its_data(loop: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    preprocessed = loop / "preprocessed" / "Task01_Demo"
    default_before = (preprocessed / "plans.json").read_bytes()
    assert cli(loop, ["plan_and_preprocess", "Task01", "--planner", "resenc-m", "--plan-only", "-np", "0",
                      "--no-progress"]) == 0
    assert (preprocessed / "plans.json").read_bytes() == default_before
    preset = load_named_plans(preprocessed, "resenc-m")
    assert preset.name == "resenc-m" and preset.gpu_memory_target_gb == 8.0
    assert preset.configuration("3d_fullres").network.architecture == "resenc_unet"
    assert preset.configuration("3d_fullres").data_identifier == "3d_fullres"  # same grid and normalization
    assert "resenc-m" in preset.reasons["planner"]
    capsys.readouterr()
    assert cli(loop, ["plans", "Task01", "--plans", "resenc-m"]) == 0
    out = capsys.readouterr().out
    assert "GPU memory target 8 GB" in out and "planner: resenc-m" in out
    assert cli(loop, ["plans", "Task01"]) == 0
    assert "other plans of Task01_Demo: resenc-m" in capsys.readouterr().out


def test_transferred_plans_load_every_layer_and_reinitialise_only_the_outputs(loop: Path) -> None:
    """Task07 has two overlapping regions (2 outputs) where Task01 has 3 classes: only the output
    convolutions may differ; with Task01's own class count every layer loads."""
    checkpoint = loop / "results" / "Task01_Demo" / BASE_RUN / "fold_0" / "checkpoint_final.pt"
    assert cli(loop, ["plan_and_preprocess", "Task07", "--transfer-plans-from", "Task01", "-np", "0",
                      "--no-progress", "-c", "3d_fullres"]) == 0
    target = load_named_plans(loop / "preprocessed" / "Task07_Regions", "from-Task01_Demo")
    source = load_named_plans(loop / "preprocessed" / "Task01_Demo")
    for key in ("patch_size", "batch_size", "spacing", "network"):
        assert getattr(target.configuration("3d_fullres"), key) == getattr(source.configuration("3d_fullres"), key)
    assert target.regions and target.num_outputs == 2
    assert cli(loop, ["train", "3d_fullres", "fold", "0", "-t", "Task07", "--plans", "from-Task01_Demo",
                      "--init-from", str(checkpoint), "--skip-validation", *BUDGET]) == 0
    runs = [p for p in (loop / "results" / "Task07_Regions").iterdir() if p.is_dir()]
    assert len(runs) == 1 and runs[0].name.startswith("3d_fullres__from-Task01_Demo__ft-Task01_Demo-")
    manifest = json.loads((runs[0] / "fold_0" / "run.json").read_text())
    init = manifest["init"]
    assert init["checkpoint"] == str(checkpoint.resolve()) and len(init["sha256"]) == 64
    state = load_checkpoint(checkpoint)["network"]
    output_layers = sorted({k.rsplit(".", 1)[0] for k in state if ".heads." in f".{k}"})
    assert init["reinitialised"] == output_layers
    assert init["loaded_tensors"] == len(state) - 2 * len(output_layers)  # weight and bias of each output conv


def test_with_equal_channel_and_class_counts_every_layer_loads(loop: Path) -> None:
    """Transferred plans rebuild the source network exactly: a Task01 checkpoint fills every tensor."""
    from autounet.core.checkpoint import load_matching_weights
    from autounet.networks.registry import build_network

    checkpoint = loop / "results" / "Task01_Demo" / BASE_RUN / "fold_0" / "checkpoint_final.pt"
    assert cli(loop, ["plan_and_preprocess", "Task08", "--transfer-plans-from", "Task01", "--plan-only", "-np", "0",
                      "--no-progress"]) == 0
    plans = load_named_plans(loop / "preprocessed" / "Task08_Same", "from-Task01_Demo")
    network = build_network("plain_unet", plans.configuration("3d_fullres").network, plans.num_channels,
                            plans.num_outputs)
    loaded, skipped = load_matching_weights(network, load_checkpoint(checkpoint)["network"])
    assert skipped == [] and len(loaded) == len(network.state_dict())


def test_planner_options_beside_a_transfer_are_refused_before_any_work(loop: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert cli(loop, ["plan_and_preprocess", "Task08", "--transfer-plans-from", "Task01", "--planner", "resenc-m"]) == 2
    assert "leave out --planner and --gpu-memory" in capsys.readouterr().err
    assert cli(loop, ["plan_and_preprocess", "Task01", "--transfer-plans-from", "Task01"]) == 2
    assert "Task01_Demo is the task being planned" in capsys.readouterr().err
    assert cli(loop, ["train", "3d_fullres", "fold", "0", "-t", "Task01", "--plans", "resenc-xl", *BUDGET]) == 2
    assert "no plans named 'resenc-xl' for this task" in capsys.readouterr().err
