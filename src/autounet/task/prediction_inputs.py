"""Which cases a folder (or one file) to predict holds, and their channel files.

Prediction accepts more than a task's imagesTs: one file, MSD-style files holding all channels,
nnU-Net-style `<case>_0000` channel files, or DICOM series. The rules live here so that
`autounet predict` and the ONNX runner read inputs alike.
"""

from __future__ import annotations

import os
from pathlib import Path

from autounet.errors import DatasetError
from autounet.io.dicom import series_in_folder
from autounet.io.images import SUPPORTED_ENDINGS, file_ending, image_channel_count, split_channel_suffix
from autounet.task.dataset import CaseFiles, visible_files


def list_prediction_inputs(
    folder_or_file: str | os.PathLike[str], num_channels: int, file_ending: str | None = None
) -> list[CaseFiles]:
    """Cases to predict: a single file, a folder of MSD-style files, or `<case>_0000` channel files.

    A folder without image files is searched for DICOM series (`io.dicom.series_in_folder`):
    one per sub-folder (named like files: `<case>/` or `<case>_0000/`) or several side by side.

    The folder is taken as nnU-Net style when every image name ends in a 4-digit channel
    suffix and every such group has a channel 0; then each case must have exactly channels
    0..num_channels-1. Otherwise each file is one case holding all channels.
    """
    src = Path(folder_or_file)
    if src.is_file():
        _check_msd_channels(src, num_channels)
        return [CaseFiles(case_id=_stem(src), images=[src])]
    if not src.is_dir():
        raise DatasetError(f"{src}: input not found; give a folder of images or one image file")
    entries = [(_stem(p), p) for p in visible_files(src) if _has_ending(p, file_ending)]
    if not entries and file_ending is None:
        entries = series_in_folder(src)
    if not entries:
        wanted = file_ending or ", ".join(SUPPORTED_ENDINGS)
        raise DatasetError(f"{src}: no input images ({wanted}) or DICOM series found; put the images to predict "
                           f"into this folder")
    groups: dict[str, dict[int, Path]] = {}
    channel_style = True
    for stem, p in entries:
        case_id, channel = split_channel_suffix(stem)
        if channel is None:
            channel_style = False
            break
        groups.setdefault(case_id, {})[channel] = p
    if channel_style and all(0 in g for g in groups.values()):
        cases = []
        for case_id in sorted(groups):
            g = groups[case_id]
            ending = _ending(g[0])
            for i in range(num_channels):
                if i not in g:
                    raise DatasetError(
                        f"{src / f'{case_id}_{i:04d}{ending}'}: channel {i} of case '{case_id}' is missing; "
                        f"every case needs {num_channels} channel file(s) _0000.._{num_channels - 1:04d}"
                    )
            extra = sorted(set(g) - set(range(num_channels)))
            if extra:
                raise DatasetError(
                    f"{g[extra[0]]}: case '{case_id}' has channel {extra[0]} but the model expects "
                    f"{num_channels} channel(s); remove the file"
                )
            cases.append(CaseFiles(case_id=case_id, images=[g[i] for i in range(num_channels)]))
        return cases
    for _, p in entries:
        _check_msd_channels(p, num_channels)
    return [CaseFiles(case_id=stem, images=[p]) for stem, p in entries]


def _check_msd_channels(path: Path, num_channels: int) -> None:
    found = image_channel_count(path)
    if found != num_channels:
        raise DatasetError(
            f"{path}: has {found} channel(s) but the model expects {num_channels}; "
            "give all channels in one 4D file or as <case>_0000, <case>_0001, ... files"
        )


def _has_ending(p: Path, ending: str | None) -> bool:
    return p.name.lower().endswith(ending.lower()) if ending else file_ending(p.name) is not None


def _ending(p: Path) -> str:
    return file_ending(p.name) or ""


def _stem(p: Path) -> str:
    return p.name[: -len(_ending(p))] if _ending(p) else p.name
