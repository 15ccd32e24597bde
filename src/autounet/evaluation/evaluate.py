"""Evaluate a folder of predicted label maps against reference label maps; write summary.json.

Predictions and references are matched by file name. Every metric is computed per case and per
label value (values as written on disk) or per region (the union of several label values in
both maps, keyed "1,2,3"); voxels of an ignore label in the reference are left out of every
metric. Metrics are averaged per label with `nanmean`, so cases where
both reference and prediction lack a label are left out of that label's mean and counted as
excluded. The headline number everywhere (model selection, postprocessing) is
`foreground_mean["Dice"]`: the mean of the per-label means over the foreground labels.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from autounet.errors import AutounetError, DatasetError
from autounet.evaluation import metrics as m
from autounet.io.atomic import is_temporary, write_json
from autounet.io.geometry import Geometry
from autounet.io.images import (
    DIRECTION_ATOL,
    ORIGIN_ATOL,
    SPACING_ATOL,
    SPACING_RTOL,
    SUPPORTED_ENDINGS,
    file_ending,
    read_label,
    strip_ending,
)
from autounet.core.parallel import run_parallel

log = logging.getLogger(__name__)

COUNT_KEYS = ("TP", "FP", "FN", "TN", "n_ref", "n_pred")
NUM_WORST_CASES = 5


def parse_metrics(text: str | Sequence[str]) -> tuple[str, ...]:
    """Parse "dice,hd95,nsd:2" into canonical names ("dice", "hd95", "nsd:2").

    Dice always comes with IoU and the voxel counts; "iou" is accepted as an alias of "dice".
    """
    parts = text.split(",") if isinstance(text, str) else list(text)
    out: list[str] = []
    for raw in parts:
        token = raw.strip().lower()
        if not token:
            continue
        if token in ("dice", "iou"):
            name = "dice"
        elif token == "hd95":
            name = "hd95"
        elif token.startswith("nsd"):
            _, _, tol_text = token.partition(":")
            try:
                tol = float(tol_text)
            except ValueError:
                raise AutounetError(
                    f"--metrics: '{raw.strip()}' needs a tolerance in mm, e.g. nsd:2"
                ) from None
            if not math.isfinite(tol) or tol < 0:
                raise AutounetError(f"--metrics: NSD tolerance must be a non-negative number of mm, got '{tol_text}'")
            name = f"nsd:{tol:g}"
        else:
            raise AutounetError(f"--metrics: unknown metric '{raw.strip()}'; use dice, iou, hd95, nsd:<mm>")
        if name not in out:
            out.append(name)
    # Canonical order (Dice always first, then HD95, then NSD tolerances as given) keeps summaries comparable.
    ordered = ["dice"] + [n for n in out if n == "hd95"] + [n for n in out if n.startswith("nsd:")]
    return tuple(ordered)


def nsd_key(tolerance_mm: float) -> str:
    """Name of the NSD entry in summaries, e.g. "NSD@2mm"."""
    return f"NSD@{tolerance_mm:g}mm"


def _nsd_tolerances(metric_names: Sequence[str]) -> list[float]:
    return [float(name.split(":", 1)[1]) for name in metric_names if name.startswith("nsd:")]


def quality_keys(metric_names: Sequence[str]) -> list[str]:
    """Summary keys of the quality metrics (not the voxel counts) requested by `metric_names`."""
    keys = ["Dice", "IoU"]
    if "hd95" in metric_names:
        keys.append("HD95")
    keys += [nsd_key(t) for t in _nsd_tolerances(metric_names)]
    return keys


def list_label_files(folder: str | os.PathLike[str]) -> dict[str, Path]:
    """Image files of a folder by file name, ignoring temporary files, probabilities and JSON."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"{folder}: folder not found")
    files: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and not is_temporary(p) and file_ending(p) is not None:
            files[p.name] = p
    return files


def geometry_differences(ref: Geometry, pred: Geometry, ref_shape: tuple[int, ...],
                         pred_shape: tuple[int, ...]) -> list[str]:
    """Human-readable list of how two grids differ (empty when they match within tolerance).

    Tolerances are those of the image reader (NIfTI headers are float32, so exact equality would
    reject true matches); unlike channel files, a different origin or direction is an error here.
    """
    diffs: list[str] = []
    if tuple(ref_shape) != tuple(pred_shape):
        diffs.append(f"shape {tuple(pred_shape)} vs reference {tuple(ref_shape)}")
    if not np.allclose(pred.spacing, ref.spacing, rtol=SPACING_RTOL, atol=SPACING_ATOL):
        diffs.append(f"spacing {tuple(pred.spacing)} vs reference {tuple(ref.spacing)}")
    if not np.allclose(pred.origin, ref.origin, rtol=0.0, atol=ORIGIN_ATOL):
        diffs.append(f"origin {tuple(pred.origin)} vs reference {tuple(ref.origin)}")
    if len(pred.direction) != len(ref.direction) or not np.allclose(
        pred.direction, ref.direction, rtol=0.0, atol=DIRECTION_ATOL
    ):
        diffs.append(f"direction {tuple(pred.direction)} vs reference {tuple(ref.direction)}")
    return diffs


def label_metrics(ref: np.ndarray, pred: np.ndarray, spacing: Sequence[float],
                  metric_names: Sequence[str]) -> dict[str, float]:
    """All requested metrics of one binary reference/prediction pair."""
    tp, fp, fn, tn = m.confusion_counts(ref, pred)
    out: dict[str, float] = {
        "Dice": m.dice_from_counts(tp, fp, fn),
        "IoU": m.iou_from_counts(tp, fp, fn),
        "TP": tp, "FP": fp, "FN": fn, "TN": tn,
        "n_ref": tp + fn, "n_pred": tp + fp,
    }
    tolerances = _nsd_tolerances(metric_names)
    if "hd95" in metric_names or tolerances:
        ref_to_pred, pred_to_ref = m.surface_distances(ref, pred, spacing)
        if "hd95" in metric_names:
            out["HD95"] = m.hd95_from_distances(ref_to_pred, pred_to_ref)
        for tol in tolerances:
            out[nsd_key(tol)] = m.nsd_from_distances(ref_to_pred, pred_to_ref, tol)
    return out


Target = int | Sequence[int]
"""What is evaluated: one label value, or a region (the union of several values)."""


def _target_values(target: Target) -> list[int]:
    return [int(target)] if isinstance(target, (int, np.integer)) else [int(v) for v in target]


def target_key(target: Target) -> str:
    """Summary key of a label ("2") or a region ("1,2,3"; a one-value region reads like its label)."""
    return ",".join(str(v) for v in _target_values(target))


def evaluate_arrays(ref: np.ndarray, pred: np.ndarray, label_values: Sequence[Target],
                    spacing: Sequence[float], metric_names: Sequence[str] = ("dice",),
                    ignore_label: int | None = None) -> dict[str, dict[str, float]]:
    """Metrics per label value or region ({target_key: {...}}) of two label maps on the same grid;
    reference voxels of `ignore_label` count in neither map."""
    annotated = None if ignore_label is None else ref != ignore_label
    out = {}
    for target in label_values:
        values = _target_values(target)
        r, p = np.isin(ref, values), np.isin(pred, values)
        if annotated is not None:
            r, p = r & annotated, p & annotated
        out[target_key(target)] = label_metrics(r, p, spacing, metric_names)
    return out


def evaluate_case(ref_path: str | os.PathLike[str], pred_path: str | os.PathLike[str],
                  label_values: Sequence[Target], metrics: Sequence[str] = ("dice",),
                  ignore_label: int | None = None) -> dict[str, Any]:
    """Evaluate one prediction file against its reference file.

    Raises DatasetError naming the prediction when its grid (shape, spacing, origin, direction)
    differs from the reference's.
    """
    metric_names = parse_metrics(metrics)
    ref, ref_geo = read_label(ref_path)
    pred, pred_geo = read_label(pred_path)
    diffs = geometry_differences(ref_geo, pred_geo, ref.shape, pred.shape)
    if diffs:
        raise DatasetError(
            f"{pred_path}: grid differs from reference {ref_path}: " + "; ".join(diffs)
            + "; predictions must be written on the reference's grid"
        )
    return {
        "reference_file": str(ref_path),
        "prediction_file": str(pred_path),
        "metrics": evaluate_arrays(ref, pred, label_values, ref_geo.spacing_zyx, metric_names, ignore_label),
    }


def _evaluate_item(item: tuple[str, str, tuple[Target, ...], tuple[str, ...], int | None]) -> dict[str, Any]:
    """Worker entry point (top level so that spawned processes can import it)."""
    ref_path, pred_path, labels, metric_names, ignore_label = item
    return evaluate_case(ref_path, pred_path, labels, metric_names, ignore_label)


def _nanmean(values: list[float]) -> float:
    finite_or_inf = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite_or_inf)) if finite_or_inf else float("nan")


def aggregate(per_case: list[dict[str, Any]], label_values: Sequence[Target],
              metric_names: Sequence[str]) -> dict[str, Any]:
    """Per-label means, foreground mean and worst cases from per-case results."""
    keys = quality_keys(metric_names)
    mean: dict[str, dict[str, float]] = {}
    for v in label_values:
        label = target_key(v)
        rows = [c["metrics"][label] for c in per_case]
        entry = {k: _nanmean([float(r[k]) for r in rows]) for k in keys}
        entry.update({k: _nanmean([float(r[k]) for r in rows]) for k in COUNT_KEYS})
        excluded = sum(1 for r in rows if r["n_ref"] == 0 and r["n_pred"] == 0)
        entry["num_cases"] = len(rows)
        entry["num_excluded_both_empty"] = excluded
        mean[label] = entry
    fg_labels = [target_key(v) for v in label_values if _target_values(v) != [0]]
    foreground_mean = {k: _nanmean([mean[lab][k] for lab in fg_labels]) for k in keys}

    case_scores = []
    for c in per_case:
        score = _nanmean([float(c["metrics"][lab]["Dice"]) for lab in fg_labels])
        if not math.isnan(score):
            case_scores.append((score, c))
    case_scores.sort(key=lambda sc: sc[0])
    worst = [
        {"case": strip_ending(Path(c["prediction_file"]).name), "prediction_file": c["prediction_file"],
         "foreground_dice": score}
        for score, c in case_scores[:NUM_WORST_CASES]
    ]
    return {"mean": mean, "foreground_mean": foreground_mean, "worst_cases": worst}


def evaluate_folder(
    ref_dir: str | os.PathLike[str],
    pred_dir: str | os.PathLike[str],
    label_values: Sequence[Target],
    metrics: Sequence[str] | str = ("dice",),
    num_workers: int = 0,
    output_file: str | os.PathLike[str] | None = None,
    allow_missing: bool = False,
    case_ids: Sequence[str] | None = None,
    ignore_label: int | None = None,
) -> dict[str, Any]:
    """Evaluate every prediction in `pred_dir` against the same-named reference in `ref_dir`.

    Background (0) is never evaluated, as in the reference method; it may be passed along.
    A prediction without a reference is always an error; references without a prediction are an
    error unless `allow_missing` (e.g. when only some folds were trained). Writes the summary to
    `output_file` (default `<pred_dir>/summary.json`) atomically and returns it. `case_ids`
    restricts references and predictions to those cases (a fold's validation cases among all
    references, ignoring anything else in the folder). A region is given as a sequence of label
    values; `ignore_label` voxels of a reference are left out of its metrics.
    """
    metric_names = parse_metrics(metrics)
    labels = tuple(int(v) if isinstance(v, (int, np.integer)) else tuple(int(x) for x in v)
                   for v in label_values if _target_values(v) != [0])
    if not labels:
        raise AutounetError("evaluate: no foreground labels to evaluate; pass them, e.g. --labels 1 2")
    refs = list_label_files(ref_dir)
    preds = list_label_files(pred_dir)
    if case_ids is not None:
        wanted = set(case_ids)
        refs = {n: path for n, path in refs.items() if strip_ending(n) in wanted}
        preds = {n: path for n, path in preds.items() if strip_ending(n) in wanted}
    if not preds:
        raise DatasetError(
            f"{pred_dir}: no predictions found (expected files ending in {', '.join(SUPPORTED_ENDINGS)})"
        )
    orphans = sorted(set(preds) - set(refs))
    if orphans:
        raise DatasetError(f"{ref_dir}: no reference for prediction(s) {_shortlist(orphans)}; check the folders")
    missing = sorted(set(refs) - set(preds))
    if missing and not allow_missing:
        raise DatasetError(
            f"{pred_dir}: missing prediction(s) for {len(missing)} reference case(s): {_shortlist(missing)}; "
            "predict them or allow missing predictions"
        )
    if missing:
        log.warning("%s: %d reference case(s) have no prediction and are not evaluated", pred_dir, len(missing))

    names = sorted(preds)
    items = [(str(refs[n]), str(preds[n]), labels, metric_names, ignore_label) for n in names]
    per_case = run_parallel(_evaluate_item, items, names, num_workers, desc="evaluate",
                            show_progress=len(items) > 1)
    summary: dict[str, Any] = {
        "reference_folder": str(ref_dir),
        "prediction_folder": str(pred_dir),
        "labels": [v if isinstance(v, (int, np.integer)) else list(v) for v in labels],
        **({"ignore_label": ignore_label} if ignore_label is not None else {}),
        "metrics": list(metric_names),
        "num_cases": len(per_case),
        "missing_predictions": [strip_ending(n) for n in missing],
        **aggregate(per_case, labels, metric_names),
        "metric_per_case": per_case,
    }
    write_json(Path(output_file) if output_file is not None else Path(pred_dir) / "summary.json", summary)
    return summary


def _unique_values(path: str) -> list[int]:
    """Worker: the label values present in one file."""
    seg, _ = read_label(path)
    return [int(v) for v in np.unique(seg)]


def labels_in_folder(folder: str | os.PathLike[str], num_workers: int = 0) -> list[int]:
    """Sorted label values occurring in any label map of `folder` (for evaluation without a task)."""
    files = list_label_files(folder)
    if not files:
        raise DatasetError(f"{folder}: no label maps found (expected files ending in {', '.join(SUPPORTED_ENDINGS)})")
    names = sorted(files)
    found = run_parallel(_unique_values, [str(files[n]) for n in names], names, num_workers,
                         desc="label values", show_progress=len(names) > 1)
    return sorted(set().union(*found))


def _shortlist(names: Sequence[str], limit: int = 10) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" ... ({len(names) - limit} more)" if len(names) > limit else "")
