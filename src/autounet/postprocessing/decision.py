"""Decide connected-component cleanup on cross-validation predictions; apply the rule to a folder.

The decision follows nnU-Net's rule (reference section 8):

1. Candidate A, "keep only the largest connected component of all foreground": accepted when the
   foreground-mean Dice increases and no label's mean Dice decreases.
2. With more than one foreground label, for each label in turn (starting from A's output when
   A was accepted): "keep only the largest component of this label", accepted where that label's
   mean Dice strictly increases.

Step 2 only turns voxels of one label into background, which cannot change any other label's
mask, so the chained steps are evaluated in a single pass over the cases: per case we compute
the Dice of every label on the raw prediction, after A, and after keep-largest-of-that-label on
both starting points. Labels are the values written on disk (not class indices).

For a region task (targets are regions: unions of label values that overlap), removing voxels
of one region changes the others, so the steps are instead tried one after another, each
evaluated over every region on the output of the steps accepted before it (one pass over the
cases per step). Reference voxels of an ignore label count in no Dice.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from autounet.errors import AutounetError, DatasetError
from autounet.evaluation.evaluate import Target, geometry_differences, list_label_files, target_key
from autounet.evaluation.metrics import dice
from autounet.io.images import read_label, write_label
from autounet.io.json_schema import from_dict, to_dict
from autounet.core.parallel import run_parallel
from autounet.postprocessing.connected_components import (
    keep_largest_component_of_label,
    keep_largest_foreground_component,
)
from autounet.postprocessing.rule import PostprocessingDecision, apply_postprocessing, load_postprocessing

log = logging.getLogger(__name__)

@dataclass
class _Means:
    per_label: dict[int, float] = field(default_factory=dict)

    @property
    def foreground(self) -> float:
        return _mean_ignoring_nan(list(self.per_label.values()))


def _mean_ignoring_nan(values: list[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return float(np.mean(kept)) if kept else float("nan")


def _read_pair(pred_path: str, ref_path: str, ignore_label: int | None) -> tuple[np.ndarray, np.ndarray, Any]:
    """Prediction, reference and the annotated-voxel mask (None without an ignore label)."""
    pred, pred_geo = read_label(pred_path)
    ref, ref_geo = read_label(ref_path)
    diffs = geometry_differences(ref_geo, pred_geo, ref.shape, pred.shape)
    if diffs:
        raise DatasetError(f"{pred_path}: grid differs from reference {ref_path}: " + "; ".join(diffs))
    return pred, ref, (None if ignore_label is None else ref != ignore_label)


def _dice(ref_mask: np.ndarray, pred_mask: np.ndarray, annotated: np.ndarray | None) -> float:
    return dice(ref_mask, pred_mask) if annotated is None else dice(ref_mask & annotated, pred_mask & annotated)


def _case_dice_table(item: tuple[str, str, tuple[int, ...], int | None]) -> dict[str, dict[int, float]]:
    """Worker: per-label Dice of one case under every candidate step (see the module docstring)."""
    pred_path, ref_path, labels, ignore_label = item
    pred, ref, annotated = _read_pair(pred_path, ref_path, ignore_label)
    largest_fg = keep_largest_foreground_component(pred)
    table: dict[str, dict[int, float]] = {"raw": {}, "largest_fg": {}, "label_from_raw": {}, "label_from_fg": {}}
    for v in labels:
        ref_mask = ref == v
        table["raw"][v] = _dice(ref_mask, pred == v, annotated)
        table["largest_fg"][v] = _dice(ref_mask, largest_fg == v, annotated)
        table["label_from_raw"][v] = _dice(ref_mask, keep_largest_component_of_label(pred, v) == v, annotated)
        table["label_from_fg"][v] = _dice(ref_mask, keep_largest_component_of_label(largest_fg, v) == v, annotated)
    return table


def _region_case_dice(item: tuple[str, str, tuple[tuple[int, ...], ...], int | None, dict[str, Any]]
                      ) -> dict[str, float]:
    """Worker: Dice of every region of one case after applying a (candidate) decision."""
    pred_path, ref_path, regions, ignore_label, decision_dict = item
    pred, ref, annotated = _read_pair(pred_path, ref_path, ignore_label)
    pred = apply_postprocessing(pred, from_dict(PostprocessingDecision, decision_dict, "candidate decision"))
    return {target_key(r): _dice(np.isin(ref, r), np.isin(pred, r), annotated) for r in regions}


def _means(tables: list[dict[str, dict[int, float]]], key: str, labels: tuple[int, ...]) -> _Means:
    return _Means({v: _mean_ignoring_nan([t[key][v] for t in tables]) for v in labels})


def _paired_files(pred_dir: str | os.PathLike[str], ref_dir: str | os.PathLike[str]) -> list[tuple[str, str, str]]:
    """(name, prediction, reference) of every prediction; a prediction without reference is refused."""
    preds = list_label_files(pred_dir)
    refs = list_label_files(ref_dir)
    if not preds:
        raise DatasetError(f"{pred_dir}: no predictions found to decide postprocessing on")
    orphans = sorted(set(preds) - set(refs))
    if orphans:
        raise DatasetError(f"{ref_dir}: no reference for prediction(s) {', '.join(orphans[:10])}; check the folders")
    return [(n, str(preds[n]), str(refs[n])) for n in sorted(preds)]


def determine_postprocessing(
    pred_dir: str | os.PathLike[str],
    ref_dir: str | os.PathLike[str],
    label_values: Sequence[Target],
    num_workers: int = 0,
    ignore_label: int | None = None,
) -> PostprocessingDecision:
    """Decide the cleanup on the predictions in `pred_dir` against same-named references in `ref_dir`.

    `label_values` are the foreground labels, or the regions (sequences of label values) of a region task.
    """
    if any(not isinstance(v, (int, np.integer)) for v in label_values):
        regions = tuple(tuple(int(x) for x in v) for v in label_values)  # type: ignore[union-attr]
        return _decide_regions(pred_dir, ref_dir, regions, num_workers, ignore_label)
    labels = tuple(int(v) for v in label_values if int(v) != 0)  # type: ignore[arg-type]
    if not labels:
        raise AutounetError("determine_postprocessing: no foreground labels given")
    pairs = _paired_files(pred_dir, ref_dir)
    names = [n for n, _, _ in pairs]
    items = [(pred, ref, labels, ignore_label) for _, pred, ref in pairs]
    tables = run_parallel(_case_dice_table, items, names, num_workers, desc="postprocessing",
                          show_progress=len(items) > 1)

    before = _means(tables, "raw", labels)
    after_fg = _means(tables, "largest_fg", labels)
    no_label_worse = all(not (after_fg.per_label[v] < before.per_label[v]) for v in labels)
    accept_fg = after_fg.foreground > before.foreground and no_label_worse
    log.info("largest foreground component: foreground Dice %.4f -> %.4f, %s", before.foreground,
             after_fg.foreground, "accepted" if accept_fg else "rejected")

    current = _Means(dict((after_fg if accept_fg else before).per_label))
    per_label_key = "label_from_fg" if accept_fg else "label_from_raw"
    kept_labels: list[int] = []
    if len(labels) > 1:
        candidate = _means(tables, per_label_key, labels)
        for v in labels:
            if candidate.per_label[v] > current.per_label[v]:
                log.info("largest component of label %d: Dice %.4f -> %.4f, accepted", v,
                         current.per_label[v], candidate.per_label[v])
                current.per_label[v] = candidate.per_label[v]
                kept_labels.append(v)

    return PostprocessingDecision(
        keep_largest_foreground=bool(accept_fg),
        keep_largest_per_label=kept_labels,
        dice_before={str(v): before.per_label[v] for v in labels},
        dice_after={str(v): current.per_label[v] for v in labels},
        foreground_mean_before=before.foreground,
        foreground_mean_after=current.foreground,
        decided_on=str(pred_dir),
        num_cases=len(tables),
    )


def _decide_regions(pred_dir: str | os.PathLike[str], ref_dir: str | os.PathLike[str],
                    regions: tuple[tuple[int, ...], ...], num_workers: int,
                    ignore_label: int | None) -> PostprocessingDecision:
    """The same two kinds of step for regions, tried in turn on the output of the accepted ones."""
    pairs = _paired_files(pred_dir, ref_dir)
    names = [n for n, _, _ in pairs]

    def means(decision: PostprocessingDecision) -> dict[str, float]:
        items = [(pred, ref, regions, ignore_label, to_dict(decision)) for _, pred, ref in pairs]
        rows = run_parallel(_region_case_dice, items, names, num_workers, desc="postprocessing",
                            show_progress=len(items) > 1)
        return {target_key(r): _mean_ignoring_nan([row[target_key(r)] for row in rows]) for r in regions}

    def fg(m: dict[str, float]) -> float:
        return _mean_ignoring_nan(list(m.values()))

    def step(keep_fg: bool, kept: list[list[int]]) -> PostprocessingDecision:
        return PostprocessingDecision(keep_fg, [], {}, {}, 0.0, 0.0, str(pred_dir), len(pairs),
                                      keep_largest_per_region=kept)

    before = means(step(False, []))
    after_fg = means(step(True, []))
    accept_fg = fg(after_fg) > fg(before) and all(not (after_fg[k] < before[k]) for k in before)
    log.info("largest foreground component: foreground Dice %.4f -> %.4f, %s", fg(before), fg(after_fg),
             "accepted" if accept_fg else "rejected")
    current, kept = (after_fg if accept_fg else before), []
    for region in regions if len(regions) > 1 else ():
        candidate = means(step(accept_fg, [*kept, list(region)]))
        key = target_key(region)
        if candidate[key] > current[key] and fg(candidate) >= fg(current):
            log.info("largest component of region %s: Dice %.4f -> %.4f, accepted", key, current[key], candidate[key])
            current, kept = candidate, [*kept, list(region)]
    return PostprocessingDecision(
        keep_largest_foreground=bool(accept_fg), keep_largest_per_label=[], dice_before=before, dice_after=current,
        foreground_mean_before=fg(before), foreground_mean_after=fg(current), decided_on=str(pred_dir),
        num_cases=len(pairs), keep_largest_per_region=kept,
    )


def _postprocess_item(item: tuple[str, str, dict[str, Any]]) -> str:
    """Worker: read, clean up and write one label map on the same grid."""
    in_path, out_path, decision_dict = item
    decision = from_dict(PostprocessingDecision, decision_dict, "postprocessing decision")
    seg, geometry = read_label(in_path)
    write_label(apply_postprocessing(seg, decision), geometry, out_path)
    return out_path


def postprocess_folder(
    in_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    decision_path: str | os.PathLike[str],
    num_workers: int = 0,
) -> list[Path]:
    """Apply a stored decision to every label map of `in_dir`, writing same-named files to `out_dir`."""
    in_dir, out_dir = Path(in_dir), Path(out_dir)
    if in_dir.resolve() == out_dir.resolve():
        raise AutounetError(f"{out_dir}: output folder must differ from the input folder (inputs are kept)")
    decision = load_postprocessing(decision_path)
    files = list_label_files(in_dir)
    if not files:
        raise DatasetError(f"{in_dir}: no label maps found to postprocess")
    out_dir.mkdir(parents=True, exist_ok=True)
    log.info("postprocessing: %s", decision.describe())
    names = sorted(files)
    items = [(str(files[n]), str(out_dir / n), to_dict(decision)) for n in names]
    written = run_parallel(_postprocess_item, items, names, num_workers, desc="postprocess",
                           show_progress=len(items) > 1)
    return [Path(p) for p in written]
