"""Train several folds side by side: one `autounet train --fold k` child process per fold.

Folds are independent, so several GPUs (or a many-core CPU) are used best by running one fold
on each rather than splitting one fold across them (torchrun does that). Each child is an
ordinary `autounet train` command line built from the parent's parsed options, so a fold
trained here is the same run, in the same folder, as the one a user starts by hand; its
output goes to <run>/fold_k/fanout.log. A queue hands each free slot (a GPU, or a share of the
CPU cores) the next fold; a failed fold frees its slot and does not stop the others; Ctrl-C
(or SIGTERM) reaches every child as a Ctrl-C, and one that has not stopped after a grace
period is killed with its worker processes, so no orphan keeps training.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from autounet.commands.fold_summary import (
    FanoutResult,
    FoldOutcome,
    fold_progress,
    last_error_line,
    validation_dice,
)
from autounet.core.progress import format_duration
from autounet.core.run_layout import fold_folder_name
from autounet.core.system import cpu_count
from autounet.core.workspace import Workspace
from autounet.errors import AutounetError
from autounet.training.run_identity import run_name
from autounet.training.settings import TrainingSettings

log = logging.getLogger(__name__)

LOG_NAME = "fanout.log"
POLL_S = 0.5
REPORT_EVERY_S = 30.0
GRACE_S = 30.0
# Parsed train options that are not passed on: they name the folds or the fan-out itself.
_NOT_PASSED = frozenset({"command", "func", "configuration", "fold_words", "fold", "folds", "fold_list",
                         "gpus", "parallel_folds"})


@dataclasses.dataclass(frozen=True)
class Slot:
    """Where one fold runs at a time: a GPU (its CUDA_VISIBLE_DEVICES) or a share of the CPU."""

    name: str
    env: dict[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class FoldJob:
    """One fold's child command line and where its files go."""

    fold: str
    argv: list[str]
    fold_dir: Path
    epochs: int

    @property
    def log_path(self) -> Path:
        return self.fold_dir / LOG_NAME


class Child(Protocol):
    """A started fold process, as the queue sees it (a Popen, or a fake in tests)."""

    pid: int

    def poll(self) -> int | None: ...

    def interrupt(self) -> None: ...

    def kill(self) -> None: ...


Launcher = Callable[[list[str], dict[str, str], Path], Child]


# --------------------------------------------------------------------------- options


def parse_gpu_ids(text: str) -> list[int]:
    """`0,1,2,3` -> [0, 1, 2, 3]; a GPU listed twice runs two folds at a time on it."""
    ids = []
    for part in str(text).split(","):
        part = part.strip()
        if not part.isdigit():
            raise AutounetError(f"--gpus {text}: '{part}' is not a GPU number; give e.g. --gpus 0,1,2,3")
        ids.append(int(part))
    return ids


def _cuda_device_count() -> int:
    """GPUs this process sees, counted through NVML where possible: CUDA itself is not started, so a
    single fold trained here can still be pointed at its GPU with CUDA_VISIBLE_DEVICES."""
    import torch

    return int(torch.cuda.device_count())


def choose_slots(gpus: str | None, parallel_folds: int | None, device: str = "auto",
                 device_count: Callable[[], int] | None = None) -> list[Slot]:
    """The slots that --gpus or --parallel-folds ask for, checked; [] when neither is given."""
    if gpus is not None and parallel_folds is not None:
        raise AutounetError("--gpus and --parallel-folds exclude each other: --gpus runs one fold per GPU, "
                            "--parallel-folds N runs N folds on the CPU")
    if parallel_folds is not None:
        if parallel_folds < 1:
            raise AutounetError(f"--parallel-folds {parallel_folds}: give at least 1 fold process")
        return [Slot(f"CPU slot {i + 1}") for i in range(parallel_folds)]
    if gpus is None:
        return []
    if device not in ("auto", "cuda"):
        raise AutounetError(f"--gpus with --device {device}: --gpus trains on CUDA GPUs; leave out --device "
                            f"or use --parallel-folds N for the CPU")
    ids = parse_gpu_ids(gpus)
    count = (device_count or _cuda_device_count)()
    missing = sorted({i for i in ids if i >= count})
    if missing:
        seen = f"{count} CUDA GPU(s), 0-{count - 1}" if count else "no CUDA GPU"
        raise AutounetError(f"--gpus {gpus}: GPU {', '.join(map(str, missing))} not found; this machine shows "
                            f"{seen} (on a CPU machine use --parallel-folds N)")
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    return [Slot(f"GPU {i}", {"CUDA_VISIBLE_DEVICES": visible[i] if i < len(visible) else str(i)})
            for i in ids]


def runs_in_process(slots: Sequence[Slot], folds: Sequence[Any]) -> bool:
    """One fold, or one CPU slot, gains nothing from child processes: train here as without the options."""
    return len(folds) <= 1 or not slots or (len(slots) == 1 and not slots[0].env)


def child_argv(args: argparse.Namespace, fold: int | str, overrides: dict[str, Any] | None = None) -> list[str]:
    """`python -m autounet train <configuration> --fold k` plus every other parsed train option, unchanged.

    Every option's flag is its destination spelled `--dest-name` (tests check this against the
    parser, so a new option passes through without an edit here); `overrides` replace values.
    """
    values = {**vars(args), **(overrides or {})}
    argv = [sys.executable, "-m", "autounet", "train", str(args.configuration), "--fold", str(fold)]
    for dest, value in values.items():
        if dest in _NOT_PASSED or value is None or value is False:
            continue
        flag = "--" + dest.replace("_", "-")
        if value is True:
            argv.append(flag)
        elif isinstance(value, (list, tuple)):
            argv += [flag, *map(str, value)]
        else:
            argv += [flag, str(value)]
    return argv


def fair_share(args: argparse.Namespace, parallel: int) -> dict[str, int]:
    """--threads and --workers for each of `parallel` children: what was given, else the cores divided."""
    from autounet.training.data_loader import default_num_workers

    threads = args.threads if args.threads is not None else max(1, cpu_count() // parallel)
    workers = args.workers if args.workers is not None else default_num_workers() // parallel
    return {"threads": threads, "workers": workers}


def fold_jobs(workspace: Workspace, task: str, args: argparse.Namespace, settings: TrainingSettings,
              folds: Sequence[int | str], parallel: int) -> list[FoldJob]:
    """One job per distinct fold, in the folder run_training will use."""
    run_dir = workspace.results(task) / run_name(args.configuration, settings)
    overrides = {"workspace": str(workspace.root), "task": task, **fair_share(args, parallel)}
    unique = list(dict.fromkeys(str(f) for f in folds))
    return [FoldJob(fold, child_argv(args, fold, overrides), run_dir / fold_folder_name(fold), settings.epochs)
            for fold in unique]


# --------------------------------------------------------------------------- processes


class _PopenChild:
    """A child in its own process group, so that a stop reaches its data-loading workers too."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self.process = process
        self.pid = process.pid

    def poll(self) -> int | None:
        return self.process.poll()

    def _signal(self, sig: int) -> None:
        if self.process.poll() is not None:
            return
        try:
            if os.name == "posix":
                os.killpg(self.process.pid, sig)
            else:
                self.process.terminate()
        except ProcessLookupError:
            pass

    def interrupt(self) -> None:
        """What Ctrl-C does: the fold marks its run.json failed, frees its lock and stops its workers."""
        self._signal(signal.SIGINT if os.name == "posix" else signal.SIGTERM)

    def kill(self) -> None:
        self._signal(signal.SIGKILL if os.name == "posix" else signal.SIGTERM)
        self.process.wait()


def _default_sigint() -> None:
    """In the child before it starts: Ctrl-C raises KeyboardInterrupt there even where the parent ignores
    SIGINT (a job started with `&` in a script), so that a forwarded Ctrl-C stops the fold cleanly."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def launch_process(argv: list[str], env: dict[str, str], log_path: Path) -> Child:
    """Start `argv` with `env` added, its stdout and stderr appended to `log_path`."""
    posix = os.name == "posix"
    with open(log_path, "ab") as out:
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                   env={**os.environ, **env}, start_new_session=posix,
                                   preexec_fn=_default_sigint if posix else None)
    return _PopenChild(process)


@dataclasses.dataclass
class _Running:
    job: FoldJob
    slot: Slot
    child: Child
    started: float
    log_offset: int


def _start(job: FoldJob, slot: Slot, launcher: Launcher, clock: Callable[[], float]) -> _Running | FoldOutcome:
    job.fold_dir.mkdir(parents=True, exist_ok=True)
    offset = job.log_path.stat().st_size if job.log_path.is_file() else 0
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    with open(job.log_path, "a", encoding="utf-8") as fh:
        fh.write(f"=== {stamp} fold {job.fold} on {slot.name}: {' '.join(job.argv)}\n")
    started = clock()
    try:
        child = launcher(job.argv, dict(slot.env), job.log_path)
    except OSError as exc:
        log.error("fold %s could not start: %s", job.fold, exc)
        return FoldOutcome(job.fold, "failed", slot.name, error=f"could not start: {exc}", log_path=job.log_path)
    log.info("fold %s started on %s (pid %d), log: %s", job.fold, slot.name, child.pid, job.log_path)
    return _Running(job, slot, child, started, offset)


def _finish(run: _Running, code: int, now: float) -> FoldOutcome:
    seconds = now - run.started
    out = FoldOutcome(run.job.fold, "finished" if code == 0 else "failed", run.slot.name, run.child.pid, seconds,
                      code, log_path=run.job.log_path)
    if code == 0:
        out.dice = validation_dice(run.job.fold_dir)
        shown = f", validation Dice {out.dice:.4f}" if out.dice is not None else ""
        log.info("fold %s finished in %s%s", out.fold, format_duration(seconds), shown)
    else:
        out.error = last_error_line(run.job.log_path, run.log_offset) or _exit_reason(code)
        log.error("fold %s failed after %s (%s): %s", out.fold, format_duration(seconds), _exit_reason(code),
                  out.error)
    return out


def _exit_reason(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def _stop(running: list[_Running], clock: Callable[[], float], sleep: Callable[[float], None],
          grace_s: float) -> list[FoldOutcome]:
    """Ctrl-C every child, wait up to `grace_s` for them to stop, then kill what is left."""
    for run in running:
        run.child.interrupt()
    deadline = clock() + grace_s
    try:
        while clock() < deadline and any(r.child.poll() is None for r in running):
            sleep(min(POLL_S, grace_s))
    except KeyboardInterrupt:
        log.warning("interrupted again: killing the folds now")
    outcomes = []
    for run in running:
        code = run.child.poll()
        if code is None:
            log.warning("fold %s (pid %d) did not stop within %.0f s; killing it", run.job.fold, run.child.pid,
                        grace_s)
            run.child.kill()
        outcomes.append(FoldOutcome(run.job.fold, "interrupted", run.slot.name, run.child.pid,
                                    clock() - run.started, code, log_path=run.job.log_path))
    return outcomes


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """A scheduler's SIGTERM stops the folds like Ctrl-C does (only the main thread may set handlers)."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _raise(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_queue(jobs: Sequence[FoldJob], slots: Sequence[Slot], launcher: Launcher | None = None, *,
              clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
              poll_s: float = POLL_S, report_s: float = REPORT_EVERY_S, grace_s: float = GRACE_S) -> FanoutResult:
    """Run every job, at most one per slot at a time, each freed slot taking the next job."""
    if not slots:
        raise AutounetError("no slot to run the folds on: give --gpus or --parallel-folds")
    launcher = launcher or launch_process
    pending, free = deque(jobs), list(slots)
    running: list[_Running] = []
    done: dict[str, FoldOutcome] = {}
    begin = last_report = clock()
    interrupted = False
    with _sigterm_as_interrupt():
        try:
            while pending or running:
                while pending and free:
                    job, slot = pending.popleft(), free.pop(0)
                    started = _start(job, slot, launcher, clock)
                    if isinstance(started, FoldOutcome):
                        done[job.fold] = started
                        free.insert(0, slot)
                    else:
                        running.append(started)
                if not running:
                    continue
                sleep(poll_s)
                for run in list(running):
                    code = run.child.poll()
                    if code is not None:
                        running.remove(run)
                        free.append(run.slot)
                        done[run.job.fold] = _finish(run, code, clock())
                if running and clock() - last_report >= report_s:
                    last_report = clock()
                    log.info("folds running: %s", progress_line(running))
        except KeyboardInterrupt:
            interrupted = True
            log.warning("interrupted: stopping %d running fold(s)", len(running))
            for out in _stop(running, clock, sleep, grace_s):
                done[out.fold] = out
    outcomes = [done.get(job.fold) or FoldOutcome(job.fold, "not started", log_path=job.log_path) for job in jobs]
    return FanoutResult(outcomes, clock() - begin, interrupted)


def progress_line(running: Sequence[_Running]) -> str:
    return ", ".join(f"{r.job.fold} ({fold_progress(r.job.fold_dir, r.job.epochs)})" for r in running)


def train_folds_side_by_side(workspace: Workspace, task: str, args: argparse.Namespace,
                             settings: TrainingSettings, folds: Sequence[int | str], slots: Sequence[Slot],
                             launcher: Launcher | None = None) -> FanoutResult:
    """The folds of `args` as child processes over `slots`; the result says how each ended.

    `launcher` starts one child (default: `launch_process`, looked up when called).
    """
    parallel = min(len(slots), len(folds))
    jobs = fold_jobs(workspace, task, args, settings, folds, parallel)
    log.info("training %d fold(s) of %s, %d at a time on %s; each fold's output goes to %s",
             len(jobs), args.configuration, parallel, ", ".join(s.name for s in slots[:parallel]),
             jobs[0].fold_dir.parent / fold_folder_name("<k>") / LOG_NAME)
    return run_queue(jobs, slots, launcher)
