"""Seconds per case and peak resident memory of prediction, with and without mirroring.

    python benchmarks/predict.py                                   # demo-sized case, untrained plain U-Net
    python benchmarks/predict.py --run-dir RESULTS/TASK/3d_fullres --case img_0000.nii.gz
    python benchmarks/predict.py --shape 48 64 64 --repeats 2 --nnunet-python /root/nnunet-venv/bin/python

Each setting runs in a fresh child process so that its peak RSS (ru_maxrss) is its own;
the timing covers preprocessing, the sliding window, export and writing of one case,
the first of `--repeats` runs being a warm-up that is not counted.

With `--nnunet-python PY` (the python of a venv with nnunetv2) it instead compares whole
commands on one generated case of `--shape`: a task of `--cases` demo-like cases is planned by
autounet and by nnU-Net, nnU-Net's plans get autounet's patch, batch and topology
(benchmarks/_nnunet.py), each tool trains fold 0 for one iteration (weights do not change the
timing), and then `autounet predict` and `nnUNetv2_predict` (both: fold 0, final checkpoint,
step size 0.5, `-npp 1 -nps 1` for nnU-Net) run alternately with and without mirroring,
`--repeats` times each. Reported: median wall seconds of the command (start-up included on both
sides), peak RSS of its process tree (the sum over processes counts shared library pages once
per process) and of its largest single process, and the ratios autounet / nnU-Net.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from autounet.networks.precision import PRECISIONS  # noqa: E402

log = logging.getLogger("benchmarks.predict")

DEMO_SHAPE = (64, 96, 96)
DEMO_PATCH = [64, 80, 80]


def _demo_predictor(device: str, use_mirroring: bool, shape: tuple[int, int, int], precision: str = "auto"):
    """A plain U-Net of a typical 3D plan (untrained: timing does not depend on the weights)."""
    import numpy as np

    from autounet.inference.predictor import Predictor, resolve_device
    from autounet.networks.registry import build_network
    from autounet.planners.plans import ConfigurationPlan, IntensityProperties, NetworkPlan, Plans

    net_plan = NetworkPlan(architecture="plain_unet", features_per_stage=[32, 64, 128, 256, 320],
                           kernel_sizes=[[3, 3, 3]] * 5, strides=[[1, 1, 1]] + [[2, 2, 2]] * 4,
                           n_conv_encoder=[2] * 5, n_conv_decoder=[2] * 4)
    cfg = ConfigurationPlan(name="3d_fullres", data_identifier="3d_fullres", spacing=[1.0, 1.0, 1.0],
                            patch_size=list(DEMO_PATCH), batch_size=2, median_shape=list(shape), network=net_plan,
                            normalization=["zscore"], use_mask_for_norm=[False], batch_dice=False,
                            estimated_memory_bytes=0, mirror_axes=[0, 1, 2])
    stats = IntensityProperties(mean=0, std=1, median=0, min=-1, max=1, percentile_00_5=-1, percentile_99_5=1)
    plans = Plans(task="Bench", channel_names={"0": "MR"}, labels={"background": 0, "a": 1, "b": 2},
                  transpose_forward=[0, 1, 2], transpose_backward=[0, 1, 2], original_median_spacing=[1, 1, 1],
                  original_median_shape=list(shape), foreground_intensity_properties={"0": stats},
                  gpu_memory_target_gb=8, configurations={"3d_fullres": cfg})
    dev = resolve_device(device)
    net = build_network("plain_unet", net_plan, 1, 3, deep_supervision=False).to(dev).eval()
    axes = [0, 1, 2] if use_mirroring else []
    image = np.random.default_rng(0).normal(size=(1, *shape)).astype(np.float32)
    return Predictor(plans, "3d_fullres", [net], ["untrained"], axes, dev, precision=precision), image


def _worker(args: argparse.Namespace) -> dict:
    """One setting in this process: returns seconds per case and peak RSS."""
    import numpy as np
    import torch

    from autounet.inference.export import save_prediction
    from autounet.io.geometry import Geometry

    if args.run_dir:
        from autounet.inference.predictor import Predictor
        from autounet.io.images import read_channels, read_image

        predictor = Predictor.from_run_folder(args.run_dir, args.folds, "final", args.device, args.mirroring,
                                              precision=args.precision)
        paths = args.case
        image, geometry = read_image(paths[0]) if len(paths) == 1 else read_channels(paths)
    else:
        shape = tuple(args.shape)
        predictor, image = _demo_predictor(args.device, args.mirroring, shape, args.precision)
        geometry = Geometry(spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), shape=shape)
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats + 1):
            if predictor.device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            seg, _ = predictor.predict_case(image, geometry)
            save_prediction(seg, geometry, Path(tmp) / "case.nii.gz")
            times.append(time.perf_counter() - start)
    peak_gpu = torch.cuda.max_memory_allocated() / 1024**3 if predictor.device.type == "cuda" else None
    return {"mirroring": args.mirroring, "seconds_per_case": float(np.mean(times[1:])),
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2,
            "peak_gpu_gib": peak_gpu, "device": str(predictor.device), "shape": list(image.shape[1:])}


def _child(argv: list[str], mirroring: bool) -> dict:
    cmd = [sys.executable, __file__, *argv, "--_worker"] + (["--_mirroring"] if mirroring else [])
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- side by side with nnU-Net

CONFIGURATION = "3d_fullres"
MIB = 1024**2


def _nnunet_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def autounet_predict_command(workspace: Path, task: str, input_dir: Path, output_dir: Path, device: str,
                             mirroring: bool, step_size: float = 0.5, precision: str = "auto") -> list[str]:
    """`autounet predict` with the settings nnU-Net gets: fold 0, final checkpoint, no postprocessing."""
    cmd = [sys.executable, "-m", "autounet", "--workspace", str(workspace), "predict", "-i", str(input_dir),
           "-o", str(output_dir), "-t", task, "-c", CONFIGURATION, "-f", "0", "--checkpoint", "final",
           "--step-size", str(step_size), "--device", device, "--no-postprocessing", "--precision", precision]
    return cmd + ([] if mirroring else ["--disable-tta"])


def _prepare_models(args: argparse.Namespace, work: Path, device: str) -> tuple[Path, Path, dict[str, str], Path]:
    """Generate, plan and train (one iteration) the same task with both tools; returns
    (autounet workspace, task folder, nnU-Net environment, prediction input folder)."""
    import _nnunet as nn_bench

    if args.task_dir is not None:
        task = Path(args.task_dir).resolve()  # a given MSD task (at least 5 training cases for fold 0)
    else:
        task = work / f"Task{args.nnunet_dataset_id % 100:02d}_Bench"
        if not (task / "dataset.json").is_file():
            nn_bench.write_benchmark_task(task, args.cases, args.shape, 0)
    workspace = work / "ws_autounet"
    plans_path = nn_bench.autounet_plan(task, workspace, 2, CONFIGURATION, 8.0)
    env, _ = nn_bench.prepare_nnunet(Path(args.nnunet_python), task, args.nnunet_dataset_id, work / "nnunet", 2,
                                     CONFIGURATION, plans_path)
    trainer_dir = nn_bench.write_bench_trainer(work / "nnunet_trainer")
    env = {**env, "nnUNet_extTrainer": str(trainer_dir)}  # nnUNetv2_predict looks the trainer class up too

    shutil.rmtree(workspace / "results", ignore_errors=True)
    log.info("training autounet for one iteration")
    subprocess.run(nn_bench.autounet_train_command(workspace, task.name, CONFIGURATION, 1, 1, 1, 0, device),
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    results = Path(env["nnUNet_results"])
    for stale in results.glob(f"Dataset{args.nnunet_dataset_id:03d}_*"):
        shutil.rmtree(stale)
    log.info("training nnU-Net for one iteration")
    subprocess.run(nn_bench.nnunet_train_command(Path(args.nnunet_python), args.nnunet_dataset_id, CONFIGURATION,
                                                 device),
                   env=nn_bench.nnunet_train_env(env, trainer_dir, 1, 1, 1, 0), check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    input_dir = work / "predict_input"
    shutil.rmtree(input_dir, ignore_errors=True)
    if args.input_case is not None:
        import SimpleITK as sitk

        input_dir.mkdir(parents=True)
        sitk.WriteImage(sitk.ReadImage(str(args.input_case)), str(input_dir / "case_0000.nii.gz"), True)
    else:
        first = sorted((task / "imagesTr").glob("*.nii.gz"))[0]
        write_prediction_case(first, input_dir / f"{first.name[:-len('.nii.gz')]}_0000.nii.gz",  # a name both read
                              args.predict_shape or args.shape)
    return workspace, task, env, input_dir


def write_prediction_case(source: Path, target: Path, shape_zyx: list[int]) -> None:
    """`source` periodically extended (or cropped) to `shape_zyx` at its own spacing and orientation.

    A case larger than the training cases gives the sliding window several positions without
    changing the voxel size that both tools resample to.
    """
    import dataclasses

    import numpy as np

    from autounet.io.images import read_image, write_image

    image, geometry = read_image(source)
    extended = np.pad(image[0], [(0, max(0, n - o)) for n, o in zip(shape_zyx, image.shape[1:])], mode="wrap")
    extended = extended[tuple(slice(0, n) for n in shape_zyx)]
    write_image(np.round(extended).astype(np.int16), dataclasses.replace(geometry, shape=tuple(shape_zyx)), target)


def compare_with_nnunet(args: argparse.Namespace) -> int:
    """Alternate whole `autounet predict` and `nnUNetv2_predict` commands on one case; print medians."""
    import _nnunet as nn_bench

    device = _nnunet_device(args.device)
    with nn_bench.bench_workdir(args.workdir, "autounet_predict_bench_") as work:
        load_start = " ".join(f"{v:.1f}" for v in os.getloadavg())
        workspace, task, env, input_dir = _prepare_models(args, work, device)
        python = Path(args.nnunet_python)
        runs: dict[tuple[str, bool], list] = {}
        for r in range(args.repeats):
            for mirroring in (False, True):
                for tool in ("autounet", "nnU-Net"):
                    out = work / f"pred_{tool}_{mirroring}_{r}"
                    shutil.rmtree(out, ignore_errors=True)
                    if tool == "autounet":
                        cmd, cmd_env = autounet_predict_command(workspace, task.name, input_dir, out, device,
                                                                mirroring, precision=args.precision), dict(os.environ)
                    else:
                        cmd = nn_bench.nnunet_predict_command(python, args.nnunet_dataset_id, CONFIGURATION,
                                                              input_dir, out, device, mirroring)
                        cmd_env = env
                    m = nn_bench.measure(cmd, cmd_env, work, work / f"predict_{tool}_{mirroring}_{r}.log", 0.05)
                    runs.setdefault((tool, mirroring), []).append(m)
                    log.info("%-8s mirroring %-3s run %d: %.1f s, peak tree RSS %.0f MiB (load %.1f)", tool,
                             "on" if mirroring else "off", r, m.wall_s, m.peak_tree_rss_bytes / MIB,
                             os.getloadavg()[0])
        load_end = " ".join(f"{v:.1f}" for v in os.getloadavg())
        rows = {key: {"seconds_per_case": statistics.median(m.wall_s for m in ms),
                      "peak_tree_rss_mib": statistics.median(m.peak_tree_rss_bytes for m in ms) / MIB,
                      "largest_process_mib": statistics.median(m.largest_process_rss_bytes for m in ms) / MIB,
                      "runs_s": [m.wall_s for m in ms]} for key, ms in runs.items()}
        what = (f"{args.input_case} (task {task.name})" if args.input_case is not None
                else "x".join(map(str, args.predict_shape or args.shape)))
        print(f"predict, {CONFIGURATION}, one case of {what}, device {device}, step 0.5, "
              f"fold 0, autounet --precision {args.precision}, whole command (start-up included), {args.repeats} run(s) each, {os.cpu_count()} CPU cores, "
              f"load average {load_start} at start, {load_end} at end; nnunetv2 "
              f"{nn_bench.nnunet_version(python)} with -npp 1 -nps 1")
        print(f"{'mirroring':<10} {'tool':<9} {'s/case':>8} {'peak tree RSS MiB':>18} {'largest proc MiB':>17}"
              f"   runs s")
        for mirroring in (False, True):
            for tool in ("autounet", "nnU-Net"):
                row = rows[(tool, mirroring)]
                print(f"{'on' if mirroring else 'off':<10} {tool:<9} {row['seconds_per_case']:>8.1f} "
                      f"{row['peak_tree_rss_mib']:>18.0f} {row['largest_process_mib']:>17.0f}   "
                      f"{', '.join(f'{v:.1f}' for v in row['runs_s'])}")
            a, n = rows[("autounet", mirroring)], rows[("nnU-Net", mirroring)]
            t_ratio = a["seconds_per_case"] / n["seconds_per_case"]
            m_ratio = a["peak_tree_rss_mib"] / n["peak_tree_rss_mib"]
            p_ratio = a["largest_process_mib"] / n["largest_process_mib"]
            met = "met" if t_ratio <= 0.5 and max(m_ratio, p_ratio) <= 1.0 else "NOT met"
            print(f"{'':<10} {'ratio a/n':<9} {t_ratio:>8.2f} {m_ratio:>18.2f} {p_ratio:>17.2f}   "
                  f"goal (<= 0.5 time, <= 1.0 memory): {met}")
        if args.json:
            args.json.write_text(json.dumps({f"{tool} mirroring {'on' if m else 'off'}": row
                                             for (tool, m), row in rows.items()}, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", default=None, help="trained run folder (default: untrained demo network)")
    parser.add_argument("--case", nargs="+", default=None, help="image file(s) of one case (with --run-dir)")
    parser.add_argument("--folds", nargs="+", default=None)
    parser.add_argument("--shape", nargs=3, type=int, default=list(DEMO_SHAPE), help="demo case shape (z y x)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="autounet's --precision (nnU-Net runs its own default: fp32 on CPU, fp16 on CUDA)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--nnunet-python", default=None,
                        help="python of a venv with nnunetv2 to time nnUNetv2_predict on the same case")
    parser.add_argument("--cases", type=int, default=6, help="with --nnunet-python: training cases to generate")
    parser.add_argument("--predict-shape", nargs=3, type=int, default=None, metavar=("Z", "Y", "X"),
                        help="with --nnunet-python: shape of the predicted case (default --shape; larger = more "
                             "sliding-window positions at the same spacing)")
    parser.add_argument("--nnunet-dataset-id", type=int, default=978, help="dataset id used on the nnU-Net side")
    parser.add_argument("--task-dir", type=Path, default=None,
                        help="with --nnunet-python: an MSD task folder to train on instead of a generated one "
                             "(at least 5 training cases)")
    parser.add_argument("--input-case", type=Path, default=None,
                        help="with --nnunet-python: the image to predict (any readable format, one channel) "
                             "instead of a resized training case")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="with --nnunet-python: where to put everything (default: a temp dir, removed)")
    parser.add_argument("--json", type=Path, default=None, help="with --nnunet-python: also write the figures here")
    parser.add_argument("--_worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--_mirroring", dest="mirroring", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.run_dir and not args.case:
        parser.error("--run-dir needs --case")
    if args._worker:
        print(json.dumps(_worker(args)))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.nnunet_python:
        return compare_with_nnunet(args)
    rows = [_child(argv, mirroring) for mirroring in (False, True)]
    for r in rows:
        gpu = f", peak GPU {r['peak_gpu_gib']:.2f} GiB" if r["peak_gpu_gib"] is not None else ""
        log.info("autounet  mirroring %-3s  %7.2f s/case  peak RSS %.2f GiB%s  (%s, case %s)",
                 "on" if r["mirroring"] else "off", r["seconds_per_case"], r["peak_rss_gib"], gpu, r["device"],
                 "x".join(map(str, r["shape"])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
