"""Predicted vs measured training memory of planned networks (checks planners.memory).

For every planned `3d_fullres` and `2d` configuration, builds the network, runs a few
training steps (forward, deep-supervision CE + soft Dice loss, backward, SGD with momentum)
at the planned patch and batch size, and prints the planner's prediction next to the
measured peak:

* CUDA (mixed precision): `torch.cuda.max_memory_allocated` after a reset, compared with the
  model's allocator share (`MemoryBreakdown.allocated`, i.e. without the CUDA context);
* CPU (fp32): the peak RSS increase over the process's state after a tiny warm-up step,
  from `resource.getrusage(...).ru_maxrss`, compared with the prediction without mixed
  precision and without the cuDNN workspace allowance.

Every configuration is measured in a fresh subprocess so that peaks do not mix. On CPU the
patch is scaled down (keeping divisibility by the network's total stride) until one batch
holds at most `--max-voxels` voxels; the table says when that happened.

Examples:
    python benchmarks/memory_model.py                          # plans two synthetic tasks itself
    python benchmarks/memory_model.py ~/autounet/preprocessed/Task01/plans.json --device cuda
    python benchmarks/memory_model.py --network-json plan.json --patch 64 64 64 --batch 2
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import resource
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autounet.io.json_schema import from_dict, to_dict
from autounet.planners.plans import NetworkPlan, load_plans

log = logging.getLogger("benchmarks.memory_model")

DEFAULT_CONFIGURATIONS = ("3d_fullres", "2d")
DEFAULT_CPU_MAX_VOXELS = 2 * 48**3


@dataclass
class Case:
    """One network at one patch and batch size, as it will be measured."""

    task: str
    configuration: str
    network: NetworkPlan
    patch_size: list[int]
    batch_size: int
    in_channels: int
    num_classes: int
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------- sources of cases

def _plan_cases(plans: Any, configurations: Sequence[str]) -> list[Case]:
    """One benchmark case per requested configuration that the plans contain."""
    return [Case(plans.task, name, plans.configurations[name].network, list(plans.configurations[name].patch_size),
                 plans.configurations[name].batch_size, plans.num_channels, plans.num_classes)
            for name in configurations if name in plans.configurations]


def cases_from_plans(paths: Sequence[Path], configurations: Sequence[str]) -> list[Case]:
    cases = []
    for path in paths:
        plans = load_plans(path)
        cases.extend(_plan_cases(plans, configurations))
    return cases


def synthetic_fingerprints() -> list[Any]:
    """Two generated tasks: an isotropic 1-channel CT and an anisotropic 2-channel MR."""
    from autounet.task.fingerprint import CaseFingerprint, Fingerprint
    from autounet.planners.plans import IntensityProperties

    def task(name: str, channels: dict[str, str], labels: dict[str, int], spacing: list[float],
             shape: list[int], n: int) -> Fingerprint:
        cases = [CaseFingerprint(f"{name}_{i:03d}", spacing, shape, shape, [[0, s] for s in shape],
                                 {str(v): 1000 for v in labels.values()}, 1.0) for i in range(n)]
        props = IntensityProperties(mean=100.0, std=50.0, median=100.0, min=-1000.0, max=2000.0,
                                    percentile_00_5=-500.0, percentile_99_5=800.0)
        return Fingerprint(task=name, channel_names=channels, labels=labels, is_2d=False, cases=cases,
                           intensity_properties={c: props for c in channels}, median_relative_size_after_crop=1.0,
                           num_samples_per_channel=1000, seed=0)

    return [
        task("SyntheticCT", {"0": "CT"}, {"background": 0, "organ": 1, "tumour": 2},
             [1.0, 1.0, 1.0], [160, 192, 192], 40),
        task("SyntheticMR", {"0": "T2", "1": "ADC"}, {"background": 0, "zone": 1},
             [4.0, 0.6, 0.6], [24, 320, 320], 30),
    ]


def cases_from_planner(architecture: str, gpu_memory_gb: float, configurations: Sequence[str]) -> list[Case] | None:
    """Plan the synthetic tasks with the experiment planner; None when the planner is unavailable."""
    try:
        from autounet.planners.experiment_planner import plan_experiment
        fingerprints = synthetic_fingerprints()
    except ImportError as exc:
        log.warning("experiment planner not importable (%s); give --network-json/--patch/--batch instead", exc)
        return None
    cases = []
    for fingerprint in fingerprints:
        plans = plan_experiment(fingerprint, gpu_memory_gb=gpu_memory_gb, architecture=architecture)
        cases.extend(_plan_cases(plans, configurations))
    return cases


def case_from_cli(args: argparse.Namespace) -> Case:
    """A hand-written NetworkPlan (JSON file or inline JSON) with --patch and --batch."""
    text = args.network_json
    source = Path(text).read_text() if Path(text).is_file() else text
    network = from_dict(NetworkPlan, json.loads(source), "--network-json")
    if args.patch is None:
        raise SystemExit("--network-json needs --patch")
    return Case("cli", f"{len(args.patch)}d", network, list(args.patch), args.batch, args.in_channels,
                args.num_classes)


# ---------------------------------------------------------------------------- prediction and guard

def fit_to_voxel_budget(case: Case, max_voxels: int) -> Case:
    """Scale the patch down until batch x patch <= max_voxels, then the batch if still needed.

    Each axis stays a multiple of the total stride and at least twice it, so the bottleneck
    keeps more than one voxel (instance norm needs that in training).
    """
    voxels = case.batch_size * math.prod(case.patch_size)
    if voxels <= max_voxels:
        return case
    stride = case.network.total_stride()
    factor = (max_voxels / voxels) ** (1.0 / len(case.patch_size))
    patch = [min(p, max(2 * t, int(p * factor) // t * t)) for p, t in zip(case.patch_size, stride)]
    notes = [*case.notes, f"patch scaled from {'x'.join(map(str, case.patch_size))} (--max-voxels {max_voxels})"]
    batch = case.batch_size
    if batch * math.prod(patch) > max_voxels and batch > 1:
        batch = max(1, max_voxels // math.prod(patch))
        notes.append(f"batch reduced from {case.batch_size}")
    return dataclasses.replace(case, patch_size=patch, batch_size=batch, notes=notes)


def predicted_bytes(case: Case, device: str) -> tuple[int, int]:
    """(total estimate the planner uses, the part the measurement sees) for this device."""
    from autounet.planners import memory

    mixed = device == "cuda"
    args = (case.network, case.patch_size, case.batch_size, case.in_channels, case.num_classes, mixed)
    total = memory.estimate_training_memory_bytes(*args)
    if not hasattr(memory, "estimate_training_memory"):
        return total, total
    constants = memory.DEFAULT_CONSTANTS if mixed else dataclasses.replace(memory.DEFAULT_CONSTANTS, workspace_bytes=0)
    return total, memory.estimate_training_memory(*args, constants=constants).allocated


# ---------------------------------------------------------------------------- measurement (child)

def _loss(outputs: list[Any], target: Any) -> Any:
    """Deep-supervision CE + soft Dice with halving weights: the training loss's memory profile."""
    import torch
    import torch.nn.functional as F

    total = 0.0
    for i, logits in enumerate(outputs):
        logits = logits.float()
        t = target if logits.shape[2:] == target.shape[1:] else F.interpolate(
            target[:, None].float(), size=logits.shape[2:], mode="nearest")[:, 0].long()
        probs = torch.softmax(logits, 1)
        onehot = F.one_hot(t, logits.shape[1]).movedim(-1, 1).to(probs.dtype)
        axes = tuple(range(2, logits.ndim))
        dice = (2 * (probs * onehot).sum(axes) + 1e-5) / (probs.sum(axes) + onehot.sum(axes) + 1e-5)
        total = total + 0.5**i * (F.cross_entropy(logits, t) + 1 - dice.mean())
    return total


def _warm_up(dims: int, device: str) -> None:
    """Load the conv/norm kernels and thread pools first, so their one-off cost is not measured."""
    import torch

    from autounet.networks.blocks import ConvNormAct, ops_for_dims

    block = ConvNormAct(ops_for_dims(dims).conv, 1, 2, 3).to(device)
    x = torch.randn(1, 1, *([4] * dims), device=device)
    with torch.autocast(device_type=device, dtype=torch.float16, enabled=device == "cuda"):
        out = block(x)
    torch.nn.functional.cross_entropy(out.float(), torch.zeros_like(x[:, 0], dtype=torch.long)).backward()


def measure(case: Case, device: str, iterations: int, architecture: str | None) -> int:
    """Peak bytes of `iterations` training steps (see the module docstring for what is measured)."""
    import torch

    from autounet.networks.registry import build_network

    _warm_up(len(case.patch_size), device)
    baseline_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    torch.manual_seed(0)
    network = build_network(architecture or case.network.architecture, case.network, case.in_channels,
                            case.num_classes, deep_supervision=True).to(device)
    optimizer = torch.optim.SGD(network.parameters(), lr=1e-2, momentum=0.99, nesterov=True, weight_decay=3e-5)
    use_amp = device == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    x = torch.randn(case.batch_size, case.in_channels, *case.patch_size, device=device)
    target = torch.randint(0, case.num_classes, (case.batch_size, *case.patch_size), device=device)
    if use_amp:
        torch.cuda.reset_peak_memory_stats()
    for _ in range(iterations):
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type=device, dtype=torch.float16, enabled=use_amp):
            outputs = network(x)
        loss = _loss(outputs, target)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(network.parameters(), 12.0)
        scaler.step(optimizer)
        scaler.update()
    if use_amp:
        torch.cuda.synchronize()
        return int(torch.cuda.max_memory_allocated())
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - baseline_kib) * 1024


def measure_in_subprocess(case: Case, device: str, iterations: int, architecture: str | None) -> int:
    spec = json.dumps({"case": to_dict(case), "device": device, "iterations": iterations,
                       "architecture": architecture})
    proc = subprocess.run([sys.executable, __file__, "--child", spec], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"measuring {case.task}/{case.configuration} failed:\n{proc.stderr[-3000:]}")
    return int(json.loads(proc.stdout.strip().splitlines()[-1])["peak_bytes"])


def _child(spec_json: str) -> None:
    spec = json.loads(spec_json)
    case = from_dict(Case, spec["case"], "child spec")
    peak = measure(case, spec["device"], spec["iterations"], spec["architecture"])
    sys.stdout.write(json.dumps({"peak_bytes": peak}) + "\n")


# ---------------------------------------------------------------------------- CLI

def _mib(n: int) -> str:
    return f"{n / 2**20:,.0f}"


def format_table(rows: list[dict[str, Any]]) -> str:
    header = ["task", "config", "network", "patch", "batch", "device", "planner estimate MiB",
              "predicted peak MiB", "measured MiB", "measured/predicted", "notes"]
    body = [[str(r[k]) for k in ("task", "config", "network", "patch", "batch", "device")]
            + [_mib(r["predicted_total"]), _mib(r["predicted_seen"]), _mib(r["measured"]),
               f"{r['measured'] / r['predicted_seen']:.2f}", "; ".join(r["notes"])] for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(b, widths)) for b in body]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("plans", nargs="*", type=Path, help="plans.json files (default: plan two synthetic tasks)")
    parser.add_argument("--configurations", nargs="+", default=list(DEFAULT_CONFIGURATIONS))
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--iterations", type=int, default=2, help="training steps per configuration (>= 2 so "
                        "that the optimizer's momentum buffers exist at the peak)")
    parser.add_argument("--max-voxels", type=int, default=DEFAULT_CPU_MAX_VOXELS,
                        help="CPU only: scale the patch down until batch x patch voxels fit this")
    parser.add_argument("--architecture", default="plain_unet",
                        help="architecture the synthetic tasks are planned for")
    parser.add_argument("--network", default=None, help="registry name or pkg.module:Class to build instead of "
                        "the plan's architecture")
    parser.add_argument("--gpu-memory-gb", type=float, default=8.0, help="planning target for the synthetic tasks")
    parser.add_argument("--network-json", help="hand-written NetworkPlan (file or inline JSON) instead of plans")
    parser.add_argument("--patch", type=int, nargs="+")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--in-channels", type=int, default=1)
    parser.add_argument("--num-classes", type=int, default=3)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        _child(args.child)
        return 0
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.network_json:
        cases = [case_from_cli(args)]
    elif args.plans:
        cases = cases_from_plans(args.plans, args.configurations)
    else:
        cases = cases_from_planner(args.architecture, args.gpu_memory_gb, args.configurations) or []
    if not cases:
        log.error("nothing to measure: no matching configurations (see --help)")
        return 2
    rows = []
    for case in cases:
        if args.device == "cpu":
            case = fit_to_voxel_budget(case, args.max_voxels)
        total, seen = predicted_bytes(case, args.device)
        log.info("measuring %s/%s patch %s batch %d on %s", case.task, case.configuration, case.patch_size,
                 case.batch_size, args.device)
        measured = measure_in_subprocess(case, args.device, args.iterations, args.network)
        rows.append({"task": case.task, "config": case.configuration,
                     "network": args.network or case.network.architecture,
                     "patch": "x".join(map(str, case.patch_size)), "batch": case.batch_size, "device": args.device,
                     "predicted_total": total, "predicted_seen": seen, "measured": measured, "notes": case.notes})
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
