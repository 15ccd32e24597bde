"""Seconds per case and peak resident memory of prediction, with and without mirroring.

    python benchmarks/predict.py                                   # demo-sized case, untrained plain U-Net
    python benchmarks/predict.py --run-dir RESULTS/TASK/3d_fullres --case img_0000.nii.gz
    python benchmarks/predict.py ... --nnunet-python /path/to/venv/bin/python

Each setting runs in a fresh child process so that its peak RSS (ru_maxrss) is its own;
the timing covers preprocessing, the sliding window, export and writing of one case,
the first of `--repeats` runs being a warm-up that is not counted.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

log = logging.getLogger("benchmarks.predict")

DEMO_SHAPE = (64, 96, 96)
DEMO_PATCH = [64, 80, 80]


def _demo_predictor(device: str, use_mirroring: bool, shape: tuple[int, int, int]):
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
    return Predictor(plans, "3d_fullres", [net], ["untrained"], axes, dev), image


def _worker(args: argparse.Namespace) -> dict:
    """One setting in this process: returns seconds per case and peak RSS."""
    import numpy as np
    import torch

    from autounet.inference.export import save_prediction
    from autounet.io.geometry import Geometry

    if args.run_dir:
        from autounet.inference.predictor import Predictor
        from autounet.io.images import read_channels, read_image

        predictor = Predictor.from_run_folder(args.run_dir, args.folds, "final", args.device, args.mirroring)
        paths = args.case
        image, geometry = read_image(paths[0]) if len(paths) == 1 else read_channels(paths)
    else:
        shape = tuple(args.shape)
        predictor, image = _demo_predictor(args.device, args.mirroring, shape)
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


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", default=None, help="trained run folder (default: untrained demo network)")
    parser.add_argument("--case", nargs="+", default=None, help="image file(s) of one case (with --run-dir)")
    parser.add_argument("--folds", nargs="+", default=None)
    parser.add_argument("--shape", nargs=3, type=int, default=list(DEMO_SHAPE), help="demo case shape (z y x)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--nnunet-python", default=None,
                        help="python of a venv with nnunetv2 to time nnUNetv2_predict on the same case")
    parser.add_argument("--_worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--_mirroring", dest="mirroring", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.run_dir and not args.case:
        parser.error("--run-dir needs --case")
    if args._worker:
        print(json.dumps(_worker(args)))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    rows = [_child(argv, mirroring) for mirroring in (False, True)]
    for r in rows:
        gpu = f", peak GPU {r['peak_gpu_gib']:.2f} GiB" if r["peak_gpu_gib"] is not None else ""
        log.info("autounet  mirroring %-3s  %7.2f s/case  peak RSS %.2f GiB%s  (%s, case %s)",
                 "on" if r["mirroring"] else "off", r["seconds_per_case"], r["peak_rss_gib"], gpu, r["device"],
                 "x".join(map(str, r["shape"])))
    if args.nnunet_python:
        log.warning("--nnunet-python: the nnU-Net side is not automated yet. Run it by hand with the same case "
                    "and a model of the same plan: `%s -m nnunetv2.inference.predict_from_raw_data -i IN -o OUT "
                    "-d ID -c 3d_fullres -f 0 -device %s` (add --disable_tta for the no-mirroring figure), "
                    "timed with /usr/bin/time -v for peak RSS; see /work/shared/bench/README.md",
                    args.nnunet_python, "cuda" if rows[0]["device"].startswith("cuda") else "cpu")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
