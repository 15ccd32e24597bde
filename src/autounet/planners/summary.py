"""Human-readable summary of plans.json, printed by `autounet plans <task>`."""

from __future__ import annotations

from autounet.planners.plans import Plans

_COLUMNS = ("configuration", "spacing", "patch", "batch", "stages", "est. memory", "normalization", "data")


def _x(values: list[float] | list[int]) -> str:
    return "x".join(f"{v:.3g}" if isinstance(v, float) else str(v) for v in values)


def format_plans_table(plans: Plans) -> str:
    """Fixed-width table of every configuration, then the task-level and per-configuration reasons."""
    rows = [list(_COLUMNS)]
    for name, cfg in plans.configurations.items():
        norm = ",".join(f"{s}{'(mask)' if m else ''}" for s, m in zip(cfg.normalization, cfg.use_mask_for_norm))
        rows.append([
            name,
            _x(cfg.spacing),
            _x(cfg.patch_size),
            str(cfg.batch_size),
            str(cfg.network.n_stages),
            f"{cfg.estimated_memory_bytes / 1e9:.2f} GB",
            norm,
            cfg.data_identifier,
        ])
    widths = [max(len(r[i]) for r in rows) for i in range(len(_COLUMNS))]
    lines = [
        f"plans for {plans.task}: {plans.num_channels} channel(s), "
        + (f"{len(plans.regions)} regions ({', '.join(plans.output_names)}), " if plans.regions
           else f"{plans.num_classes} classes, ")
        + (f"ignore label {plans.ignore_label}, " if plans.ignore_label is not None else "") +
        f"GPU memory target {plans.gpu_memory_target_gb:g} GB, transpose {plans.transpose_forward}",
        "",
    ]
    for i, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines.append("")
    lines.append("why:")
    for key, text in plans.reasons.items():
        lines.append(f"  {key}: {text}")
    for name, cfg in plans.configurations.items():
        lines.append(f"  [{name}]")
        for key, text in cfg.reasons.items():
            lines.append(f"    {key}: {text}")
    return "\n".join(lines)
