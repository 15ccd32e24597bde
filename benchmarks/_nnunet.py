"""Shared helpers for the side-by-side benchmarks: one task, planned and trained by both tools.

nnU-Net (nnunetv2) is never imported here: it lives in its own virtual environment and is run
through its `nnUNetv2_*` commands with nnUNet_raw / nnUNet_preprocessed / nnUNet_results
pointing into a temporary folder (see `plan_and_preprocess.nnunet_env`). What makes the two
sides comparable:

* the same generated MSD task (`plan_and_preprocess.write_benchmark_task`);
* nnU-Net's plans for the configuration are overwritten with autounet's patch size, batch size
  and network topology (stages, features, kernel sizes, strides, convolutions per stage), mapped
  from autounet's axis order to nnU-Net's (`match_nnunet_plans`), so both train the same
  network on the same patches; spacing and normalisation stay each tool's own;
* a short trainer for nnU-Net (`write_bench_trainer`) that reads its budget from the same
  `SHORT_EPOCHS` / `SHORT_ITERS` / `SHORT_VAL` variables as /work/shared/bench's
  `nnUNetTrainerShort` and, like autounet's `validate_at_end=False`, skips the full-case
  validation at the end of the fold (it is prediction, not training, and is timed by predict.py);
* the same number of data-augmentation processes (`--workers` / `nnUNet_n_proc_DA`).

Run as a script it trains autounet in-process (the subprocess entry used by the benchmarks, so
that cProfile can wrap it): `python benchmarks/_nnunet.py autounet-train --workspace W --task T ...`.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
if str(BENCH_DIR) not in sys.path:  # so that `import _nnunet` works from any entry point
    sys.path.insert(0, str(BENCH_DIR))

from plan_and_preprocess import (  # noqa: E402  (re-exported for the other benchmarks)
    Measurement,
    bench_workdir,
    convert_for_nnunet,
    measure,
    nnunet_env,
    nnunet_version,
    tree_rss_bytes,
    write_benchmark_task,
)

__all__ = [
    "BENCH_TRAINER", "Measurement", "autounet_plan", "bench_workdir", "autounet_plan_command", "autounet_train_command",
    "convert_for_nnunet", "match_nnunet_plans", "measure", "nnunet_dataset_folder", "nnunet_env",
    "nnunet_fold_folder", "nnunet_plan_command", "nnunet_predict_command", "nnunet_train_command",
    "nnunet_train_env", "nnunet_version", "overwrite_nnunet_plans", "parse_nnunet_epoch_times", "prepare_nnunet",
    "read_autounet_epoch_times", "read_nnunet_epoch_times", "tree_rss_bytes", "write_bench_trainer",
    "write_benchmark_task",
]

log = logging.getLogger("benchmarks._nnunet")

BENCH_TRAINER = "nnUNetTrainerBench"
NNUNET_PLANS = "nnUNetPlans"

_TRAINER_SOURCE = '''\
"""Short CPU benchmark budget (SHORT_EPOCHS, SHORT_ITERS, SHORT_VAL), no final full-case validation."""
import os

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


class {name}(nnUNetTrainer):
    def __init__(self, plans, configuration, fold, dataset_json, device=torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = int(os.environ.get("SHORT_EPOCHS", "2"))
        self.num_iterations_per_epoch = int(os.environ.get("SHORT_ITERS", "10"))
        self.num_val_iterations_per_epoch = int(os.environ.get("SHORT_VAL", "5"))

    def perform_actual_validation(self, save_probabilities: bool = False):
        self.print_to_log_file("benchmark trainer: full-case validation skipped")
'''

_EPOCH_TIME = re.compile(r"Epoch time: ([0-9]+(?:\.[0-9]+)?) s")


# --------------------------------------------------------------------------- autounet side


def autounet_plan_command(task: Path, workspace: Path, workers: int, configuration: str,
                          gpu_memory_gb: float) -> list[str]:
    return [sys.executable, "-m", "autounet", "--workspace", str(workspace), "plan_and_preprocess", str(task),
            "-np", str(workers), "--gpu-memory", str(gpu_memory_gb), "--no-progress", "-c", configuration]


def autounet_plan(task: Path, workspace: Path, workers: int, configuration: str, gpu_memory_gb: float) -> Path:
    """Plan and preprocess `task` with autounet (skipped when done); returns its plans.json."""
    plans_path = workspace / "preprocessed" / task.name / "plans.json"
    if not plans_path.is_file():
        subprocess.run(autounet_plan_command(task, workspace, workers, configuration, gpu_memory_gb), check=True,
                       stdout=subprocess.DEVNULL)
    return plans_path


def autounet_train_command(workspace: Path, task: str, configuration: str, epochs: int, iters: int, val_iters: int,
                           workers: int, device: str, profile_to: Path | None = None,
                           precision: str = "auto") -> list[str]:
    """The in-process training entry of this module, optionally under cProfile."""
    cmd = [sys.executable]
    if profile_to is not None:
        cmd += ["-m", "cProfile", "-o", str(profile_to)]
    return cmd + [str(Path(__file__).resolve()), "autounet-train", "--workspace", str(workspace), "--task", task,
                  "--configuration", configuration, "--epochs", str(epochs), "--iters", str(iters),
                  "--val-iters", str(val_iters), "--workers", str(workers), "--device", device,
                  "--precision", precision]


def read_autounet_epoch_times(fold_dir: Path) -> list[float]:
    """`epoch_time` of every row of a fold's metrics.jsonl, in epoch order."""
    rows = [json.loads(line) for line in (fold_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [float(r["epoch_time"]) for r in sorted(rows, key=lambda r: r["epoch"])]


def _train_autounet_inline(args: argparse.Namespace) -> None:
    """Train one fold (by default fold 0 without the final full-case validation); prints the fold folder last."""
    from autounet.training.run_training import run_training
    from autounet.training.settings import TrainingSettings

    settings = TrainingSettings(epochs=args.epochs, iters_per_epoch=args.iters, val_iters=args.val_iters,
                                device=args.device, workers=args.workers, validate_at_end=args.validate,
                                precision=args.precision, augment=not args.no_augment,
                                spatial_augmentation=args.spatial, disabled_augmentations=list(args.disable),
                                seed=args.seed)
    fold_dir = run_training(args.workspace, args.task, args.configuration, args.fold, settings)
    sys.stdout.write(f"{fold_dir}\n")


# --------------------------------------------------------------------------- nnU-Net side


def nnunet_plan_command(python: Path, dataset_id: int, configuration: str, workers: int) -> list[str]:
    return [str(python.parent / "nnUNetv2_plan_and_preprocess"), "-d", str(dataset_id), "-c", configuration,
            "-np", str(workers), "-npfp", str(workers)]


def nnunet_dataset_folder(root: Path, dataset_id: int) -> Path:
    """`root/DatasetNNN_Name` (root: nnUNet_preprocessed or nnUNet_results)."""
    found = sorted(root.glob(f"Dataset{dataset_id:03d}_*"))
    if not found:
        raise FileNotFoundError(f"{root}: no Dataset{dataset_id:03d}_* folder; did the nnU-Net step before fail?")
    return found[0]


def _to_nnunet_axes(values: Sequence[Any], autounet_backward: Sequence[int], nnunet_forward: Sequence[int]) -> list:
    """Re-order a per-axis list from autounet's transposed order to nnU-Net's.

    Both tools read images as (z, y, x); each then transposes its axes by its own
    `transpose_forward`. `autounet_backward` undoes autounet's, `nnunet_forward` applies nnU-Net's.
    """
    original = [values[a] for a in autounet_backward]
    return [copy.deepcopy(original[a]) for a in nnunet_forward]


def match_nnunet_plans(nnunet_plans: dict[str, Any], autounet_plans: dict[str, Any],
                       configuration: str) -> tuple[dict[str, Any], list[str]]:
    """nnU-Net's plans with autounet's patch, batch and topology for `configuration`; plus notes.

    Copying the whole topology (not only the patch) keeps the network consistent with the patch
    (its total stride divides the patch) and makes both tools train the same network, so the
    benchmark compares the training loops rather than two planners' architecture choices.
    Only autounet's plain U-Net maps onto nnU-Net's PlainConvUNet; other architectures raise.
    """
    ours = autounet_plans["configurations"][configuration]
    net = ours["network"]
    if net["architecture"] != "plain_unet" or net.get("blocks"):
        raise ValueError(f"autounet plans, {configuration}: only a plain_unet without extra blocks has an "
                         f"nnU-Net counterpart, got {net['architecture']} {net.get('blocks') or ''}")
    plans = copy.deepcopy(nnunet_plans)
    theirs = plans["configurations"][configuration]
    backward = autounet_plans["transpose_backward"]
    forward = plans["transpose_forward"]
    old_patch, old_batch = theirs["patch_size"], theirs["batch_size"]
    kwargs = theirs["architecture"]["arch_kwargs"]
    old_topology = (kwargs["n_stages"], kwargs["features_per_stage"], kwargs["strides"])
    theirs["patch_size"] = _to_nnunet_axes(ours["patch_size"], backward, forward)
    theirs["batch_size"] = int(ours["batch_size"])
    kwargs.update({
        "n_stages": len(net["features_per_stage"]),
        "features_per_stage": list(net["features_per_stage"]),
        "kernel_sizes": [_to_nnunet_axes(k, backward, forward) for k in net["kernel_sizes"]],
        "strides": [_to_nnunet_axes(s, backward, forward) for s in net["strides"]],
        "n_conv_per_stage": list(net["n_conv_encoder"]),
        "n_conv_per_stage_decoder": list(net["n_conv_decoder"]),
    })
    notes = [f"nnU-Net planned patch {old_patch}, batch {old_batch}, {old_topology[0]} stages "
             f"{old_topology[1]} strides {old_topology[2]}",
             f"overwritten with autounet's patch {theirs['patch_size']}, batch {theirs['batch_size']}, "
             f"{kwargs['n_stages']} stages {kwargs['features_per_stage']} strides {kwargs['strides']} "
             f"(nnU-Net axis order, transpose_forward {forward})"]
    return plans, notes


def overwrite_nnunet_plans(preprocessed_root: Path, dataset_id: int, autounet_plans_path: Path,
                           configuration: str) -> list[str]:
    """Rewrite nnU-Net's nnUNetPlans.json in place (see `match_nnunet_plans`); returns the notes."""
    path = nnunet_dataset_folder(preprocessed_root, dataset_id) / f"{NNUNET_PLANS}.json"
    original = path.with_name(f"{NNUNET_PLANS}.original.json")
    if not original.is_file():
        shutil.copyfile(path, original)
    plans, notes = match_nnunet_plans(json.loads(original.read_text()), json.loads(autounet_plans_path.read_text()),
                                      configuration)
    path.write_text(json.dumps(plans, indent=2))  # nnU-Net's own scratch folder, rewritten on every run
    return notes


def prepare_nnunet(python: Path, task: Path, dataset_id: int, base: Path, workers: int, configuration: str,
                   autounet_plans_path: Path) -> tuple[dict[str, str], list[str]]:
    """Convert, plan and preprocess `task` for nnU-Net under `base` (reused when already done there),
    then match its plans to autounet's; returns the nnU-Net environment and the notes."""
    env = nnunet_env(base)
    raw = Path(env["nnUNet_raw"])
    if not list(raw.glob(f"Dataset{dataset_id:03d}_*")):
        env = convert_for_nnunet(python, task, dataset_id, base, workers)
    preprocessed = Path(env["nnUNet_preprocessed"])
    done = list(preprocessed.glob(f"Dataset{dataset_id:03d}_*/{NNUNET_PLANS}_{configuration}"))
    if not done:
        cmd = nnunet_plan_command(python, dataset_id, configuration, workers)
        log.info("nnU-Net: %s", " ".join(cmd))
        subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    notes = overwrite_nnunet_plans(preprocessed, dataset_id, autounet_plans_path, configuration)
    for note in notes:
        log.info("nnU-Net plans: %s", note)
    return env, notes


def write_bench_trainer(folder: Path) -> Path:
    """Write the short benchmark trainer into `folder`, the value for nnUNet_extTrainer."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{BENCH_TRAINER}.py").write_text(_TRAINER_SOURCE.format(name=BENCH_TRAINER))
    return folder


def nnunet_train_command(python: Path, dataset_id: int, configuration: str, device: str) -> list[str]:
    return [str(python.parent / "nnUNetv2_train"), str(dataset_id), configuration, "0", "-tr", BENCH_TRAINER,
            "-device", device]


def nnunet_train_env(env: dict[str, str], trainer_dir: Path, epochs: int, iters: int, val_iters: int,
                     workers: int) -> dict[str, str]:
    """Environment for a short nnU-Net training with `workers` augmentation processes."""
    out = dict(env)
    out.update({"nnUNet_extTrainer": str(trainer_dir), "SHORT_EPOCHS": str(epochs), "SHORT_ITERS": str(iters),
                "SHORT_VAL": str(val_iters), "nnUNet_n_proc_DA": str(workers)})
    return out


def nnunet_fold_folder(results_root: Path, dataset_id: int, configuration: str) -> Path:
    return (nnunet_dataset_folder(results_root, dataset_id) / f"{BENCH_TRAINER}__{NNUNET_PLANS}__{configuration}"
            / "fold_0")


def parse_nnunet_epoch_times(log_text: str) -> list[float]:
    """The `Epoch time: X s` figures of an nnU-Net training log, in order."""
    return [float(m) for m in _EPOCH_TIME.findall(log_text)]


def read_nnunet_epoch_times(fold_dir: Path) -> list[float]:
    logs = sorted(fold_dir.glob("training_log_*.txt"))
    if not logs:
        raise FileNotFoundError(f"{fold_dir}: no training_log_*.txt; nnU-Net training did not start")
    return parse_nnunet_epoch_times(logs[-1].read_text(errors="replace"))


def nnunet_predict_command(python: Path, dataset_id: int, configuration: str, input_dir: Path, output_dir: Path,
                           device: str, mirroring: bool, step_size: float = 0.5, processes: int = 1) -> list[str]:
    """`nnUNetv2_predict` for fold 0 of the benchmark trainer (final checkpoint)."""
    cmd = [str(python.parent / "nnUNetv2_predict"), "-i", str(input_dir), "-o", str(output_dir),
           "-d", str(dataset_id), "-c", configuration, "-f", "0", "-tr", BENCH_TRAINER, "-p", NNUNET_PLANS,
           "-chk", "checkpoint_final.pth", "-step_size", str(step_size), "-npp", str(processes),
           "-nps", str(processes), "-device", device]
    return cmd + ([] if mirroring else ["--disable_tta"])


# --------------------------------------------------------------------------- entry


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="subprocess entries of the side-by-side benchmarks")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("autounet-train", help="train one fold in this process (final validation optional)")
    train.add_argument("--workspace", type=Path, required=True)
    train.add_argument("--task", required=True)
    train.add_argument("--configuration", default="3d_fullres")
    train.add_argument("--epochs", type=int, required=True)
    train.add_argument("--iters", type=int, required=True)
    train.add_argument("--val-iters", type=int, default=1)
    train.add_argument("--workers", type=int, default=2)
    train.add_argument("--device", default="cpu")
    train.add_argument("--precision", default="auto")
    train.add_argument("--fold", default="0")
    train.add_argument("--seed", type=int, default=12345)
    train.add_argument("--validate", action="store_true", help="also predict and evaluate the validation cases")
    train.add_argument("--no-augment", action="store_true")
    train.add_argument("--spatial", default="affine")
    train.add_argument("--disable", nargs="*", default=[], help="augmentations to switch off")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    _train_autounet_inline(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
