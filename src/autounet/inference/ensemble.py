"""Ensemble predictions of several models by averaging their saved class probabilities.

Each input folder holds, per case, `<case>.npz` (key "probabilities": (K, Z, Y, X) on the
original grid and original axis order, key "label_values": the label value of each class index)
beside the label map `<case>.nii.gz`. The mean is computed in float32 (inputs are float16 on
disk); the arg-max index is mapped to label values and written on the grid of the first
folder's label map for that case.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from autounet.errors import AutounetError, DatasetError
from autounet.io.atomic import is_temporary, save_npz
from autounet.io.images import SUPPORTED_ENDINGS, read_label, write_label
from autounet.core.parallel import run_parallel
from autounet.inference.export import labels_from_probabilities

log = logging.getLogger(__name__)


def ensemble_probabilities(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """Element-wise mean of same-shaped probability arrays, accumulated in float32."""
    if not arrays:
        raise ValueError("ensemble_probabilities needs at least one array")
    shape = np.shape(arrays[0])
    total = np.zeros(shape, dtype=np.float32)
    for i, a in enumerate(arrays):
        if np.shape(a) != shape:
            raise ValueError(f"array {i} has shape {np.shape(a)}, expected {shape}")
        total += np.asarray(a, dtype=np.float32)
    total /= np.float32(len(arrays))
    return total


def load_probabilities(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities (K, Z, Y, X), label_values (K,)) from a prediction's .npz; errors name the file.

    For a region model the channels are regions and `label_values` their painting values (see
    `is_region_file`)."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            if "probabilities" not in npz or "label_values" not in npz:
                raise DatasetError(
                    f"{path}: needs keys 'probabilities' and 'label_values' (found {sorted(npz.files)}); "
                    "re-predict with --save-probabilities"
                )
            probs = npz["probabilities"]
            label_values = npz["label_values"]
    except (OSError, ValueError, EOFError) as exc:
        raise DatasetError(
            f"{path}: cannot read saved probabilities ({exc}); re-predict with --save-probabilities"
        ) from None
    if probs.ndim != 4 or label_values.shape != (probs.shape[0],):
        raise DatasetError(
            f"{path}: probabilities of shape {probs.shape} do not match {label_values.size} label values; re-predict"
        )
    return probs, label_values


def is_region_file(path: str | os.PathLike[str]) -> bool:
    """Whether a saved .npz holds region probabilities (sigmoid per region) rather than class ones."""
    with np.load(path, allow_pickle=False) as npz:
        return "regions" in npz.files and bool(int(npz["regions"]))


def probability_cases(folder: str | os.PathLike[str]) -> list[str]:
    """Case ids with saved probabilities in `folder` (temporary files ignored)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"{folder}: folder not found")
    return sorted(p.name[: -len(".npz")] for p in folder.glob("*.npz") if not is_temporary(p))


def _label_file(folder: Path, case: str) -> Path | None:
    for ending in SUPPORTED_ENDINGS:
        candidate = folder / f"{case}{ending}"
        if candidate.is_file():
            return candidate
    return None


def _ensemble_case(item: tuple[str, tuple[str, ...], str, bool]) -> str:
    """Worker: average one case's probabilities over the folders and write its label map."""
    case, folders, output_dir, save_probabilities = item
    arrays = []
    label_values: np.ndarray | None = None
    for folder in folders:
        path = Path(folder) / f"{case}.npz"
        probs, values = load_probabilities(path)
        if label_values is None:
            label_values = values
        elif not np.array_equal(values, label_values):
            raise DatasetError(f"{path}: label values {values.tolist()} differ from {label_values.tolist()} "
                               f"in {folders[0]}; only models of the same task can be ensembled")
        if arrays and probs.shape != arrays[0].shape:
            raise DatasetError(f"{path}: probabilities of shape {probs.shape} differ from {arrays[0].shape} "
                               f"in {folders[0]}; the predictions are not on the same grid")
        arrays.append(probs)
    assert label_values is not None
    label_file = _label_file(Path(folders[0]), case)
    if label_file is None:
        raise DatasetError(f"{folders[0]}: label map of case {case} not found beside {case}.npz; "
                           "it gives the grid to write the ensemble on")
    _, geometry = read_label(label_file)
    mean = ensemble_probabilities(arrays)
    if tuple(mean.shape[1:]) != tuple(geometry.shape):
        raise DatasetError(f"{label_file}: grid {geometry.shape} differs from the probabilities' {mean.shape[1:]}")
    regions = is_region_file(Path(folders[0]) / f"{case}.npz")
    seg = labels_from_probabilities(mean, label_values.tolist(), regions)
    out_dir = Path(output_dir)
    ending = label_file.name[len(case):]
    write_label(seg, geometry, out_dir / f"{case}{ending}")
    if save_probabilities:
        save_npz(out_dir / f"{case}.npz", probabilities=mean.astype(np.float16), label_values=label_values,
                 regions=np.asarray(int(regions)))
    return case


def ensemble_folders(
    input_dirs: Sequence[str | os.PathLike[str]],
    output_dir: str | os.PathLike[str],
    save_probabilities: bool = False,
    num_workers: int = 0,
) -> list[str]:
    """Average the saved probabilities of every case over `input_dirs`; returns the case ids written.

    Every folder must hold the same cases; missing ones raise DatasetError listing them.
    """
    folders = [Path(d) for d in input_dirs]
    if len(folders) < 2:
        raise AutounetError("ensemble: needs at least two input folders (-i DIR1 DIR2)")
    out = Path(output_dir)
    if any(out.resolve() == f.resolve() for f in folders):
        raise AutounetError(f"{out}: output folder must differ from the input folders")
    cases_per_folder = {f: set(probability_cases(f)) for f in folders}
    all_cases = set().union(*cases_per_folder.values())
    if not all_cases:
        raise DatasetError(
            f"{folders[0]}: no saved probabilities (.npz) to ensemble; predict with --save-probabilities"
        )
    problems = [f"{f}: missing {', '.join(sorted(all_cases - cases)[:10])}"
                for f, cases in cases_per_folder.items() if all_cases - cases]
    if problems:
        raise DatasetError("ensemble: not every folder has probabilities for every case; " + "; ".join(problems))
    out.mkdir(parents=True, exist_ok=True)
    cases = sorted(all_cases)
    items = [(c, tuple(str(f) for f in folders), str(out), save_probabilities) for c in cases]
    log.info("ensembling %d case(s) from %d folders into %s", len(cases), len(folders), out)
    return run_parallel(_ensemble_case, items, cases, num_workers, desc="ensemble", show_progress=len(items) > 1)
