"""CPU thread policy of the trainer."""

from __future__ import annotations


def test_cpu_threads_use_all_cores_shared_among_ranks() -> None:
    from autounet.pipeline.system import cpu_count
    from autounet.training.trainer import cpu_threads

    cores = cpu_count()
    assert cpu_threads(3)[0] == 3
    assert cpu_threads(None)[0] == cores
    assert cpu_threads(None, world_size=2)[0] == max(1, cores // 2)
    assert cpu_threads(None, world_size=cores * 2)[0] == 1
