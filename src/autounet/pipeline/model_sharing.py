"""Safe model sharing: `autounet export_model` and `autounet install_model`.

An exported archive holds the trained runs of one task (plans, dataset.json, postprocessing
decision, checkpoints, run manifests), the best-configuration choice, and a `manifest.json`
with a SHA-256 of every file and the versions that produced them. Installing refuses
anything that could write outside the target (absolute paths, `..`, links), any file whose
checksum does not match, and checkpoints that would need unpickling arbitrary objects.
Nothing is installed unless everything checks out.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import stat
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from autounet import __version__
from autounet.errors import AutounetError, CheckpointError, DatasetError
from autounet.io.atomic import atomic_path
from autounet.io.json_schema import from_dict, to_dict
from autounet.pipeline.workspace import Workspace

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
ARCHIVE_FORMAT = 1
RUN_FILES = ("plans.json", "dataset.json", "postprocessing.json")
FOLD_FILES = ("run.json",)
CHECKPOINTS = {"final": "checkpoint_final.pt", "best": "checkpoint_best.pt"}


@dataclass
class ArchiveManifest:
    format: int
    task: str
    autounet_version: str
    torch_version: str
    runs: list[str]
    files: dict[str, str] = field(default_factory=dict)

    def validate(self, where: str) -> None:
        if self.format != ARCHIVE_FORMAT:
            raise AutounetError(f"{where}.format: archive format {self.format} is not supported (expected {ARCHIVE_FORMAT})")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def export_model(workspace: Workspace, task: str, output: Path, runs: list[str] | None = None,
                 folds: list[str] | None = None, checkpoint: str = "final") -> Path:
    """Write a zip of the task's trained runs (or the named ones) with a checksum manifest."""
    import torch

    results = workspace.results(task)
    if not results.is_dir():
        raise AutounetError(f"{results}: no trained runs for task {task}; train first")
    available = sorted(p.name for p in results.iterdir() if p.is_dir() and any(p.glob(f"fold_*/{CHECKPOINTS[checkpoint]}")))
    chosen = runs or available
    missing = [r for r in chosen if r not in available]
    if missing or not chosen:
        raise AutounetError(f"{results}: no {CHECKPOINTS[checkpoint]} for run(s) {missing or chosen}; "
                            f"runs with that checkpoint: {', '.join(available) or 'none'}")
    members: dict[str, Path] = {}
    for run in chosen:
        run_dir = results / run
        for name in RUN_FILES:
            if (run_dir / name).is_file():
                members[f"{run}/{name}"] = run_dir / name
        for fold_dir in sorted(run_dir.glob("fold_*")):
            if folds and fold_dir.name.removeprefix("fold_") not in folds:
                continue
            ckpt = fold_dir / CHECKPOINTS[checkpoint]
            if not ckpt.is_file():
                continue
            members[f"{run}/{fold_dir.name}/{CHECKPOINTS['final']}"] = ckpt
            for name in FOLD_FILES:
                if (fold_dir / name).is_file():
                    members[f"{run}/{fold_dir.name}/{name}"] = fold_dir / name
    if (results / "best_configuration.json").is_file():
        members["best_configuration.json"] = results / "best_configuration.json"
    manifest = ArchiveManifest(ARCHIVE_FORMAT, task, __version__, torch.__version__, chosen,
                               {name: _sha256(path) for name, path in members.items()})
    with atomic_path(output, suffix=".zip") as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            zf.writestr(MANIFEST, json.dumps(to_dict(manifest), indent=2))
            for name, path in members.items():
                zf.write(path, arcname=f"{task}/{name}")
    log.info("exported %d file(s) of %s to %s", len(members), ", ".join(chosen), output)
    return output


def _check_member(info: zipfile.ZipInfo, archive: Path) -> PurePosixPath:
    """Refuse names that could escape the target folder, and links."""
    name = info.filename
    path = PurePosixPath(name)
    mode = info.external_attr >> 16
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":") or path.is_absolute():
        raise AutounetError(f"{archive}: refused, member '{name}' has an absolute path")
    if ".." in path.parts or "\\" in name:
        raise AutounetError(f"{archive}: refused, member '{name}' contains '..' or a backslash (path traversal)")
    if stat.S_ISLNK(mode):
        raise AutounetError(f"{archive}: refused, member '{name}' is a symbolic link")
    return path


def _check_checkpoint(staged: Path, archive: Path, member: str) -> None:
    """Load a staged checkpoint weights-only; a refusal names the archive and member, not the staging path."""
    from autounet.training.checkpoint import load_checkpoint

    try:
        load_checkpoint(staged)
    except CheckpointError as exc:
        reason = str(exc).removeprefix(f"{staged}: ").removeprefix("refused, ").replace(str(staged), member)
        raise CheckpointError(f"{archive}: refused, member {member}: {reason}") from None


def install_model(archive: Path, workspace: Workspace, overwrite: bool = False) -> Path:
    """Check and unpack an exported archive into `<workspace>/results/<task>/`."""
    archive = Path(archive)
    if not archive.is_file():
        raise DatasetError(f"{archive}: file not found")
    try:
        zf = zipfile.ZipFile(archive)
    except zipfile.BadZipFile:
        raise AutounetError(f"{archive}: not a zip archive (or truncated); export it again") from None
    with zf:
        infos = zf.infolist()
        for info in infos:
            _check_member(info, archive)
        names = {i.filename for i in infos}
        if MANIFEST not in names:
            raise AutounetError(f"{archive}: refused, no {MANIFEST} inside (not an autounet export)")
        try:
            raw = json.loads(zf.read(MANIFEST))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise AutounetError(f"{archive}: refused, {MANIFEST} is not valid JSON") from None
        manifest = from_dict(ArchiveManifest, raw, f"{archive}:{MANIFEST}")
        task = manifest.task
        if "/" in task or task in ("", ".", ".."):
            raise AutounetError(f"{archive}: refused, invalid task name '{task}' in {MANIFEST}")
        expected = {f"{task}/{n}" for n in manifest.files}
        extra = sorted(names - expected - {MANIFEST} - {n for n in names if n.endswith("/")})
        if extra:
            raise AutounetError(f"{archive}: refused, file(s) not listed in {MANIFEST}: {extra[:3]}")
        missing = sorted(expected - names)
        if missing:
            raise AutounetError(f"{archive}: refused, file(s) listed in {MANIFEST} are missing: {missing[:3]}")
        target = workspace.results(task)
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".tmp-install-", dir=target.parent))
        try:
            for rel, digest in manifest.files.items():
                dest = staging / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(f"{task}/{rel}") as src, open(dest, "wb") as out:
                    shutil.copyfileobj(src, out)
                if _sha256(dest) != digest:
                    raise AutounetError(f"{archive}: refused, checksum mismatch for {rel} (corrupted or altered)")
                if dest.suffix == ".pt":
                    _check_checkpoint(dest, archive, f"{task}/{rel}")
            for run in manifest.runs:
                if (target / run).exists() and not overwrite:
                    raise AutounetError(f"{target / run}: already installed; pass --overwrite to replace it")
            target.mkdir(parents=True, exist_ok=True)
            for item in sorted(staging.iterdir()):
                dest = target / item.name
                if dest.exists():
                    if dest.is_dir():
                        shutil.rmtree(dest)
                    else:
                        dest.unlink()
                item.rename(dest)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    log.info("installed %s (%s) into %s", task, ", ".join(manifest.runs), target)
    return target
