"""From a fingerprint to plans: configurations, spacing, patch, topology, batch size, normalization.

Follows the anchor's rules (reference section 3) with one deliberate change: patches and
batch sizes are fitted against our byte model of training memory
(`planners.memory.estimate_training_memory_bytes`) and the user's GPU memory, instead of a
unit-less feature-map sum scaled by hand-tuned constants. Every decision is recorded as a
short reason string in the plans so that `autounet plans` can explain itself.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from autounet.errors import PlansError
from autounet.task.fingerprint import Fingerprint
from autounet.planners.normalization_choice import choose_normalization
from autounet.planners.memory import DEFAULT_CONSTANTS, estimate_training_memory_bytes, max_batch_size
from autounet.planners.plans import ConfigurationPlan, NetworkPlan, Plans, ResamplingPlan, save_plans
from autounet.planners.spacing import target_spacing, transpose_order
from autounet.planners.topology import Topology, network_plan, plan_topology

log = logging.getLogger(__name__)

DEFAULT_GPU_MEMORY_GB = 8.0
PATCH_VOLUME_3D = 256**3
PATCH_VOLUME_2D = 2048**2
MIN_BATCH_SIZE = 2
BATCH_CAP_FRACTION = 0.05
#: plan a low-resolution stage when the fullres patch covers less than this fraction of the median image
LOWRES_TRIGGER = 0.25
LOWRES_SPACING_STEP = 1.03
#: keep the low-resolution stage only if the fullres median image has at least this many times its voxels
LOWRES_MIN_VOXEL_RATIO = 2.0
_MAX_LOWRES_STEPS = 2000


def _fmt(values: Sequence[float]) -> str:
    return "x".join(f"{v:.4g}" for v in values)


def _gb(nbytes: float) -> str:
    return f"{nbytes / 1e9:.2f} GB"


def initial_patch_size(spacing: Sequence[float], median_shape: Sequence[int]) -> list[int]:
    """Patch with edges proportional to 1/spacing (isotropic in mm), volume 256^3 (3D) or 2048^2 (2D),
    clipped to the median image shape."""
    inv = 1.0 / np.asarray(spacing, dtype=np.float64)
    volume = PATCH_VOLUME_3D if len(spacing) == 3 else PATCH_VOLUME_2D
    scale = (volume / float(np.prod(inv))) ** (1.0 / len(spacing))
    patch = [int(round(v)) for v in inv * scale]
    return [max(1, min(p, int(m))) for p, m in zip(patch, median_shape)]


@dataclass(frozen=True)
class _Budget:
    """Everything a single configuration's patch/batch search needs to know besides its grid."""

    bytes: float
    in_channels: int
    num_classes: int  # network outputs: classes, or regions
    architecture: str
    batch_cap_fraction: float
    cascade_channels: int = 0  # one-hot foreground classes of the previous stage's label map; 0: no cascade


@dataclass(frozen=True)
class _Fit:
    topology: Topology
    network: NetworkPlan
    batch_size: int
    estimated_bytes: int
    reasons: dict[str, str]


def fit_patch_and_batch(
    spacing: Sequence[float],
    median_shape: Sequence[int],
    dataset_voxels: float,
    budget: _Budget,
) -> _Fit:
    """Initial patch, shrunk until batch size 2 fits the memory budget, then the batch size.

    Shrinking takes one divisibility step off the axis with the largest patch/median ratio;
    the step is the divisor of the *smaller* patch, so no valid size is skipped.
    """
    start = initial_patch_size(spacing, median_shape)
    topo = plan_topology(spacing, start)
    net = network_plan(topo, budget.architecture)

    def estimate(t: Topology, n: NetworkPlan, bs: int) -> int:
        return estimate_training_memory_bytes(n, t.patch_size, bs, budget.in_channels, budget.num_classes)

    first_estimate = estimate(topo, net, MIN_BATCH_SIZE)
    steps = 0
    stuck: set[int] = set()
    while estimate(topo, net, MIN_BATCH_SIZE) > budget.bytes:
        ratios = [(p / m, a) for a, (p, m) in enumerate(zip(topo.patch_size, median_shape)) if a not in stuck]
        if not ratios:
            log.warning("patch %s cannot shrink further; batch size 2 exceeds the %s budget",
                        topo.patch_size, _gb(budget.bytes))
            break
        axis = max(ratios)[1]
        trial = list(topo.patch_size)
        trial[axis] -= topo.divisor[axis]
        if trial[axis] < 1:
            stuck.add(axis)
            continue
        step = plan_topology(spacing, trial).divisor[axis]
        smaller = list(topo.patch_size)
        smaller[axis] -= step
        new = plan_topology(spacing, smaller)
        if smaller[axis] < 1 or new.patch_size[axis] >= topo.patch_size[axis]:
            stuck.add(axis)
            continue
        topo = new
        net = network_plan(topo, budget.architecture)
        steps += 1
    fit = max_batch_size(net, topo.patch_size, budget.in_channels, budget.num_classes, budget.bytes)
    patch_voxels = math.prod(topo.patch_size)
    cap = int(round(budget.batch_cap_fraction * dataset_voxels / patch_voxels))
    batch = max(1, min(fit, max(MIN_BATCH_SIZE, cap)))
    if fit < MIN_BATCH_SIZE:
        log.warning("only batch size %d fits %s at patch %s", fit, _gb(budget.bytes), topo.patch_size)
    est = estimate(topo, net, batch)
    if steps:
        patch_reason = (f"initial {_fmt(start)} (edges ~1/spacing, volume "
                        f"{'256^3' if len(spacing) == 3 else '2048^2'}, clipped to median {_fmt(median_shape)}) "
                        f"needed {_gb(first_estimate)} at batch 2 > budget {_gb(budget.bytes)}; "
                        f"shrunk in {steps} step(s) to {_fmt(topo.patch_size)}")
    else:
        patch_reason = (f"{_fmt(topo.patch_size)} from initial {_fmt(start)} (edges ~1/spacing, volume "
                        f"{'256^3' if len(spacing) == 3 else '2048^2'}, clipped to median {_fmt(median_shape)}, "
                        f"padded to multiples of {_fmt(topo.divisor)}); fits at batch 2 "
                        f"({_gb(first_estimate)} <= {_gb(budget.bytes)})")
    batch_reason = (f"{batch}: up to {fit} fit in {_gb(budget.bytes)}; one batch may cover at most "
                    f"{budget.batch_cap_fraction:.0%} of the dataset's ~{dataset_voxels:.3g} voxels, i.e. {cap} "
                    f"patch(es); at least {MIN_BATCH_SIZE}; estimated peak {_gb(est)}")
    topo_reason = (f"{topo.n_stages} stages, strides {topo.strides}, kernels "
                   f"{topo.kernel_sizes}, total stride {_fmt(topo.divisor)}, bottleneck "
                   f"{_fmt(topo.shape_per_stage[-1])}, features {net.features_per_stage} ({net.architecture})")
    return _Fit(topo, net, batch, est,
                {"patch_size": patch_reason, "batch_size": batch_reason, "topology": topo_reason})


def _configuration(
    name: str,
    data_identifier: str,
    spacing: Sequence[float],
    median_shape: Sequence[int],
    fit: _Fit,
    norm: tuple[list[str], list[bool], str],
    batch_dice: bool,
    spacing_reason: str,
    why: str,
) -> ConfigurationPlan:
    schemes, masks, norm_reason = norm
    dims = len(spacing)
    return ConfigurationPlan(
        name=name,
        data_identifier=data_identifier,
        spacing=[float(s) for s in spacing],
        patch_size=list(fit.topology.patch_size),
        batch_size=fit.batch_size,
        median_shape=[int(m) for m in median_shape],
        network=fit.network,
        normalization=list(schemes),
        use_mask_for_norm=list(masks),
        batch_dice=batch_dice,
        estimated_memory_bytes=int(fit.estimated_bytes),
        resampling=ResamplingPlan(),
        mirror_axes=list(range(dims)),
        reasons={"configurations": why, "spacing": spacing_reason, **fit.reasons, "normalization": norm_reason},
    )


def plan_experiment(
    fingerprint: Fingerprint,
    gpu_memory_gb: float = DEFAULT_GPU_MEMORY_GB,
    architecture: str = "plain_unet",
    batch_size_cap_fraction: float = BATCH_CAP_FRACTION,
) -> Plans:
    """Plan `2d`, `3d_fullres` (3D data) and `3d_lowres` + `3d_cascade_fullres` (large images)."""
    if not gpu_memory_gb > 0:
        raise PlansError(f"--gpu-memory: must be a positive number of GB, got {gpu_memory_gb}")
    if not fingerprint.cases:
        raise PlansError(f"fingerprint of {fingerprint.task}: no cases; rerun plan_and_preprocess with --clean")
    budget = _Budget(
        bytes=gpu_memory_gb * 1e9 * DEFAULT_CONSTANTS.planning_safety_margin,
        in_channels=len(fingerprint.channel_names),
        num_classes=len(fingerprint.regions) if fingerprint.regions else len(fingerprint.labels),
        architecture=architecture,
        batch_cap_fraction=batch_size_cap_fraction,
        cascade_channels=0 if fingerprint.regions else len(fingerprint.labels) - 1,
    )
    spacings = np.asarray(fingerprint.spacings, dtype=np.float64)
    crop_shapes = np.asarray(fingerprint.shapes_after_crop, dtype=np.float64)
    n_cases = len(fingerprint.cases)
    fullres, spacing_reason = target_spacing(spacings, crop_shapes)
    forward, backward = transpose_order(fullres)
    resampled = np.round(crop_shapes * spacings / np.asarray(fullres))
    median = np.median(resampled, axis=0)
    sp_t = [float(fullres[a]) for a in forward]
    med_t = [max(1, int(round(median[a]))) for a in forward]
    norm = choose_normalization(fingerprint)
    dataset_voxels = float(math.prod(med_t)) * n_cases
    transposed = forward != [0, 1, 2]
    spacing_reason_t = spacing_reason + (f"; transposed {forward} so the coarsest axis comes first" if transposed
                                         else "; no transposition needed")

    configs: dict[str, ConfigurationPlan] = {}
    fit2d = fit_patch_and_batch(sp_t[1:], med_t[1:], dataset_voxels, budget)
    configs["2d"] = _configuration(
        "2d", "2d", sp_t[1:], med_t[1:], fit2d, norm, True,
        f"in-plane axes of {_fmt(sp_t)}; slices along transposed axis 0",
        "2d: always planned" + (" (2D data)" if fingerprint.is_2d else ""),
    )
    is_3d = not fingerprint.is_2d and med_t[0] > 1
    plans_why = ["2d always"]
    if not is_3d:
        plans_why.append("no 3D configurations: the data are 2D")
    else:
        plans_why += _plan_3d(configs, sp_t, med_t, dataset_voxels, n_cases, budget, norm, spacing_reason_t)
    plans = Plans(
        task=fingerprint.task,
        channel_names=dict(fingerprint.channel_names),
        labels=dict(fingerprint.labels),
        transpose_forward=forward,
        transpose_backward=backward,
        original_median_spacing=[float(v) for v in np.median(spacings, axis=0)],
        original_median_shape=[int(round(v)) for v in np.median(crop_shapes, axis=0)],
        foreground_intensity_properties=dict(fingerprint.intensity_properties),
        gpu_memory_target_gb=float(gpu_memory_gb),
        configurations=configs,
        is_2d_data=not is_3d,
        reasons=_plans_reasons(configs, spacing_reason_t, norm[2], "; ".join(plans_why), budget)
        | _label_reasons(fingerprint),
        regions=fingerprint.regions,
        regions_class_order=fingerprint.regions_class_order,
        ignore_label=fingerprint.ignore_label,
    )
    plans.validate(f"plans of {fingerprint.task}")
    return plans


def _plan_3d(configs: dict[str, ConfigurationPlan], sp_t: list[float], med_t: list[int], dataset_voxels: float,
             n_cases: int, budget: _Budget, norm: tuple[list[str], list[bool], str],
             spacing_reason: str) -> list[str]:
    """Add 3d_fullres (and, for images the fullres patch covers too little of, 3d_lowres and
    3d_cascade_fullres) to `configs`; return why, for the plans' reasons."""
    plans_why: list[str] = []
    fit3d = fit_patch_and_batch(sp_t, med_t, dataset_voxels, budget)
    coverage = math.prod(fit3d.topology.patch_size) / math.prod(med_t)
    fullres_why = f"3d_fullres: 3D data, median shape {_fmt(med_t)}; patch covers {coverage:.0%} of it"
    lowres = None
    if coverage < LOWRES_TRIGGER and not budget.cascade_channels:
        plans_why.append("no cascade for region-based labels: the first stage's prediction is not one label per "
                         "class; 3d_fullres alone")
    elif coverage < LOWRES_TRIGGER:
        lowres = _plan_lowres(sp_t, med_t, n_cases, budget, norm)
        if lowres is not None:
            lowres_cfg, lowres_median = lowres
            ratio = math.prod(med_t) / math.prod(lowres_median)
            if ratio < LOWRES_MIN_VOXEL_RATIO:
                plans_why.append(f"3d_lowres dropped: the fullres median has only {ratio:.2f}x its voxels "
                                 f"(< {LOWRES_MIN_VOXEL_RATIO:g})")
                lowres = None
    cascade = lowres is not None
    configs["3d_fullres"] = _configuration(
        "3d_fullres", "3d_fullres", sp_t, med_t, fit3d, norm, cascade, spacing_reason, fullres_why)
    if lowres is None:
        if coverage >= LOWRES_TRIGGER:
            plans_why.append(f"no cascade: the fullres patch covers {coverage:.0%} >= "
                             f"{LOWRES_TRIGGER:.0%} of the median image")
        plans_why.append("3d_fullres for 3D data")
    else:
        lowres_cfg, lowres_median = lowres
        lowres_cfg.next_stage = "3d_cascade_fullres"
        configs["3d_lowres"] = lowres_cfg
        cas = _cascade_from(configs["3d_fullres"], budget)
        configs["3d_cascade_fullres"] = cas
        plans_why.append(f"3d_fullres for 3D data; 3d_lowres + 3d_cascade_fullres because the fullres patch "
                         f"covers {coverage:.0%} < {LOWRES_TRIGGER:.0%} of the median image")
    return plans_why


def _plan_lowres(
    sp_t: Sequence[float],
    med_t: Sequence[int],
    n_cases: int,
    budget: _Budget,
    norm: tuple[list[str], list[bool], str],
) -> tuple[ConfigurationPlan, list[int]] | None:
    """Grow the spacing by 3 % per step (first only axes > 2x finer than the coarsest) until the
    low-resolution patch covers at least a quarter of the low-resolution median image."""
    full = np.asarray(sp_t, dtype=np.float64)
    med = np.asarray(med_t, dtype=np.float64)
    spacing = full.copy()
    for step in range(1, _MAX_LOWRES_STEPS + 1):
        finer = spacing.max() / spacing > 2
        if finer.any():
            spacing[finer] *= LOWRES_SPACING_STEP
        else:
            spacing *= LOWRES_SPACING_STEP
        median_float = med * full / spacing
        median = [max(1, int(round(v))) for v in median_float]
        fit = fit_patch_and_batch(spacing.tolist(), median, float(math.prod(median)) * n_cases, budget)
        coverage = math.prod(fit.topology.patch_size) / float(np.prod(median_float))
        if coverage >= LOWRES_TRIGGER:
            cfg = _configuration(
                "3d_lowres", "3d_lowres", spacing.tolist(), median, fit, norm, False,
                f"fullres spacing {_fmt(sp_t)} grown by {LOWRES_SPACING_STEP} per step for {step} step(s) "
                f"to {_fmt(spacing)}, where the patch covers {coverage:.0%} >= {LOWRES_TRIGGER:.0%} of the "
                f"median image {_fmt(median)}",
                "3d_lowres: first stage of the cascade; the fullres patch sees too little of the image",
            )
            return cfg, median
    log.warning("no low-resolution spacing within %d steps covers %.0f%% of the image; no cascade",
                _MAX_LOWRES_STEPS, 100 * LOWRES_TRIGGER)
    return None


def _cascade_from(fullres: ConfigurationPlan, budget: _Budget) -> ConfigurationPlan:
    """3d_cascade_fullres: fullres grid and data, plus the one-hot lowres prediction as input."""
    extra = budget.cascade_channels
    est = estimate_training_memory_bytes(fullres.network, fullres.patch_size, fullres.batch_size,
                                         budget.in_channels + extra, budget.num_classes)
    reasons = dict(fullres.reasons)
    reasons["configurations"] = ("3d_cascade_fullres: second stage; fullres data plus the 3d_lowres prediction "
                                 f"as {extra} one-hot input channel(s)")
    reasons["batch_size"] += f"; with the {extra} extra input channel(s) {_gb(est)}"
    return ConfigurationPlan(
        name="3d_cascade_fullres",
        data_identifier=fullres.data_identifier,
        spacing=list(fullres.spacing),
        patch_size=list(fullres.patch_size),
        batch_size=fullres.batch_size,
        median_shape=list(fullres.median_shape),
        network=fullres.network,
        normalization=list(fullres.normalization),
        use_mask_for_norm=list(fullres.use_mask_for_norm),
        batch_dice=True,
        estimated_memory_bytes=int(est),
        resampling=ResamplingPlan(),
        previous_stage="3d_lowres",
        mirror_axes=list(fullres.mirror_axes or []),
        reasons=reasons,
    )


def _plans_reasons(configs: dict[str, ConfigurationPlan], spacing_reason: str, norm_reason: str,
                   configurations_reason: str, budget: _Budget) -> dict[str, str]:
    def each(key: str) -> str:
        return "; ".join(f"{n}: {c.reasons[key]}" for n, c in configs.items())

    return {
        "configurations": configurations_reason,
        "spacing": spacing_reason,
        "patch_size": "; ".join(f"{n}: {_fmt(c.patch_size)}" for n, c in configs.items()),
        "batch_size": "; ".join(f"{n}: {c.batch_size}" for n, c in configs.items()),
        "topology": each("topology"),
        "normalization": norm_reason,
        "memory": (f"budget {_gb(budget.bytes)} = GPU memory x safety margin "
                   f"{DEFAULT_CONSTANTS.planning_safety_margin:g} ({budget.architecture}, mixed precision)"),
    }


def _label_reasons(fingerprint: Fingerprint) -> dict[str, str]:
    """Why the network has the outputs it has, where that is not one softmax channel per label."""
    parts = []
    if fingerprint.regions:
        listed = ", ".join(f"{r.name} {r.values}" for r in fingerprint.regions)
        parts.append(f"{len(fingerprint.regions)} overlapping regions ({listed}), one sigmoid output each; painted "
                     f"back in the order {fingerprint.regions_class_order}")
    if fingerprint.ignore_label is not None:
        parts.append(f"value {fingerprint.ignore_label} is the ignore label: unannotated voxels, no output "
                     f"channel, left out of the loss, sampling and evaluation")
    return {"labels": "; ".join(parts)} if parts else {}


def plan_and_save(
    fingerprint: Fingerprint,
    out_path: str | Path,
    gpu_memory_gb: float = DEFAULT_GPU_MEMORY_GB,
    architecture: str = "plain_unet",
    batch_size_cap_fraction: float = BATCH_CAP_FRACTION,
) -> Plans:
    """plan_experiment, then write plans.json atomically."""
    plans = plan_experiment(fingerprint, gpu_memory_gb, architecture, batch_size_cap_fraction)
    save_plans(plans, out_path)
    return plans
