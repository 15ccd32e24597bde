"""`autounet report`: one self-contained HTML page per task that a person can look at.

Everything is embedded (PNG figures as base64 data URIs, no scripts, no network), so the page
can be mailed or opened on an air-gapped workstation. Sections: dataset fingerprint, plans
with the reason for each decision, training curves per fold, cross-validation Dice per class
and per case (worst first), and overlays of a sample of validation cases.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from autounet.io.atomic import write_text  # noqa: E402
from autounet.core.run_layout import validation_summary  # noqa: E402
from autounet.core.workspace import Workspace  # noqa: E402

log = logging.getLogger(__name__)

SECTIONS = ("fingerprint", "plans", "training", "cross-validation", "overlays")

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1100px;
color:#222;line-height:1.4;padding:0 1em}
h1{font-size:1.6em}h2{border-bottom:2px solid #4363d8;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.6em 0 1.2em;font-size:.9em}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right}th{background:#eef}
td.l,th.l{text-align:left}.bad{background:#fdd}.best{background:#dfd}.note{color:#666;font-size:.9em}
img{max-width:100%;border:1px solid #ddd;margin:.3em 0}
.grid{display:flex;flex-wrap:wrap;gap:1em}.grid figure{margin:0}
figcaption{font-size:.85em;color:#444}
"""


@dataclass
class ReportData:
    """What the report shows, gathered from the stages' files (missing stages stay empty)."""

    task: str
    fingerprint: Any = None
    plans: Any = None
    runs: dict[str, dict[str, list[dict[str, Any]]]] = field(default_factory=dict)
    validation: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    best: dict[str, Any] | None = None
    overlays: list[tuple[str, bytes]] = field(default_factory=list)


def _png_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _fig_png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


def _esc(value: Any) -> str:
    return html.escape(str(value))


def _fmt(value: Any, digits: int = 3) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        return f"{value:.{digits}f}"
    return _esc(value)


def _table(header: list[str], rows: list[list[Any]], left: int = 1, row_classes: list[str] | None = None) -> str:
    head = "".join(f'<th class="{"l" if i < left else ""}">{_esc(h)}</th>' for i, h in enumerate(header))
    body = []
    for r, row in enumerate(rows):
        cls = f' class="{row_classes[r]}"' if row_classes and row_classes[r] else ""
        cells = "".join(f'<td class="{"l" if i < left else ""}">{_fmt(v)}</td>' for i, v in enumerate(row))
        body.append(f"<tr{cls}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


# --------------------------------------------------------------------------- gathering


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                log.warning("%s: skipping an unreadable line", path)
    return rows


def gather(workspace: Workspace, task: str, max_overlays: int = 6) -> ReportData:
    """Read fingerprint, plans, training logs, validation summaries and draw overlays."""
    data = ReportData(task)
    pre = workspace.preprocessed(task)
    if (pre / "fingerprint.json").is_file():
        from autounet.task.fingerprint import load_fingerprint

        data.fingerprint = load_fingerprint(pre / "fingerprint.json")
    if (pre / "plans.json").is_file():
        from autounet.planners.plans import load_plans

        data.plans = load_plans(pre / "plans.json")
    results = workspace.results(task)
    if results.is_dir():
        for run in sorted(p for p in results.iterdir() if p.is_dir()):
            for fold in sorted(run.glob("fold_*")):
                metrics = fold / "metrics.jsonl"
                if metrics.is_file():
                    data.runs.setdefault(run.name, {})[fold.name] = _read_jsonl(metrics)
                summary = validation_summary(fold)
                if summary.is_file():
                    data.validation.setdefault(run.name, {})[fold.name] = json.loads(summary.read_text("utf-8"))
        best = results / "best_configuration.json"
        if best.is_file():
            try:
                data.best = json.loads(best.read_text("utf-8"))
            except json.JSONDecodeError:
                log.warning("%s: unreadable, the model selection is left out of the report", best)
    data.overlays = _validation_overlays(workspace, task, data, max_overlays)
    return data


def _validation_overlays(workspace: Workspace, task: str, data: ReportData, limit: int) -> list[tuple[str, bytes]]:
    """Overlays of the worst and best validation cases of the selected run (else the first one)."""
    from autounet.io.images import read_channels, read_label
    from autounet.reporting.overlay import render_overlay

    if not data.validation:
        return []
    try:
        from autounet.task.dataset import find_task, load_task

        raw = load_task(find_task(task, workspace))
    except Exception as exc:  # noqa: BLE001 - the report still renders without pictures
        log.warning("overlays skipped: raw task %s not found (%s)", task, exc)
        return []
    images = {c.case_id: c.images for c in raw.training}
    names = {v: k for k, v in raw.labels.items()}
    out: list[tuple[str, bytes]] = []
    selected = [r for r in (data.best or {}).get("selected", {}).get("run_names", []) if r in data.validation]
    run_name = selected[0] if selected else next(iter(data.validation))
    folds = data.validation[run_name]
    per_case = []
    for fold_name, summary in folds.items():
        for case_id, dice in case_dice_rows(summary):
            if not math.isnan(dice):  # both maps empty: nothing to look at
                per_case.append((dice, case_id, fold_name))
    per_case.sort(key=lambda t: t[0])
    chosen = per_case[: limit // 2] + per_case[::-1][: limit - limit // 2]
    seen: set[str] = set()
    for dice, case_id, fold_name in chosen:
        if case_id in seen or case_id not in images:
            continue
        seen.add(case_id)
        pred_dir = workspace.results(task) / run_name / fold_name / "validation"
        pred_files = [p for p in pred_dir.glob(f"{case_id}.*") if p.suffix in (".gz", ".nii", ".nrrd", ".mha")]
        ref = workspace.preprocessed(task) / "gt_segmentations" / f"{case_id}.nii.gz"
        if not pred_files or not ref.is_file():
            continue
        try:
            image, geometry = read_channels(images[case_id])
            reference, _ = read_label(ref)
            prediction, _ = read_label(pred_files[0])
            png = render_overlay(image, reference, prediction, geometry.spacing_zyx, names,
                                 title=f"{case_id} ({run_name}, {fold_name}) Dice {_fmt(dice)}")
        except Exception as exc:  # noqa: BLE001 - one bad picture must not sink the report
            log.warning("overlay of %s skipped: %s", case_id, exc)
            continue
        out.append((f"{case_id}: mean foreground Dice {_fmt(dice)} ({run_name}, {fold_name})", png))
    return out


def case_dice_rows(summary: dict[str, Any]) -> list[tuple[str, float]]:
    """(case id, mean foreground Dice) for each case of an evaluation summary."""
    rows = []
    for entry in summary.get("metric_per_case", []):
        case = entry.get("case_id") or Path(str(entry.get("prediction_file", "?"))).name.split(".")[0]
        dices = [m.get("Dice") for label, m in entry.get("metrics", {}).items() if str(label) != "0"]
        dices = [d for d in dices if isinstance(d, (int, float)) and not math.isnan(d)]
        rows.append((case, float(np.mean(dices)) if dices else float("nan")))
    return rows


# --------------------------------------------------------------------------- sections


def _section_fingerprint(data: ReportData) -> str:
    fp = data.fingerprint
    if fp is None:
        return "<p class=note>No fingerprint yet: run <code>autounet plan_and_preprocess</code>.</p>"
    spacings = np.array([c.spacing for c in fp.cases], dtype=float)
    shapes = np.array([c.shape for c in fp.cases], dtype=float)
    cropped = np.array([c.shape_after_crop for c in fp.cases], dtype=float)
    rows = [
        ["cases", len(fp.cases), "", ""],
        ["spacing (z, y, x) mm", _vec(np.min(spacings, 0)), _vec(np.median(spacings, 0)), _vec(np.max(spacings, 0))],
        ["shape (z, y, x)", _vec(np.min(shapes, 0), 0), _vec(np.median(shapes, 0), 0), _vec(np.max(shapes, 0), 0)],
        ["shape after crop", _vec(np.min(cropped, 0), 0), _vec(np.median(cropped, 0), 0), _vec(np.max(cropped, 0), 0)],
        ["relative size after crop", "", _fmt(float(fp.median_relative_size_after_crop)), ""],
    ]
    out = "<h3>Cases</h3>" + _table(["", "min", "median", "max"], rows)
    channel_rows = []
    for key, props in fp.intensity_properties.items():
        name = fp.channel_names.get(key, key)
        channel_rows.append([f"{key}: {name}", props.mean, props.std, props.median, props.min, props.max,
                             props.percentile_00_5, props.percentile_99_5])
    out += "<h3>Foreground intensities per channel</h3>" + _table(
        ["channel", "mean", "std", "median", "min", "max", "p0.5", "p99.5"], channel_rows)
    label_rows = []
    for name, value in sorted(fp.labels.items(), key=lambda kv: kv[1]):
        if value == 0:
            continue
        counts = [c.label_voxel_counts.get(str(value), 0) * float(np.prod(c.spacing)) / 1000.0 for c in fp.cases]
        present = sum(1 for c in fp.cases if c.label_voxel_counts.get(str(value), 0) > 0)
        label_rows.append([f"{value}: {name}", present, float(np.median(counts)), float(np.min(counts)), float(np.max(counts))])
    out += "<h3>Class volumes (ml)</h3>" + _table(["class", "cases present", "median", "min", "max"], label_rows)
    return out


def _vec(v: np.ndarray, digits: int = 2) -> str:
    return " x ".join(f"{x:.{digits}f}" for x in v)


def _section_plans(data: ReportData) -> str:
    plans = data.plans
    if plans is None:
        return "<p class=note>No plans yet.</p>"
    rows = []
    for name, cfg in plans.configurations.items():
        rows.append([name, " x ".join(f"{s:.2f}" for s in cfg.spacing), " x ".join(map(str, cfg.patch_size)),
                     cfg.batch_size, cfg.network.n_stages, cfg.network.architecture,
                     f"{cfg.estimated_memory_bytes / 1e9:.2f} GB", ", ".join(cfg.normalization)])
    out = _table(["configuration", "spacing", "patch", "batch", "stages", "network", "est. memory", "normalization"], rows)
    out += f"<p>Planned for {plans.gpu_memory_target_gb:.1f} GB of GPU memory; transpose {plans.transpose_forward}.</p>"
    reason_rows = [["task", k, v] for k, v in plans.reasons.items()]
    for name, cfg in plans.configurations.items():
        reason_rows += [[name, k, v] for k, v in cfg.reasons.items()]
    out += "<h3>Why</h3>" + _table(["configuration", "decision", "reason"], reason_rows, left=3)
    return out


def _curves_png(run: str, folds: dict[str, list[dict[str, Any]]]) -> bytes:
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    for fold, rows in folds.items():
        ep = [r.get("epoch") for r in rows]
        axes[0].plot(ep, [r.get("train_loss") for r in rows], label=f"{fold} train")
        axes[0].plot(ep, [r.get("val_loss") for r in rows], "--", label=f"{fold} val")
        ema = [r.get("ema_pseudo_dice") for r in rows]
        if any(v is not None for v in ema):
            axes[1].plot(ep, ema, label=f"{fold} EMA")
        pd = [_mean_dict(r.get("pseudo_dice")) for r in rows]
        axes[1].plot(ep, pd, ":", label=f"{fold} mean")
        axes[2].plot(ep, [r.get("lr") for r in rows], label=fold)
    axes[0].set_title("loss")
    axes[1].set_title("pseudo Dice (patch-based proxy)")
    axes[2].set_title("learning rate")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.legend(fontsize=7)
    fig.suptitle(run, fontsize=10)
    fig.tight_layout()
    return _fig_png(fig)


def _mean_dict(value: Any) -> float:
    if isinstance(value, dict) and value:
        vals = [float(v) for v in value.values() if v is not None]
        return float(np.mean(vals)) if vals else float("nan")
    return float("nan") if value is None else float(value)


def _section_training(data: ReportData) -> str:
    if not data.runs:
        return "<p class=note>No training runs yet: run <code>autounet train 3d_fullres fold 0</code>.</p>"
    parts = []
    for run, folds in data.runs.items():
        last = {f: rows[-1] for f, rows in folds.items() if rows}
        parts.append(f"<h3>{_esc(run)}</h3><img alt='training curves {_esc(run)}' src='{_png_uri(_curves_png(run, folds))}'>")
        parts.append(_table(["fold", "epochs", "last train loss", "last val loss", "last EMA pseudo Dice"],
                            [[f, r.get("epoch"), r.get("train_loss"), r.get("val_loss"), r.get("ema_pseudo_dice")]
                             for f, r in last.items()]))
    return "".join(parts)


def _section_cv(data: ReportData) -> str:
    if not data.validation:
        return "<p class=note>No validation results yet (written at the end of each fold).</p>"
    names = {str(v): k for k, v in (data.plans.labels.items() if data.plans else [])}
    if data.plans is not None and data.plans.regions:
        names = {",".join(str(v) for v in r.values): r.name for r in data.plans.regions}
    parts = []
    for run, folds in data.validation.items():
        per_label: dict[str, list[float]] = {}
        case_rows: list[list[Any]] = []
        for fold, summary in folds.items():
            for entry in summary.get("metric_per_case", []):
                for label, m in entry.get("metrics", {}).items():
                    if str(label) != "0" and isinstance(m.get("Dice"), (int, float)):
                        per_label.setdefault(str(label), []).append(float(m["Dice"]))
            for case, dice in case_dice_rows(summary):
                case_rows.append([case, fold, dice])
        label_rows = [[f"{k}: {names.get(k, k)}", float(np.nanmean(v)) if not all(math.isnan(x) for x in v) else float("nan"), len(v)]
                      for k, v in sorted(per_label.items(), key=lambda kv: [int(x) for x in kv[0].split(",")])]
        means = [r[1] for r in label_rows if not math.isnan(r[1])]
        label_rows.append(["foreground mean", float(np.mean(means)) if means else float("nan"), ""])
        case_rows.sort(key=lambda r: (math.isnan(r[2]), r[2]))
        classes = ["bad" if (not math.isnan(r[2]) and r[2] < 0.5) else "" for r in case_rows]
        parts.append(f"<h3>{_esc(run)} ({', '.join(folds)})</h3>")
        parts.append(_table(["class", "mean Dice", "cases"], label_rows))
        parts.append("<p>Per case, worst first:</p>" + _table(["case", "fold", "mean foreground Dice"], case_rows,
                                                              left=2, row_classes=classes))
    return "".join(parts)


def _model_selection(data: ReportData) -> str:
    """The find_best_configuration choice: every candidate's Dice and the chosen postprocessing."""
    best = data.best
    if not best:
        return ("<p class=note>No model selection yet: run <code>autounet find_best_configuration "
                f"{_esc(data.task)}</code>.</p>")
    chosen = best.get("selected", {}).get("name")
    rows = [[c.get("name"), c.get("kind"), ", ".join(map(str, c.get("folds", []))), c.get("num_cases", ""),
             c.get("foreground_mean_dice")] for c in best.get("candidates", [])]
    out = _table(["candidate", "kind", "folds", "cases", "foreground Dice"], rows, left=3,
                 row_classes=["best" if r[0] == chosen else "" for r in rows])
    out += f"<p>Selected: <b>{_esc(chosen)}</b>. {_esc(best.get('postprocessing_summary') or 'No postprocessing.')}</p>"
    return "<h3>Model selection (find_best_configuration)</h3>" + out


def _section_overlays(data: ReportData) -> str:
    if not data.overlays:
        return "<p class=note>No validation predictions to show yet.</p>"
    figs = "".join(f"<figure><img alt='{_esc(cap)}' src='{_png_uri(png)}'><figcaption>{_esc(cap)}</figcaption></figure>"
                   for cap, png in data.overlays)
    return ("<p>Slice through the largest foreground; left reference, right prediction, outlined in class colours. "
            "Worst and best validation cases.</p>" + f"<div class=grid>{figs}</div>")


def render_html(data: ReportData) -> str:
    body = [
        f"<h1>autounet report: {_esc(data.task)}</h1>",
        "<h2 id='fingerprint'>Dataset fingerprint</h2>", _section_fingerprint(data),
        "<h2 id='plans'>Plans</h2>", _section_plans(data),
        "<h2 id='training'>Training curves</h2>", _section_training(data),
        "<h2 id='cross-validation'>Cross-validation Dice</h2>", _section_cv(data) + _model_selection(data),
        "<h2 id='overlays'>Overlays</h2>", _section_overlays(data),
    ]
    return ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            f"<title>autounet report: {_esc(data.task)}</title><style>{_CSS}</style></head><body>"
            + "\n".join(body) + "</body></html>\n")


def write_report(workspace: Workspace, task: str, output: Path | None = None) -> Path:
    """Gather and write `<workspace>/results/<task>/report.html` (or `output`)."""
    data = gather(workspace, task)
    out = output or (workspace.results(task) if workspace.results(task).is_dir() else workspace.preprocessed(task)) / "report.html"
    write_text(out, render_html(data))
    log.info("report written to %s", out)
    return out


def refresh_report(workspace: Workspace, task: str) -> Path | None:
    """Rewrite the task's report after a stage finished; a report problem never fails the stage."""
    try:
        return write_report(workspace, task)
    except Exception as exc:  # noqa: BLE001 - the report is a by-product of the stage that just succeeded
        log.warning("report not updated (%s: %s); run `autounet report %s` to retry", type(exc).__name__, exc, task)
        return None
