"""Data-loading throughput: augmented batches per second for a plan's patch and batch size.

Usage:
    python benchmarks/data_loading.py --folder <preprocessed>/<task>/3d_fullres --plans <...>/plans.json \
        --configuration 3d_fullres
    python benchmarks/data_loading.py --synthetic 64x160x160 --patch 64x128x128 --batch-size 2

For each worker count (default 0, 1, 2) it prints batches/s and voxels/s of the full training
pipeline (sampling, augmentation, transfer to torch). `--spatial both` adds rows with
batchgenerators' SpatialTransform in place of our affine one, and `--profile` prints the time
of every pipeline step in one process, which shows which transform dominates.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from autounet.io.geometry import Geometry
from autounet.planners.plans import load_plans
from autounet.preprocessing.case_properties import CaseProperties
from autounet.preprocessing.case_store import CaseStore
from autounet.training.batch_workers import BackgroundBatches
from autounet.training.augmentation_policy import SCALE_RANGE
from autounet.training.transforms import AffineSpatialTransform, Convert3DTo2DTransform, LocalRandomState
from autounet.training.augmentation import batchgenerators_spatial
from autounet.training.data_loader import BatchMaker, BatchSpec
from autounet.training.augmentation_policy import get_augmentation_params
from autounet.training.loss import deep_supervision_scales

log = logging.getLogger("benchmarks.data_loading")


def _shape(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.lower().split("x"))


def write_synthetic_cases(folder: Path, shape: tuple[int, ...], n_cases: int, channels: int, classes: int,
                          seed: int = 0) -> list[str]:
    """Cases with smooth noise images and a few spherical objects per class, in the workspace layout."""
    rng = np.random.default_rng(seed)
    store = CaseStore(folder)
    grid = np.indices(shape, dtype=np.float32)
    ids = []
    for i in range(n_cases):
        seg = np.zeros(shape, dtype=np.int16)
        for cls in range(1, classes):
            for _ in range(2):
                centre = [rng.uniform(0.2 * n, 0.8 * n) for n in shape]
                radius = rng.uniform(0.05, 0.12) * min(shape)
                seg[sum((g - c) ** 2 for g, c in zip(grid, centre)) < radius**2] = cls
        seg[:, :2] = -1  # a strip outside the nonzero mask, as real crops have
        data = (rng.normal(size=(channels, *shape)) + seg[None]).astype(np.float32)
        locations = {c: np.argwhere(seg == c).astype(np.int32) for c in range(1, classes)}
        props = CaseProperties(
            case_id=f"syn_{i:03d}", geometry=Geometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), shape=shape),
            shape_before_crop=list(shape), bbox=[[0, s] for s in shape], shape_after_crop=list(shape),
            spacing=[1.0] * 3, target_spacing=[1.0] * 3, shape_after_resample=list(shape),
        )
        store.write_case(f"syn_{i:03d}", data, seg, props, locations)
        ids.append(f"syn_{i:03d}")
    return ids


def spec_from_plans(folder: Path, plans_path: Path, configuration: str) -> BatchSpec:
    plans = load_plans(plans_path)
    cfg = plans.configuration(configuration)
    return BatchSpec(
        folder=str(folder), case_ids=tuple(CaseStore(folder).case_ids()), patch_size=tuple(cfg.patch_size),
        batch_size=cfg.batch_size,
        deep_supervision_scales=tuple(tuple(s) for s in deep_supervision_scales(cfg.network.strides)),
        use_mask_for_norm=tuple(cfg.use_mask_for_norm),
        mirror_axes=tuple(cfg.mirror_axes) if cfg.mirror_axes is not None else None,
    )


def measure(spec: BatchSpec, workers: int, batches: int, warmup: int, seed: int) -> float:
    """Batches per second after `warmup` batches (which absorb worker start-up)."""
    with BackgroundBatches(spec, workers, seed) as source:
        for _ in range(warmup):
            next(source)
        start = time.perf_counter()
        for _ in range(batches):
            next(source)
        return batches / (time.perf_counter() - start)


def profile_steps(spec: BatchSpec, batches: int, seed: int) -> dict[str, float]:
    """Mean seconds per batch of sampling and of each transform, in this process."""
    maker = BatchMaker(spec, seed)
    totals: dict[str, float] = {}
    for _ in range(batches):
        t0 = time.perf_counter()
        batch = maker.sampler.sample(maker.choose_cases())
        totals["sampling (read patches)"] = totals.get("sampling (read patches)", 0.0) + time.perf_counter() - t0
        with maker.random_state.active():
            for i, transform in enumerate(maker.transforms.transforms):
                t0 = time.perf_counter()
                batch = transform(**batch)
                key = f"{i:02d} {type(transform).__name__}"
                totals[key] = totals.get(key, 0.0) + time.perf_counter() - t0
    return {k: v / batches for k, v in totals.items()}


def compare_spatial(spec: BatchSpec, repeats: int, seed: int) -> dict[str, float]:
    """Median seconds per sample of rotation + scaling (applied to every sample) per implementation.

    Both implementations get the same enlarged patches and run interleaved, so that load from
    other processes affects them alike.
    """
    params = get_augmentation_params(spec.patch_size, spec.mirror_axes)
    spatial = list(spec.patch_size[1:] if params.dummy_2d else spec.patch_size)
    impls = {
        "affine (ours)": AffineSpatialTransform(spatial, params.rotation, 1.0, SCALE_RANGE, 1.0),
        "batchgenerators": batchgenerators_spatial(spatial, params.rotation, False, p_rotation=1.0, p_scale=1.0),
    }
    maker = BatchMaker(spec, seed)
    times: dict[str, list[float]] = {name: [] for name in impls}
    for r in range(repeats):
        batch = maker.sampler.sample(maker.choose_cases())
        if params.dummy_2d:
            batch = Convert3DTo2DTransform()(**batch)
        for name, transform in impls.items():
            copy = {"data": batch["data"].copy(), "seg": batch["seg"].copy()}
            with LocalRandomState(seed + r).active():
                t0 = time.perf_counter()
                transform(**copy)
                times[name].append((time.perf_counter() - t0) / len(batch["data"]))
    return {name: float(np.median(v)) for name, v in times.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--folder", type=Path, help="preprocessed configuration folder (with --plans)")
    src.add_argument("--synthetic", type=_shape, metavar="ZxYxX", help="generate synthetic cases of this shape")
    parser.add_argument("--plans", type=Path, help="plans.json (default: ../plans.json next to --folder)")
    parser.add_argument("--configuration", default="3d_fullres")
    parser.add_argument("--patch", type=_shape, default=(64, 128, 128), help="synthetic: patch size")
    parser.add_argument("--batch-size", type=int, default=2, help="synthetic: batch size")
    parser.add_argument("--cases", type=int, default=8, help="synthetic: number of cases")
    parser.add_argument("--channels", type=int, default=1, help="synthetic: image channels")
    parser.add_argument("--classes", type=int, default=3, help="synthetic: classes including background")
    parser.add_argument("--workers", default="0,1,2", help="comma-separated worker counts")
    parser.add_argument("--batches", type=int, default=20, help="timed batches per row")
    parser.add_argument("--warmup", type=int, default=3, help="untimed batches per row")
    parser.add_argument("--spatial", choices=("affine", "batchgenerators", "both"), default="affine")
    parser.add_argument("--profile", action="store_true", help="also time every pipeline step in one process")
    parser.add_argument("--compare-spatial", type=int, default=0, metavar="N",
                        help="also time both spatial implementations on N batches, every sample rotated and scaled")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    with tempfile.TemporaryDirectory(prefix="autounet-bench-") as tmp:
        if args.synthetic:
            folder = Path(tmp) / "3d_fullres"
            ids = write_synthetic_cases(folder, args.synthetic, args.cases, args.channels, args.classes, args.seed)
            strides = [[1] * len(args.patch)] + [[2 if p // 2**k >= 8 else 1 for p in args.patch] for k in range(1, 5)]
            spec = BatchSpec(folder=str(folder), case_ids=tuple(ids), patch_size=args.patch,
                             batch_size=args.batch_size,
                             deep_supervision_scales=tuple(tuple(s) for s in deep_supervision_scales(strides)),
                             use_mask_for_norm=(False,) * args.channels)
            source = f"synthetic {'x'.join(map(str, args.synthetic))}, {args.cases} cases"
        else:
            plans = args.plans or args.folder.parent / "plans.json"
            spec = spec_from_plans(args.folder, plans, args.configuration)
            source = f"{args.folder} ({len(spec.case_ids)} cases)"
        voxels = args.batch_size if args.synthetic else spec.batch_size
        voxels *= int(np.prod(spec.patch_size))
        print(f"data loading: {source}; patch {list(spec.patch_size)}, batch {spec.batch_size}")
        if args.compare_spatial:
            print(f"\nrotation + scaling, median seconds per sample ({args.compare_spatial} batches, interleaved):")
            for name, sec in compare_spatial(spec, args.compare_spatial, args.seed).items():
                print(f"  {name:<24s} {sec:8.4f}")
        impls = ["affine", "batchgenerators"] if args.spatial == "both" else [args.spatial]
        results = []
        for impl in impls:
            spec = replace(spec, spatial_impl=impl)
            if args.profile:
                steps = profile_steps(spec, max(5, args.batches), args.seed)
                print(f"\nper-step seconds per batch (one process, spatial={impl}):")
                for name, sec in steps.items():
                    print(f"  {name:<40s} {sec:8.4f}")
            print(f"\n{'spatial':<16s}{'workers':>8s}{'batches/s':>12s}{'Mvoxels/s':>12s}")
            for workers in (int(w) for w in args.workers.split(",")):
                rate = measure(spec, workers, args.batches, args.warmup, args.seed)
                results.append({"spatial": impl, "workers": workers, "batches_per_s": rate,
                                "voxels_per_s": rate * voxels})
                print(f"{impl:<16s}{workers:>8d}{rate:>12.2f}{rate * voxels / 1e6:>12.1f}")
        if args.json:
            args.json.write_text(json.dumps({"source": source, "patch": list(spec.patch_size),
                                             "batch_size": spec.batch_size, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
