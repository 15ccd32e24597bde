"""The plans table lists every configuration with its numbers and the reasons."""

from __future__ import annotations

from collections.abc import Callable

from autounet.task.fingerprint import Fingerprint
from autounet.planners.experiment_planner import plan_experiment
from autounet.planners.summary import format_plans_table


def test_table_contains_every_configuration(make_fingerprint: Callable[..., Fingerprint]) -> None:
    plans = plan_experiment(make_fingerprint((1.0, 1.0, 1.0), (512, 512, 512)), gpu_memory_gb=8.0)
    text = format_plans_table(plans)
    lines = text.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("configuration"))
    rows = lines[header + 2: header + 2 + len(plans.configurations)]
    assert [r.split()[0] for r in rows] == list(plans.configurations)
    for row, cfg in zip(rows, plans.configurations.values()):
        cells = row.split()
        assert cells[2] == "x".join(str(p) for p in cfg.patch_size)
        assert cells[3] == str(cfg.batch_size)
        assert cells[4] == str(cfg.network.n_stages)
        assert f"{cfg.estimated_memory_bytes / 1e9:.2f}" == cells[5]
    assert "Task99_Test" in lines[0]
    for cfg in plans.configurations.values():
        assert f"[{cfg.name}]" in text
        assert cfg.reasons["patch_size"] in text
    assert plans.reasons["configurations"] in text
