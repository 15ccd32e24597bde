"""Training throughput (iterations/s, voxels/s) and data-loading throughput, side by side with nnU-Net v2.

Generates a seeded demo-like MSD task (`--cases N --shape Z Y X`, see plan_and_preprocess.py),
plans it with autounet (`-c 3d_fullres`), then:

1. data loading: augmented training batches per second of autounet's loader for each worker
   count in `--loader-workers` (benchmarks/data_loading.py's `measure`, the full pipeline:
   sampling, augmentation, deep-supervision targets, transfer);
2. training: fold 0 for `--epochs` x `--iters` (plus `--val-iters` validation patches per epoch)
   with `--workers` augmentation processes and no final full-case validation; the first epoch
   is warm-up, the others' `epoch_time` (metrics.jsonl) gives iterations/s = iters / epoch time;
3. with `--nnunet-python PY`: the same task converted for nnU-Net, `nnUNetv2_plan_and_preprocess
   -c 3d_fullres`, its plans overwritten with autounet's patch, batch and network topology
   (benchmarks/_nnunet.py `match_nnunet_plans`), and `nnUNetv2_train ID 3d_fullres 0` with a
   short trainer of the same budget and `nnUNet_n_proc_DA` = `--workers`; its log's
   `Epoch time` lines give the same figure. Runs alternate between the tools (`--repeats`), and
   medians and the ratio autounet / nnU-Net are printed.

Epoch times on both sides include the validation forward passes (`--val-iters`, equal for both).

Examples:
    python benchmarks/train_throughput.py --cases 6 --shape 40 64 64 --epochs 3 --iters 4
    python benchmarks/train_throughput.py --cases 6 --shape 40 64 64 --epochs 3 --iters 4 --repeats 2 \\
        --nnunet-python /root/nnunet-venv/bin/python --profile
    python benchmarks/train_throughput.py --shape 128 128 128 --epochs 3 --iters 50 --device cuda \\
        --nnunet-python ~/nnunet-venv/bin/python
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import pstats
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _nnunet as nn_bench  # noqa: E402
from data_loading import measure as loader_batches_per_s  # noqa: E402
from data_loading import spec_from_plans  # noqa: E402
from plan_and_preprocess import _StringSink  # noqa: E402

from autounet.networks.precision import PRECISIONS  # noqa: E402
from autounet.planners.plans import load_plans  # noqa: E402

log = logging.getLogger("benchmarks.train_throughput")

CONFIGURATION = "3d_fullres"


@dataclass
class TrainRun:
    """One training run of one tool."""

    wall_s: float
    epoch_times: list[float]

    @property
    def steady_epoch_s(self) -> float:
        """Median epoch time without the first (warm-up) epoch."""
        return statistics.median(self.epoch_times[1:] or self.epoch_times)


@dataclass
class ToolSummary:
    iters_per_s: float
    voxels_per_s: float
    steady_epoch_s: float
    runs: list[TrainRun] = field(default_factory=list)


def summarize(runs: list[TrainRun], iters: int, voxels_per_batch: int) -> ToolSummary:
    """Medians over runs of the steady-state epoch time, as iterations and voxels per second."""
    epoch_s = statistics.median(r.steady_epoch_s for r in runs)
    rate = iters / epoch_s
    return ToolSummary(rate, rate * voxels_per_batch, epoch_s, runs)


def format_report(header: str, results: dict[str, ToolSummary]) -> str:
    lines = [header, "", f"{'tool':<10} {'epoch s':>9} {'it/s':>8} {'Mvoxel/s':>9}   runs (steady epoch s; wall s)"]
    for name, s in results.items():
        runs = ", ".join(f"{r.steady_epoch_s:.1f}; {r.wall_s:.0f}" for r in s.runs)
        lines.append(f"{name:<10} {s.steady_epoch_s:>9.2f} {s.iters_per_s:>8.3f} {s.voxels_per_s / 1e6:>9.3f}   {runs}")
    if "autounet" in results and "nnU-Net" in results:
        ratio = results["autounet"].iters_per_s / results["nnU-Net"].iters_per_s
        lines.append(f"{'ratio a/n':<10} {'':>9} {ratio:>8.2f}")
        lines.append(f"goal (autounet it/s >= nnU-Net's): {'met' if ratio >= 1.0 else 'NOT met'}")
    return "\n".join(lines)


def _load() -> str:
    return " ".join(f"{v:.1f}" for v in os.getloadavg())


# --------------------------------------------------------------------------- runs


def run_autounet(args: argparse.Namespace, workspace: Path, task: str, work: Path, index: int) -> TrainRun:
    shutil.rmtree(workspace / "results", ignore_errors=True)
    cmd = nn_bench.autounet_train_command(workspace, task, CONFIGURATION, args.epochs, args.iters, args.val_iters,
                                          args.workers, args.device, precision=args.precision)
    measured = nn_bench.measure(cmd, dict(os.environ), work, work / f"autounet_train_{index}.log", 0.2)
    fold_dirs = sorted((workspace / "results" / task).glob("*/fold_0"))
    run = TrainRun(measured.wall_s, nn_bench.read_autounet_epoch_times(fold_dirs[0]))
    log.info("autounet run %d: epoch times %s s, wall %.0f s (load %s)", index,
             [round(t, 2) for t in run.epoch_times], run.wall_s, _load())
    return run


def run_nnunet(args: argparse.Namespace, env: dict[str, str], trainer_dir: Path, work: Path, index: int) -> TrainRun:
    results = Path(env["nnUNet_results"])
    for stale in results.glob(f"Dataset{args.nnunet_dataset_id:03d}_*"):
        shutil.rmtree(stale)
    train_env = nn_bench.nnunet_train_env(env, trainer_dir, args.epochs, args.iters, args.val_iters, args.workers)
    cmd = nn_bench.nnunet_train_command(args.nnunet_python, args.nnunet_dataset_id, CONFIGURATION, args.device)
    measured = nn_bench.measure(cmd, train_env, work, work / f"nnunet_train_{index}.log", 0.2)
    fold = nn_bench.nnunet_fold_folder(results, args.nnunet_dataset_id, CONFIGURATION)
    run = TrainRun(measured.wall_s, nn_bench.read_nnunet_epoch_times(fold))
    log.info("nnU-Net run %d: epoch times %s s, wall %.0f s (load %s)", index, run.epoch_times, run.wall_s, _load())
    return run


def profile_autounet(args: argparse.Namespace, workspace: Path, task: str, work: Path, top: int) -> str:
    """cProfile of the main process of one autounet training run (loader workers as configured)."""
    shutil.rmtree(workspace / "results", ignore_errors=True)
    stats_path = work / "autounet_train.prof"
    cmd = nn_bench.autounet_train_command(workspace, task, CONFIGURATION, args.epochs, args.iters, args.val_iters,
                                          args.workers, args.device, profile_to=stats_path,
                                          precision=args.precision)
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    parts = []
    for key in ("cumulative", "tottime"):
        sink = _StringSink()
        pstats.Stats(str(stats_path), stream=sink).sort_stats(key).print_stats(top)  # type: ignore[arg-type]
        parts.append(f"--- cProfile of an autounet training run (main process), top {top} by {key} ---\n"
                     + sink.text())
    return "\n".join(parts)


def loader_rates(plans_path: Path, workers: Sequence[int], batches: int, seed: int) -> dict[int, float]:
    """Augmented batches/s of autounet's training loader per worker count."""
    folder = plans_path.parent / load_plans(plans_path).configuration(CONFIGURATION).data_identifier
    spec = spec_from_plans(folder, plans_path, CONFIGURATION)
    rates = {}
    for w in workers:
        rates[w] = loader_batches_per_s(spec, w, batches, warmup=2, seed=seed)
        log.info("data loading, %d workers: %.2f batches/s (load %s)", w, rates[w], _load())
    return rates


# --------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", type=int, default=6, help="training cases to generate (default 6; at least 5)")
    p.add_argument("--shape", type=int, nargs=3, default=[40, 64, 64], metavar=("Z", "Y", "X"),
                   help="shape of every case (default 40 64 64)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=3, help="epochs per run, the first is warm-up (default 3)")
    p.add_argument("--iters", type=int, default=4, help="training iterations per epoch (default 4)")
    p.add_argument("--val-iters", type=int, default=1, help="validation patches per epoch, both tools (default 1)")
    p.add_argument("--workers", type=int, default=2, help="augmentation processes during training, both tools")
    p.add_argument("--loader-workers", default="0,1,2", help="worker counts for the data-loading figures")
    p.add_argument("--loader-batches", type=int, default=10, help="timed batches per data-loading row")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="autounet's --precision (auto: bf16 on CPUs with native bfloat16, fp16 on CUDA); "
                        "nnU-Net runs its own default (fp32 on CPU, fp16 autocast on CUDA)")
    p.add_argument("--repeats", type=int, default=1, help="training runs per tool, alternating; medians reported")
    p.add_argument("--gpu-memory", type=float, default=8.0, help="GPU memory target of the plan in GB")
    p.add_argument("--nnunet-python", type=Path, default=None,
                   help="python of a venv with nnunetv2; its bin/ must hold the nnUNetv2_* scripts")
    p.add_argument("--nnunet-dataset-id", type=int, default=978, help="dataset id used on the nnU-Net side")
    p.add_argument("--skip-loader", action="store_true", help="skip the data-loading figures")
    p.add_argument("--profile", action="store_true", help="also print a cProfile of an autounet training run")
    p.add_argument("--workdir", type=Path, default=None,
                   help="where to put everything (default: a temp dir, removed); reused when it exists")
    p.add_argument("--json", type=Path, default=None, help="also write the figures as JSON here")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.epochs < 2:
        build_parser().error("--epochs must be at least 2 (the first epoch is warm-up)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    with nn_bench.bench_workdir(args.workdir, "autounet_train_bench_") as work:
        return _run(args, work)


def _run(args: argparse.Namespace, work: Path) -> int:
    task = work / f"Task{args.nnunet_dataset_id % 100:02d}_Bench"
    if not (task / "dataset.json").is_file():
        nn_bench.write_benchmark_task(task, args.cases, args.shape, args.seed)
    workspace = work / "ws_autounet"
    started = time.perf_counter()
    plans_path = nn_bench.autounet_plan(task, workspace, 2, CONFIGURATION, args.gpu_memory)
    cfg = load_plans(plans_path).configuration(CONFIGURATION)
    voxels_per_batch = int(np.prod(cfg.patch_size)) * cfg.batch_size
    log.info("autounet plan (%.0f s): patch %s, batch %d, features %s", time.perf_counter() - started,
             cfg.patch_size, cfg.batch_size, cfg.network.features_per_stage)
    load_before = _load()

    rates = {} if args.skip_loader else loader_rates(plans_path, [int(w) for w in args.loader_workers.split(",")],
                                                     args.loader_batches, args.seed)
    env, notes, trainer_dir, version = None, [], work / "nnunet_trainer", ""
    if args.nnunet_python:
        version = nn_bench.nnunet_version(args.nnunet_python)
        env, notes = nn_bench.prepare_nnunet(args.nnunet_python, task, args.nnunet_dataset_id, work / "nnunet",
                                             2, CONFIGURATION, plans_path)
        nn_bench.write_bench_trainer(trainer_dir)

    runs: dict[str, list[TrainRun]] = {}
    for r in range(args.repeats):  # alternate so that both tools see the same background load
        runs.setdefault("autounet", []).append(run_autounet(args, workspace, task.name, work, r))
        if env is not None:
            runs.setdefault("nnU-Net", []).append(run_nnunet(args, env, trainer_dir, work, r))
    results = {name: summarize(rs, args.iters, voxels_per_batch) for name, rs in runs.items()}

    header = (f"training throughput, {CONFIGURATION}: {args.cases} cases of {'x'.join(map(str, args.shape))}, "
              f"patch {cfg.patch_size} x batch {cfg.batch_size}, device {args.device}, autounet --precision "
              f"{args.precision}, {args.epochs} epochs x "
              f"{args.iters} iterations + {args.val_iters} validation patches (first epoch warm-up), "
              f"{args.workers} augmentation workers, {args.repeats} run(s) each, {os.cpu_count()} CPU cores, "
              f"load average {load_before} at start, {_load()} at end"
              + (f"; nnunetv2 {version}" if version else ""))
    print(header)
    for note in notes:
        print(f"  nnU-Net plans: {note}")
    if rates:
        print(f"\ndata loading (autounet, augmented {CONFIGURATION} batches):")
        print(f"{'workers':>8} {'batches/s':>10} {'Mvoxel/s':>9}")
        for w, rate in rates.items():
            print(f"{w:>8d} {rate:>10.2f} {rate * voxels_per_batch / 1e6:>9.2f}")
        if "autounet" in results:
            need = results["autounet"].iters_per_s
            best = max(rates.values())
            print(f"training consumes {need:.2f} batches/s; the loader gives up to {best:.2f} "
                  f"({'not ' if best >= need else ''}the bottleneck)")
    print()
    print(format_report("training (iterations/s over steady-state epoch time):", results))
    if args.json:
        args.json.write_text(json.dumps({
            "header": header, "nnunet_plan_notes": notes, "loader_batches_per_s": rates,
            "voxels_per_batch": voxels_per_batch,
            "results": {k: {**dataclasses.asdict(v), "runs": [dataclasses.asdict(r) for r in v.runs]}
                        for k, v in results.items()},
        }, indent=2))
    if args.profile:
        print(profile_autounet(args, workspace, task.name, work, top=25))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
