"""Train one fold end to end: resolve inputs, lock the fold, train, validate on whole cases.

`run_training` is what `autounet train` calls (once per fold). It is also what each process
runs under torchrun: the process group is joined here, rank 0 owns the lock and every file,
the other ranks only train.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autounet.errors import AutounetError
from autounet.preprocessing.cascade import (
    NEXT_STAGE_DIR,
    NEXT_STAGE_KEY,
    cascade_input,
    load_previous_stage,
    missing_previous_stage,
    next_stage_segmentation,
    save_next_stage,
)
from autounet.io.atomic import write_text
from autounet.networks.precision import resolve_precision
from autounet.core.workspace import Workspace, resolve_workspace
from autounet.planners.plans import DEFAULT_PLANS_NAME, Plans, ResamplingPlan, load_named_plans, load_plans, save_plans
from autounet.preprocessing.case_properties import CaseProperties
from autounet.core.run_layout import BEST, FINAL, FOLD_PREFIX, LATEST, VALIDATION_FOLDER, fold_folder_name
from autounet.training.distributed import (
    DistributedContext,
    barrier,
    init_distributed,
    shutdown_distributed,
)
from autounet.training.lock import FoldLock
from autounet.training.run_identity import (
    RunManifest,
    check_resume_compatible,
    checkpoint_checksum,
    load_manifest,
    now_iso,
    run_name,
    save_manifest,
)
from autounet.training.settings import DEFAULT_EPOCHS, DEFAULT_ITERS_PER_EPOCH, TrainingSettings
from autounet.training.splits import Split
from autounet.training.trainer import LoaderBuilder, NetworkBuilder, Trainer, resolve_device

log = logging.getLogger(__name__)

LOG_NAME = "training.log"
# Re-exported: the cascade helpers live in preprocessing.cascade, shared with the predictor.
__all__ = ["NEXT_STAGE_DIR", "NEXT_STAGE_KEY", "cascade_input", "load_previous_stage", "export_next_stage",
           "find_previous_stage_dir", "run_training", "validate_fold"]


def resolve_task_for_training(workspace: Workspace, task_or_none: str | None) -> str:
    """The task to train: the one named (`Task01`, `1`, full name), or the only preprocessed one."""
    from autounet.core.task_names import find_task_name

    return find_task_name(task_or_none, workspace, require_preprocessed=True)


def _run_flags(settings: TrainingSettings) -> str:
    """The train flags that make a run name (so a suggested command hits the same run)."""
    flags = ""
    if settings.plans != DEFAULT_PLANS_NAME:
        flags += f" --plans {settings.plans}"
    if settings.network:
        flags += f" --network {settings.network}"
    if settings.blocks is not None:
        flags += f" --blocks {','.join(settings.blocks) or 'none'}"
    if settings.init_from:
        flags += f" --init-from {settings.init_from}"
    if settings.epochs != DEFAULT_EPOCHS or settings.iters_per_epoch != DEFAULT_ITERS_PER_EPOCH:
        flags += f" --epochs {settings.epochs} --iters-per-epoch {settings.iters_per_epoch}"
    return flags


def _folds_validating(missing: list[str], splits: list[Split] | None) -> str:
    """`--folds 0,3`: the lower-stage folds whose validation writes the missing cases."""
    if not splits:
        return "--folds 0-4"
    wanted = set(missing)
    folds = [i for i, split in enumerate(splits) if wanted & set(split.val)]
    covered = {c for i in folds for c in splits[i].val}
    if not folds or wanted - covered:
        return "fold all"
    return "--folds " + ",".join(str(f) for f in folds)


def find_previous_stage_dir(
    results: Path,
    task: str,
    configuration: str,
    previous: str,
    settings: TrainingSettings,
    needed: list[str],
    splits: list[Split] | None = None,
) -> Path:
    """The `predicted_next_stage` folder of the lower-stage run that this cascade run trains on.

    Preferred: the run with the same name suffix (`3d_lowres__2ep_4it` for
    `3d_cascade_fullres__2ep_4it`). If it lacks cases, another run of `previous` that has every
    needed case is used (the default-length run first, else the most recently written) with a
    warning. Otherwise the error names the preferred folder, the missing cases and the command
    that writes them (each lower-stage fold predicts its own validation cases).
    """
    preferred = results / run_name(previous, settings) / NEXT_STAGE_DIR
    missing = missing_previous_stage(preferred, needed)
    if not missing:
        return preferred
    others = [p / NEXT_STAGE_DIR for p in results.glob(f"{previous}*")
              if p.is_dir() and p.name.split("__", 1)[0] == previous and p / NEXT_STAGE_DIR != preferred]
    complete = [d for d in others if not missing_previous_stage(d, needed)]
    if complete:
        chosen = sorted(complete, key=lambda d: (d.parent.name != previous, -d.stat().st_mtime))[0]
        log.warning("%s is incomplete; %s trains on the %s predictions in %s instead", preferred, configuration,
                    previous, chosen)
        return chosen
    shown = ", ".join(missing[:5]) + (f" ... ({len(missing) - 5} more)" if len(missing) > 5 else "")
    raise AutounetError(
        f"{preferred}: {configuration} needs the {previous} predictions of the fold's {len(needed)} training and "
        f"validation cases, missing for {len(missing)} ({shown}); first run `autounet train {previous} "
        f"{_folds_validating(missing, splits)} -t {task}{_run_flags(settings)}` (each {previous} fold writes "
        f"its validation cases there)"
    )


def export_next_stage(logits: Any, props: CaseProperties, next_props: CaseProperties, resampling: ResamplingPlan,
                      folder: Path) -> Path:
    """Save a low-resolution case's prediction on the next stage's preprocessed grid for the cascade."""
    seg = next_stage_segmentation(logits, next_props.shape_after_resample, props.target_spacing,
                                  next_props.target_spacing, resampling)
    return save_next_stage(seg, folder, next_props.case_id or props.case_id)


def validate_fold(
    network: nn.Module,
    plans: Plans,
    configuration_name: str,
    data_folder: Path,
    val_ids: list[str],
    fold_dir: Path,
    gt_dir: Path,
    device: torch.device,
    save_probabilities: bool = False,
    previous_stage_dir: Path | None = None,
    next_stage: tuple[Path, Path] | None = None,
    use_mirroring: bool = True,
    precision: str = "auto",
) -> dict[str, Any] | None:
    """Predict every validation case on its original grid, write validation/, evaluate it.

    `next_stage` is (output folder, the next configuration's preprocessed folder) for a
    low-resolution stage whose predictions feed the cascade. Returns the summary (None when
    the task has no gt_segmentations to evaluate against).
    """
    from autounet.inference.export import logits_to_segmentation_on_original_grid, probability_meaning, save_prediction
    from autounet.inference.export import save_probabilities as write_probabilities
    from autounet.inference.sliding_window import sliding_window_logits
    from autounet.preprocessing.case_store import CaseStore

    cfg = plans.configuration(configuration_name)
    mirror_axes = list(cfg.mirror_axes if cfg.mirror_axes is not None else range(cfg.dims)) if use_mirroring else []
    store = CaseStore(data_folder)
    next_store = CaseStore(next_stage[1]) if next_stage is not None else None
    val_dir = fold_dir / VALIDATION_FOLDER
    val_dir.mkdir(parents=True, exist_ok=True)
    network.eval()
    for i, case_id in enumerate(val_ids):
        data, _, props = store.load(case_id, mmap=False)
        if previous_stage_dir is not None:
            previous = load_previous_stage(previous_stage_dir, case_id, expected_shape=data.shape[1:])
            data = cascade_input(data, previous, plans.num_classes)
        logits = sliding_window_logits(network, data, cfg.patch_size, plans.num_outputs, step_size=0.5,
                                       mirror_axes=mirror_axes, device=device, precision=precision,
                                       sigmoid=plans.has_regions)
        seg, probs = logits_to_segmentation_on_original_grid(logits, props, plans, configuration_name,
                                                             return_probabilities=save_probabilities)
        save_prediction(seg, props.geometry, val_dir / f"{case_id}.nii.gz")
        if probs is not None:
            values, regions = probability_meaning(plans)
            write_probabilities(probs, values, val_dir / f"{case_id}.npz", regions=regions)
        if next_stage is not None and next_store is not None:
            export_next_stage(logits, props, next_store.properties(case_id), cfg.resampling, next_stage[0])
        log.info("validation case %d/%d: %s", i + 1, len(val_ids), case_id)
    if not gt_dir.is_dir():
        log.warning("%s not found: validation predictions were written but not evaluated", gt_dir)
        return None
    from autounet.evaluation.evaluate import evaluate_folder

    return evaluate_folder(gt_dir, val_dir, plans.evaluation_targets, metrics=("dice",), case_ids=val_ids,
                           ignore_label=plans.ignore_label)


@contextlib.contextmanager
def _training_log(fold_dir: Path, enabled: bool) -> Iterator[None]:
    """Mirror autounet's INFO log lines into fold_N/training.log (appending across resumes)."""
    if not enabled:
        yield
        return
    logger = logging.getLogger("autounet")
    handler = logging.FileHandler(fold_dir / LOG_NAME, mode="a", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S"))
    handler.setLevel(logging.INFO)
    previous_level = logger.level
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        handler.close()
        logger.setLevel(previous_level)


def _write_run_files(plans: Plans, preprocessed: Path, run_dir: Path) -> None:
    """The plans the folds train with (blocks applied) and dataset.json beside the folds, so a run folder
    is self-contained; refused where other folds of the folder were trained with other plans."""
    path = run_dir / "plans.json"
    if path.is_file() and any(run_dir.glob(f"{FOLD_PREFIX}*/checkpoint_*.pt")):
        try:
            before = load_plans(path).content_hash()
        except AutounetError:
            before = None
        if before != plans.content_hash():
            raise AutounetError(
                f"{run_dir}: its folds were trained with other {plans.name} plans (re-planned since); train these "
                f"plans into their own folder: `autounet plan_and_preprocess {plans.task} --plans-name NAME ...` "
                f"then `autounet train ... --plans NAME`, or delete the folder")
    save_plans(plans, path)
    dataset = preprocessed / "dataset.json"
    if dataset.is_file():
        write_text(run_dir / "dataset.json", dataset.read_text(encoding="utf-8"))


def _already_trained(fold_dir: Path, fold: int | str) -> bool:
    """A fold whose final checkpoint exists and whose run.json says it finished: said, and skipped."""
    if not (fold_dir / FINAL).is_file() or not (fold_dir / "run.json").is_file():
        return False
    try:
        finished = load_manifest(fold_dir).status == "finished"
    except AutounetError:
        return False
    if finished:
        log.info("fold %s is already trained: results in %s (checkpoint_final.pt, validation/summary.json); "
                 "nothing to do. To train it again, delete that folder.", fold, fold_dir)
    return finished


def _prepare_manifest(fold_dir: Path, settings: TrainingSettings, plans: Plans, configuration: str, fold: str,
                      device: torch.device, ctx: DistributedContext) -> RunManifest:
    has_checkpoint = any((fold_dir / n).is_file() for n in (LATEST, FINAL, BEST))
    if has_checkpoint and not settings.resume:
        raise AutounetError(f"{fold_dir}: this fold already has checkpoints; continue it with --resume, "
                            f"or delete the folder to start over")
    manifest_path = fold_dir / "run.json"
    precision = resolve_precision(settings.precision, device)
    if settings.resume and manifest_path.is_file():
        manifest = load_manifest(fold_dir)
        check_resume_compatible(manifest, settings, str(manifest_path))
        manifest.status = "running"
        manifest.end_time = None
        manifest.resumed.append(now_iso())
        manifest.settings = settings.as_dict()
        manifest.device = str(device)
        manifest.precision = precision
        manifest.world_size = ctx.world_size
        return manifest
    manifest = RunManifest.create(plans.task, configuration, fold, settings, str(device), ctx.world_size, precision)
    network = plans.configuration(configuration).network
    manifest.plans_name, manifest.plans_hash = plans.name, plans.content_hash()
    manifest.architecture, manifest.blocks = settings.network or network.architecture, list(network.blocks)
    if settings.init_from:
        manifest.init = {"checkpoint": str(Path(settings.init_from).resolve()),
                         "sha256": checkpoint_checksum(settings.init_from)}
    return manifest


def run_training(
    workspace: Workspace | str | Path | None,
    task: str | None,
    configuration: str,
    fold: int | str,
    settings: TrainingSettings,
    network_builder: NetworkBuilder | None = None,
    loader_builder: LoaderBuilder | None = None,
) -> Path:
    """Train (or with settings.resume continue) one fold and validate it; returns the fold folder.

    `network_builder`/`loader_builder` replace the registry and the standard data loader
    (research code, tests); by default they are `networks.registry.build_network` and
    `training.data_loader.build_dataloaders`.
    """
    settings.validate()
    ws = workspace if isinstance(workspace, Workspace) else resolve_workspace(workspace)
    task = resolve_task_for_training(ws, task)
    preprocessed = ws.preprocessed(task)
    plans, data_folder, case_ids = _preprocessed_inputs(preprocessed, task, configuration, settings)
    cfg = plans.configuration(configuration)
    device = resolve_device(settings.device)
    started_group = not torch.distributed.is_initialized()
    ctx = init_distributed(device.type)
    started_group = started_group and ctx.enabled
    try:
        train_ids, val_ids, splits = _fold_cases(preprocessed / "splits.json", fold, case_ids,
                                                 bool(cfg.previous_stage), ctx)
        in_channels = plans.num_channels
        previous_dir = None
        if cfg.previous_stage:
            previous_dir = find_previous_stage_dir(ws.results(task), task, configuration, cfg.previous_stage,
                                                   settings, sorted(set(train_ids) | set(val_ids)), splits)
            in_channels += plans.num_classes - 1
        run_dir = ws.results(task) / run_name(configuration, settings)
        fold_dir = run_dir / fold_folder_name(fold)
        if not settings.resume and _already_trained(fold_dir, fold):
            return fold_dir
        if ctx.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            _write_run_files(plans, preprocessed, run_dir)
            fold_dir.mkdir(exist_ok=True)
        lock = FoldLock(fold_dir) if ctx.is_main else contextlib.nullcontext()
        with lock, _training_log(fold_dir, ctx.is_main):
            manifest = None
            if ctx.is_main:
                manifest = _prepare_manifest(fold_dir, settings, plans, configuration, str(fold),
                                             resolve_device(settings.device, ctx), ctx)
                save_manifest(manifest, fold_dir)
            barrier(ctx)
            trainer: Trainer | None = None
            try:
                if previous_dir is not None:
                    log.info("cascade: %s inputs are the image plus the one-hot of the %s predictions in %s",
                             configuration, cfg.previous_stage, previous_dir)
                trainer = Trainer(plans, configuration, data_folder, fold_dir, train_ids, val_ids, settings, ctx=ctx,
                                  in_channels=in_channels, network_builder=network_builder,
                                  loader_builder=loader_builder, previous_stage_dir=previous_dir)
                _resume_or_initialise(trainer, settings, manifest, fold_dir)
                state = trainer.fit()
                barrier(ctx)
                if ctx.is_main and settings.validate_at_end and val_ids:
                    _validate_at_end(trainer, state.ema_dice, plans, configuration, preprocessed, run_dir, fold_dir,
                                     val_ids, settings, previous_dir, fold)
            except BaseException:
                _close_manifest(manifest, trainer, "failed", fold_dir)
                raise
            _close_manifest(manifest, trainer, "finished", fold_dir)
        return fold_dir
    finally:
        if started_group:
            shutdown_distributed()


def _resume_or_initialise(trainer: Trainer, settings: TrainingSettings, manifest: RunManifest | None,
                          fold_dir: Path) -> None:
    """--resume continues from the fold's checkpoint; otherwise --init-from fills the matching layers
    (what it filled and what it left fresh go into run.json)."""
    resumed = settings.resume and trainer.resume()
    if settings.resume and not resumed:
        log.warning("%s: no checkpoint to resume from; starting from epoch 1", fold_dir)
    if not resumed and settings.init_from:
        loaded, reinitialised = trainer.init_from(Path(settings.init_from))
        if manifest is not None and manifest.init is not None:
            manifest.init.update(loaded_tensors=loaded, reinitialised=reinitialised)
            save_manifest(manifest, fold_dir)


def _close_manifest(manifest: RunManifest | None, trainer: Trainer | None, status: str, fold_dir: Path) -> None:
    """Record how the run ended (and any out-of-memory retries) in run.json; only the main process has one."""
    if manifest is None:
        return
    manifest.oom_events += trainer.oom.events if trainer is not None else []
    manifest.status = status
    manifest.end_time = now_iso()
    save_manifest(manifest, fold_dir)


def _preprocessed_inputs(preprocessed: Path, task: str, configuration: str,
                         settings: TrainingSettings) -> tuple[Plans, Path, list[str]]:
    """The plans (with --blocks applied), the configuration's data folder and its case ids; refused when
    nothing is preprocessed or the arrays were preprocessed for other settings."""
    from autounet.preprocessing.case_store import CaseStore
    from autounet.preprocessing.data_folders import check_stamp

    plans = load_named_plans(preprocessed, settings.plans)
    cfg = plans.configuration(configuration)
    if settings.blocks is not None:
        planned = cfg.network.blocks
        cfg.network.blocks = list(settings.blocks)
        log.info("blocks: %s (--blocks; the plans have %s)", ", ".join(settings.blocks) or "none",
                 ", ".join(planned) or "none")
    data_folder = preprocessed / cfg.data_identifier
    case_ids = CaseStore(data_folder).case_ids() if data_folder.is_dir() else []
    if not case_ids:
        named = "" if settings.plans == DEFAULT_PLANS_NAME else " with the options that wrote these plans"
        raise AutounetError(f"{data_folder}: no preprocessed cases for {configuration}; run "
                            f"`autounet plan_and_preprocess {task} -c {configuration}`{named} first")
    check_stamp(data_folder, plans, configuration)
    return plans, data_folder, case_ids


def _fold_cases(splits_path: Path, fold: int | str, case_ids: list[str], cascade: bool,
                ctx: DistributedContext) -> tuple[list[str], list[str], list[Split] | None]:
    """(training ids, validation ids, the splits) of a fold; the main process creates splits.json once."""
    from autounet.training.splits import get_fold, load_or_create_splits, load_splits

    if str(fold) == "all":
        train_ids, val_ids = get_fold([], "all", case_ids)
        splits = load_splits(splits_path, case_ids) if cascade and splits_path.is_file() else None
        return train_ids, val_ids, splits  # the splits only name the lower-stage folds to train
    if ctx.is_main:
        load_or_create_splits(splits_path, case_ids)
    barrier(ctx)
    splits = load_or_create_splits(splits_path, case_ids)
    train_ids, val_ids = get_fold(splits, fold, case_ids, source=str(splits_path))
    return train_ids, val_ids, splits


def _validate_at_end(trainer: Trainer, ema_dice: float | None, plans: Plans, configuration: str,
                     preprocessed: Path, run_dir: Path, fold_dir: Path, val_ids: list[str],
                     settings: TrainingSettings, previous_dir: Path | None, fold: int | str) -> None:
    """Predict the validation cases whole (and, for 3d_lowres, the cascade's next-stage inputs) and log their Dice."""
    cfg = plans.configuration(configuration)
    log.info("validating fold %s: predicting its %d validation cases whole%s (--skip-validation skips this)",
             fold, len(val_ids), ", with mirroring" if settings.validation_mirroring else "")
    next_stage = None
    if cfg.next_stage and configuration == "3d_lowres":
        out = run_dir / NEXT_STAGE_DIR
        out.mkdir(parents=True, exist_ok=True)
        next_stage = (out, preprocessed / plans.configuration(cfg.next_stage).data_identifier)
    summary = validate_fold(trainer.network, plans, configuration, preprocessed / cfg.data_identifier, val_ids,
                            fold_dir, preprocessed / "gt_segmentations", trainer.device, settings.save_probabilities,
                            previous_dir, next_stage, use_mirroring=settings.validation_mirroring,
                            precision=settings.precision)
    ema = ema_dice if ema_dice is not None else float("nan")
    if summary is not None:
        log.info("fold %s: mean foreground Dice on %d validation cases %.4f (final pseudo Dice "
                 "EMA %.4f, patch-based proxy)", fold, len(val_ids), summary["foreground_mean"].get("Dice", float("nan")),
                 ema)
