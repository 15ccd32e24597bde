"""Plain-text tables of evaluation summaries and model-selection candidates, for terminals and .txt files."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    value = float(value)
    if math.isnan(value):
        return "n/a"
    if math.isinf(value):
        return "inf"
    return f"{value:.{digits}f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in [header, *rows]]
    lines.insert(1, "-" * len(lines[0]))
    return lines


def _label_title(label: str, label_names: Mapping[Any, str] | None) -> str:
    """The summary key ("2", or "1,2,3" for a region) and its name; names are keyed by key or by label value."""
    names = label_names or {}
    name = names.get(label) or (names.get(int(label)) if label.lstrip("-").isdigit() else None)
    if name and name != label:
        return f"{label} {name}"
    return label


def format_summary(summary: Mapping[str, Any], label_names: Mapping[Any, str] | None = None) -> str:
    """Per-label means (Dice, IoU, and HD95/NSD when present), foreground mean and worst cases.

    `label_names` maps label values to names (e.g. inverted dataset.json labels).
    """
    mean: Mapping[str, Mapping[str, float]] = summary["mean"]
    quality = [k for k in summary.get("foreground_mean", {}) if k in ("Dice", "IoU", "HD95") or k.startswith("NSD@")]
    header = ["label", *quality, "cases", "both empty"]
    rows = []
    for label, entry in mean.items():
        rows.append([_label_title(label, label_names), *(_fmt(entry.get(k)) for k in quality),
                     str(entry.get("num_cases", "")), str(entry.get("num_excluded_both_empty", ""))])
    fg = summary.get("foreground_mean", {})
    rows.append(["foreground mean", *(_fmt(fg.get(k)) for k in quality), str(summary.get("num_cases", "")), ""])
    lines = _table(header, rows)
    lines.append("('both empty': cases without this label in reference and prediction, left out of its mean)")
    worst = summary.get("worst_cases") or []
    if worst:
        lines.append("")
        lines.append(f"{len(worst)} worst case(s) by foreground Dice:")
        lines += [f"  {w['case']}  {_fmt(w['foreground_dice'])}" for w in worst]
    missing = summary.get("missing_predictions") or []
    if missing:
        lines.append(f"{len(missing)} reference case(s) without a prediction were not evaluated")
    return "\n".join(lines)


def format_candidates(candidates: Sequence[Mapping[str, Any]], label_names: Mapping[Any, str] | None = None,
                      selected: str | None = None) -> str:
    """Model-selection table: one row per candidate (best first), foreground and per-label Dice."""
    labels: list[str] = []
    for c in candidates:
        labels += [lab for lab in c.get("per_label", {}) if lab not in labels]
    header = ["candidate", "kind", "folds", "foreground Dice", *(_label_title(lab, label_names) for lab in labels)]

    def sort_key(c: Mapping[str, Any]) -> float:
        v = c.get("foreground_mean_dice")
        return -math.inf if v is None or math.isnan(float(v)) else float(v)

    rows = []
    for c in sorted(candidates, key=sort_key, reverse=True):
        name = ("* " if c["name"] == selected else "  ") + c["name"]
        folds = ",".join(str(f) for f in c.get("folds", []))
        rows.append([name, c.get("kind", ""), folds, _fmt(c.get("foreground_mean_dice")),
                     *(_fmt(c.get("per_label", {}).get(lab)) for lab in labels)])
    lines = _table(header, rows)
    if selected:
        lines.append(f"* selected: {selected}")
    return "\n".join(lines)
