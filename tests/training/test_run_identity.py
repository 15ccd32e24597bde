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
        "3d_lowres__20ep_50it__my_pkg.nets_MyNet"


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


def test_resume_requires_the_same_experiment() -> None:
    manifest = RunManifest.create("T", "2d", "0", TrainingSettings(lr=0.01), "cpu")
    check_resume_compatible(manifest, TrainingSettings(lr=0.01, device="cuda", workers=3, resume=True), "run.json")
    with pytest.raises(AutounetError, match="'lr' was 0.01 .* now 0.02"):
        check_resume_compatible(manifest, TrainingSettings(lr=0.02), "run.json")

