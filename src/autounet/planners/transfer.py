"""Plans of one task moved onto another, for fine-tuning (the reference's "move plans between datasets").

`autounet plan_and_preprocess TaskB --transfer-plans-from TaskA` gives TaskB the network
topology, patch size, batch size, spacing and transposition of TaskA's plans, so that a TaskA
checkpoint loads into every layer of a TaskB network (`train ... --init-from`). What describes
TaskB's data stays TaskB's own: its channels and their normalization (a CT task keeps CT
normalization with its own intensity statistics), its labels or regions and ignore label. Layers
whose shape then differs (the input layer for another channel count, the output layers for
another class count) are re-initialised by `--init-from` and reported by name.
"""

from __future__ import annotations

import copy

import numpy as np

from autounet.errors import PlansError
from autounet.planners.normalization_choice import choose_normalization
from autounet.planners.plans import Plans
from autounet.task.fingerprint import Fingerprint


def transfer_plans(source: Plans, fingerprint: Fingerprint, name: str) -> Plans:
    """TaskB's plans (from `fingerprint`) with `source`'s configurations; refused where the dimensions differ."""
    keep = dict(source.configurations)
    dropped: list[str] = []
    if fingerprint.is_2d:
        dropped = [c for c in keep if c != "2d"]
        keep = {"2d": keep["2d"]} if "2d" in keep else {}
    if fingerprint.regions:
        for cascade in ("3d_lowres", "3d_cascade_fullres"):
            if keep.pop(cascade, None) is not None:
                dropped.append(cascade)
        if "3d_fullres" in keep:
            keep["3d_fullres"] = copy.deepcopy(keep["3d_fullres"])
            keep["3d_fullres"].next_stage = None
    if not keep:
        raise PlansError(f"plans of {source.task}: no configuration fits {fingerprint.task}'s 2D data; transfer "
                         f"plans from a task that has a 2d configuration")
    schemes, masks, norm_reason = choose_normalization(fingerprint)
    configurations = {}
    for cfg_name, cfg in keep.items():
        cfg = copy.deepcopy(cfg)
        cfg.normalization = list(schemes)
        cfg.use_mask_for_norm = list(masks)
        cfg.reasons = dict(cfg.reasons, transfer=f"topology, patch, batch and spacing of {source.task}'s "
                                                 f"'{source.name}' plans")
        configurations[cfg_name] = cfg
    reasons = dict(source.reasons)
    reasons["normalization"] = norm_reason
    reasons["planner"] = (f"transferred from {source.task} (plans '{source.name}'): same network topology, patch "
                          f"size, batch size, spacing and transposition, so that its checkpoints load into every "
                          f"layer; channels, normalization and labels are {fingerprint.task}'s own"
                          + (f"; not transferred: {', '.join(dropped)}" if dropped else ""))
    plans = Plans(
        task=fingerprint.task,
        channel_names=dict(fingerprint.channel_names),
        labels=dict(fingerprint.labels),
        transpose_forward=list(source.transpose_forward),
        transpose_backward=list(source.transpose_backward),
        original_median_spacing=[float(v) for v in np.median(np.asarray(fingerprint.spacings), axis=0)],
        original_median_shape=[int(round(v)) for v in np.median(np.asarray(fingerprint.shapes_after_crop), axis=0)],
        foreground_intensity_properties=dict(fingerprint.intensity_properties),
        gpu_memory_target_gb=source.gpu_memory_target_gb,
        configurations=configurations,
        is_2d_data=fingerprint.is_2d or "3d_fullres" not in configurations,
        reasons=reasons,
        regions=fingerprint.regions,
        regions_class_order=fingerprint.regions_class_order,
        ignore_label=fingerprint.ignore_label,
        name=name,
    )
    plans.validate(f"plans of {fingerprint.task} transferred from {source.task}")
    return plans
