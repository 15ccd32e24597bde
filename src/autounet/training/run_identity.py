"""What a run *is*: its folder name and its manifest (fold_N/run.json).

Two runs that would train different models never share a folder: the run folder name carries
every setting that changes the model, in a fixed order, each only where it differs from the
default: the configuration, the plans (`resenc-l`), the network class, the blocks switched on
instead of the plans' own (`se+attention_gate`, or `noblocks`), the initialisation source
(`ft-<task>-<checksum>`) and the training length (`50ep_250it`), e.g.
`3d_fullres__resenc-l__se__50ep_250it`. A name longer than MAX_RUN_NAME keeps the configuration
and the plans and replaces the rest by a checksum of the full name. run.json records all of it,
with the plans' content hash, the software versions, seed and host.
"""

from __future__ import annotations

import datetime as _dt
import functools
import hashlib
import platform
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autounet.core.run_layout import RUN_NAME_SEPARATOR as RUN_SEPARATOR
from autounet.errors import AutounetError, PlansError
from autounet.io.atomic import read_json, write_json
from autounet.io.json_schema import from_dict, to_dict
from autounet.planners.plans import DEFAULT_PLANS_NAME
from autounet.training.oom_recovery import OomEvent
from autounet.training.settings import DEFAULT_EPOCHS, DEFAULT_ITERS_PER_EPOCH, TrainingSettings

MANIFEST_NAME = "run.json"
STATUSES = ("running", "finished", "failed")


def _safe_component(name: str) -> str:
    """A network name or import path as a portable folder-name component."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_")


MAX_RUN_NAME = 72
_CHUNK = 1 << 20


@functools.lru_cache(maxsize=32)
def _file_checksum(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def checkpoint_checksum(path: str | Path) -> str:
    """sha256 of a checkpoint file (cached per size and modification time: names are asked for often)."""
    stat = Path(path).stat()
    return _file_checksum(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


def init_source_tag(path: str | Path) -> str:
    """`ft-<task>-<6 hex of the file's checksum>`: the task from the checkpoint's run.json where it has one."""
    path = Path(path)
    task = None
    manifest = path.parent / MANIFEST_NAME
    if manifest.is_file():
        try:
            task = read_json(manifest).get("task")
        except (AutounetError, AttributeError):
            task = None
    label = _safe_component(task if isinstance(task, str) and task else path.stem)
    return f"ft-{label}-{checkpoint_checksum(path)[:6]}"


def run_name(configuration: str, settings: TrainingSettings) -> str:
    """`3d_fullres`, `3d_fullres__50ep_100it`, `3d_fullres__resenc-l__se__ft-Task01_X-1a2b3c`, ..."""
    parts = [configuration]
    if settings.plans != DEFAULT_PLANS_NAME:
        parts.append(settings.plans)
    detail = []
    if settings.network:
        detail.append(_safe_component(settings.network))
    if settings.blocks is not None:
        detail.append("+".join(sorted(settings.blocks)) or "noblocks")
    if settings.init_from:
        detail.append(init_source_tag(settings.init_from))
    if settings.epochs != DEFAULT_EPOCHS or settings.iters_per_epoch != DEFAULT_ITERS_PER_EPOCH:
        detail.append(f"{settings.epochs}ep_{settings.iters_per_epoch}it")
    name = RUN_SEPARATOR.join(parts + detail)
    if len(name) > MAX_RUN_NAME:
        name = RUN_SEPARATOR.join(parts + [hashlib.sha256(name.encode()).hexdigest()[:10]])
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
    #: what the trained model is, beyond the settings: plans name and content hash, architecture, blocks
    plans_name: str = DEFAULT_PLANS_NAME
    plans_hash: str | None = None
    architecture: str | None = None
    blocks: list[str] = field(default_factory=list)
    #: --init-from: the checkpoint, its sha256, how many tensors it filled, the layers re-initialised
    init: dict[str, Any] | None = None
    #: every out-of-memory retry of a training step (training.oom_recovery), across resumes
    oom_events: list[OomEvent] = field(default_factory=list)
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
