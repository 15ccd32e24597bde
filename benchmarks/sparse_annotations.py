"""Sparse vs dense annotations on the same images: what the ignore label costs in Dice.

For an MSD task (default: ../shared/data/msd-hippocampus-subset) the cases are split once (seeded)
into training and held-out cases. Two tasks are written from them:

- dense: the training labels as they are;
- sparse: only every `--every`-th slice along the first array axis of each training label kept,
  every other voxel set to a new `ignore` label (one above the highest label value);

both with the held-out cases and their full, dense labels in imagesTs/labelsTs. Each is planned,
trained on all its training cases (`fold all`) for the same `--epochs` x `--iters`, used to
predict the held-out cases, and evaluated against the dense labels. Printed: both Dice per label
and mean, their difference, and the goal (sparse within `--tolerance` of dense).

    python benchmarks/sparse_annotations.py --epochs 10 --iters 20 --workdir /tmp/sparse
    python benchmarks/sparse_annotations.py --workdir /tmp/sparse --label-stats   # after a run
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from autounet.evaluation.evaluate import evaluate_folder
from autounet.io.atomic import write_json
from autounet.io.images import read_label, write_label
from autounet.task.dataset import load_task
from autounet.task.demo_data import sparsify

log = logging.getLogger("benchmarks.sparse_annotations")

REPO = Path(__file__).resolve().parents[1]
DEFAULT_TASK = REPO.parent / "shared" / "data" / "msd-hippocampus-subset"


def split_cases(case_ids: list[str], held_out_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """(training, held-out) ids: a seeded permutation, at least one case on each side."""
    order = np.random.default_rng(seed).permutation(len(case_ids))
    n_out = min(max(1, round(held_out_fraction * len(case_ids))), len(case_ids) - 1)
    held = sorted(case_ids[i] for i in order[:n_out])
    return sorted(c for c in case_ids if c not in held), held


def write_variant(source: Path, out: Path, train_ids: list[str], held_ids: list[str], every: int) -> tuple[int, float]:
    """An MSD task at `out`: the training cases (labels sparsified when `every` > 1) and the held-out
    cases with dense labelsTs. Returns the ignore value (0 when dense) and the annotated fraction."""
    task = load_task(source)
    by_id = {c.case_id: c for c in task.training}
    ignore = max(task.label_values) + 1 if every > 1 else 0
    annotated, total = 0, 0
    training = []
    for split, ids in (("Tr", train_ids), ("Ts", held_ids)):
        for case_id in ids:
            case = by_id[case_id]
            image_dst = out / f"images{split}" / case.images[0].name
            image_dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(case.images[0], image_dst)
            seg, geometry = read_label(case.label)
            if split == "Tr" and every > 1:
                seg = sparsify(seg, every, ignore)
                annotated += int((seg != ignore).sum())
            total += int(seg.size) if split == "Tr" else 0
            write_label(seg, geometry, out / f"labels{split}" / case.images[0].name)
            if split == "Tr":
                training.append({"image": f"./imagesTr/{image_dst.name}", "label": f"./labelsTr/{image_dst.name}"})
    labels = {str(v): k for k, v in task.labels.items()}
    if ignore:
        labels[str(ignore)] = "ignore"
    write_json(out / "dataset.json", {"name": out.name.split("_", 1)[-1], "modality": dict(task.channel_names),
                                      "labels": labels, "numTraining": len(training), "training": training,
                                      "test": [f"./imagesTs/{by_id[c].images[0].name}" for c in held_ids]})
    return ignore, (annotated / total if ignore and total else 1.0)


def run_variant(task_dir: Path, workspace: Path, args: argparse.Namespace) -> dict[str, float]:
    """Plan, train fold `all`, predict the held-out cases, evaluate against the dense labels."""
    cli = [sys.executable, "-m", "autounet", "--workspace", str(workspace)]
    start = time.monotonic()
    subprocess.run([*cli, "plan_and_preprocess", str(task_dir), "-c", args.configuration, "--no-progress",
                    "--gpu-memory", str(args.gpu_memory)], check=True, stdout=subprocess.DEVNULL)
    subprocess.run([*cli, "train", args.configuration, "fold", "all", "-t", task_dir.name, "--epochs",
                    str(args.epochs), "--iters-per-epoch", str(args.iters), "--val-iters", "0", "--seed",
                    str(args.seed), "--skip-validation"], check=True)
    predictions = task_dir.parent / f"{task_dir.name}_predictions"
    subprocess.run([*cli, "predict", "-t", task_dir.name, "-c", args.configuration, "-f", "all", "-i",
                    str(task_dir / "imagesTs"), "-o", str(predictions), "--no-postprocessing"], check=True)
    plans = json.loads((workspace / "preprocessed" / task_dir.name / "plans.json").read_text())
    labels = sorted(v for v in plans["labels"].values() if v != 0)
    summary = evaluate_folder(task_dir / "labelsTs", predictions, labels)
    out = {str(k): float(v["Dice"]) for k, v in summary["mean"].items()}
    out["mean"] = float(summary["foreground_mean"]["Dice"])
    out["seconds"] = round(time.monotonic() - start, 1)
    return out


def batch_label_fractions(preprocessed: Path, configuration: str, batches: int = 30) -> dict[str, float]:
    """What training batches hold: the annotated fraction of the target and the foreground among annotated
    voxels, next to the same in the preprocessed cases (padding of patches larger than the images is
    labelled background, which dilutes sparse labels more than dense ones)."""
    from autounet.planners.plans import load_plans
    from autounet.preprocessing.case_store import CaseStore
    from autounet.training.data_loader import build_dataloaders
    from autounet.training.loss import deep_supervision_scales

    plans = load_plans(preprocessed / "plans.json")
    cfg = plans.configuration(configuration)
    folder = preprocessed / cfg.data_identifier
    store = CaseStore(folder)
    ids = store.case_ids()
    ignore = plans.ignore_index
    segs = [store.load(c, mmap=False)[1] for c in ids]
    known = [(s >= 0) & (s != ignore) for s in segs]
    out = {"annotated_cases": float(np.mean([k.sum() / (s >= 0).sum() for k, s in zip(known, segs)])),
           "foreground_cases": float(np.mean([(s[k] > 0).mean() for k, s in zip(known, segs)]))}
    train, val = build_dataloaders(folder, ids, ids[:1], plans, configuration,
                                   deep_supervision_scales(cfg.network.strides), 0, 1)
    fractions = []
    with train, val:
        iterator = iter(train)
        for _ in range(batches):
            target = next(iterator)["target"][0].numpy()
            annotated = target != ignore if ignore is not None else np.ones(target.shape, dtype=bool)
            fractions.append((annotated.mean(), (target[annotated] > 0).mean()))
    out["annotated_batches"] = float(np.mean([a for a, _ in fractions]))
    out["foreground_batches"] = float(np.mean([f for _, f in fractions]))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", type=Path, default=DEFAULT_TASK, help="MSD task folder with labelled training cases")
    p.add_argument("--every", type=int, default=5, help="keep one training slice in this many")
    p.add_argument("--held-out", type=float, default=0.2, help="fraction of the cases held out with dense labels")
    p.add_argument("--configuration", default="3d_fullres")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--gpu-memory", type=float, default=8.0)
    p.add_argument("--seed", type=int, default=12345)
    p.add_argument("--tolerance", type=float, default=0.05, help="goal: sparse Dice at least dense minus this")
    p.add_argument("--workdir", type=Path, required=True)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--variants", nargs="+", choices=("dense", "sparse"), default=["dense", "sparse"],
                   help="train only these variants (one alone prints its Dice only)")
    p.add_argument("--label-stats", action="store_true",
                   help="only print what the training batches of the two tasks already in --workdir hold")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if args.every < 2:
        p.error("--every must be at least 2")
    if args.label_stats:
        for name, number in (("dense", 1), ("sparse", 2)):
            pre = args.workdir / f"ws_{name}" / "preprocessed" / f"Task6{number}_{name.capitalize()}"
            stats = batch_label_fractions(pre, args.configuration)
            print(f"{name}: annotated {stats['annotated_cases']:.1%} of the case voxels, {stats['annotated_batches']:.1%} "
                  f"of the batch voxels; foreground among annotated {stats['foreground_cases']:.1%} in the cases, "
                  f"{stats['foreground_batches']:.1%} in training batches")
        return 0
    source = load_task(args.task)
    train_ids, held_ids = split_cases(sorted(c.case_id for c in source.training), args.held_out, args.seed)
    results, fractions = {}, {}
    for name, every in (("dense", 1), ("sparse", args.every)):
        if name not in args.variants:
            continue
        task_dir = args.workdir / f"Task6{1 if name == 'dense' else 2}_{name.capitalize()}"
        shutil.rmtree(task_dir, ignore_errors=True)
        _, fractions[name] = write_variant(args.task, task_dir, train_ids, held_ids, every)
        log.info("%s: %d training cases (%.0f%% of their voxels annotated), %d held out", name, len(train_ids),
                 100 * fractions[name], len(held_ids))
        results[name] = run_variant(task_dir, args.workdir / f"ws_{name}", args)
    if len(results) == 1:
        (name, result), = results.items()
        print(f"{name} only, {args.task.name}: {len(train_ids)} training / {len(held_ids)} held-out cases, "
              f"{args.epochs} epochs x {args.iters} iterations: " + ", ".join(f"Dice {k} {v:.4f}" for k, v in
                                                                            result.items() if k != "seconds"))
        return 0
    dense, sparse = results["dense"], results["sparse"]
    print(f"sparse vs dense annotations, {args.task.name}: {len(train_ids)} training / {len(held_ids)} held-out "
          f"cases, {args.configuration} fold all, {args.epochs} epochs x {args.iters} iterations, one slice in "
          f"{args.every} ({100 * fractions['sparse']:.0f}% of training voxels annotated)")
    for key in [k for k in dense if k not in ("mean", "seconds")] + ["mean"]:
        print(f"  Dice {key:>5}: dense {dense[key]:.4f}  sparse {sparse[key]:.4f}  difference "
              f"{sparse[key] - dense[key]:+.4f}")
    print(f"  wall time: dense {dense['seconds']:.0f} s, sparse {sparse['seconds']:.0f} s")
    met = sparse["mean"] >= dense["mean"] - args.tolerance
    print(f"  goal (sparse within {args.tolerance} of dense): {'met' if met else 'NOT met'}")
    if args.json:
        write_json(args.json, {"dense": dense, "sparse": sparse, "held_out": held_ids, "every": args.every})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
