"""What each `autounet` subcommand does with its parsed arguments.

`cli.py` only parses; each `cmd_*` here calls the stage or command the subcommand names,
prints its result and the next step, and returns the exit code. Stage modules are imported
inside each handler so that `autounet --help` and quick commands start without torch.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from autounet.core.workspace import Workspace, resolve_workspace
from autounet.errors import AutounetError


def _workspace(args: argparse.Namespace) -> Workspace:
    return resolve_workspace(args.workspace)


def cmd_doctor(args: argparse.Namespace) -> int:
    from autounet.commands.doctor import doctor_report

    print(doctor_report(_workspace(args)))
    return 0


def cmd_demo_data(args: argparse.Namespace) -> int:
    from autounet.task.demo_data import write_demo_task

    if args.sparse < 0 or args.sparse == 1:
        raise AutounetError(f"--sparse {args.sparse}: give N >= 2 (one annotated slice in N) or leave it out")
    path = write_demo_task(Path(args.directory), two_d=args.two_d, seed=args.seed, regions=args.regions,
                           sparse_every=args.sparse, name=args.name)
    print(f"demo task written to {path}")
    return 0


def cmd_plan_and_preprocess(args: argparse.Namespace) -> int:
    from autounet.commands.plan_and_preprocess import plan_and_preprocess

    result = plan_and_preprocess(
        _workspace(args), args.task, num_workers=args.num_workers, gpu_memory_gb=args.gpu_memory,
        plan_only=args.plan_only, clean=args.clean, configurations=args.configurations,
        planner=args.planner, show_progress=not args.no_progress, memory_gb=args.memory_gb,
        accept_label_geometry=args.accept_label_geometry, nifti_transform=args.nifti_transform,
        plans_name=args.plans_name, transfer_plans_from=args.transfer_plans_from,
        transfer_plans_name=args.transfer_plans,
    )
    print(f"plans: {result.plans_path} ({', '.join(result.configurations)})")
    if result.preprocessed:
        print(f"preprocessed: {', '.join(result.preprocessed)} in {result.preprocessed_dir}")
    named = "" if result.plans_name == "default" else f" --plans {result.plans_name}"
    configuration = "3d_fullres" if "3d_fullres" in result.configurations else "2d"
    print(f"next: autounet plans {result.task}{named}   |   autounet train {configuration} fold 0{named}")
    return 0


def cmd_plans(args: argparse.Namespace) -> int:
    from autounet.core.task_names import find_task_name
    from autounet.planners.plans import available_plans, load_named_plans
    from autounet.planners.summary import format_plans_table

    ws = _workspace(args)
    name = find_task_name(args.task, ws, require_preprocessed=True)
    print(format_plans_table(load_named_plans(ws.preprocessed(name), args.plans)))
    others = [p for p in available_plans(ws.preprocessed(name)) if p != args.plans]
    if others:
        print(f"\nother plans of {name}: {', '.join(others)} (show with --plans NAME)")
    return 0


def parse_blocks(text: str | None) -> list[str] | None:
    """`se,attention_gate` -> ["se", "attention_gate"]; `none` -> []; nothing given -> None (the plans' own)."""
    if text is None:
        return None
    names = [w.strip() for w in text.split(",") if w.strip()]
    return [] if names in ([], ["none"]) else names


def _train_settings(args: argparse.Namespace) -> Any:
    from autounet.training.settings import TrainingSettings, default_val_iters

    return TrainingSettings(
        epochs=args.epochs, iters_per_epoch=args.iters_per_epoch, device=args.device, workers=args.workers,
        resume=args.resume, init_from=args.init_from, network=args.network, plans=args.plans,
        blocks=parse_blocks(args.blocks),
        save_probabilities=args.save_probabilities, seed=args.seed,
        val_iters=args.val_iters if args.val_iters is not None else default_val_iters(args.iters_per_epoch),
        validate_at_end=not args.skip_validation, validation_mirroring=not args.disable_tta, threads=args.threads,
        precision=args.precision, tensorboard=args.tensorboard,
    )


def cmd_train(args: argparse.Namespace) -> int:
    import os

    from autounet.commands.fold_fanout import choose_slots, runs_in_process, train_folds_side_by_side
    from autounet.commands.fold_summary import format_fanout_summary
    from autounet.training.run_training import resolve_task_for_training, run_training

    ws = _workspace(args)
    folds = args.fold_list
    slots = choose_slots(getattr(args, "gpus", None), getattr(args, "parallel_folds", None), args.device)
    task = resolve_task_for_training(ws, args.task)
    settings = _train_settings(args)
    settings.validate()
    failed = 0
    if runs_in_process(slots, folds):
        if slots:  # --gpus K with one fold: this process trains on GPU K (CUDA is not initialised yet)
            os.environ.update(slots[0].env)
        for fold in folds:
            fold_dir = run_training(ws, task, args.configuration, fold, settings)
            print(f"fold {fold} finished: {fold_dir}")
    else:
        result = train_folds_side_by_side(ws, task, args, settings, folds, slots)
        print(format_fanout_summary(result))
        if result.interrupted:
            raise KeyboardInterrupt
        failed = len(result.failed)
    _refresh_report(ws, task)
    if failed:
        print(f"error: {failed} fold(s) failed; each failed fold's log is named above", file=sys.stderr)
        return 1
    print(f"next: autounet find_best_configuration {task}   |   autounet predict -t {task} -i imagesTs -o preds")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from autounet.commands.compare import compare_runs

    print(compare_runs(_workspace(args), args.run_a, args.run_b, task=args.task))
    return 0


def _refresh_report(ws: Workspace, task: str) -> None:
    from autounet.reporting.html_report import refresh_report

    path = refresh_report(ws, task)
    if path is not None:
        print(f"report: {path}")


def cmd_predict(args: argparse.Namespace) -> int:
    from autounet.inference.predict_folder import predict_folder

    report = predict_folder(
        _workspace(args), Path(args.input), Path(args.output), task=args.task, configuration=args.configuration,
        folds=args.folds, checkpoint=args.checkpoint, use_mirroring=False if args.disable_tta else None,
        step_size=args.step_size, save_probabilities=args.save_probabilities,
        postprocess=not args.no_postprocessing, device=args.device, resume=args.resume,
        num_parts=args.num_parts, part_id=args.part_id, precision=args.precision, threads=args.threads,
        preset=args.preset, memory_gb=args.memory_gb, nifti_transform=args.nifti_transform,
        output_format=args.output_format,
    )
    print(f"{len(report.written)} written, {len(report.skipped)} skipped, {len(report.failed)} failed -> {args.output}")
    for case, why in report.failed.items():
        print(f"error: {case}: {why}", file=sys.stderr)
    return 1 if report.failed else 0


def cmd_postprocess(args: argparse.Namespace) -> int:
    from autounet.postprocessing.decision import postprocess_folder

    decision = Path(args.decision) if args.decision else _postprocessing_for_task(args)
    postprocess_folder(Path(args.input), Path(args.output), decision, num_workers=args.num_workers)
    print(f"postprocessed {args.input} -> {args.output} using {decision}")
    return 0


def _postprocessing_for_task(args: argparse.Namespace) -> Path:
    from autounet.inference.model_choice import choose_model

    choice = choose_model(_workspace(args), task=args.task, configuration=args.configuration)
    if choice.postprocessing is None:
        raise AutounetError(
            f"no postprocessing decision for task {choice.task}; run `autounet find_best_configuration "
            f"{choice.task}` or pass --decision FILE")
    return Path(choice.postprocessing)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from autounet.evaluation.evaluate import evaluate_folder, parse_metrics
    from autounet.evaluation.summary_table import format_summary

    labels, names, ignore = _evaluation_labels(args)
    summary = evaluate_folder(Path(args.ref), Path(args.pred), labels, metrics=parse_metrics(args.metrics),
                              num_workers=args.num_workers, ignore_label=ignore)
    print(format_summary(summary, names))
    print(f"summary: {Path(args.pred) / 'summary.json'}")
    if args.task:
        from autounet.core.task_names import find_task_name

        ws = _workspace(args)
        try:
            name = find_task_name(args.task, ws, require_preprocessed=True)
        except AutounetError:
            return 0
        _refresh_report(ws, name)
    return 0


def _evaluation_labels(args: argparse.Namespace) -> tuple[list[Any], dict[Any, str], int | None]:
    """Labels (or a task's regions) with their names and the ignore label: from --labels, else from
    the task's dataset.json, else from the reference files."""
    if args.labels:
        return [0] + [v for v in args.labels if v != 0], {v: str(v) for v in args.labels}, None
    if args.task:
        from autounet.evaluation.evaluate import target_key
        from autounet.task.dataset import find_task, load_task

        task = load_task(find_task(args.task, _workspace(args)))
        if task.regions:
            regions = [tuple(r.values) for r in task.regions]
            return regions, {target_key(r.values): r.name for r in task.regions}, task.ignore_label
        return sorted(task.labels.values()), {v: k for k, v in task.labels.items()}, task.ignore_label
    from autounet.evaluation.evaluate import labels_in_folder

    values = labels_in_folder(Path(args.ref))
    return values, {v: str(v) for v in values}, None


def cmd_find_best(args: argparse.Namespace) -> int:
    from autounet.commands.find_best import find_best_configuration
    from autounet.core.task_names import find_task_name

    ws = _workspace(args)
    name = find_task_name(args.task, ws, require_preprocessed=True)
    result = find_best_configuration(ws, name, configurations=args.configurations,
                                     allow_ensembles=not args.no_ensembles, num_workers=args.num_workers)
    print((ws.results(name) / "best_configuration.txt").read_text(encoding="utf-8")
          if (ws.results(name) / "best_configuration.txt").is_file() else result)
    _refresh_report(ws, name)
    return 0


def cmd_ensemble(args: argparse.Namespace) -> int:
    from autounet.inference.ensemble import ensemble_folders

    ensemble_folders([Path(p) for p in args.input], Path(args.output), save_probabilities=args.save_probabilities)
    print(f"ensemble written to {args.output}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from autounet.commands.demo import run_demo

    result = run_demo(_workspace(args), two_d=args.two_d, epochs=args.epochs, iters_per_epoch=args.iters_per_epoch,
                      device=args.device, workers=args.workers)
    print(f"demo finished in {result.seconds / 60:.1f} min: mean foreground Dice on the held-out demo cases "
          f"{result.dice:.3f}")
    print(f"report: {result.report}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from autounet.core.task_names import find_task_name
    from autounet.reporting.html_report import write_report

    ws = _workspace(args)
    name = find_task_name(args.task, ws, require_preprocessed=True)
    out = write_report(ws, name, Path(args.output) if args.output else None)
    print(f"report: {out}")
    return 0


def cmd_overlay(args: argparse.Namespace) -> int:
    from autounet.reporting.overlay import overlay_files

    out = overlay_files(Path(args.image), Path(args.seg), Path(args.output),
                        Path(args.second) if args.second else None)
    print(f"overlay: {out}")
    return 0


def cmd_export_model(args: argparse.Namespace) -> int:
    from autounet.commands.model_sharing import export_model
    from autounet.core.task_names import find_task_name

    ws = _workspace(args)
    name = find_task_name(args.task, ws, require_preprocessed=False)
    out = export_model(ws, name, Path(args.output), runs=args.runs, folds=args.folds, checkpoint=args.checkpoint)
    print(f"exported {name} to {out}")
    return 0


def cmd_export_onnx(args: argparse.Namespace) -> int:
    from autounet.inference.onnx_export import export_onnx, resolve_run_dir

    run_dir = resolve_run_dir(_workspace(args), args.run, args.task, args.configuration, args.checkpoint)
    result = export_onnx(run_dir, Path(args.output), folds=args.folds, checkpoint=args.checkpoint, opset=args.opset)
    for fold, path in result.files.items():
        print(f"fold {fold}: {path} (max |ONNX - PyTorch| {result.max_abs_diff[fold]:.2g} on random patches)")
    print(f"contract: {result.contract}")
    print(f"next: python -m autounet.onnx_runner -i IMAGES -o OUT --model {args.output}")
    return 0


def cmd_install_model(args: argparse.Namespace) -> int:
    from autounet.commands.model_sharing import install_model

    target = install_model(Path(args.archive), _workspace(args), overwrite=args.overwrite)
    print(f"installed into {target}")
    return 0


def cmd_import_nnunet(args: argparse.Namespace) -> int:
    from autounet.commands.nnunet_import import import_nnunet

    for run in import_nnunet(Path(args.path), _workspace(args), overwrite=args.overwrite, checkpoint=args.checkpoint):
        print(f"imported {run.task}: {run.run_dir} ({run.network}, folds {', '.join(run.folds)})")
    return 0
