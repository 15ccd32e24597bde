"""Wall time and peak memory of `autounet plan_and_preprocess`, side by side with nnU-Net v2.

Generates a seeded demo-like MSD task of a given size (`--cases N --shape Z Y X`: the demo
generator's cases, resampled to that exact shape, so spacings still vary per case and both
tools have to resample), then times `autounet plan_and_preprocess` as a subprocess. With
`--nnunet-python PY` (the python of a virtual environment with nnunetv2 installed) it also
converts the same task with `nnUNetv2_convert_MSD_dataset` (not timed) and times
`nnUNetv2_plan_and_preprocess -d ID -np W -npfp W -c 2d 3d_fullres` with nnUNet_raw,
nnUNet_preprocessed and nnUNet_results pointing into a temporary folder.

Both sides plan for the same 8 GB GPU memory target and preprocess the same configurations
(`--configurations`, default 2d and 3d_fullres). autounet always runs its integrity check;
nnU-Net only with `--nnunet-verify` (its `--verify_dataset_integrity`).

Memory is reported two ways, for each run's whole process tree:
* peak tree RSS: the largest sum of resident memory over the command and all its descendants
  (worker processes included), sampled from /proc every `--poll-ms` milliseconds;
* largest process: the peak RSS of the single largest process in the tree, from the kernel's
  accounting (`os.wait4` rusage, exact, but blind to several workers peaking together).

Examples:
    python benchmarks/plan_and_preprocess.py --cases 24 --shape 64 96 96
    python benchmarks/plan_and_preprocess.py --cases 24 --shape 96 160 160 --repeats 3 \\
        --nnunet-python /root/nnunet-venv/bin/python
    python benchmarks/plan_and_preprocess.py --cases 8 --shape 64 96 96 --profile   # cProfile of a -np 0 run
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import pstats
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from autounet.io.atomic import write_json
from autounet.io.images import write_image, write_label
from autounet.task.demo_data import DEMO_LABELS, make_demo_case

log = logging.getLogger("benchmarks.plan_and_preprocess")

PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
MIB = 1024**2


# --------------------------------------------------------------------------- the task


def write_benchmark_task(root: Path, num_cases: int, shape_zyx: Sequence[int], seed: int) -> Path:
    """Write `num_cases` demo cases resampled to exactly `shape_zyx` as an MSD task at `root`.

    The spacing of each case grows or shrinks with its resampling factor, so the physical
    extent (and the per-case spacing spread of the demo data) is kept.
    """
    training = []
    for index in range(num_cases):
        case = make_demo_case(np.random.default_rng([seed, index]))
        factors = [n / o for n, o in zip(shape_zyx, case.image.shape)]
        image = ndimage.zoom(case.image.astype(np.float32), factors, order=1, grid_mode=True, mode="grid-constant")
        seg = ndimage.zoom(case.seg, factors, order=0, grid_mode=True, mode="grid-constant")
        spacing_zyx = [s / f for s, f in zip(case.geometry.spacing_zyx, factors)]
        geometry = dataclasses.replace(
            case.geometry, spacing=tuple(reversed(spacing_zyx)), shape=tuple(int(n) for n in image.shape)
        )
        case_id = f"bench_{index + 1:03d}"
        write_image(np.round(image).astype(np.int16), geometry, root / "imagesTr" / f"{case_id}.nii.gz")
        write_label(seg, geometry, root / "labelsTr" / f"{case_id}.nii.gz")
        training.append({"image": f"./imagesTr/{case_id}.nii.gz", "label": f"./labelsTr/{case_id}.nii.gz"})
    (root / "imagesTs").mkdir(exist_ok=True)  # nnU-Net's MSD converter requires the folder
    write_json(root / "dataset.json", {
        "name": root.name.split("_", 1)[-1],
        "description": f"plan_and_preprocess benchmark: {num_cases} demo cases of {'x'.join(map(str, shape_zyx))}",
        "tensorImageSize": "3D",
        "modality": {"0": "MR"},
        "labels": dict(DEMO_LABELS),
        "numTraining": num_cases,
        "numTest": 0,
        "training": training,
        "test": [],
    })
    return root


# --------------------------------------------------------------------------- measuring a command


def tree_rss_bytes(root_pid: int) -> int:
    """Sum of resident memory of `root_pid` and all its descendants, read from /proc."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            with open(f"/proc/{pid}/stat", "rb") as fh:
                stat = fh.read()
            with open(f"/proc/{pid}/statm", "rb") as fh:
                resident_pages = int(fh.read().split()[1])
        except (OSError, IndexError, ValueError):
            continue  # the process ended while we looked
        ppid = int(stat[stat.rindex(b")") + 2:].split()[1])  # the command name may contain spaces
        children.setdefault(ppid, []).append(pid)
        rss[pid] = resident_pages * PAGE_BYTES
    total, todo = 0, [root_pid]
    while todo:
        pid = todo.pop()
        total += rss.get(pid, 0)
        todo.extend(children.get(pid, []))
    return total


@dataclass
class Measurement:
    wall_s: float
    peak_tree_rss_bytes: int
    largest_process_rss_bytes: int


class _TreeSampler(threading.Thread):
    """Polls the process tree's RSS until stopped; keeps the peak."""

    def __init__(self, pid: int, interval_s: float) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval_s, self.peak = pid, interval_s, 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.peak = max(self.peak, tree_rss_bytes(self.pid))
            self._stop_event.wait(self.interval_s)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


def measure(cmd: Sequence[str], env: dict[str, str], cwd: Path, log_path: Path, poll_s: float) -> Measurement:
    """Run `cmd` to completion; wall time, peak tree RSS and the largest single process's peak RSS."""
    log.info("running: %s", " ".join(cmd))
    with open(log_path, "w", encoding="utf-8") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(list(cmd), env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
        sampler = _TreeSampler(proc.pid, poll_s)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        sampler.stop()
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        tail = log_path.read_text(encoding="utf-8", errors="replace")[-3000:]
        raise RuntimeError(f"{cmd[0]} exited with {proc.returncode}; log {log_path}:\n{tail}")
    return Measurement(wall, sampler.peak, usage.ru_maxrss * 1024)  # ru_maxrss is in KiB on Linux


# --------------------------------------------------------------------------- the two tools


def autounet_command(task: Path, workspace: Path, workers: int, configurations: Sequence[str],
                     gpu_memory_gb: float) -> list[str]:
    return [sys.executable, "-m", "autounet", "--workspace", str(workspace), "plan_and_preprocess", str(task),
            "-np", str(workers), "--gpu-memory", str(gpu_memory_gb), "--no-progress",
            "-c", *configurations]


def nnunet_env(base: Path) -> dict[str, str]:
    env = dict(os.environ)
    for key, sub in (("nnUNet_raw", "raw"), ("nnUNet_preprocessed", "preprocessed"), ("nnUNet_results", "results")):
        (base / sub).mkdir(parents=True, exist_ok=True)
        env[key] = str(base / sub)
    env.pop("PYTHONPATH", None)  # the venv's own packages only
    return env


def convert_for_nnunet(python: Path, task: Path, dataset_id: int, base: Path, workers: int) -> dict[str, str]:
    """Run nnUNetv2_convert_MSD_dataset into `base/raw`; returns the environment for later nnU-Net calls."""
    env = nnunet_env(base)
    cmd = [str(python.parent / "nnUNetv2_convert_MSD_dataset"), "-i", str(task),
           "-overwrite_id", str(dataset_id), "-np", str(workers)]
    log.info("converting for nnU-Net: %s", " ".join(cmd))
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
    return env


def nnunet_command(python: Path, dataset_id: int, workers: int, configurations: Sequence[str],
                   verify: bool) -> list[str]:
    cmd = [str(python.parent / "nnUNetv2_plan_and_preprocess"), "-d", str(dataset_id),
           "-np", str(workers), "-npfp", str(workers), "-c", *configurations]
    return cmd + (["--verify_dataset_integrity"] if verify else [])


def nnunet_version(python: Path) -> str:
    done = subprocess.run([str(python), "-c", "import importlib.metadata as m; print(m.version('nnunetv2'))"],
                          capture_output=True, text=True, check=True)
    return done.stdout.strip()


# --------------------------------------------------------------------------- reporting


@dataclass
class Summary:
    wall_s: float
    peak_tree_mib: float
    largest_process_mib: float
    runs: list[Measurement]


def summarize(runs: list[Measurement]) -> Summary:
    """Medians over the repeats."""
    return Summary(
        wall_s=statistics.median(r.wall_s for r in runs),
        peak_tree_mib=statistics.median(r.peak_tree_rss_bytes for r in runs) / MIB,
        largest_process_mib=statistics.median(r.largest_process_rss_bytes for r in runs) / MIB,
        runs=runs,
    )


def format_report(header: str, results: dict[str, Summary]) -> str:
    lines = [header, "",
             f"{'tool':<16} {'wall s (median)':>16} {'peak tree RSS MiB':>18} {'largest proc MiB':>17}   runs (wall s)"]
    for name, s in results.items():
        walls = ", ".join(f"{r.wall_s:.1f}" for r in s.runs)
        lines.append(f"{name:<16} {s.wall_s:>16.1f} {s.peak_tree_mib:>18.0f} {s.largest_process_mib:>17.0f}   {walls}")
    if "autounet" in results and "nnU-Net" in results:
        a, n = results["autounet"], results["nnU-Net"]
        wall_ratio = a.wall_s / n.wall_s
        tree_ratio = a.peak_tree_mib / n.peak_tree_mib
        proc_ratio = a.largest_process_mib / n.largest_process_mib
        paired = ", ".join(f"{x.wall_s / y.wall_s:.2f}" for x, y in zip(a.runs, n.runs))
        lines.append(f"{'ratio a/n':<16} {wall_ratio:>16.2f} {tree_ratio:>18.2f} {proc_ratio:>17.2f}   "
                     f"per run pair: {paired}")
        met = wall_ratio <= 0.5 and tree_ratio <= 1.0
        lines.append(f"goal (wall <= 0.5x nnU-Net, peak tree RSS <= 1.0x): {'met' if met else 'NOT met'}")
    return "\n".join(lines)


def profile_inline(task: Path, work: Path, configurations: Sequence[str], gpu_memory_gb: float, top: int) -> str:
    """cProfile of one `-np 0` run (everything in one process), top functions by cumulative time."""
    stats_path = work / "autounet.prof"
    cmd = [sys.executable, "-m", "cProfile", "-o", str(stats_path), "-m", "autounet", "--workspace",
           str(work / "ws_profile"), "plan_and_preprocess", str(task), "-np", "0", "--gpu-memory",
           str(gpu_memory_gb), "--no-progress", "-c", *configurations]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lines: list[str] = []
    for key in ("cumulative", "tottime"):
        buffer = _StringSink()
        pstats.Stats(str(stats_path), stream=buffer).sort_stats(key).print_stats(top)  # type: ignore[arg-type]
        lines.append(f"--- cProfile of a -np 0 run, top {top} by {key} ---")
        lines.append(buffer.text())
    return "\n".join(lines)


class _StringSink:
    """Minimal text stream for pstats."""

    def __init__(self) -> None:
        self._parts: list[str] = []

    def write(self, text: str) -> int:
        self._parts.append(text)
        return len(text)

    def text(self) -> str:
        return "".join(self._parts)


# --------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", type=int, default=24, help="training cases to generate (default 24)")
    p.add_argument("--shape", type=int, nargs=3, default=[64, 96, 96], metavar=("Z", "Y", "X"),
                   help="shape of every case (default 64 96 96)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-np", "--workers", type=int, default=2, help="worker processes for both tools (default 2)")
    p.add_argument("--repeats", type=int, default=1, help="timed runs per tool; medians are reported")
    p.add_argument("-c", "--configurations", nargs="+", default=["2d", "3d_fullres"],
                   help="configurations both tools preprocess (default 2d 3d_fullres)")
    p.add_argument("--gpu-memory", type=float, default=8.0, help="GPU memory target in GB (nnU-Net's default is 8)")
    p.add_argument("--nnunet-python", type=Path, default=None,
                   help="python of a venv with nnunetv2; its bin/ must hold the nnUNetv2_* scripts")
    p.add_argument("--nnunet-dataset-id", type=int, default=977, help="dataset id used on the nnU-Net side")
    p.add_argument("--nnunet-verify", action="store_true",
                   help="pass --verify_dataset_integrity to nnU-Net (autounet always checks)")
    p.add_argument("--skip-autounet", action="store_true", help="time nnU-Net only")
    p.add_argument("--profile", action="store_true", help="also print a cProfile of an inline (-np 0) autounet run")
    p.add_argument("--poll-ms", type=float, default=50.0, help="RSS sampling interval")
    p.add_argument("--workdir", type=Path, default=None, help="where to put everything (default: a temp dir, removed)")
    p.add_argument("--json", type=Path, default=None, help="also write the figures as JSON here")
    return p


@contextmanager
def bench_workdir(workdir: Path | None, prefix: str) -> Iterator[Path]:
    """The benchmarks' working folder: `workdir` (created, kept for reuse) or a temporary one that is
    removed afterwards; yielded as an absolute path."""
    work = workdir or Path(tempfile.mkdtemp(prefix=prefix))
    work.mkdir(parents=True, exist_ok=True)
    try:
        yield work.resolve()
    finally:
        if workdir is None:
            shutil.rmtree(work, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    with bench_workdir(args.workdir, "autounet_bench_") as work:
        return _run(args, work)


def _record(runs: dict[str, list[Measurement]], tool: str, measured: Measurement) -> None:
    runs.setdefault(tool, []).append(measured)
    log.info("%s run %d: %.1f s, peak tree RSS %.0f MiB (1-min load average now %.1f)", tool, len(runs[tool]),
             measured.wall_s, measured.peak_tree_rss_bytes / MIB, os.getloadavg()[0])


def _run(args: argparse.Namespace, work: Path) -> int:
    shape = "x".join(map(str, args.shape))
    task = work / f"Task{args.nnunet_dataset_id % 100:02d}_Bench"
    if not (task / "dataset.json").is_file():
        started = time.perf_counter()
        write_benchmark_task(task, args.cases, args.shape, args.seed)
        log.info("generated %d cases of %s in %.1f s at %s", args.cases, shape, time.perf_counter() - started, task)
    poll = args.poll_ms / 1000.0
    version, nnunet_env_vars = "", None
    if args.nnunet_python:
        version = nnunet_version(args.nnunet_python)
        nnunet_env_vars = convert_for_nnunet(args.nnunet_python, task, args.nnunet_dataset_id, work / "nnunet",
                                             args.workers)
    runs: dict[str, list[Measurement]] = {}
    for r in range(args.repeats):  # alternate the tools so that both see the same background load
        if not args.skip_autounet:
            ws = work / f"ws_autounet_{r}"
            shutil.rmtree(ws, ignore_errors=True)
            cmd = autounet_command(task, ws, args.workers, args.configurations, args.gpu_memory)
            _record(runs, "autounet", measure(cmd, dict(os.environ), work, work / f"autounet_{r}.log", poll))
        if nnunet_env_vars is not None:
            for stale in (work / "nnunet" / "preprocessed").glob(f"Dataset{args.nnunet_dataset_id:03d}_*"):
                shutil.rmtree(stale)
            cmd = nnunet_command(args.nnunet_python, args.nnunet_dataset_id, args.workers, args.configurations,
                                 args.nnunet_verify)
            _record(runs, "nnU-Net", measure(cmd, nnunet_env_vars, work, work / f"nnunet_{r}.log", poll))
    results = {name: summarize(measured) for name, measured in runs.items()}

    header = (f"plan_and_preprocess: {args.cases} cases of {shape} (seed {args.seed}), {args.workers} workers, "
              f"configurations {' '.join(args.configurations)}, {args.gpu_memory:g} GB target, "
              f"{args.repeats} run(s) each, {os.cpu_count()} CPU cores"
              + (f"; nnunetv2 {version}{' with --verify_dataset_integrity' if args.nnunet_verify else ''}"
                 if version else ""))
    print(format_report(header, results))
    if args.json:
        write_json(args.json, {"header": header, "results": {k: dataclasses.asdict(v) for k, v in results.items()}})
    if args.profile:
        print(profile_inline(task, work, args.configurations, args.gpu_memory, top=30))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
