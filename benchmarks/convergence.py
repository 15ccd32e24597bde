"""Learning curves side by side with nnU-Net v2: same task, same plans, same split, same budget.

For an MSD task folder (default: ../shared/data/msd-hippocampus-subset), fold `--fold`:

1. autounet plans and preprocesses the task; its plans.json decides patch, batch and network
   (`--batch-size` overrides the batch of both tools), and its splits.json the fold's cases;
2. autounet trains the fold for `--epochs` x `--iters` (+ `--val-iters` validation patches per
   epoch), then predicts and evaluates the fold's validation cases (mirroring on, as nnU-Net);
3. with `--nnunet-python PY`: the task converted for nnU-Net, planned, its plans overwritten with
   autounet's patch, batch and topology (`_nnunet.match_nnunet_plans`), autounet's split written
   as its splits_final.json, and `nnUNetv2_train` with the short-budget trainer of
   ../shared/bench (`nnUNetTrainerShort`, budget from SHORT_EPOCHS / SHORT_ITERS / SHORT_VAL), which
   validates the fold on the same cases at the end.

Printed: per epoch the training loss and the mean foreground pseudo Dice of both tools (nnU-Net
writes its Dice term as -Dice and autounet as 1 - Dice; its loss is shown +1 so that both read
alike), then the fold's real validation Dice of both and whether the goals hold (validation Dice
at least nnU-Net's - 0.01; pseudo Dice not behind nnU-Net's by more than `--pseudo-tolerance`
from epoch 2 on).

Ablations run autounet alone with one option switched: `--precision fp32`, `--no-augment`,
`--spatial batchgenerators`, `--disable noise blur ...` (names in
autounet.training.augmentation_switches). `--reuse-nnunet` keeps an nnU-Net run already in
`--workdir` with the same budget instead of training it again.

Examples:
    python benchmarks/convergence.py --epochs 10 --iters 20 --workdir /tmp/conv \\
        --nnunet-python /root/nnunet-venv/bin/python
    python benchmarks/convergence.py --epochs 10 --iters 20 --workdir /tmp/conv --reuse-nnunet \\
        --nnunet-python /root/nnunet-venv/bin/python --disable gamma gamma_inverted
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _nnunet as nn_bench  # noqa: E402

from autounet.networks.precision import PRECISIONS  # noqa: E402
from autounet.training.augmentation_switches import AUGMENTATION_NAMES, SPATIAL_IMPLEMENTATIONS  # noqa: E402
from autounet.training.splits import SPLITS_FILE, get_fold, load_or_create_splits  # noqa: E402

log = logging.getLogger("benchmarks.convergence")

REPO = Path(__file__).resolve().parents[1]
DEFAULT_TASK = REPO.parent / "shared" / "data" / "msd-hippocampus-subset"
SHARED_TRAINER_DIR = REPO.parent / "shared" / "bench"
SHARED_TRAINER = "nnUNetTrainerShort"
NNUNET_PLANS = "nnUNetPlans"
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|nan"


@dataclass
class Curve:
    """One tool's learning curve and its fold's validation."""

    train_loss: list[float] = field(default_factory=list)
    pseudo_dice: list[list[float]] = field(default_factory=list)
    validation_dice: dict[str, float] = field(default_factory=dict)
    wall_s: float = float("nan")

    @property
    def mean_pseudo(self) -> list[float]:
        return [_nanmean(p) for p in self.pseudo_dice]

    @property
    def validation_mean(self) -> float:
        return _nanmean(list(self.validation_dice.values()))


def _nanmean(values: Sequence[float]) -> float:
    finite = [v for v in values if v == v]
    return sum(finite) / len(finite) if finite else float("nan")


# --------------------------------------------------------------------------- parsing (pure)


def parse_nnunet_log(text: str) -> Curve:
    """Training loss and pseudo Dice per epoch from an nnU-Net training log (numpy reprs tolerated)."""
    curve = Curve()
    for line in text.splitlines():
        if ": train_loss " in line:
            curve.train_loss.append(float(line.rsplit("train_loss", 1)[1]))
        elif ": Pseudo dice [" in line:
            inside = line.split("Pseudo dice [", 1)[1].rsplit("]", 1)[0]
            inside = re.sub(r"np\.float\d+\(([^)]*)\)", r"\1", inside)
            curve.pseudo_dice.append([float(v) for v in re.findall(_NUMBER, inside)])
    return curve


def read_nnunet_summary(path: Path) -> dict[str, float]:
    """Per-label Dice from an nnU-Net summary.json ({'mean': {'1': {'Dice': ...}}})."""
    data = json.loads(path.read_text())
    return {str(k): float(v["Dice"]) for k, v in data["mean"].items()}


def read_autounet_curve(fold_dir: Path) -> Curve:
    """Training loss, pseudo Dice per epoch (metrics.jsonl) and validation Dice (validation/summary.json)."""
    curve = Curve()
    rows = [json.loads(line) for line in (fold_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    for row in sorted(rows, key=lambda r: r["epoch"]):
        curve.train_loss.append(float(row["train_loss"]))
        curve.pseudo_dice.append([float(v) for v in row["pseudo_dice"].values()])
    summary = fold_dir / "validation" / "summary.json"
    if summary.is_file():
        data = json.loads(summary.read_text())
        curve.validation_dice = {str(k): float(v["Dice"]) for k, v in data["mean"].items()}
    return curve


def behind_epochs(ours: Sequence[float], theirs: Sequence[float], tolerance: float, first_epoch: int = 2
                  ) -> list[int]:
    """1-based epochs (from `first_epoch` on) where our pseudo Dice trails theirs by more than `tolerance`."""
    return [e + 1 for e, (a, b) in enumerate(zip(ours, theirs)) if e + 1 >= first_epoch and a < b - tolerance]


def format_report(header: str, ours: Curve, theirs: Curve | None, tolerance: float) -> str:
    """The per-epoch table and the verdict lines."""
    lines = [header, ""]
    if theirs is None:
        lines.append(f"{'epoch':>5} {'loss':>8} {'pseudo Dice (per class)':>30}")
        for e, (loss, dice) in enumerate(zip(ours.train_loss, ours.pseudo_dice)):
            per_class = " ".join(f"{d:.3f}" for d in dice)
            lines.append(f"{e + 1:>5} {loss:>8.4f} {_nanmean(dice):>8.4f} ({per_class})")
    else:
        lines.append(f"{'epoch':>5} {'loss a':>8} {'loss n+1':>8} {'pseudo a':>9} {'pseudo n':>9}   per class a | n")
        n = max(len(ours.train_loss), len(theirs.train_loss))
        for e in range(n):
            la = ours.train_loss[e] if e < len(ours.train_loss) else float("nan")
            ln = theirs.train_loss[e] + 1.0 if e < len(theirs.train_loss) else float("nan")
            da = ours.pseudo_dice[e] if e < len(ours.pseudo_dice) else []
            dn = theirs.pseudo_dice[e] if e < len(theirs.pseudo_dice) else []
            lines.append(f"{e + 1:>5} {la:>8.4f} {ln:>8.4f} {_nanmean(da):>9.4f} {_nanmean(dn):>9.4f}   "
                         f"{' '.join(f'{d:.3f}' for d in da)} | {' '.join(f'{d:.3f}' for d in dn)}")
    lines.append("")
    per_a = ", ".join(f"{k}: {v:.4f}" for k, v in ours.validation_dice.items())
    lines.append(f"validation Dice (fold, whole cases) autounet {ours.validation_mean:.4f} ({per_a}); "
                 f"wall {ours.wall_s:.0f} s")
    if theirs is not None:
        per_n = ", ".join(f"{k}: {v:.4f}" for k, v in theirs.validation_dice.items())
        lines.append(f"validation Dice (fold, whole cases) nnU-Net  {theirs.validation_mean:.4f} ({per_n}); "
                     f"wall {theirs.wall_s:.0f} s")
        gap = ours.validation_mean - theirs.validation_mean
        lines.append(f"difference autounet - nnU-Net: {gap:+.4f}; goal (>= -0.01): {'met' if gap >= -0.01 else 'NOT met'}")
        behind = behind_epochs(ours.mean_pseudo, theirs.mean_pseudo, tolerance)
        lines.append(f"pseudo Dice behind nnU-Net's by more than {tolerance} from epoch 2 on: "
                     f"{behind if behind else 'never'} (goal: never)")
    return "\n".join(lines)


# --------------------------------------------------------------------------- runs


def copy_task(source: Path, dest: Path) -> Path:
    """A private copy of an MSD task (nnU-Net's converter wants an imagesTs folder, possibly empty)."""
    if not (source / "dataset.json").is_file():
        raise SystemExit(f"error: {source}: no dataset.json; give an MSD task folder with --task")
    if not dest.is_dir():
        tmp = dest.with_name(dest.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(source, tmp)
        (tmp / "imagesTs").mkdir(exist_ok=True)
        for path in tmp.rglob("*"):
            path.chmod(path.stat().st_mode | 0o200)
        tmp.rename(dest)
    return dest


def set_batch_size(plans_path: Path, configuration: str, batch_size: int) -> None:
    """Overwrite one configuration's batch size in autounet's plans.json (copied by the nnU-Net side)."""
    plans = json.loads(plans_path.read_text())
    plans["configurations"][configuration]["batch_size"] = int(batch_size)
    plans_path.write_text(json.dumps(plans, indent=2))


def autounet_fold_split(workspace: Path, task: str, configuration: str, fold: int) -> tuple[list[str], list[str]]:
    """The fold's (train, val) case ids, creating splits.json as training would."""
    preprocessed = workspace / "preprocessed" / task
    plans = json.loads((preprocessed / "plans.json").read_text())
    folder = preprocessed / plans["configurations"][configuration]["data_identifier"]
    case_ids = sorted(p.stem for p in folder.glob("*.json"))
    splits = load_or_create_splits(preprocessed / SPLITS_FILE, case_ids)
    return get_fold(splits, fold, case_ids)


def run_autounet(args: argparse.Namespace, workspace: Path, task: str, work: Path) -> Curve:
    shutil.rmtree(workspace / "results", ignore_errors=True)
    cmd = nn_bench.autounet_train_command(workspace, task, args.configuration, args.epochs, args.iters,
                                          args.val_iters, args.workers, args.device, precision=args.precision)
    cmd += ["--fold", str(args.fold), "--validate", "--seed", str(args.seed), "--spatial", args.spatial]
    if args.no_augment:
        cmd.append("--no-augment")
    if args.disable:
        cmd += ["--disable", *args.disable]
    measured = nn_bench.measure(cmd, dict(os.environ), work, work / "autounet_train.log", 1.0)
    fold_dir = next((workspace / "results" / task).glob(f"*/fold_{args.fold}"))
    curve = read_autounet_curve(fold_dir)
    curve.wall_s = measured.wall_s
    return curve


def run_nnunet(args: argparse.Namespace, task_dir: Path, plans_path: Path, split: tuple[list[str], list[str]],
               work: Path) -> Curve:
    base = work / "nnunet"
    env, notes = nn_bench.prepare_nnunet(args.nnunet_python, task_dir, args.nnunet_dataset_id, base, 2,
                                         args.configuration, plans_path)
    del notes  # prepare_nnunet logs them
    preprocessed = nn_bench.nnunet_dataset_folder(Path(env["nnUNet_preprocessed"]), args.nnunet_dataset_id)
    folds = [{"train": [], "val": []} for _ in range(args.fold)] + [{"train": split[0], "val": split[1]}]
    (preprocessed / "splits_final.json").write_text(json.dumps(folds))
    results = Path(env["nnUNet_results"])
    run_name = f"{SHARED_TRAINER}__{NNUNET_PLANS}__{args.configuration}"
    budget = {"epochs": args.epochs, "iters": args.iters, "val_iters": args.val_iters,
              "batch_size": json.loads(plans_path.read_text())["configurations"][args.configuration]["batch_size"]}
    budget_file = work / "nnunet_budget.json"
    fold_dir = _nnunet_fold_dir(results, args.nnunet_dataset_id, run_name, args.fold)
    previous = json.loads(budget_file.read_text()) if budget_file.is_file() else {}
    reuse = args.reuse_nnunet and fold_dir is not None and (fold_dir / "validation" / "summary.json").is_file() \
        and {k: previous.get(k) for k in budget} == budget
    log_path = work / "nnunet_train.log"
    if not reuse:
        if fold_dir is not None:
            shutil.rmtree(fold_dir, ignore_errors=True)
        trainer_dir = SHARED_TRAINER_DIR if (SHARED_TRAINER_DIR / f"{SHARED_TRAINER}.py").is_file() else None
        if trainer_dir is None:
            raise SystemExit(f"error: {SHARED_TRAINER_DIR}/{SHARED_TRAINER}.py is missing; it holds nnU-Net's "
                             f"short-budget trainer")
        train_env = nn_bench.nnunet_train_env(env, trainer_dir, args.epochs, args.iters, args.val_iters, args.workers)
        cmd = [str(args.nnunet_python.parent / "nnUNetv2_train"), str(args.nnunet_dataset_id), args.configuration,
               str(args.fold), "-tr", SHARED_TRAINER, "-device", args.device]
        measured = nn_bench.measure(cmd, train_env, work, log_path, 1.0)
        budget_file.write_text(json.dumps({**budget, "wall_s": measured.wall_s}))
        fold_dir = _nnunet_fold_dir(results, args.nnunet_dataset_id, run_name, args.fold)
    if fold_dir is None:
        raise SystemExit(f"error: {results}: nnU-Net wrote no results; see {log_path}")
    logs = sorted(fold_dir.glob("training_log_*.txt"))
    curve = parse_nnunet_log(logs[-1].read_text(errors="replace"))
    curve.validation_dice = read_nnunet_summary(fold_dir / "validation" / "summary.json")
    curve.wall_s = float(json.loads(budget_file.read_text()).get("wall_s", float("nan")))
    return curve


def _nnunet_fold_dir(results: Path, dataset_id: int, run_name: str, fold: int) -> Path | None:
    found = sorted(results.glob(f"Dataset{dataset_id:03d}_*"))
    return found[0] / run_name / f"fold_{fold}" if found else None


# --------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", type=Path, default=DEFAULT_TASK, help="MSD task folder (default: the shared subset)")
    p.add_argument("--configuration", default="3d_fullres")
    p.add_argument("--fold", type=int, default=0)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--iters", type=int, default=20, help="training iterations per epoch")
    p.add_argument("--val-iters", type=int, default=50, help="validation patches per epoch (pseudo Dice)")
    p.add_argument("--batch-size", type=int, default=None, help="override the planned batch size, both tools")
    p.add_argument("--workers", type=int, default=2, help="augmentation processes, both tools")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--seed", type=int, default=12345, help="autounet's training seed")
    p.add_argument("--precision", choices=PRECISIONS, default="auto", help="autounet's --precision")
    p.add_argument("--no-augment", action="store_true", help="autounet without training augmentation")
    p.add_argument("--spatial", choices=SPATIAL_IMPLEMENTATIONS, default="affine",
                   help="autounet's spatial augmentation implementation")
    p.add_argument("--disable", nargs="+", choices=AUGMENTATION_NAMES, default=[],
                   help="autounet augmentations to switch off")
    p.add_argument("--gpu-memory", type=float, default=8.0, help="GPU memory target of the plan in GB")
    p.add_argument("--pseudo-tolerance", type=float, default=0.05,
                   help="how far autounet's pseudo Dice may trail nnU-Net's before it counts as behind")
    p.add_argument("--nnunet-python", type=Path, default=None,
                   help="python of a venv with nnunetv2 2.8.1; its bin/ must hold the nnUNetv2_* scripts")
    p.add_argument("--nnunet-dataset-id", type=int, default=904)
    p.add_argument("--reuse-nnunet", action="store_true", help="reuse an nnU-Net run of the same budget in --workdir")
    p.add_argument("--workdir", type=Path, default=None, help="working folder (default: a temp dir, removed)")
    p.add_argument("--json", type=Path, default=None, help="also write both curves as JSON here")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    with nn_bench.bench_workdir(args.workdir, "autounet_convergence_") as work:
        return _run(args, work)


def _run(args: argparse.Namespace, work: Path) -> int:
    source = json.loads((args.task / "dataset.json").read_text())
    name = re.sub(r"[^A-Za-z0-9]", "", str(source.get("name", "Bench"))) or "Bench"
    task_dir = copy_task(args.task, work / f"Task{args.nnunet_dataset_id % 100:02d}_{name}")
    workspace = work / "ws_autounet"
    plans_path = nn_bench.autounet_plan(task_dir, workspace, 2, args.configuration, args.gpu_memory)
    if args.batch_size:
        set_batch_size(plans_path, args.configuration, args.batch_size)
    plans = json.loads(plans_path.read_text())["configurations"][args.configuration]
    split = autounet_fold_split(workspace, task_dir.name, args.configuration, args.fold)
    switched = [f"precision {args.precision}"] + (["no augmentation"] if args.no_augment else []) + \
        ([f"spatial {args.spatial}"] if args.spatial != "affine" else []) + \
        ([f"disabled {', '.join(args.disable)}"] if args.disable else [])
    header = (f"convergence, {task_dir.name} {args.configuration} fold {args.fold} ({len(split[0])} training, "
              f"{len(split[1])} validation cases): patch {plans['patch_size']} x batch {plans['batch_size']}, "
              f"{args.epochs} epochs x {args.iters} iterations + {args.val_iters} validation patches, "
              f"{args.workers} augmentation workers, device {args.device}; autounet {'; '.join(switched)}")
    log.info(header)
    theirs = None
    if args.nnunet_python:
        header += f"; nnunetv2 {nn_bench.nnunet_version(args.nnunet_python)} (its default precision)"
        theirs = run_nnunet(args, task_dir, plans_path, split, work)
    ours = run_autounet(args, workspace, task_dir.name, work)
    print(format_report(header, ours, theirs, args.pseudo_tolerance))
    if args.json:
        args.json.write_text(json.dumps({"header": header, "autounet": ours.__dict__,
                                         "nnunet": theirs.__dict__ if theirs else None}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
