"""`export_model` / `install_model`: a faithful round trip, and refusal of every hostile archive.

Why these cases: a model zip comes from someone else. Installing it must never write outside
the workspace (absolute paths, `..`, symbolic links: "zip slip"), never accept altered or
unlisted files, and never run code hidden in a checkpoint's pickle stream. After every refusal
nothing at all may be left under the target workspace's results/.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import pytest
import torch

from autounet.cli import main
from autounet.errors import AutounetError, CheckpointError
from autounet.io.atomic import write_json, write_text
from autounet.networks.registry import build_network
from autounet.commands.model_sharing import MANIFEST, export_model, install_model
from autounet.core.workspace import Workspace
from autounet.planners.plans import (
    ConfigurationPlan,
    IntensityProperties,
    NetworkPlan,
    Plans,
    save_plans,
)
from autounet.postprocessing.rule import PostprocessingDecision, save_postprocessing
from autounet.core.checkpoint import load_checkpoint, save_checkpoint
from autounet.core.run_layout import FINAL, LATEST
from autounet.training.run_identity import RunManifest, save_manifest
from autounet.training.settings import TrainingSettings

TASK = "Task07_Share"
RUN = "3d_fullres"
SHIPPED = ("plans.json", "dataset.json", "postprocessing.json", f"fold_0/{FINAL}", "fold_0/run.json")


def _tiny_plans() -> Plans:
    network = NetworkPlan(architecture="plain_unet", features_per_stage=[4, 8], kernel_sizes=[[3, 3, 3]] * 2,
                          strides=[[1, 1, 1], [2, 2, 2]], n_conv_encoder=[1, 1], n_conv_decoder=[1])
    cfg = ConfigurationPlan(name=RUN, data_identifier=RUN, spacing=[2.0, 1.0, 1.0], patch_size=[8, 16, 16],
                            batch_size=2, median_shape=[20, 40, 40], network=network, normalization=["zscore"],
                            use_mask_for_norm=[False], batch_dice=False, estimated_memory_bytes=0,
                            mirror_axes=[0, 1, 2])
    intensity = IntensityProperties(mean=0.0, std=1.0, median=0.0, min=-5.0, max=5.0,
                                    percentile_00_5=-3.0, percentile_99_5=3.0)
    return Plans(task=TASK, channel_names={"0": "MR"}, labels={"background": 0, "organ": 1, "lesion": 2},
                 transpose_forward=[0, 1, 2], transpose_backward=[0, 1, 2], original_median_spacing=[2.0, 1.0, 1.0],
                 original_median_shape=[20, 40, 40], foreground_intensity_properties={"0": intensity},
                 gpu_memory_target_gb=8.0, configurations={RUN: cfg})


def _checkpoint_state(plans: Plans, **extra: object) -> dict[str, object]:
    cfg = plans.configurations[RUN]
    net = build_network("plain_unet", cfg.network, plans.num_channels, plans.num_classes)
    return {"format": 1, "network": net.state_dict(), "network_name": "plain_unet", "configuration": RUN,
            "mirror_axes": [0, 1, 2], **extra}


@pytest.fixture
def source(tmp_path: Path) -> Workspace:
    """A workspace holding one 'trained' run as training leaves it, plus files that must not be shipped."""
    ws = Workspace(tmp_path / "source")
    run = ws.results(TASK) / RUN
    plans = _tiny_plans()
    save_plans(plans, run / "plans.json")
    write_json(run / "dataset.json", {"name": "Share", "channel_names": {"0": "MR"},
                                      "labels": {"background": 0, "organ": 1, "lesion": 2},
                                      "file_ending": ".nii.gz", "layout": "msd", "numTraining": 4})
    save_postprocessing(PostprocessingDecision(
        keep_largest_foreground=True, keep_largest_per_label=[2], dice_before={"1": 0.8, "2": 0.6},
        dice_after={"1": 0.81, "2": 0.65}, foreground_mean_before=0.7, foreground_mean_after=0.73,
        decided_on="cross-validation", num_cases=4), run / "postprocessing.json")
    save_checkpoint(run / "fold_0" / FINAL, _checkpoint_state(plans))
    save_manifest(RunManifest.create(TASK, RUN, "0", TrainingSettings(), "cpu"), run / "fold_0")
    save_checkpoint(run / "fold_0" / LATEST, _checkpoint_state(plans))
    write_text(run / "fold_0" / "training.log", "epoch 1 ...\n")
    return ws


@pytest.fixture
def target(tmp_path: Path) -> Workspace:
    return Workspace(tmp_path / "target")


@pytest.fixture
def archive(source: Workspace, tmp_path: Path) -> Path:
    return export_model(source, TASK, tmp_path / "model.zip")



def _installed(ws: Workspace) -> list[str]:
    """Everything under results/ (files and folders); empty after a refused install."""
    root = ws.results_root
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


def _rewrite(src: Path, dst: Path, replace: dict[str, bytes] | None = None, drop: tuple[str, ...] = (),
             add: tuple[tuple[zipfile.ZipInfo | str, bytes], ...] = ()) -> Path:
    """A copy of archive `src` with members replaced, dropped or added (the manifest is left as it is)."""
    replace = replace or {}
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", compression=zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            if info.filename in drop:
                continue
            zout.writestr(info.filename, replace.get(info.filename, zin.read(info.filename)))
        for info, data in add:
            zout.writestr(info, data)
    return dst


def _manifest(archive: Path) -> dict:
    with zipfile.ZipFile(archive) as zf:
        return json.loads(zf.read(MANIFEST))


# ---------------------------------------------------------------------------------------------- round trip


def test_export_then_install_gives_identical_files(
    source: Workspace, target: Workspace, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "shared" / "model.zip"
    assert main(["export_model", TASK, "-o", str(out), "--workspace", str(source.root)]) == 0
    assert main(["install_model", str(out), "--workspace", str(target.root)]) == 0
    assert f"installed into {target.results(TASK)}" in capsys.readouterr().out

    assert _installed(target) == sorted(
        [TASK, f"{TASK}/{RUN}", f"{TASK}/{RUN}/fold_0"] + [f"{TASK}/{RUN}/{name}" for name in SHIPPED])
    for name in SHIPPED:
        shipped = target.results(TASK) / RUN / name
        assert shipped.read_bytes() == (source.results(TASK) / RUN / name).read_bytes(), name
    manifest = _manifest(out)
    assert manifest["task"] == TASK and manifest["runs"] == [RUN]
    assert manifest["torch_version"] == torch.__version__
    assert sorted(manifest["files"]) == sorted(f"{RUN}/{name}" for name in SHIPPED)
    for rel, digest in manifest["files"].items():
        assert hashlib.sha256((source.results(TASK) / rel).read_bytes()).hexdigest() == digest
    assert load_checkpoint(target.results(TASK) / RUN / "fold_0" / FINAL)["network_name"] == "plain_unet"


def test_second_install_needs_overwrite(archive: Path, target: Workspace) -> None:
    install_model(archive, target)
    plans = target.results(TASK) / RUN / "plans.json"
    plans.write_text("{}", encoding="utf-8")
    with pytest.raises(AutounetError, match="already installed; pass --overwrite"):
        install_model(archive, target)
    assert plans.read_text(encoding="utf-8") == "{}"
    install_model(archive, target, overwrite=True)
    assert json.loads(plans.read_text(encoding="utf-8"))["task"] == TASK


# ---------------------------------------------------------------------------------------------- refusals


def _symlink(name: str, points_to: str) -> tuple[zipfile.ZipInfo, bytes]:
    info = zipfile.ZipInfo(name)
    info.external_attr = 0o120777 << 16  # S_IFLNK | rwxrwxrwx, as `zip --symlinks` stores links
    return info, points_to.encode()


@pytest.mark.parametrize(
    ("member", "message"),
    [
        (("/tmp/autounet-zip-slip.txt", b"x"), "has an absolute path"),
        ((f"{TASK}/../../autounet-zip-slip.txt", b"x"), "contains '..'"),
        (("../autounet-zip-slip.txt", b"x"), "contains '..'"),
        ((f"{TASK}\\..\\..\\autounet-zip-slip.txt", b"x"), "backslash"),
        (_symlink(f"{TASK}/{RUN}/escape", "../../../../etc"), "is a symbolic link"),
    ],
    ids=["absolute", "dotdot-inside", "dotdot-leading", "backslash", "symlink"],
)
def test_path_escapes_and_links_are_refused(
    archive: Path, target: Workspace, tmp_path: Path, member: tuple[zipfile.ZipInfo | str, bytes], message: str
) -> None:
    hostile = _rewrite(archive, tmp_path / "hostile.zip", add=(member,))
    with pytest.raises(AutounetError, match=message) as info:
        install_model(hostile, target)
    assert str(hostile) in str(info.value)
    assert _installed(target) == []
    assert not (tmp_path / "autounet-zip-slip.txt").exists()


def test_altered_member_fails_its_checksum(archive: Path, target: Workspace, tmp_path: Path) -> None:
    name = f"{TASK}/{RUN}/plans.json"
    with zipfile.ZipFile(archive) as zf:
        edited = zf.read(name).replace(b'"batch_size": 2', b'"batch_size": 3')
    assert edited != zipfile.ZipFile(archive).read(name)
    hostile = _rewrite(archive, tmp_path / "hostile.zip", replace={name: edited})
    with pytest.raises(AutounetError, match=f"checksum mismatch for {RUN}/plans.json"):
        install_model(hostile, target)
    assert _installed(target) == []


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"drop": (MANIFEST,)}, f"no {MANIFEST} inside"),
        ({"add": ((f"{TASK}/{RUN}/extra.py", b"print('hi')"),)}, f"not listed in {MANIFEST}"),
        ({"drop": (f"{TASK}/{RUN}/fold_0/run.json",)}, f"listed in {MANIFEST} are missing"),
        ({"replace": {MANIFEST: b"{not json"}}, f"{MANIFEST} is not valid JSON"),
    ],
    ids=["no-manifest", "unlisted-file", "listed-file-missing", "manifest-not-json"],
)
def test_manifest_problems_are_refused(
    archive: Path, target: Workspace, tmp_path: Path, change: dict, message: str
) -> None:
    hostile = _rewrite(archive, tmp_path / "hostile.zip", **change)
    with pytest.raises(AutounetError, match=message):
        install_model(hostile, target)
    assert _installed(target) == []


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 truncated", b"just some text\n" * 20])
def test_not_a_zip_is_refused(target: Workspace, tmp_path: Path, content: bytes) -> None:
    fake = tmp_path / "model.zip"
    fake.write_bytes(content)
    with pytest.raises(AutounetError, match="not a zip archive"):
        install_model(fake, target)
    assert _installed(target) == []


def test_cli_refusal_is_one_error_line(
    archive: Path, target: Workspace, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hostile = _rewrite(archive, tmp_path / "hostile.zip", add=(_symlink(f"{TASK}/link", "/etc/passwd"),))
    capsys.readouterr()
    assert main(["install_model", str(hostile), "--workspace", str(target.root)]) == 2
    err = capsys.readouterr().err.rstrip("\n").splitlines()
    assert err == [f"error: {hostile}: refused, member '{TASK}/link' is a symbolic link"]
    assert _installed(target) == []


# ---------------------------------------------------------------------------------------------- pickle payload


class _Payload:
    """Unpickling this calls open(marker, 'w'): a stand-in for any code an attacker would run."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (self.marker, "w"))


def _poisoned_checkpoint(path: Path, marker: Path) -> Path:
    torch.save(_checkpoint_state(_tiny_plans(), history={"note": _Payload(marker)}), path)
    return path


def test_load_checkpoint_refuses_a_pickle_payload_without_running_it(tmp_path: Path) -> None:
    marker = tmp_path / "payload-ran"
    path = _poisoned_checkpoint(tmp_path / "poisoned.pt", marker)
    with pytest.raises(CheckpointError, match="refused, the checkpoint holds a pickled Python object") as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)
    assert not marker.exists()
    torch.load(path, weights_only=False)  # control: the payload is live when unpickling is allowed
    assert marker.exists()


def test_install_refuses_an_archive_with_a_poisoned_checkpoint(
    archive: Path, target: Workspace, tmp_path: Path
) -> None:
    """The checksums are made to match, so it is the weights-only load that must refuse it."""
    marker = tmp_path / "payload-ran"
    poisoned = _poisoned_checkpoint(tmp_path / "poisoned.pt", marker).read_bytes()
    manifest = _manifest(archive)
    rel = f"{RUN}/fold_0/{FINAL}"
    manifest["files"][rel] = hashlib.sha256(poisoned).hexdigest()
    hostile = _rewrite(archive, tmp_path / "hostile.zip", replace={
        f"{TASK}/{rel}": poisoned, MANIFEST: json.dumps(manifest).encode()})

    with pytest.raises(CheckpointError, match="the checkpoint holds a pickled Python object"):
        install_model(hostile, target)
    assert not marker.exists()
    assert _installed(target) == []


def test_pickle_refusal_names_the_object_and_never_suggests_unsafe_loading(tmp_path: Path) -> None:
    path = _poisoned_checkpoint(tmp_path / "poisoned.pt", tmp_path / "payload-ran")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert message.startswith(f"{path}: refused") and "io.open" in message
    assert "\x1b[" not in message and "can still be loaded" not in message and "\n" not in message


def test_poisoned_checkpoint_refusal_names_the_archive_and_member(
    archive: Path, target: Workspace, tmp_path: Path
) -> None:
    poisoned = _poisoned_checkpoint(tmp_path / "poisoned.pt", tmp_path / "payload-ran").read_bytes()
    manifest = _manifest(archive)
    rel = f"{RUN}/fold_0/{FINAL}"
    manifest["files"][rel] = hashlib.sha256(poisoned).hexdigest()
    hostile = _rewrite(archive, tmp_path / "hostile.zip", replace={
        f"{TASK}/{rel}": poisoned, MANIFEST: json.dumps(manifest).encode()})
    with pytest.raises(AutounetError) as info:
        install_model(hostile, target)
    message = str(info.value)
    assert message.startswith(f"{hostile}: refused, member {TASK}/{rel}")
    assert ".tmp-install" not in message


# ---------------------------------------------------------------------------------------------- what an install may replace


README = Path(__file__).resolve().parents[2] / "README.md"


def _documented(message: str, tmp_path: Path, ws: Workspace) -> None:
    """The refusal is quoted in the README's troubleshooting table (paths as <ws> and <dir>)."""
    line = f"error: {message}".replace(str(ws.root), "<ws>").replace(str(tmp_path), "<dir>")
    line = line.replace("<dir>/hostile.zip", "<dir>/model.zip")
    assert line in README.read_text(encoding="utf-8"), f"README.md lacks: {line}"


def _tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _archive_with(archive: Path, dst: Path, manifest_changes: dict, add: dict[str, bytes]) -> Path:
    """A copy of `archive` with members added under the task folder, listed with correct checksums."""
    manifest = _manifest(archive)
    manifest.update(manifest_changes)
    for rel, data in add.items():
        manifest["files"][rel] = hashlib.sha256(data).hexdigest()
    return _rewrite(archive, dst, replace={MANIFEST: json.dumps(manifest).encode()},
                    add=tuple((f"{TASK}/{rel}", data) for rel, data in add.items()))


def test_member_of_an_undeclared_run_is_refused_and_the_existing_run_survives(
    archive: Path, source: Workspace, tmp_path: Path
) -> None:
    """Found by an attack: `runs: []` plus one listed member used to delete the whole existing run."""
    existing = source.results(TASK) / RUN
    before = _tree_digest(existing)
    manifest = _manifest(archive)
    only_plans = {f"{RUN}/plans.json": manifest["files"][f"{RUN}/plans.json"]}
    hostile = _rewrite(archive, tmp_path / "hostile.zip",
                       drop=tuple(f"{TASK}/{rel}" for rel in manifest["files"] if rel not in only_plans),
                       replace={MANIFEST: json.dumps({**manifest, "runs": [], "files": only_plans}).encode()})
    with pytest.raises(AutounetError, match=f"'{RUN}/plans.json', which belongs to no run declared") as info:
        install_model(hostile, source, overwrite=True)
    assert _tree_digest(existing) == before
    _documented(str(info.value), tmp_path, source)


def test_best_configuration_is_not_replaced_without_overwrite(archive: Path, target: Workspace,
                                                             tmp_path: Path) -> None:
    best = target.results(TASK) / "best_configuration.json"
    best.parent.mkdir(parents=True)
    best.write_text('{"mine": true}', encoding="utf-8")
    hostile = _archive_with(archive, tmp_path / "hostile.zip", {}, {"best_configuration.json": b'{"theirs": 1}'})
    with pytest.raises(AutounetError, match="best_configuration.json: already installed"):
        install_model(hostile, target)
    assert best.read_text(encoding="utf-8") == '{"mine": true}'
    assert not (target.results(TASK) / RUN).exists()


@pytest.mark.parametrize("name", ["..", ".hidden", "a/b", ""])
def test_invalid_run_names_are_refused(archive: Path, target: Workspace, tmp_path: Path, name: str) -> None:
    hostile = _archive_with(archive, tmp_path / "hostile.zip", {"runs": [RUN, name]}, {})
    with pytest.raises(AutounetError, match="invalid run name"):
        install_model(hostile, target)
    assert _installed(target) == []


def test_a_failed_replacement_leaves_the_old_run_intact(archive: Path, target: Workspace,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    install_model(archive, target)
    run = target.results(TASK) / RUN
    (run / "fold_0" / "note.txt").write_text("trained here", encoding="utf-8")
    before = _tree_digest(run)
    real_rename = Path.rename

    def failing_rename(self: Path, dest: Path) -> Path:  # the new copy cannot be moved into place
        if ".tmp-install" in str(self):
            raise OSError(28, "No space left on device")
        return real_rename(self, dest)

    monkeypatch.setattr(Path, "rename", failing_rename)
    with pytest.raises(OSError):
        install_model(archive, target, overwrite=True)
    monkeypatch.undo()
    assert _tree_digest(run) == before
    assert [p.name for p in target.results(TASK).iterdir()] == [RUN]


# ---------------------------------------------------------------------------------------------- sizes


def test_deflate_bomb_is_refused_before_extraction(archive: Path, target: Workspace, tmp_path: Path) -> None:
    bomb = bytes(64 * 1024**2)  # 64 MiB of zeros deflate to about 64 KiB
    hostile = _archive_with(archive, tmp_path / "hostile.zip", {}, {f"{RUN}/fold_0/extra.bin": bomb})
    assert hostile.stat().st_size < 2 * 1024**2
    with pytest.raises(AutounetError, match=r"expands .* \(ratio above 100: a decompression bomb\?\)") as info:
        install_model(hostile, target)
    assert _installed(target) == []
    _documented(str(info.value), tmp_path, target)


def test_archive_larger_than_the_free_disk_is_refused(archive: Path, target: Workspace,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil as shutil_module
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil_module, "disk_usage", lambda path: usage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(AutounetError, match=r"needs 0\.\d+ GiB but .* has 0\.00 GiB free; free disk space first"):
        install_model(archive, target)
    assert _installed(target) == []


def test_declared_sizes_above_any_model_are_refused(archive: Path, target: Workspace, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from autounet.commands import model_sharing

    monkeypatch.setattr(model_sharing, "MAX_ARCHIVE_BYTES", 1000)
    with pytest.raises(AutounetError, match="larger than any model"):
        install_model(archive, target)
    assert _installed(target) == []
