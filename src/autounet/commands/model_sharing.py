"""Safe model sharing: `autounet export_model` and `autounet install_model`.

An exported archive holds the trained runs of one task (plans, dataset.json, postprocessing
decision, checkpoints, run manifests), the best-configuration choice, and a `manifest.json`
with a SHA-256 of every file and the versions that produced them. Installing refuses
anything that could write outside the target (absolute paths, `..`, links), any file whose
checksum does not match, and checkpoints that would need unpickling arbitrary objects.
Nothing is installed unless everything checks out.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
import stat
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from autounet import __version__
from autounet.errors import AutounetError, CheckpointError, DatasetError
from autounet.io.atomic import TMP_PREFIX, atomic_path
from autounet.io.json_schema import from_dict, to_dict
from autounet.core.run_layout import BEST_CONFIGURATION_FILE, CHECKPOINT_FILES, FOLD_PREFIX
from autounet.core.workspace import Workspace

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
ARCHIVE_FORMAT = 1
RUN_FILES = ("plans.json", "dataset.json", "postprocessing.json")
FOLD_FILES = ("run.json",)
CHECKPOINTS = {name: CHECKPOINT_FILES[name] for name in ("final", "best")}
BEST_CONFIGURATION = BEST_CONFIGURATION_FILE
GIB = 1024**3
#: Size limits of an installed archive. The largest reference model (ResEnc XL, 5 folds) stores
#: about 5 x 1.5 GB of checkpoints; JSON metadata is kilobytes.
MAX_MEMBER_BYTES = 8 * GIB
MAX_ARCHIVE_BYTES = 32 * GIB
MAX_JSON_BYTES = 16 * 1024**2
MAX_COMPRESSION_RATIO = 100
RATIO_CHECK_BYTES = 1024**2  # small members (JSON of zeros, empty files) may compress better
DISK_MARGIN_BYTES = 256 * 1024**2


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
    available = sorted(p.name for p in results.iterdir() if p.is_dir() and any(p.glob(f"{FOLD_PREFIX}*/{CHECKPOINTS[checkpoint]}")))
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
        for fold_dir in sorted(run_dir.glob(f"{FOLD_PREFIX}*")):
            if folds and fold_dir.name.removeprefix(FOLD_PREFIX) not in folds:
                continue
            ckpt = fold_dir / CHECKPOINTS[checkpoint]
            if not ckpt.is_file():
                continue
            members[f"{run}/{fold_dir.name}/{CHECKPOINTS['final']}"] = ckpt
            for name in FOLD_FILES:
                if (fold_dir / name).is_file():
                    members[f"{run}/{fold_dir.name}/{name}"] = fold_dir / name
    if (results / BEST_CONFIGURATION).is_file():
        members[BEST_CONFIGURATION] = results / BEST_CONFIGURATION
    manifest = ArchiveManifest(ARCHIVE_FORMAT, task, __version__, torch.__version__, chosen,
                               {name: _sha256(path) for name, path in members.items()})
    with atomic_path(output, suffix=".zip") as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            zf.writestr(MANIFEST, json.dumps(to_dict(manifest), indent=2))
            for name, path in members.items():
                zf.write(path, arcname=f"{task}/{name}")
    log.info("exported %d file(s) of %s to %s", len(members), ", ".join(chosen), output)
    return output


@contextlib.contextmanager
def open_checked_zip(archive: Path, hint: str = "") -> Iterator[tuple[zipfile.ZipFile, list[zipfile.ZipInfo]]]:
    """Open a zip whose every member name was checked (no absolute paths, `..`, backslashes or links)
    before anything is read; `hint` ends the message for a file that is not a zip."""
    try:
        zf = zipfile.ZipFile(archive)
    except zipfile.BadZipFile:
        raise AutounetError(f"{archive}: not a zip archive (or truncated){hint}") from None
    with zf:
        infos = zf.infolist()
        for info in infos:
            _check_member(info, archive)
        yield zf, infos


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
    from autounet.core.checkpoint import load_checkpoint

    try:
        load_checkpoint(staged)
    except CheckpointError as exc:
        reason = str(exc).removeprefix(f"{staged}: ").removeprefix("refused, ").replace(str(staged), member)
        raise CheckpointError(f"{archive}: refused, member {member}: {reason}") from None


def check_sizes(infos: list[zipfile.ZipInfo], archive: Path, target_parent: Path) -> int:
    """Refuse an archive whose declared sizes are implausible for a model, or exceed the free disk.

    A deflate bomb (a few MB that expand to GBs) is caught by its compression ratio: checkpoint
    weights hardly compress and JSON about 10x, so a member that claims to expand far more is refused.
    """
    total = 0
    for info in infos:
        if info.file_size > MAX_MEMBER_BYTES:
            raise AutounetError(f"{archive}: refused, member '{info.filename}' declares {info.file_size / GIB:.1f} GiB "
                                f"(more than {MAX_MEMBER_BYTES / GIB:.0f} GiB, larger than any model file)")
        if info.file_size > RATIO_CHECK_BYTES and info.file_size > MAX_COMPRESSION_RATIO * max(info.compress_size, 1):
            raise AutounetError(f"{archive}: refused, member '{info.filename}' expands {info.compress_size:,} bytes "
                                f"to {info.file_size:,} (ratio above {MAX_COMPRESSION_RATIO}: a decompression bomb?)")
        total += info.file_size
    if total > MAX_ARCHIVE_BYTES:
        raise AutounetError(f"{archive}: refused, unpacks to {total / GIB:.1f} GiB (more than "
                            f"{MAX_ARCHIVE_BYTES / GIB:.0f} GiB, larger than any model)")
    free = shutil.disk_usage(target_parent).free
    if total + DISK_MARGIN_BYTES > free:
        raise AutounetError(f"{archive}: needs {total / GIB:.2f} GiB but {target_parent} has {free / GIB:.2f} GiB "
                            f"free; free disk space first")
    return total


def extract_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, dest: Path, archive: Path) -> None:
    """Copy one member, counting bytes: a member that writes more than it declared is refused."""
    written = 0
    with zf.open(info) as src, open(dest, "wb") as out:
        while chunk := src.read(1 << 20):
            written += len(chunk)
            if written > info.file_size:
                raise AutounetError(f"{archive}: refused, member '{info.filename}' holds more than the "
                                    f"{info.file_size:,} bytes it declares")
            out.write(chunk)


def _run_of(rel: str, runs: list[str], archive: Path) -> str:
    """The top-level item a manifest file installs: a declared run, or best_configuration.json."""
    top = rel.split("/", 1)[0]
    if rel == BEST_CONFIGURATION or (top in runs and "/" in rel):
        return top
    raise AutounetError(f"{archive}: refused, {MANIFEST} lists '{rel}', which belongs to no run declared in "
                        f"its 'runs' ({', '.join(runs) or 'none'})")


def replace_items(staging: Path, target: Path, items: list[str]) -> None:
    """Move each staged item into `target`; what it replaces is moved aside first and deleted only
    after every item is in place, so a failure part-way leaves the old runs as they were."""
    aside: list[tuple[Path, Path]] = []
    placed: list[Path] = []
    try:
        for name in items:
            dest = target / name
            if dest.exists() or dest.is_symlink():
                backup = target / f"{TMP_PREFIX}replaced-{name}"
                dest.rename(backup)
                aside.append((dest, backup))
            (staging / name).rename(dest)
            placed.append(dest)
    except BaseException:
        for dest in placed:
            _remove(dest)
        for dest, backup in aside:
            backup.rename(dest)
        raise
    for _, backup in aside:
        _remove(backup)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def install_model(archive: Path, workspace: Workspace, overwrite: bool = False) -> Path:
    """Check and unpack an exported archive into `<workspace>/results/<task>/`.

    An archive installs only the runs its manifest declares (plus best_configuration.json), never
    replaces an existing item without `overwrite`, and is refused before anything is extracted
    when its sizes are implausible or do not fit on the disk.
    """
    archive = Path(archive)
    if not archive.is_file():
        raise DatasetError(f"{archive}: file not found")
    with open_checked_zip(archive, "; export it again") as (zf, infos):
        names = {i.filename for i in infos}
        if MANIFEST not in names:
            raise AutounetError(f"{archive}: refused, no {MANIFEST} inside (not an autounet export)")
        manifest_info = zf.getinfo(MANIFEST)
        if manifest_info.file_size > MAX_JSON_BYTES:
            raise AutounetError(f"{archive}: refused, {MANIFEST} declares {manifest_info.file_size:,} bytes "
                                f"(at most {MAX_JSON_BYTES:,})")
        try:
            raw = json.loads(zf.read(MANIFEST))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise AutounetError(f"{archive}: refused, {MANIFEST} is not valid JSON") from None
        manifest = from_dict(ArchiveManifest, raw, f"{archive}:{MANIFEST}")
        task = manifest.task
        if not is_plain_name(task):
            raise AutounetError(f"{archive}: refused, invalid task name '{task}' in {MANIFEST}")
        bad_runs = [r for r in manifest.runs if not is_plain_name(r) or r == BEST_CONFIGURATION]
        if bad_runs:
            raise AutounetError(f"{archive}: refused, invalid run name(s) {bad_runs[:3]} in {MANIFEST} 'runs'")
        items = sorted({_run_of(rel, manifest.runs, archive) for rel in manifest.files})
        expected = {f"{task}/{n}" for n in manifest.files}
        extra = sorted(names - expected - {MANIFEST} - {n for n in names if n.endswith("/")})
        if extra:
            raise AutounetError(f"{archive}: refused, file(s) not listed in {MANIFEST}: {extra[:3]}")
        missing = sorted(expected - names)
        if missing:
            raise AutounetError(f"{archive}: refused, file(s) listed in {MANIFEST} are missing: {missing[:3]}")
        target = workspace.results(task)
        existing = [name for name in items if (target / name).exists()]
        if existing and not overwrite:
            raise AutounetError(f"{target / existing[0]}: already installed; pass --overwrite to replace it")
        target.parent.mkdir(parents=True, exist_ok=True)
        check_sizes([zf.getinfo(n) for n in sorted(expected)], archive, target.parent)
        staging = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}install-", dir=target.parent))
        try:
            for rel, digest in manifest.files.items():
                dest = staging / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                extract_member(zf, zf.getinfo(f"{task}/{rel}"), dest, archive)
                if _sha256(dest) != digest:
                    raise AutounetError(f"{archive}: refused, checksum mismatch for {rel} (corrupted or altered)")
                if dest.suffix == ".pt":
                    _check_checkpoint(dest, archive, f"{task}/{rel}")
            target.mkdir(parents=True, exist_ok=True)
            replace_items(staging, target, items)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    log.info("installed %s (%s) into %s", task, ", ".join(manifest.runs), target)
    return target


def is_plain_name(name: str) -> bool:
    """One path component that is not '.', '..' or hidden (no separators, no leading dot)."""
    return bool(name) and "/" not in name and "\\" not in name and not name.startswith(".") and name == name.strip()
