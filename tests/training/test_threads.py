"""CPU thread policy of the trainer."""

from __future__ import annotations


def test_cpu_threads_leave_cores_to_the_workers() -> None:
    from autounet.pipeline.system import cpu_count
    from autounet.training.trainer import cpu_threads

    cores = cpu_count()
    assert cpu_threads(3, workers=8)[0] == 3
    assert cpu_threads(None, workers=cores + 4)[0] == 1
    assert cpu_threads(None, workers=0)[0] == cores
    assert cpu_threads(None, workers=0, world_size=cores * 2)[0] == 1
