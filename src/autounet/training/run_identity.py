"""What a run *is*: its folder name and its manifest (fold_N/run.json).

A shortened or modified run must never pass for a full default one, so the run folder name
carries every deviation that changes the result's meaning (epochs, iterations, network) and
run.json records every setting, the software versions, seed and host.
"""

from __future__ import annotations

import datetime as _dt
import platform
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autounet.errors import AutounetError, PlansError
from autounet.io.atomic import read_json, write_json
from autounet.io.json_schema import from_dict, to_dict
from autounet.training.settings import DEFAULT_EPOCHS, DEFAULT_ITERS_PER_EPOCH, TrainingSettings

MANIFEST_NAME = "run.json"
STATUSES = ("running", "finished", "failed")


def _safe_component(name: str) -> str:
    """A network name or import path as a portable folder-name component."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_")


def run_name(configuration: str, settings: TrainingSettings) -> str:
    """`3d_fullres`, `3d_fullres__50ep_100it`, `3d_fullres__resenc_unet`, ..."""
    name = configuration
    if settings.epochs != DEFAULT_EPOCHS or settings.iters_per_epoch != DEFAULT_ITERS_PER_EPOCH:
        name += f"__{settings.epochs}ep_{settings.iters_per_epoch}it"
    if settings.network:
        name += f"__{_safe_component(settings.network)}"
    return name


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).astimezone().isoformat(timespec="seconds")


def software_versions() -> dict[str, str]:
    import numpy
    import torch

    import autounet

    return {"autounet": autounet.__version__, "torch": torch.__version__, "numpy": numpy.__version__,
            "python": platform.python_version()}


@dataclass
class RunManifest:
    """fold_N/run.json: the complete identity of one trained fold."""

    task: str
    configuration: str
    fold: str
    run_name: str
    settings: dict[str, Any]
    seed: int
    versions: dict[str, str]
    host: str
    device: str
    world_size: int
    start_time: str
    status: str = "running"
    end_time: str | None = None
    resumed: list[str] = field(default_factory=list)
    #: the precision the network ran in (settings.precision resolved on `device`)
    precision: str | None = None
    #: for a model trained by another tool and imported (`autounet import_nnunet`): where it came from
    imported_from: dict[str, Any] | None = None

    def validate(self, where: str) -> None:
        if self.status not in STATUSES:
            raise PlansError(f"{where}.status: must be one of {STATUSES}, got '{self.status}'")
        unknown = sorted(set(self.settings) - set(TrainingSettings.__dataclass_fields__))
        if unknown:
            raise PlansError(f"{where}.settings: unknown setting(s) {unknown}")

    @classmethod
    def create(cls, task: str, configuration: str, fold: str, settings: TrainingSettings, device: str,
               world_size: int = 1, precision: str | None = None) -> RunManifest:
        return cls(task=task, configuration=configuration, fold=fold,
                   run_name=run_name(configuration, settings), settings=settings.as_dict(),
                   seed=settings.seed, versions=software_versions(), host=socket.gethostname(),
                   device=device, world_size=world_size, start_time=now_iso(), precision=precision)


def save_manifest(manifest: RunManifest, fold_dir: Path) -> Path:
    path = Path(fold_dir) / MANIFEST_NAME
    write_json(path, to_dict(manifest))
    return path


def load_manifest(fold_dir: Path) -> RunManifest:
    path = Path(fold_dir) / MANIFEST_NAME
    if not path.is_file():
        raise AutounetError(f"{path}: run manifest not found; this folder was not written by `autounet train`")
    return from_dict(RunManifest, read_json(path), str(path))


def check_resume_compatible(manifest: RunManifest, settings: TrainingSettings, where: str) -> None:
    """Raise if a setting that defines the experiment differs from the interrupted run's."""
    current = settings.as_dict()
    for name in TrainingSettings.identity_fields():
        before = manifest.settings.get(name, getattr(TrainingSettings(), name))
        if before != current[name]:
            raise AutounetError(
                f"{where}: cannot resume: setting '{name}' was {before!r} in the interrupted run, now "
                f"{current[name]!r}; resume with the original value or train into a new fold folder"
            )
