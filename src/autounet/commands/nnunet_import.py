"""`autounet import_nnunet`: install a trained nnU-Net v2 model as an autounet run.

Input: an nnU-Net results folder `<Trainer>__<Plans>__<configuration>/` (plans.json, dataset.json,
fold_N/checkpoint_final.pth), a `DatasetXXX_Name/` folder holding several of them, or the zip that
`nnUNetv2_export_model_to_zip` writes. Output: `results/<DatasetXXX_Name>/<configuration>__<Trainer>__<Plans>/`
with autounet's plans.json (translated, see `nnunet_plans`), the dataset.json, and per fold an
autounet checkpoint (weights renamed, see `nnunet_weights`) and run.json, so that `autounet predict`
and the Python API use it like any run of `autounet train`.

Trainers: names of the form `nnUNetTrainer*` (nnU-Net's own trainers and variants named after them)
are accepted: they change training, not the network, and a variant that did change the network is
caught when its weights do not fit the plans' architecture. Any other trainer name is refused.

A zip is checked like autounet's own archives (`model_sharing`): every member name is checked for
path traversal and links before anything is read, sizes are bounded, and only the model files are
extracted (no pickled postprocessing files or logs).
"""

from __future__ import annotations

import logging
import re
import shutil
import socket
import tempfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from autounet.commands.model_sharing import check_sizes, extract_member, is_plain_name, open_checked_zip, replace_items
from autounet.commands.nnunet_plans import translate_plans
from autounet.commands.nnunet_weights import NETWORK_WEIGHTS, load_nnunet_checkpoint, map_state_dict, mirror_axes_of
from autounet.core.checkpoint import CHECKPOINT_FORMAT, save_checkpoint
from autounet.core.run_layout import FINAL, FOLD_PREFIX, fold_name
from autounet.core.workspace import Workspace
from autounet.errors import AutounetError, CheckpointError, DatasetError
from autounet.io.atomic import TMP_PREFIX, read_json, write_json
from autounet.io.json_schema import to_dict
from autounet.networks.registry import build_network
from autounet.planners.plans import save_plans
from autounet.training.run_identity import RunManifest, now_iso, save_manifest, software_versions

log = logging.getLogger(__name__)

TRAINER_NAME = re.compile(r"^nnUNetTrainer[A-Za-z0-9_]*$")
NNUNET_CHECKPOINTS = {"final": "checkpoint_final.pth", "best": "checkpoint_best.pth"}
MODEL_FILES = ("plans.json", "dataset.json")
_ZIP_MEMBERS = re.compile(r"(^|/)(plans\.json|dataset\.json|fold_[^/]+/checkpoint_(final|best)\.pth)$")


@dataclass
class ImportedRun:
    """One installed run: the task, its folder and the folds it holds."""

    task: str
    run_dir: Path
    folds: list[str]
    network: str
    notes: list[str] = field(default_factory=list)


def split_model_folder_name(folder: Path) -> tuple[str, str, str]:
    """`nnUNetTrainer__nnUNetPlans__3d_fullres` -> (trainer, plans name, configuration)."""
    parts = folder.name.split("__")
    if len(parts) != 3 or not all(parts):
        raise DatasetError(f"{folder}: not an nnU-Net results folder (its name must be "
                           f"<Trainer>__<Plans>__<configuration>, e.g. nnUNetTrainer__nnUNetPlans__3d_fullres)")
    return parts[0], parts[1], parts[2]


def find_model_folders(root: Path) -> list[Path]:
    """`root` when it is a model folder, else the model folders one or two levels below it."""
    def is_model(p: Path) -> bool:
        return p.is_dir() and all((p / f).is_file() for f in MODEL_FILES) and any(p.glob(f"{FOLD_PREFIX}*"))

    if is_model(root):
        return [root]
    found = sorted(p for p in list(root.glob("*")) + list(root.glob("*/*")) if is_model(p))
    if not found:
        raise DatasetError(f"{root}: no nnU-Net model folder (<Trainer>__<Plans>__<configuration> with "
                           f"{', '.join(MODEL_FILES)} and fold_N/) in it or below it")
    return found


def unpack_nnunet_zip(archive: Path, dest: Path) -> None:
    """Extract the model files of an `nnUNetv2_export_model_to_zip` archive into `dest`, after checking
    every member name (no absolute paths, `..`, backslashes or links) and the sizes."""
    with open_checked_zip(archive) as (zf, infos):
        wanted = [i for i in infos if not i.is_dir() and _ZIP_MEMBERS.search(i.filename)]
        if not wanted:
            raise AutounetError(f"{archive}: holds no nnU-Net model (plans.json, dataset.json, "
                                f"fold_N/checkpoint_final.pth); was it written by nnUNetv2_export_model_to_zip?")
        check_sizes(wanted, archive, dest)
        for info in wanted:
            target = dest.joinpath(*PurePosixPath(info.filename).parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            extract_member(zf, info, target, archive)


def import_nnunet(source: Path, workspace: Workspace, overwrite: bool = False,
                  checkpoint: str = "final") -> list[ImportedRun]:
    """Install every nnU-Net model found at `source` (a folder or an exported zip); see the module doc."""
    source = Path(source)
    if checkpoint not in NNUNET_CHECKPOINTS:
        raise AutounetError(f"checkpoint '{checkpoint}' is not one of {sorted(NNUNET_CHECKPOINTS)}")
    if source.is_file():
        workspace.results_root.mkdir(parents=True, exist_ok=True)
        unpacked = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}nnunet-", dir=workspace.results_root))
        try:
            unpack_nnunet_zip(source, unpacked)
            try:
                folders = find_model_folders(unpacked)
            except DatasetError:
                raise DatasetError(f"{source}: no nnU-Net model folder (<Trainer>__<Plans>__<configuration> with "
                                   f"{', '.join(MODEL_FILES)} and fold_N/) in the archive") from None
            return [import_model_folder(folder, workspace, overwrite, checkpoint, f"{source}:{folder.name}")
                    for folder in folders]
        finally:
            shutil.rmtree(unpacked, ignore_errors=True)
    if not source.is_dir():
        raise DatasetError(f"{source}: not found; give an nnU-Net results folder or an exported zip")
    return [import_model_folder(folder, workspace, overwrite, checkpoint, str(folder.resolve()))
            for folder in find_model_folders(source)]


def _load_folds(folder: Path, checkpoint: str, trainer: str, configuration: str) -> dict[str, dict[str, Any]]:
    """fold name -> nnU-Net checkpoint dict, each checked to belong to this trainer and configuration."""
    name = NNUNET_CHECKPOINTS[checkpoint]
    paths = sorted(folder.glob(f"{FOLD_PREFIX}*/{name}"))
    if not paths:
        raise CheckpointError(f"{folder}: no fold_N/{name}; finish training with nnU-Net or pass --checkpoint best")
    states: dict[str, dict[str, Any]] = {}
    for path in paths:
        state = load_nnunet_checkpoint(path)
        trained = (state.get("init_args") or {}).get("configuration", configuration)
        if trained != configuration:
            raise CheckpointError(f"{path}: trained for configuration '{trained}', but its folder says "
                                  f"'{configuration}'; the folders were renamed or mixed up")
        if state.get("trainer_name", trainer) != trainer:
            raise CheckpointError(f"{path}: written by trainer '{state['trainer_name']}', but its folder says "
                                  f"'{trainer}'; the folders were renamed or mixed up")
        states[fold_name(path.parent.name)] = state
    return states


def import_model_folder(folder: Path, workspace: Workspace, overwrite: bool, checkpoint: str,
                        origin: str) -> ImportedRun:
    """Translate and install one nnU-Net model folder (all its folds); nothing is written on a refusal."""
    trainer, plans_name, configuration = split_model_folder_name(folder)
    if not TRAINER_NAME.match(trainer):
        raise AutounetError(f"{folder}: trainer '{trainer}' is not nnU-Net's nnUNetTrainer or a variant named "
                            f"nnUNetTrainer*; autounet cannot tell what a custom trainer changed")
    plans_raw, dataset_raw = (read_json(folder / f) for f in MODEL_FILES)
    states = _load_folds(folder, checkpoint, trainer, configuration)
    axes = {tuple(mirror_axes_of(s, folder / f"{FOLD_PREFIX}{f}")) for f, s in states.items()}
    if len(axes) != 1:
        raise CheckpointError(f"{folder}: the folds mirror along different axes {sorted(axes)}; import them apart")
    plans, network_name = translate_plans(plans_raw, dataset_raw, configuration, list(axes.pop()),
                                          str(folder / "plans.json"))
    if not is_plain_name(plans.task):
        raise AutounetError(f"{folder / 'plans.json'}: 'dataset_name' '{plans.task}' is not a plain folder name")
    run_name = f"{configuration}__{trainer}__{plans_name}"
    target = workspace.results(plans.task)
    if (target / run_name).exists() and not overwrite:
        raise AutounetError(f"{target / run_name}: already installed; pass --overwrite to replace it")
    cfg = plans.configuration(configuration)
    network = build_network(network_name, cfg.network, plans.num_channels, plans.num_outputs, deep_supervision=True)
    target.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}import-", dir=target))
    try:
        run_dir = staging / run_name
        save_plans(plans, run_dir / "plans.json")
        write_json(run_dir / "dataset.json", dataset_raw)
        for fold, state in states.items():
            _write_fold(run_dir / f"{FOLD_PREFIX}{fold}", state, network, network_name, plans.task, configuration,
                        run_name, {"tool": "nnU-Net v2", "source": origin, "trainer": trainer, "plans": plans_name,
                                   "checkpoint": NNUNET_CHECKPOINTS[checkpoint],
                                   "epoch": int(state.get("current_epoch", 0))}, cfg.mirror_axes or [])
        replace_items(staging, target, [run_name])
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.debug("imported %s (%s, folds %s) into %s", folder.name, network_name, sorted(states), target / run_name)
    return ImportedRun(plans.task, target / run_name, sorted(states), network_name)


def _write_fold(fold_dir: Path, state: dict[str, Any], network, network_name: str, task: str, configuration: str,
                run_name: str, origin: dict[str, Any], mirror_axes: list[int]) -> None:
    weights = map_state_dict(state[NETWORK_WEIGHTS], network, f"{origin['source']}/{fold_dir.name}")
    fold_dir.mkdir(parents=True, exist_ok=True)
    save_checkpoint(fold_dir / FINAL, {
        "format": CHECKPOINT_FORMAT, "network": weights, "network_name": network_name,
        "network_kwargs": {"network_plan": to_dict(network.plan), "in_channels": network.in_channels,
                           "num_classes": network.num_classes},
        "configuration": configuration, "mirror_axes": list(mirror_axes), "imported_from": origin})
    now = now_iso()
    manifest = RunManifest(task=task, configuration=configuration, fold=fold_dir.name[len(FOLD_PREFIX):],
                           run_name=run_name, settings={}, seed=0, versions=software_versions(),
                           host=socket.gethostname(), device="cpu", world_size=1, start_time=now, status="finished",
                           end_time=now, imported_from=origin)
    save_manifest(manifest, fold_dir)
