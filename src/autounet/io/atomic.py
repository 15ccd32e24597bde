"""Atomic file writes: write to a temporary name in the same folder, then rename.

A reader never sees a half-written file: either the old content (or nothing) or the
complete new content. Temporary names start with '.tmp-' so that interrupted writes are
easy to recognise and are never taken for finished outputs.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

TMP_PREFIX = ".tmp-"


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str], suffix: str | None = None, durable: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside `target`; rename it onto `target` if the block succeeds.

    `suffix` defaults to the target's full suffix (e.g. '.nii.gz') so that libraries that
    choose a format by file ending write the right format. `durable` flushes the file to
    disk before the rename (survives power loss, not only a killed process); bulk arrays
    that can be recomputed skip it because it costs a fifth of preprocessing time.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    if suffix is None:
        suffix = "".join(target.suffixes)
    fd, tmp_name = tempfile.mkstemp(prefix=TMP_PREFIX + target.name.split(".")[0] + "-",
                                    suffix=suffix, dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_umask())
    try:
        yield tmp
        if durable:
            _fsync_file(tmp)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def _umask() -> int:
    """The process umask (mkstemp creates 0600 files; outputs must get normal permissions)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_file(path: Path) -> None:
    """Flush file content to disk so that a rename never exposes an empty file after a crash."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_json(path: str | os.PathLike[str], obj: Any, indent: int = 2) -> None:
    """Write JSON atomically (sorted keys off: the order of our dataclasses is meaningful)."""
    text = json.dumps(obj, indent=indent, allow_nan=True)
    with atomic_path(path, suffix=".json") as tmp:
        tmp.write_text(text + "\n", encoding="utf-8")


def write_text(path: str | os.PathLike[str], text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def save_npy(path: str | os.PathLike[str], array: np.ndarray) -> None:
    """Save an uncompressed .npy atomically (memory-mappable by the training loader)."""
    with atomic_path(path, suffix=".npy", durable=False) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, np.ascontiguousarray(array), allow_pickle=False)


def save_npz(path: str | os.PathLike[str], **arrays: np.ndarray) -> None:
    """Save a compressed .npz atomically; loading must use allow_pickle=False."""
    with atomic_path(path, suffix=".npz", durable=False) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **arrays)


MAX_JSON_BYTES = 64 * 2**20
"""No metadata file of a task, plan or run comes near this (a 10 000-case dataset.json is ~2 MB);
a bigger one is the wrong file or an attempt to exhaust memory, and is refused before it is read."""


def read_json(path: str | os.PathLike[str], *, allow_nan: bool = False) -> Any:
    """Read JSON; errors name the file and the position of the syntax problem.

    `NaN` and `Infinity` are not JSON: they are refused unless `allow_nan` (our own metric files,
    where an undefined Dice is written as NaN).
    """
    from autounet.errors import DatasetError

    path = Path(path)
    try:
        info = path.stat()
    except FileNotFoundError:
        raise DatasetError(f"{path}: file not found") from None
    if stat.S_ISDIR(info.st_mode):
        raise DatasetError(f"{path}: is a folder, not a JSON file")
    if not stat.S_ISREG(info.st_mode):
        raise DatasetError(f"{path}: is not a regular file (a device, pipe or socket); give a JSON file")
    if info.st_size > MAX_JSON_BYTES:
        raise DatasetError(f"{path}: is {info.st_size / 2**20:.0f} MiB, more than the {MAX_JSON_BYTES // 2**20} MiB "
                           f"any JSON file of autounet needs; check that it is the right file")
    try:
        text = path.read_text(encoding="utf-8-sig")  # a byte-order mark (Windows editors) is accepted
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: not UTF-8 text (byte {exc.start} is 0x{exc.object[exc.start]:02x}); "
                           f"save it as UTF-8") from None
    try:
        return json.loads(text, object_pairs_hook=_refuse_duplicate_keys,
                          parse_constant=None if allow_nan else _refuse_constant)
    except _DuplicateKey as exc:
        raise DatasetError(f"{path}: key '{exc.key}' appears twice in one object; keep one (JSON readers "
                           f"silently take the last)") from None
    except _NotJsonNumber as exc:
        raise DatasetError(f"{path}: '{exc}' is not a JSON number (JSON has no NaN or Infinity); "
                           f"write a finite number") from None
    except RecursionError:
        raise DatasetError(f"{path}: nested too deeply to read (thousands of levels of [ or {{); "
                           f"check that it is the right file") from None
    except json.JSONDecodeError as exc:
        comma_line = trailing_comma_line(text, exc.pos)
        if comma_line is not None:
            raise DatasetError(
                f"{path}: not valid JSON: trailing comma at line {comma_line}; remove it (JSON allows none)"
            ) from None
        raise DatasetError(
            f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); fix the syntax"
        ) from None


class _NotJsonNumber(ValueError):
    pass


def _refuse_constant(name: str) -> Any:
    """json parse_constant hook: Python's reader accepts NaN/Infinity, which no other JSON reader does."""
    raise _NotJsonNumber(name)


class _DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key[:80]


def _refuse_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json object hook: a key given twice is an error instead of 'the last one wins'."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def trailing_comma_line(text: str, error_pos: int) -> int | None:
    """Line (1-based) of a comma right before the '}' or ']' where JSON parsing failed, else None.

    Why: the most common hand-editing mistake; the decoder reports it at the closing bracket
    ("Expecting property name"), which does not point at the comma to remove.
    """
    if not 0 <= error_pos < len(text) or text[error_pos] not in "}]":
        return None
    before = text[:error_pos].rstrip()
    if not before.endswith(","):
        return None
    return before.count("\n") + 1


def is_temporary(path: str | os.PathLike[str]) -> bool:
    return Path(path).name.startswith(TMP_PREFIX)
