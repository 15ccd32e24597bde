"""Folds side by side (`train --gpus` / `--parallel-folds`): the child command line, the slot queue,
failures, the refusals, and one real two-process run on the demo task."""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import signal
import sys
import time
from pathlib import Path

import pytest

from autounet.cli import build_parser, main, parse_folds
from autounet.commands import fold_fanout as ff
from autounet.commands import fold_summary as fs
from autounet.core.run_layout import fold_folder_name
from autounet.core.system import cpu_count
from autounet.core.workspace import Workspace
from autounet.errors import AutounetError
from autounet.training.run_identity import load_manifest, run_name
from autounet.training.settings import TrainingSettings

TASK = "Task01_Demo"


def _parse(argv: list[str]) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    args.fold_list = parse_folds(args.fold_words, args.fold, args.folds)
    return args


def _train_parser() -> argparse.ArgumentParser:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))  # noqa: SLF001
    return sub.choices["train"]


# --------------------------------------------------------------------------- the child command line


FULL = ["--workspace", "/w", "train", "3d_fullres", "--folds", "0-4", "--gpus", "0,1", "-t", "Task01",
        "--epochs", "3", "--iters-per-epoch", "4", "--tensorboard", "--val-iters", "2", "--device", "cuda",
        "--workers", "3", "--threads", "2", "--precision", "fp32", "--resume", "--init-from", "pre.pt",
        "--network", "resenc_unet", "--plans", "resenc-l", "--blocks", "se,attention_gate", "--save-probabilities", "--seed", "7", "--skip-validation", "--disable-tta",
        "-v"]


def test_child_argv_of_a_parsed_command_line() -> None:
    args = _parse(["train", "2d", "fold", "0", "--parallel-folds", "2", "--epochs", "5", "--resume",
                   "--workers", "0"])
    assert ff.child_argv(args, 3) == [
        sys.executable, "-m", "autounet", "train", "2d", "--fold", "3", "--epochs", "5", "--iters-per-epoch", "250",
        "--device", "auto", "--workers", "0", "--precision", "auto", "--resume", "--plans", "default", "--seed", "12345"]


def test_child_argv_reparses_to_every_option_unchanged() -> None:
    args = _parse(FULL)
    child = ff.child_argv(args, 3)
    assert child[:3] == [sys.executable, "-m", "autounet"]
    again = build_parser().parse_args(child[3:])
    assert (again.fold, again.fold_words, again.folds, again.gpus, again.parallel_folds) == ("3", [], None, None, None)
    skip = {"fold", "folds", "fold_words", "fold_list", "gpus"}
    assert {k: v for k, v in vars(again).items() if k not in skip} == \
        {k: v for k, v in vars(args).items() if k not in skip}


def test_every_train_option_is_spelled_as_its_destination() -> None:
    """child_argv writes `--dest-name`: a new train option passes through only if that is its flag."""
    for action in _train_parser()._actions:  # noqa: SLF001
        if action.option_strings and action.dest not in ("help", "fold", "folds"):
            assert "--" + action.dest.replace("_", "-") in action.option_strings, action.option_strings


def test_overrides_replace_values_and_fold_jobs_use_the_run_folder(tmp_path: Path) -> None:
    args = _parse(["train", "3d_fullres", "--folds", "0-2", "--parallel-folds", "2", "--epochs", "3",
                   "--iters-per-epoch", "4", "--workers", "0"])
    ws = Workspace(tmp_path)
    settings = TrainingSettings(epochs=3, iters_per_epoch=4, workers=0)
    jobs = ff.fold_jobs(ws, TASK, args, settings, [0, 1, 2, 1], parallel=2)
    assert [j.fold for j in jobs] == ["0", "1", "2"]  # a fold named twice trains once
    run_dir = ws.results(TASK) / run_name("3d_fullres", settings)
    assert [j.fold_dir for j in jobs] == [run_dir / fold_folder_name(k) for k in range(3)]
    again = build_parser().parse_args(jobs[1].argv[3:])
    assert (again.workspace, again.task, again.fold) == (str(tmp_path), TASK, "1")
    assert again.threads == max(1, cpu_count() // 2)  # not given: the cores shared out
    assert again.workers == 0  # given: unchanged
    assert jobs[0].log_path == run_dir / "fold_0" / "fanout.log"


# --------------------------------------------------------------------------- choosing slots


def test_choose_slots() -> None:
    gpus = ff.choose_slots("0,2", None, device_count=lambda: 4)
    assert [(s.name, s.env) for s in gpus] == [("GPU 0", {"CUDA_VISIBLE_DEVICES": "0"}),
                                                ("GPU 2", {"CUDA_VISIBLE_DEVICES": "2"})]
    assert [s.name for s in ff.choose_slots(None, 3)] == ["CPU slot 1", "CPU slot 2", "CPU slot 3"]
    assert ff.choose_slots(None, None) == []
    twice = ff.choose_slots("0,0", None, device_count=lambda: 1)  # two folds at a time on GPU 0
    assert [s.env for s in twice] == [{"CUDA_VISIBLE_DEVICES": "0"}] * 2
    assert ff.runs_in_process(gpus, [0])  # one fold: in this process, as without the option
    assert ff.runs_in_process(ff.choose_slots(None, 1), [0, 1])
    assert ff.runs_in_process([], [0, 1])
    assert not ff.runs_in_process(gpus, [0, 1])
    assert not ff.runs_in_process(ff.choose_slots("1", None, device_count=lambda: 2), [0, 1])  # a queue on GPU 1


def test_gpu_ids_are_those_visible_to_this_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert ff.choose_slots("1", None, device_count=lambda: 2)[0].env == {"CUDA_VISIBLE_DEVICES": "3"}


@pytest.mark.parametrize(("gpus", "parallel", "device", "message"), [
    ("0,4,5", None, "auto", "--gpus 0,4,5: GPU 4, 5 not found; this machine shows 2 CUDA GPU(s), 0-1"),
    ("0,x", None, "auto", "'x' is not a GPU number"),
    ("0", None, "cpu", "--gpus with --device cpu"),
    (None, 0, "auto", "--parallel-folds 0: give at least 1"),
    ("0", 2, "auto", "--gpus and --parallel-folds exclude each other"),
])
def test_choose_slots_refusals(gpus: str | None, parallel: int | None, device: str, message: str) -> None:
    with pytest.raises(AutounetError, match=re.escape(message)):
        ff.choose_slots(gpus, parallel, device, device_count=lambda: 2)


def test_cli_refusals(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["train", "3d_fullres", "--folds", "0-1", "--gpus", "0", "--parallel-folds", "2"])
    assert exc.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err
    base = ["--workspace", str(tmp_path), "train", "3d_fullres", "--folds", "0-1"]
    assert main(base + ["--gpus", "99"]) == 2
    assert "--gpus 99: GPU 99 not found" in capsys.readouterr().err
    assert main(base + ["--parallel-folds", "-1"]) == 2
    assert "--parallel-folds -1: give at least 1" in capsys.readouterr().err


# --------------------------------------------------------------------------- the queue, with fake processes


class FakeChild:
    def __init__(self, pid: int, fold: str, polls_left: int, code: int, world: FakeLauncher) -> None:
        self.pid, self.fold, self.polls_left, self.code, self.world = pid, fold, polls_left, code, world
        self.interrupted = self.killed = False

    def poll(self) -> int | None:
        if self.polls_left > 0 and not self.interrupted:
            self.polls_left -= 1
            return None
        self.world.running.pop(self.fold, None)
        return 130 if self.interrupted else self.code

    def interrupt(self) -> None:
        self.interrupted = True

    def kill(self) -> None:
        self.killed = True


class FakeLauncher:
    """Starts nothing: records what would run where, and how many run at once."""

    def __init__(self, polls: dict[str, int], codes: dict[str, int] | None = None,
                 log_text: dict[str, str] | None = None) -> None:
        self.polls, self.codes, self.log_text = polls, codes or {}, log_text or {}
        self.running: dict[str, str] = {}  # fold -> GPU
        self.most = 0
        self.started: list[tuple[str, str]] = []
        self.children: list[FakeChild] = []

    def __call__(self, argv: list[str], env: dict[str, str], log_path: Path) -> FakeChild:
        fold = argv[argv.index("--fold") + 1]
        gpu = env.get("CUDA_VISIBLE_DEVICES", "")
        assert not gpu or gpu not in self.running.values(), f"fold {fold} started on busy GPU {gpu}"
        self.running[fold] = gpu
        self.most = max(self.most, len(self.running))
        self.started.append((fold, gpu))
        with open(log_path, "a", encoding="utf-8") as fh:
            fh.write(self.log_text.get(fold, "training\n"))
        child = FakeChild(1000 + len(self.started), fold, self.polls[fold], self.codes.get(fold, 0), self)
        self.children.append(child)
        return child


def _jobs(tmp_path: Path, folds: list[str]) -> list[ff.FoldJob]:
    return [ff.FoldJob(k, ["autounet", "train", "3d_fullres", "--fold", k], tmp_path / f"fold_{k}", 10)
            for k in folds]


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_five_folds_on_two_gpus_run_two_at_a_time(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    slots = ff.choose_slots("0,1", None, device_count=lambda: 2)
    launcher = FakeLauncher({"0": 3, "1": 1, "2": 4, "3": 1, "4": 2})
    clock = FakeClock()
    (tmp_path / "fold_0").mkdir()
    (tmp_path / "fold_0" / "metrics.jsonl").write_text('{"epoch": 2}\n')
    with caplog.at_level(logging.INFO, logger="autounet.commands.fold_fanout"):
        result = ff.run_queue(_jobs(tmp_path, list("01234")), slots, launcher, clock=clock, sleep=clock.sleep,
                              poll_s=1.0, report_s=3.0)
    progress = [r.getMessage() for r in caplog.records if r.getMessage().startswith("folds running")]
    # Every 3 s while folds run: at t=3 folds 0 and 2, at t=6 fold 2 (3 has just ended); at t=9 none runs.
    assert progress == ["folds running: 0 (epoch 3/10), 2 (starting)", "folds running: 2 (starting)"]
    assert launcher.most == 2
    assert [o.status for o in result.outcomes] == ["finished"] * 5
    assert {gpu for _, gpu in launcher.started} == {"0", "1"}
    # Hand-traced: 0 on GPU 0, 1 on GPU 1; 1 ends first, so 2 takes GPU 1, then 3 GPU 0, 4 GPU 0.
    assert launcher.started == [("0", "0"), ("1", "1"), ("2", "1"), ("3", "0"), ("4", "0")]
    assert [o.slot for o in result.outcomes] == ["GPU 0", "GPU 1", "GPU 1", "GPU 0", "GPU 0"]
    assert [o.pid for o in result.outcomes] == [1001, 1002, 1003, 1004, 1005]
    assert result.seconds == 9.0
    for k in "01234":
        assert (tmp_path / f"fold_{k}" / "fanout.log").read_text().startswith("=== ")


def test_a_failed_fold_is_reported_while_the_other_finishes(tmp_path: Path) -> None:
    summary = tmp_path / "fold_0" / "validation" / "summary.json"
    summary.parent.mkdir(parents=True)
    summary.write_text(json.dumps({"foreground_mean": {"Dice": 0.8125}}))
    log_text = {"1": "epoch 1/10\nTraceback (most recent call last):\n  ...\nerror: fold 1: out of memory\n"
                     "interrupted? no\n"}
    launcher = FakeLauncher({"0": 5, "1": 1}, codes={"1": 2}, log_text=log_text)
    clock = FakeClock()
    result = ff.run_queue(_jobs(tmp_path, ["0", "1"]), ff.choose_slots(None, 2), launcher, clock=clock,
                          sleep=clock.sleep, poll_s=1.0)
    fold0, fold1 = result.outcomes
    assert (fold0.status, fold0.dice, fold0.error) == ("finished", 0.8125, None)
    assert (fold1.status, fold1.exit_code, fold1.error) == ("failed", 2, "error: fold 1: out of memory")
    assert [o.fold for o in result.failed] == ["1"]
    assert not launcher.children[0].interrupted  # the failure did not stop fold 0
    text = fs.format_fanout_summary(result)
    lines = text.splitlines()
    assert lines[0].split() == ["fold", "status", "val", "Dice", "time", "where", "pid", "note"]
    assert lines[1].split()[:6] == ["0", "finished", "0.8125", "6s", "CPU", "slot"]
    assert lines[2].split()[:3] == ["1", "failed", "-"]
    assert f"error: fold 1: out of memory (log: {tmp_path / 'fold_1' / 'fanout.log'})" in lines[2]
    assert lines[3] == "1 of 2 fold(s) finished in 6s"


def test_interrupt_stops_running_folds_and_leaves_the_rest(tmp_path: Path) -> None:
    launcher = FakeLauncher({k: 100 for k in "0123"})
    clock = FakeClock()

    def sleep(seconds: float) -> None:
        clock.sleep(seconds)
        if clock.now == 3.0:
            raise KeyboardInterrupt

    result = ff.run_queue(_jobs(tmp_path, list("0123")), ff.choose_slots(None, 2), launcher, clock=clock,
                          sleep=sleep, poll_s=1.0)
    assert result.interrupted
    assert [o.status for o in result.outcomes] == ["interrupted", "interrupted", "not started", "not started"]
    assert all(c.interrupted and not c.killed for c in launcher.children)
    assert len(launcher.children) == 2


def test_progress_line_reads_metrics(tmp_path: Path) -> None:
    fold_dir = tmp_path / "fold_0"
    fold_dir.mkdir()
    assert fs.fold_progress(fold_dir, 10) == "starting"
    (fold_dir / "metrics.jsonl").write_text('{"epoch": 1}\n{"epoch": 2}\n{"epo')  # a row being written
    assert fs.fold_progress(fold_dir, 10) == "epoch 3/10"
    (fold_dir / "metrics.jsonl").write_text('{"epoch": 10}\n')
    assert fs.fold_progress(fold_dir, 10) == "validating"


@pytest.mark.skipif(os.name != "posix", reason="process groups")
def test_interrupt_reaches_the_childs_own_children(tmp_path: Path) -> None:
    """The real launcher: a forwarded Ctrl-C stops the child and the process it started (no orphan)."""
    script = ("import subprocess, sys, time\n"
              "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
              "print(p.pid, flush=True)\n"
              "time.sleep(60)\n")
    log_path = tmp_path / "child.log"
    child = ff.launch_process([sys.executable, "-c", script], {}, log_path)
    deadline = time.monotonic() + 30
    while not log_path.read_text().strip() and time.monotonic() < deadline:
        time.sleep(0.05)
    grandchild = int(log_path.read_text().split()[0])
    child.interrupt()
    while child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert child.poll() not in (None, 0)
    assert "KeyboardInterrupt" in log_path.read_text()
    while time.monotonic() < deadline:
        try:
            os.kill(grandchild, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        os.kill(grandchild, signal.SIGKILL)
        pytest.fail("the grandchild survived the interrupt")


# --------------------------------------------------------------------------- real processes on the demo task


@pytest.fixture(scope="module")
def preprocessed_demo(demo_task_3d: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo task planned small (patch about 20x28x28) and preprocessed for 3d_fullres."""
    ws = tmp_path_factory.mktemp("fanout") / "ws"
    shutil.copytree(demo_task_3d, ws / "raw" / TASK)
    assert main(["--workspace", str(ws), "plan_and_preprocess", TASK, "--gpu-memory", "1.0", "-c", "3d_fullres",
                 "-np", "0", "--no-progress"]) == 0
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "_autounet", False)]:
        root.removeHandler(handler)  # bound to this setup's stdout; the tests' main() binds their own
    return ws


TINY = ["--epochs", "1", "--iters-per-epoch", "2", "--val-iters", "1", "--disable-tta", "--workers", "0",
        "--threads", "1", "--device", "cpu"]


def test_two_folds_train_in_two_processes(preprocessed_demo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    rc = main(["--workspace", str(preprocessed_demo), "train", "3d_fullres", "--folds", "0-1",
               "--parallel-folds", "2", *TINY])
    out = capsys.readouterr().out
    assert rc == 0, out
    lines = out.splitlines()
    started = {m.group(1): int(m.group(2)) for m in
               (re.match(r"fold (\d) started on CPU slot \d \(pid (\d+)\)", line) for line in lines) if m}
    assert set(started) == {"0", "1"}
    assert len(set(started.values())) == 2 and os.getpid() not in started.values()
    first_finish = next(i for i, line in enumerate(lines) if re.match(r"fold \d finished", line))
    assert max(i for i, line in enumerate(lines) if " started on " in line) < first_finish  # side by side
    rows = {line.split()[0]: line.split() for line in lines if re.match(r"[01]\s+finished", line)}
    assert set(rows) == {"0", "1"}
    assert {int(r[-1]) for r in rows.values()} == set(started.values())
    assert "2 of 2 fold(s) finished" in out
    run_dir = preprocessed_demo / "results" / TASK / run_name("3d_fullres", TrainingSettings(epochs=1,
                                                                                           iters_per_epoch=2))
    for k in ("0", "1"):
        fold_dir = run_dir / fold_folder_name(k)
        assert load_manifest(fold_dir).status == "finished"
        assert (fold_dir / "checkpoint_final.pt").is_file()
        log_text = (fold_dir / "fanout.log").read_text()
        assert f"--fold {k} " in log_text and "--threads 1" in log_text
        assert float(rows[k][2]) == pytest.approx(fs.validation_dice(fold_dir), abs=1e-4)


def test_a_failed_fold_makes_the_exit_code_non_zero(preprocessed_demo: Path, capsys: pytest.CaptureFixture[str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Through the CLI with a stand-in launcher (our seam): fold 0 fails, fold 2 finishes, exit code 1."""
    real_launch = ff.launch_process

    def launch(argv: list[str], env: dict[str, str], log_path: Path) -> ff.Child:
        fold = argv[argv.index("--fold") + 1]
        code = "print('error: stand-in failure'); raise SystemExit(2)" if fold == "0" else "print('ok')"
        return real_launch([sys.executable, "-c", code], env, log_path)

    monkeypatch.setattr(ff, "launch_process", launch)
    rc = main(["--workspace", str(preprocessed_demo), "train", "3d_fullres", "--folds", "0,2",
               "--parallel-folds", "2", "--epochs", "1", "--iters-per-epoch", "3"])
    captured = capsys.readouterr()
    assert rc == 1
    assert "1 fold(s) failed" in captured.err
    assert re.search(r"^0\s+failed .*error: stand-in failure", captured.out, re.M)
    assert re.search(r"^2\s+finished", captured.out, re.M)


# --------------------------------------------------------------------------- the Slurm array script


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_slurm_script_trains_the_array_tasks_fold(tmp_path: Path) -> None:
    """scripts/slurm_folds.sh with a stand-in `autounet` on PATH: the command each array task runs."""
    import subprocess

    script = Path(__file__).resolve().parents[2] / "scripts" / "slurm_folds.sh"
    text = script.read_text()
    assert "#SBATCH --array=0-4" in text and "#SBATCH --gpus=1" in text
    (tmp_path / "autounet").write_text('#!/bin/sh\necho "autounet $*"\n')
    (tmp_path / "autounet").chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}", "SLURM_ARRAY_TASK_ID": "3"}

    def run(*words: str, **extra: str) -> str:
        done = subprocess.run(["bash", str(script), *words], env={**env, **extra}, capture_output=True, text=True,
                              check=True)
        return done.stdout.splitlines()[-1]

    assert run("Task01", "2d", "--epochs", "5") == "autounet train 2d fold 3 -t Task01 --epochs 5"
    assert run("Task01") == "autounet train 3d_fullres fold 3 -t Task01"
    assert run("Task01", SLURM_RESTART_COUNT="1") == "autounet train 3d_fullres fold 3 -t Task01 --resume"
