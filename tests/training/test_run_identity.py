"""Run folder names and run.json manifests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from autounet.errors import AutounetError, PlansError
from autounet.training.run_identity import (
    RunManifest,
    check_resume_compatible,
    load_manifest,
    run_name,
    save_manifest,
)
from autounet.training.settings import TrainingSettings


def test_run_name_records_every_deviation() -> None:
    assert run_name("3d_fullres", TrainingSettings()) == "3d_fullres"
    assert run_name("2d", TrainingSettings(epochs=50)) == "2d__50ep_250it"
    assert run_name("2d", TrainingSettings(iters_per_epoch=100)) == "2d__1000ep_100it"
    assert run_name("3d_fullres", TrainingSettings(network="resenc_unet")) == "3d_fullres__resenc_unet"
    assert run_name("3d_lowres", TrainingSettings(epochs=20, iters_per_epoch=50, network="my_pkg.nets:MyNet")) == \
        "3d_lowres__my_pkg.nets_MyNet__20ep_50it"
    assert run_name("3d_fullres", TrainingSettings(plans="resenc-l", blocks=["se"], epochs=50)) == \
        "3d_fullres__resenc-l__se__50ep_250it"
    assert run_name("2d", TrainingSettings(blocks=["se", "attention_gate"])) == "2d__attention_gate+se"
    assert run_name("2d", TrainingSettings(blocks=[])) == "2d__noblocks"


def _checkpoint(folder: Path, content: bytes, task: str | None) -> Path:
    folder.mkdir(parents=True)
    (folder / "checkpoint_final.pt").write_bytes(content)
    if task is not None:
        (folder / "run.json").write_text(json.dumps({"task": task}))
    return folder / "checkpoint_final.pt"


def test_runs_that_train_different_models_never_share_a_name(tmp_path: Path) -> None:
    """Every identity setting changes the name, and each change gives another name."""
    first = _checkpoint(tmp_path / "a" / "fold_0", b"weights one", "Task01_Liver")
    second = _checkpoint(tmp_path / "b" / "fold_0", b"weights two", "Task01_Liver")
    variants = [TrainingSettings(), TrainingSettings(plans="resenc-m"), TrainingSettings(plans="resenc-l"),
                TrainingSettings(network="resenc_unet"), TrainingSettings(blocks=[]), TrainingSettings(blocks=["se"]),
                TrainingSettings(blocks=["se", "attention_gate"]), TrainingSettings(init_from=str(first)),
                TrainingSettings(init_from=str(second)), TrainingSettings(epochs=50),
                TrainingSettings(iters_per_epoch=50), TrainingSettings(plans="resenc-m", blocks=["se"])]
    names = [run_name("3d_fullres", v) for v in variants]
    assert len(set(names)) == len(names), names
    tag = names[7].split("__")[1]
    assert tag.startswith("ft-Task01_Liver-") and len(tag) == len("ft-Task01_Liver-") + 6
    # a checkpoint without run.json is named by its file
    bare = _checkpoint(tmp_path / "c", b"weights three", None)
    assert run_name("2d", TrainingSettings(init_from=str(bare))).startswith("2d__ft-checkpoint_final-")


def test_an_overlong_name_keeps_configuration_and_plans_and_a_checksum() -> None:
    settings = TrainingSettings(plans="from-Task123_SomeVeryLongDatasetName", network="my_lab.networks.v2:Wide",
                                blocks=["se", "attention_gate"], epochs=50)
    name = run_name("3d_cascade_fullres", settings)
    assert len(name) <= 72 and name.startswith("3d_cascade_fullres__from-Task123_SomeVeryLongDatasetName__")
    assert name != run_name("3d_cascade_fullres", TrainingSettings(plans=settings.plans, network=settings.network,
                                                                   blocks=["se"], epochs=50))


def test_manifest_round_trip_and_validation(tmp_path: Path) -> None:
    settings = TrainingSettings(epochs=3, seed=7)
    manifest = RunManifest.create("Task01", "3d_fullres", "0", settings, "cpu")
    save_manifest(manifest, tmp_path)
    loaded = load_manifest(tmp_path)
    assert loaded == manifest
    assert loaded.run_name == "3d_fullres__3ep_250it" and loaded.seed == 7 and loaded.status == "running"
    assert {"torch", "numpy", "autounet"} <= set(loaded.versions)

    data = json.loads((tmp_path / "run.json").read_text())
    data["status"] = "done"
    (tmp_path / "run.json").write_text(json.dumps(data))
    with pytest.raises(PlansError, match="status"):
        load_manifest(tmp_path)
    data["status"] = "finished"
    data["colour"] = "red"
    (tmp_path / "run.json").write_text(json.dumps(data))
    with pytest.raises(PlansError, match="colour"):
        load_manifest(tmp_path)


def test_missing_manifest_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(AutounetError, match="run.json"):
        load_manifest(tmp_path)


def test_identity_settings_are_checked_before_training(tmp_path: Path) -> None:
    with pytest.raises(AutounetError, match="--blocks: unknown block 'dropout'"):
        TrainingSettings(blocks=["dropout"]).validate()
    with pytest.raises(AutounetError, match="--plans: plans name 'a/b'"):
        TrainingSettings(plans="a/b").validate()
    with pytest.raises(AutounetError, match="--init-from: .* is not a file"):
        TrainingSettings(init_from=str(tmp_path / "missing.pt")).validate()


def test_resume_requires_the_same_experiment() -> None:
    manifest = RunManifest.create("T", "2d", "0", TrainingSettings(lr=0.01), "cpu")
    check_resume_compatible(manifest, TrainingSettings(lr=0.01, device="cuda", workers=3, resume=True), "run.json")
    with pytest.raises(AutounetError, match="'lr' was 0.01 .* now 0.02"):
        check_resume_compatible(manifest, TrainingSettings(lr=0.02), "run.json")

