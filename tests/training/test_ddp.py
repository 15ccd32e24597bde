"""Two-process DistributedDataParallel training with gloo on CPU, launched like torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from autounet.errors import AutounetError
from autounet.core.checkpoint import load_checkpoint
from autounet.core.run_layout import FINAL
from autounet.training.distributed import DistributedContext, context_from_env, per_rank_batch_size, rank_seed
from autounet.training.metrics_log import read_rows

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # the synthetic-task helpers live in test_trainer.py
from test_trainer import TASK, make_toy_workspace  # noqa: E402

SCRIPT = f"""
import sys
from pathlib import Path
sys.path.insert(0, {str(HERE)!r})
import torch
torch.set_num_threads(1)
from autounet.core.workspace import Workspace
from autounet.training.run_training import run_training
from test_trainer import fast_settings, toy_loader_builder
settings = fast_settings(epochs=1, iters_per_epoch=2, val_iters=1)
run_training(Workspace(Path(sys.argv[1])), None, "3d_fullres", 0, settings, loader_builder=toy_loader_builder)
"""


def test_batch_split_and_rank_seeds() -> None:
    assert per_rank_batch_size(4, 2) == 2
    assert per_rank_batch_size(5, 2) == 2
    with pytest.raises(AutounetError, match="batch_size 2 cannot be split over 3"):
        per_rank_batch_size(2, 3)
    assert len({rank_seed(1, 0, r) for r in range(4)}) == 4
    assert rank_seed(1, 5, 0) == rank_seed(1, 5, 0)


def test_context_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    assert context_from_env() == DistributedContext(0, 1, 0)
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    ctx = context_from_env()
    assert ctx.enabled and not ctx.is_main and ctx.local_rank == 1


def test_two_process_gloo_training_finishes(tmp_path: Path) -> None:
    ws = make_toy_workspace(tmp_path)
    script = tmp_path / "train_ddp.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
         str(tmp_path)], capture_output=True, text=True, timeout=240, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    fold_dir = ws.results(TASK) / "3d_fullres__1ep_2it" / "fold_0"
    assert load_checkpoint(fold_dir / FINAL)["epoch"] == 1
    assert [r["epoch"] for r in read_rows(fold_dir / "metrics.jsonl")] == [1]  # rank 0 alone writes
    manifest = json.loads((fold_dir / "run.json").read_text())
    assert manifest["world_size"] == 2 and manifest["status"] == "finished"
    assert (fold_dir / "validation" / "summary.json").is_file()
    assert "2 processes" in (fold_dir / "training.log").read_text()
