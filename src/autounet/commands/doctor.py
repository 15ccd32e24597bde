"""`autounet doctor`: what autounet sees on this machine, for bug reports and self-help."""

from __future__ import annotations

import importlib
import platform
from importlib import metadata

from autounet import __version__
from autounet.networks.precision import cpu_has_native_bf16
from autounet.core import system
from autounet.core.run_layout import fold_states
from autounet.core.workspace import Workspace

PACKAGES = ("torch", "numpy", "scipy", "SimpleITK", "nibabel", "batchgenerators", "matplotlib", "tqdm")


def package_versions() -> dict[str, str]:
    versions: dict[str, str] = {"autounet": __version__, "python": platform.python_version()}
    for name in PACKAGES:
        try:
            importlib.import_module(name)
            versions[name] = metadata.version(name)
        except Exception as exc:  # noqa: BLE001 - doctor reports, never fails
            versions[name] = f"not importable ({type(exc).__name__})"
    return versions


def devices() -> list[str]:
    lines: list[str] = []
    try:
        import torch

        if torch.cuda.is_available():
            for i in range(torch.cuda.device_count()):
                p = torch.cuda.get_device_properties(i)
                lines.append(f"cuda:{i} {p.name}, {p.total_memory / 1024**3:.1f} GB")
        else:
            lines.append("CUDA: not available")
        mps = getattr(torch.backends, "mps", None)
        lines.append("MPS: available" if mps is not None and mps.is_available() else "MPS: not available")
    except Exception as exc:  # noqa: BLE001
        lines.append(f"torch not importable: {exc}")
    bf16 = ("native bfloat16 (--precision auto uses bf16 on the CPU)" if cpu_has_native_bf16()
            else "no native bfloat16 (--precision auto uses fp32 on the CPU)")
    lines.append(f"CPU: {system.cpu_count()} cores usable, {bf16}")
    return lines


def doctor_report(workspace: Workspace) -> str:
    rows = [
        "autounet doctor",
        "",
        "paths",
        f"  workspace      {workspace.root}" + ("" if workspace.root.exists() else "  (does not exist yet)"),
        f"  raw            {workspace.raw}",
        f"  preprocessed   {workspace.preprocessed_root}",
        f"  results        {workspace.results_root}",
        "",
        "versions",
    ]
    rows += [f"  {k:<17}{v}" for k, v in package_versions().items()]
    rows += ["", "devices"] + [f"  {d}" for d in devices()]
    shm = system.shm_size_gb()
    rows += [
        "",
        "resources",
        f"  RAM            {system.available_ram_gb():.1f} GB available of {system.total_ram_gb():.1f} GB",
        f"  disk           {system.free_disk_gb(workspace.root):.1f} GB free at {workspace.root}",
        f"  /dev/shm       {'absent' if shm is None else f'{shm:.1f} GB'}"
        + ("  (small: data-loader workers may die; use --workers 0 or a bigger --shm-size)" if shm is not None and shm < 1 else ""),
    ]
    if workspace.root.exists():
        rows += ["", "tasks"]
        raw = sorted(p.name for p in workspace.raw.iterdir() if p.is_dir()) if workspace.raw.is_dir() else []
        rows.append(f"  raw            {', '.join(raw) or '-'}")
        rows.append(f"  preprocessed   {', '.join(workspace.preprocessed_tasks()) or '-'}")
        states = fold_states(workspace)
        trained = [f"{t} ({done} fold{'s' if done > 1 else ''})" for t, (done, _) in states.items() if done]
        unfinished = [f"{t} ({open_} fold{'s' if open_ > 1 else ''})" for t, (_, open_) in states.items() if open_]
        rows.append(f"  trained        {', '.join(trained) or '-'}")
        rows.append(f"  in training    {', '.join(unfinished) or '-'}  (folds without a final checkpoint: running, "
                    f"or stopped - continue with --resume)")
    return "\n".join(rows)
