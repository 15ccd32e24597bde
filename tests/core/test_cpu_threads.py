"""CPU thread policy shared by training and prediction."""

from __future__ import annotations

from autounet.core.system import cpu_count, cpu_threads


def test_cpu_threads_use_all_cores_shared_among_ranks() -> None:
    cores = cpu_count()
    assert cpu_threads(3) == (3, "--threads")
    assert cpu_threads(0)[0] == 1
    assert cpu_threads(None)[0] == cores
    assert cpu_threads(None, world_size=2)[0] == max(1, cores // 2)
    assert cpu_threads(None, world_size=cores * 2)[0] == 1
