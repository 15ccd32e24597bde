"""An nnU-Net v2 model imported into autounet predicts what nnU-Net predicts, faster.

    python benchmarks/nnunet_import.py --nnunet-python /root/nnunet-venv/bin/python
    python benchmarks/nnunet_import.py --nnunet-python ~/nnunet-venv/bin/python --configurations 3d_fullres 2d \\
        --epochs 3 --iters 10 --test-cases 3 --workdir /tmp/nnimport   # kept for reuse

Steps: a task of `--cases` demo cases (benchmarks/_nnunet helpers) is converted, planned and
preprocessed by nnU-Net (its own plans, untouched) and trained briefly (fold 0 with the short
benchmark trainer: `--epochs` x `--iters`); `autounet import_nnunet` installs the results folder; then
`--test-cases` new cases (other seeds, other spacings) are predicted by `nnUNetv2_predict` and by
`autounet predict` with mirroring on and off (fold 0, final checkpoint, step 0.5, CPU, nnU-Net with
`-npp 1 -nps 1`), `--repeats` times each, the tools alternating. Printed: per case the Dice of every label between the two tools' label maps and
whether the geometry is identical (goal: Dice >= 0.999, same geometry), and both tools' seconds per
case (whole command, start-up included, divided by the number of cases, median of the repeats; goal:
autounet at most half of nnU-Net's). autounet runs with `--precision` (default fp32: nnU-Net predicts in fp32 on a
CPU; autounet's `auto` would pick bf16 on CPUs that have it, which is faster but not the same
arithmetic).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _nnunet as nb  # noqa: E402

log = logging.getLogger("benchmarks.nnunet_import")
TASK_NAME = "Bench"
#: plans name -> the nnU-Net planner that writes it
PLANNERS = {"nnUNetPlans": "ExperimentPlanner", "nnUNetResEncUNetMPlans": "nnUNetPlannerResEncM",
            "nnUNetResEncUNetLPlans": "nnUNetPlannerResEncL", "nnUNetResEncUNetXLPlans": "nnUNetPlannerResEncXL"}


def _prepare(args: argparse.Namespace, work: Path) -> tuple[dict[str, str], Path, Path]:
    """nnU-Net trained on a generated task (reused when done); returns its env, results folder and test inputs."""
    python = Path(args.nnunet_python)
    task = work / f"Task{args.dataset_id % 100:02d}_{TASK_NAME}"
    if not task.is_dir():
        nb.write_benchmark_task(task, args.cases, args.shape, seed=0)
    env = nb.nnunet_env(work / "nnunet")
    if not list(Path(env["nnUNet_raw"]).glob(f"Dataset{args.dataset_id:03d}_*")):
        env = nb.convert_for_nnunet(python, task, args.dataset_id, work / "nnunet", 2)
    trainer_dir = nb.write_bench_trainer(work / "trainer")
    train_env = nb.nnunet_train_env(env, trainer_dir, args.epochs, args.iters, 1, 1)
    results = Path(env["nnUNet_results"])
    for configuration in args.configurations:
        pattern = f"Dataset{args.dataset_id:03d}_*/{nb.BENCH_TRAINER}__{args.plans}__{configuration}/fold_0"
        if list(results.glob(f"{pattern}/checkpoint_final.pth")):
            continue
        subprocess.run([str(python.parent / "nnUNetv2_plan_and_preprocess"), "-d", str(args.dataset_id), "-c",
                        configuration, "-np", "2", "-npfp", "2", "-pl", PLANNERS[args.plans]], env=env, check=True,
                       stdout=subprocess.DEVNULL)
        log.info("training nnU-Net %s %s for %d x %d iterations", args.plans, configuration, args.epochs, args.iters)
        subprocess.run(nb.nnunet_train_command(python, args.dataset_id, configuration, "cpu") + ["-p", args.plans],
                       env=train_env, check=True, stdout=subprocess.DEVNULL)
    inputs = work / "imagesTs"
    if not inputs.is_dir():
        test_task = nb.write_benchmark_task(work / "test_task", args.test_cases, args.test_shape, seed=99)
        inputs.mkdir()
        for image in sorted((test_task / "imagesTr").glob("*.nii.gz")):
            shutil.copyfile(image, inputs / image.name.replace(".nii.gz", "_0000.nii.gz"))
    return train_env, nb.nnunet_dataset_folder(results, args.dataset_id), inputs


def label_dice(a: Path, b: Path) -> tuple[list[float], bool]:
    """Dice per label present in either map (1.0 when both lack it) and whether the geometry is identical."""
    import SimpleITK as sitk

    x, y = sitk.ReadImage(str(a)), sitk.ReadImage(str(b))
    same = (x.GetSize() == y.GetSize() and x.GetSpacing() == y.GetSpacing() and x.GetOrigin() == y.GetOrigin()
            and x.GetDirection() == y.GetDirection())
    p, q = sitk.GetArrayFromImage(x), sitk.GetArrayFromImage(y)
    labels = sorted((set(np.unique(p)) | set(np.unique(q))) - {0})
    return [float(2 * ((p == v) & (q == v)).sum() / max((p == v).sum() + (q == v).sum(), 1)) for v in labels], same


def _predict_command(args: argparse.Namespace, tool: str, workspace: Path, configuration: str, inputs: Path,
                     out: Path, mirroring: bool, nnunet_env: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """The prediction command of one tool (fold 0, CPU) and its environment."""
    if tool == "autounet":
        run = f"{configuration}__{nb.BENCH_TRAINER}__{args.plans}"
        cmd = [sys.executable, "-m", "autounet", "--workspace", str(workspace), "predict", "-t",
               f"Dataset{args.dataset_id:03d}", "-c", run, "-i", str(inputs), "-o", str(out), "-f", "0",
               "--device", "cpu", "--precision", args.precision]
        return cmd + ([] if mirroring else ["--disable-tta"]), dict(os.environ)
    cmd = nb.nnunet_predict_command(Path(args.nnunet_python), args.dataset_id, configuration, inputs, out, "cpu",
                                    mirroring)
    cmd[cmd.index(nb.NNUNET_PLANS)] = args.plans
    return cmd, nnunet_env


def _compare(args: argparse.Namespace, work: Path) -> bool:
    python = Path(args.nnunet_python)
    env, results, inputs = _prepare(args, work)
    workspace = work / "autounet"
    subprocess.run([sys.executable, "-m", "autounet", "--workspace", str(workspace), "import_nnunet", str(results),
                    "--overwrite"], check=True)
    n_cases = len(list(inputs.glob("*.nii.gz")))
    ok = True
    for configuration in args.configurations:
        for mirroring in (True, False):
            outs: dict[str, Path] = {}
            runs: dict[str, list[float]] = {"nnU-Net": [], "autounet": []}
            for repeat in range(args.repeats):
                for tool in (("nnU-Net", "autounet") if repeat % 2 == 0 else ("autounet", "nnU-Net")):
                    out = work / f"pred_{configuration}_{tool}_{'mirror' if mirroring else 'nomirror'}"
                    shutil.rmtree(out, ignore_errors=True)
                    cmd, cmd_env = _predict_command(args, tool, workspace, configuration, inputs, out, mirroring,
                                                    env)
                    measured = nb.measure(cmd, cmd_env, work, work / f"{out.name}.log", 0.1)
                    outs[tool] = out
                    runs[tool].append(measured.wall_s / n_cases)
            seconds = {tool: statistics.median(values) for tool, values in runs.items()}
            print(f"\n{args.plans} {configuration}, mirroring {'on' if mirroring else 'off'}: seconds per case nnU-Net "
                  f"{seconds['nnU-Net']:.1f}, autounet {seconds['autounet']:.1f} (ratio "
                  f"{seconds['autounet'] / seconds['nnU-Net']:.2f}, goal <= 0.5; medians of "
                  f"{', '.join(f'{v:.1f}' for v in runs['nnU-Net'])} and {', '.join(f'{v:.1f}' for v in runs['autounet'])}; "
                  f"load {os.getloadavg()[0]:.1f})")
            for case in sorted(outs["nnU-Net"].glob("*.nii.gz")):
                dice, same = label_dice(case, outs["autounet"] / case.name)
                good = same and min(dice, default=1.0) >= 0.999
                ok &= good
                print(f"  {case.name:<22} Dice per label {', '.join(f'{d:.5f}' for d in dice)}   geometry "
                      f"{'identical' if same else 'DIFFERS'}   {'ok' if good else 'BELOW GOAL'}")
    print(f"\nload average at the end: {' '.join(f'{v:.1f}' for v in os.getloadavg())}; "
          f"nnunetv2 {nb.nnunet_version(python)}")
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nnunet-python", required=True, help="python of a venv with nnunetv2 2.8.1")
    parser.add_argument("--configurations", nargs="+", default=["3d_fullres", "2d"])
    parser.add_argument("--plans", choices=sorted(PLANNERS), default="nnUNetPlans",
                        help="nnU-Net plans (and so network) to train: the default plain U-Net or a ResEnc preset")
    parser.add_argument("--cases", type=int, default=6, help="training cases to generate")
    parser.add_argument("--shape", nargs=3, type=int, default=[24, 40, 40], help="training case shape (z y x)")
    parser.add_argument("--test-cases", type=int, default=3)
    parser.add_argument("--test-shape", nargs=3, type=int, default=[28, 44, 40], help="test case shape (z y x)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per tool and setting (alternating)")
    parser.add_argument("--precision", default="fp32", help="autounet --precision (fp32 is nnU-Net's CPU arithmetic)")
    parser.add_argument("--dataset-id", type=int, default=977)
    parser.add_argument("--workdir", type=Path, default=None, help="kept for reuse (default: a temporary folder)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    with nb.bench_workdir(args.workdir, "autounet_nnunet_import_") as work:
        return 0 if _compare(args, work) else 1


if __name__ == "__main__":
    raise SystemExit(main())
