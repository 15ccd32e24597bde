"""Cross-validation splits: created once, seeded, saved as `splits.json`, then authoritative.

The file is written the first time any fold is trained and never rewritten afterwards, so
that all folds of a run (possibly trained on different machines) agree, and so that a user
can edit it to define their own folds (any number, any assignment). Because the split is a
pure function of the sorted case ids and the seed, two trainings that create the file at the
same moment write identical content; the atomic rename makes the race harmless.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from autounet.errors import DatasetError, PlansError
from autounet.io.atomic import read_json, write_json
from autounet.io.json_schema import from_dict, to_dict

log = logging.getLogger(__name__)

DEFAULT_N_FOLDS = 5
DEFAULT_SPLIT_SEED = 12345
SPLITS_FILE = "splits.json"


@dataclass
class Split:
    """One fold: the cases to train on and the cases to validate on."""

    train: list[str]
    val: list[str]

    def validate(self, where: str) -> None:
        both = sorted(set(self.train) & set(self.val))
        if both:
            raise PlansError(f"{where}: case(s) {both} are in both 'train' and 'val'; keep each case in one of them")
        if not self.train:
            raise PlansError(f"{where}.train: is empty; a fold needs at least one training case")
        if not self.val:
            raise PlansError(f"{where}.val: is empty; a fold needs at least one validation case")
        for key in ("train", "val"):
            ids = getattr(self, key)
            if len(set(ids)) != len(ids):
                dup = sorted({c for c in ids if ids.count(c) > 1})
                raise PlansError(f"{where}.{key}: case(s) {dup} are listed more than once")


def make_splits(case_ids: Sequence[str], n_folds: int = DEFAULT_N_FOLDS, seed: int = DEFAULT_SPLIT_SEED) -> list[Split]:
    """K balanced folds over the sorted ids after a seeded shuffle (fold sizes differ by at most 1).

    Sorting first makes the result independent of directory listing order.
    """
    if n_folds < 2:
        raise ValueError(f"n_folds must be at least 2, got {n_folds}")
    ids = sorted(set(case_ids))
    if len(ids) < n_folds:
        raise DatasetError(
            f"{len(ids)} training case(s) are too few for {n_folds}-fold cross-validation; "
            f"add cases, train with fold 'all', or write {SPLITS_FILE} by hand"
        )
    order = np.random.default_rng(seed).permutation(len(ids))
    splits = []
    for val_idx in np.array_split(order, n_folds):
        val = set(val_idx.tolist())
        splits.append(Split(train=[ids[i] for i in range(len(ids)) if i not in val],
                            val=[ids[i] for i in sorted(val)]))
    return splits


def load_splits(path: str | Path, case_ids: Sequence[str] | None = None) -> list[Split]:
    """Read and validate a splits file; with `case_ids`, also reject cases that do not exist."""
    path = Path(path)
    raw = read_json(path)
    if not isinstance(raw, list) or not raw:
        raise PlansError(f"{path}: expected a non-empty list of {{\"train\": [...], \"val\": [...]}} objects")
    splits = [from_dict(Split, item, f"{path}: fold {i}") for i, item in enumerate(raw)]
    if case_ids is not None:
        known = set(case_ids)
        for i, split in enumerate(splits):
            unknown = sorted((set(split.train) | set(split.val)) - known)
            if unknown:
                shown = unknown[:5] + (["..."] if len(unknown) > 5 else [])
                raise PlansError(
                    f"{path}: fold {i} lists {len(unknown)} case(s) that are not in the preprocessed data "
                    f"({', '.join(shown)}); remove them from the file, or delete it to create new splits"
                )
    return splits


def load_or_create_splits(
    path: str | Path,
    case_ids: Sequence[str],
    n_folds: int = DEFAULT_N_FOLDS,
    seed: int = DEFAULT_SPLIT_SEED,
) -> list[Split]:
    """The splits in `path`, creating the file (atomically) from `case_ids` if it does not exist."""
    path = Path(path)
    if path.is_file():
        return load_splits(path, case_ids)
    splits = make_splits(case_ids, n_folds=n_folds, seed=seed)
    write_json(path, to_dict(splits))
    log.info("created %s: %d folds over %d cases (seed %d)", path, n_folds, len(set(case_ids)), seed)
    return splits


def get_fold(
    splits: Sequence[Split],
    fold: int | str,
    case_ids: Sequence[str],
    source: str = SPLITS_FILE,
) -> tuple[list[str], list[str]]:
    """(train_ids, val_ids) of `fold`; fold 'all' trains on every case and validates on all of them."""
    if isinstance(fold, str):
        if fold == "all":
            ids = sorted(set(case_ids))
            return ids, list(ids)
        if not fold.isdigit():
            raise PlansError(f"{source}: fold must be a number or 'all', got '{fold}'")
        fold = int(fold)
    n = len(splits)
    if not 0 <= fold < n:
        raise PlansError(
            f"{source}: fold {fold} does not exist; the file defines {n} fold(s) (0..{n - 1}); "
            f"to add one, append a {{\"train\": [...], \"val\": [...]}} entry to {source}"
        )
    split = splits[fold]
    return list(split.train), list(split.val)
