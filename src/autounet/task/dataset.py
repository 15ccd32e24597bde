"""Finding a task folder and reading its dataset.json (MSD or nnU-Net v2 layout).

Both layouts are normalised into one `TaskDataset` so that no later stage needs to know
which layout the user brought. Only dataset.json and folder listings are read here; whether
the listed files exist and are sound is the integrity check's job (task/integrity.py),
so that all problems of a task can be reported together.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autounet.errors import DatasetError
from autounet.io.atomic import TMP_PREFIX, read_json
from autounet.io.images import SUPPORTED_ENDINGS, file_ending, split_channel_suffix
from autounet.core.task_names import TASK_FOLDER, match_task_names
from autounet.core.workspace import Workspace
from autounet.task.labels import (
    LabelSpec,
    Region,
    check_label_spec,
    named_from_msd,
    parse_named_labels,
    with_regions_class_order,
)

log = logging.getLogger(__name__)

DATASET_JSON = "dataset.json"
MAX_LABELS = 1000
"""Whole-body tasks have about 120 classes; thousands of output channels would not fit any GPU,
so a larger 'labels' is a mistake (or a trap) and is refused before planning."""


@dataclass(frozen=True)
class CaseFiles:
    """Files of one case: one 4D/3D file (MSD) or one file per channel (nnU-Net layout)."""

    case_id: str
    images: list[Path]
    label: Path | None = None


@dataclass
class TaskDataset:
    """A task in either layout, normalised: channel names by index, labels name -> int."""

    name: str
    root: Path
    layout: str  # "msd" | "nnunet"
    channel_names: dict[str, str]
    labels: dict[str, int]
    file_ending: str
    training: list[CaseFiles] = field(default_factory=list)
    test: list[CaseFiles] = field(default_factory=list)
    label_spec: LabelSpec | None = None  # regions and the ignore label, where dataset.json declares them

    @property
    def regions(self) -> list[Region] | None:
        return self.label_spec.regions if self.label_spec else None

    @property
    def regions_class_order(self) -> list[int] | None:
        return self.label_spec.regions_class_order if self.label_spec else None

    @property
    def ignore_label(self) -> int | None:
        return self.label_spec.ignore_label if self.label_spec else None

    @property
    def num_channels(self) -> int:
        return len(self.channel_names)

    @property
    def label_values(self) -> list[int]:
        """Declared label values, sorted (index i of a prediction is written as value i); not the ignore value."""
        return sorted(set(self.labels.values()))

    @property
    def allowed_label_values(self) -> list[int]:
        """Every value a label map may hold: the label values and the ignore value."""
        return self.label_values + ([self.ignore_label] if self.ignore_label is not None else [])

    @property
    def dataset_json(self) -> Path:
        return self.root / DATASET_JSON

    def to_json_dict(self) -> dict[str, Any]:
        """The normalised dataset.json stored in preprocessed/<task>/ and in run folders."""
        return {
            "name": self.name,
            "channel_names": dict(self.channel_names),
            "labels": dict(self.labels),
            "file_ending": self.file_ending,
            "layout": self.layout,
            "numTraining": len(self.training),
            **({"regions": {r.name: list(r.values) for r in self.regions},
                "regions_class_order": list(self.regions_class_order or [])} if self.regions else {}),
            **({"ignore_label": self.ignore_label} if self.ignore_label is not None else {}),
        }


# ----------------------------------------------------------------------------------------------
# finding a task


def find_task(name: str | os.PathLike[str], workspace: Workspace) -> Path:
    """Resolve what the user typed (`Task01`, `1`, `Dataset001_X`, a path) to one task folder.

    Looks in `<workspace>/raw/`, then in the current directory; the first place with a match
    wins. No match or several matches raise DatasetError listing what was seen and where.
    """
    text = str(name).strip()
    if not text:
        raise DatasetError("no task given; name it like Task01, 1, Dataset001_Name or give its folder path")
    as_path = Path(text).expanduser()
    looks_like_path = os.sep in text or "/" in text or as_path.is_absolute() or text.startswith(".")
    if looks_like_path:
        if as_path.is_dir():
            return as_path.resolve()
        raise DatasetError(f"{as_path}: task folder not found; check the path")

    places = [workspace.raw]
    cwd = Path.cwd()
    if cwd.resolve() != workspace.raw.resolve():
        places.append(cwd)
    seen: list[str] = []
    for place in places:
        folders = sorted(p for p in place.iterdir() if p.is_dir()) if place.is_dir() else []
        seen.extend(f"{place}/{p.name}" for p in folders if TASK_FOLDER.match(p.name))
        matches = _matching_folders(text, folders)
        if len(matches) == 1:
            return matches[0].resolve()
        if len(matches) > 1:
            listed = ", ".join(str(m) for m in matches)
            raise DatasetError(
                f"task '{text}' is ambiguous in {place}: {listed} all match; give the full folder name or its path"
            )
    found = ", ".join(seen) if seen else "no task folders"
    raise DatasetError(
        f"task '{text}' not found; looked in {' and '.join(str(p) for p in places)} (found: {found}); "
        f"put the task folder into {workspace.raw} or give its path"
    )


def _matching_folders(query: str, folders: Iterable[Path]) -> list[Path]:
    """Folders matching `query` by the rule of `task_names.match_task_names` (exact name first)."""
    folders = list(folders)
    names = set(match_task_names(query, [p.name for p in folders]))
    return [p for p in folders if p.name in names]


def task_id_from_name(folder_name: str) -> int | None:
    """The integer id of a `TaskNN_Name` / `DatasetNNN_Name` folder, or None."""
    m = TASK_FOLDER.match(folder_name)
    return int(m.group("id")) if m else None


# ----------------------------------------------------------------------------------------------
# loading dataset.json


def load_task(path: str | os.PathLike[str]) -> TaskDataset:
    """Read a task folder's dataset.json (MSD or nnU-Net v2 layout) into a TaskDataset."""
    root = Path(path).resolve()
    if not root.is_dir():
        raise DatasetError(f"{root}: task folder not found; check the path")
    js_path = root / DATASET_JSON
    if not js_path.exists():  # anything else that is there gets read_json's message
        raise DatasetError(
            f"{js_path}: file not found; every task folder needs a dataset.json (MSD or nnU-Net v2 format)"
        )
    data = read_json(js_path)
    if not isinstance(data, dict):
        raise DatasetError(f"{js_path}: must hold a JSON object, got {type(data).__name__}")
    if "channel_names" in data or "file_ending" in data:
        return _load_nnunet(root, js_path, data)
    return _load_msd(root, js_path, data)


def _require(data: dict[str, Any], key: str, js_path: Path, layout: str) -> Any:
    if key not in data:
        raise DatasetError(f"{js_path}: missing required key '{key}' ({layout} layout); add it")
    return data[key]


def _channel_names(raw: Any, js_path: Path, key: str) -> dict[str, str]:
    if not isinstance(raw, dict) or not raw:
        raise DatasetError(f"{js_path}: '{key}' must be a non-empty object like {{\"0\": \"CT\"}}")
    try:
        indices = sorted(int(k) for k in raw)
    except ValueError:
        raise DatasetError(
            f"{js_path}: '{key}' keys must be channel numbers \"0\", \"1\", ...; got {sorted(raw)}"
        ) from None
    if indices != list(range(len(indices))):
        raise DatasetError(f"{js_path}: '{key}' must number channels 0..{len(indices) - 1} without gaps; got {indices}")
    return {str(int(k)): str(v) for k, v in sorted(raw.items(), key=lambda kv: int(kv[0]))}


def _label_spec(named: dict[str, Any], data: dict[str, Any], js_path: Path) -> LabelSpec:
    """Classes, regions and the ignore label from name -> value(s), checked; errors name the key."""
    spec = parse_named_labels(named, str(js_path))
    spec = with_regions_class_order(spec, data.get("regions_class_order"), str(js_path))
    check_label_spec(spec, MAX_LABELS, str(js_path))
    return LabelSpec(dict(sorted(spec.labels.items(), key=lambda kv: kv[1])), spec.regions,
                     spec.regions_class_order, spec.ignore_label)


def _load_msd(root: Path, js_path: Path, data: dict[str, Any]) -> TaskDataset:
    channels = _channel_names(_require(data, "modality", js_path, "MSD"), js_path, "modality")
    raw_labels = _require(data, "labels", js_path, "MSD")
    if not isinstance(raw_labels, dict):
        raise DatasetError(f"{js_path}: 'labels' must be an object like {{\"0\": \"background\", \"1\": \"tumour\"}}")
    spec = _label_spec(named_from_msd(raw_labels, str(js_path)), data, js_path)
    training_raw = _require(data, "training", js_path, "MSD")
    if not isinstance(training_raw, list):
        raise DatasetError(f"{js_path}: 'training' must be a list of {{\"image\": ..., \"label\": ...}}")
    training = [_msd_entry(root, js_path, f"training[{i}]", e, label_folder=None) for i, e in enumerate(training_raw)]
    test_raw = data.get("test", [])
    if not isinstance(test_raw, list):
        raise DatasetError(f"{js_path}: 'test' must be a list of image paths")
    test = [_msd_entry(root, js_path, f"test[{i}]", e, label_folder=root / "labelsTs") for i, e in enumerate(test_raw)]
    _check_unique(training, js_path, "training")
    _check_unique(test, js_path, "test")
    num = data.get("numTraining")
    if num is not None and (isinstance(num, bool) or not isinstance(num, int)):
        raise DatasetError(f"{js_path}: 'numTraining' must be an integer, got {num!r} ({type(num).__name__}); "
                           f"write it without quotes")
    if num is not None and num != len(training):
        raise DatasetError(
            f"{js_path}: 'numTraining' is {num} but 'training' lists {len(training)} cases; make them agree"
        )
    first = training[0].images[0].name if training else (test[0].images[0].name if test else ".nii.gz")
    return TaskDataset(
        name=root.name, root=root, layout="msd", channel_names=channels, labels=spec.labels,
        file_ending=file_ending(first) or ".nii.gz", training=training, test=test, label_spec=spec,
    )


def _msd_entry(root: Path, js_path: Path, where: str, entry: Any, label_folder: Path | None) -> CaseFiles:
    """One MSD 'training'/'test' entry: {"image", "label"} or (test) a plain path string."""
    if isinstance(entry, str):
        image_rel, label_rel = entry, None
    elif isinstance(entry, dict):
        if "image" not in entry:
            raise DatasetError(
                f"{js_path}: '{where}' has no 'image' key; list it as {{\"image\": ..., \"label\": ...}}"
            )
        image_rel, label_rel = entry["image"], entry.get("label")
    else:
        raise DatasetError(f"{js_path}: '{where}' must be an object or a path string")
    if not isinstance(image_rel, str) or (label_rel is not None and not isinstance(label_rel, str)):
        raise DatasetError(f"{js_path}: '{where}' paths must be strings")
    image = _resolve(root, image_rel)
    ending = file_ending(image.name)
    if ending is None:
        raise DatasetError(
            f"{js_path}: '{where}.image' {image_rel!r} has an unsupported ending; "
            f"use one of {', '.join(SUPPORTED_ENDINGS)}"
        )
    case_id = image.name[: -len(ending)]
    label = _resolve(root, label_rel) if label_rel else None
    if label is None and label_folder is not None and (label_folder / image.name).is_file():
        label = label_folder / image.name
    return CaseFiles(case_id=case_id, images=[image], label=label)


def _resolve(root: Path, rel: str) -> Path:
    p = Path(os.path.expandvars(rel)).expanduser()
    return p if p.is_absolute() else (root / p)


def _check_unique(cases: list[CaseFiles], js_path: Path, key: str) -> None:
    seen: set[str] = set()
    for c in cases:
        if c.case_id in seen:
            raise DatasetError(f"{js_path}: '{key}' lists case id '{c.case_id}' more than once; remove the duplicate")
        seen.add(c.case_id)


def _load_nnunet(root: Path, js_path: Path, data: dict[str, Any]) -> TaskDataset:
    raw_channels = data.get("channel_names", data.get("modality"))
    if raw_channels is None:
        raise DatasetError(f"{js_path}: missing required key 'channel_names' (nnU-Net layout); add it")
    channels = _channel_names(raw_channels, js_path, "channel_names")
    raw_labels = _require(data, "labels", js_path, "nnU-Net")
    if not isinstance(raw_labels, dict):
        raise DatasetError(f"{js_path}: 'labels' must be an object like {{\"background\": 0, \"tumour\": 1}}")
    spec = _label_spec(dict(raw_labels), data, js_path)
    num = _require(data, "numTraining", js_path, "nnU-Net")
    if isinstance(num, bool) or not isinstance(num, int):
        raise DatasetError(f"{js_path}: 'numTraining' must be an integer, got {num!r}")
    ending = _require(data, "file_ending", js_path, "nnU-Net")
    if not isinstance(ending, str) or file_ending("x" + ending) != ending.lower():
        raise DatasetError(
            f"{js_path}: 'file_ending' {ending!r} is not supported; use one of {', '.join(SUPPORTED_ENDINGS)}"
        )
    if "dataset" in data:
        training = _explicit_cases(root, js_path, data["dataset"], len(channels))
    else:
        training = _scan_channel_files(root / "imagesTr", root / "labelsTr", ending, len(channels), True)
    if num != len(training):
        raise DatasetError(
            f"{js_path}: 'numTraining' is {num} but {root / 'imagesTr'} holds {len(training)} cases; "
            "fix numTraining or add the missing files"
        )
    test = _scan_channel_files(root / "imagesTs", root / "labelsTs", ending, len(channels), False)
    return TaskDataset(
        name=root.name, root=root, layout="nnunet", channel_names=channels, labels=spec.labels,
        file_ending=ending, training=training, test=test, label_spec=spec,
    )


def _scan_channel_files(
    images_dir: Path, labels_dir: Path, ending: str, num_channels: int, labels_required: bool
) -> list[CaseFiles]:
    """Cases of an nnU-Net images folder; channel and label paths are the expected ones.

    A channel may be a DICOM series: a sub-folder `<case>_0000/` in place of `<case>_0000<ending>`
    (labels stay files). Whether they exist is checked by the integrity check. Test labels are
    optional and only attached when present.
    """
    if not images_dir.is_dir():
        return []
    case_ids: set[str] = set()
    series = sorted(p for p in images_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    for p in visible_files(images_dir) + series:
        if p.is_file() and not p.name.endswith(ending):
            continue
        case_id, channel = split_channel_suffix(p.name if p.is_dir() else p.name[: -len(ending)])
        if channel is None:
            what = "DICOM series folders need a 4-digit channel suffix (<case>_0000/); rename the folder" \
                if p.is_dir() else f"image files need a 4-digit channel suffix (<case>_0000{ending}); rename the file"
            raise DatasetError(f"{p}: {what}")
        case_ids.add(case_id)
    return [
        CaseFiles(
            case_id=c,
            images=[_channel_path(images_dir, f"{c}_{i:04d}", ending) for i in range(num_channels)],
            label=_label_path(labels_dir / f"{c}{ending}", labels_required),
        )
        for c in sorted(case_ids)
    ]


def _channel_path(images_dir: Path, stem: str, ending: str) -> Path:
    """`<stem><ending>`, or the DICOM series folder `<stem>/` where only that exists."""
    file = images_dir / f"{stem}{ending}"
    return images_dir / stem if not file.exists() and (images_dir / stem).is_dir() else file


def _label_path(path: Path, required: bool) -> Path | None:
    return path if required or path.is_file() else None


def _explicit_cases(root: Path, js_path: Path, raw: Any, num_channels: int) -> list[CaseFiles]:
    """nnU-Net's optional explicit 'dataset' map: {case: {"images": [...], "label": ...}}."""
    if not isinstance(raw, dict):
        raise DatasetError(f"{js_path}: 'dataset' must map case ids to {{\"images\": [...], \"label\": ...}}")
    cases = []
    for case_id, entry in raw.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("images"), list) or "label" not in entry:
            raise DatasetError(f"{js_path}: 'dataset.{case_id}' needs 'images' (a list) and 'label'")
        cases.append(CaseFiles(
            case_id=str(case_id),
            images=[_resolve(root, str(p)) for p in entry["images"]],
            label=_resolve(root, str(entry["label"])),
        ))
    return sorted(cases, key=lambda c: c.case_id)


def visible_files(folder: Path) -> list[Path]:
    """Regular files, without hidden files (macOS '._x') and our own unfinished '.tmp-*' writes."""
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith((".", TMP_PREFIX)))
