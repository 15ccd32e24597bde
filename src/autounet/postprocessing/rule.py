"""The chosen postprocessing rule: a typed JSON file (postprocessing.json), loaded, saved and applied.

How the rule is chosen on cross-validation is decision.py's work; prediction needs only this
module, so it never depends on the evaluation code.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from autounet.errors import DatasetError, PlansError
from autounet.io.atomic import read_json, write_json
from autounet.io.json_schema import from_dict, to_dict
from autounet.postprocessing.connected_components import (
    keep_largest_component_of_label,
    keep_largest_component_of_region,
    keep_largest_foreground_component,
)

DECISION_VERSION = 1


@dataclass
class PostprocessingDecision:
    """What to apply to every prediction, and the cross-validation evidence for it.

    `dice_before` / `dice_after` map the label value (as a string, JSON keys are strings) or the
    region ("1,2,3") to the mean Dice over the cases before and after the accepted steps. A region
    task keeps the largest component of whole regions (`keep_largest_per_region`, each the label
    values it unites) instead of single labels.
    """

    keep_largest_foreground: bool
    keep_largest_per_label: list[int]
    dice_before: dict[str, float]
    dice_after: dict[str, float]
    foreground_mean_before: float
    foreground_mean_after: float
    decided_on: str
    num_cases: int
    version: int = DECISION_VERSION
    keep_largest_per_region: list[list[int]] = field(default_factory=list)

    def validate(self, where: str) -> None:
        if self.version != DECISION_VERSION:
            raise PlansError(f"{where}.version: {self.version} is not supported (expected {DECISION_VERSION}); "
                             "re-run find_best_configuration")
        bad = [v for v in self.keep_largest_per_label if v <= 0]
        if bad:
            raise PlansError(f"{where}.keep_largest_per_label: {bad} are not foreground label values (must be > 0)")
        if len(set(self.keep_largest_per_label)) != len(self.keep_largest_per_label):
            raise PlansError(f"{where}.keep_largest_per_label: lists a label twice")
        bad_regions = [r for r in self.keep_largest_per_region if not r or any(v <= 0 for v in r)]
        if bad_regions:
            raise PlansError(f"{where}.keep_largest_per_region: {bad_regions} are not regions of foreground values")

    @property
    def is_identity(self) -> bool:
        """True when the decision changes nothing (no step accepted)."""
        return not self.keep_largest_foreground and not self.keep_largest_per_label and not self.keep_largest_per_region

    def describe(self) -> str:
        """One line for logs and CLI output."""
        steps = []
        if self.keep_largest_foreground:
            steps.append("keep largest foreground component")
        if self.keep_largest_per_label:
            steps.append("keep largest component of label(s) " + ", ".join(map(str, self.keep_largest_per_label)))
        if self.keep_largest_per_region:
            steps.append("keep largest component of region(s) " + ", ".join(map(str, self.keep_largest_per_region)))
        what = "; ".join(steps) if steps else "none"
        return (f"{what} (foreground Dice {self.foreground_mean_before:.4f} -> "
                f"{self.foreground_mean_after:.4f} on {self.num_cases} cases)")


def apply_postprocessing(seg: np.ndarray, decision: PostprocessingDecision) -> np.ndarray:
    """Apply the accepted steps, in order, to a label map holding label values."""
    out = np.asarray(seg)
    if decision.keep_largest_foreground:
        out = keep_largest_foreground_component(out)
    for label in decision.keep_largest_per_label:
        out = keep_largest_component_of_label(out, label)
    for region in decision.keep_largest_per_region:
        out = keep_largest_component_of_region(out, region)
    return out


def save_postprocessing(decision: PostprocessingDecision, path: str | os.PathLike[str]) -> None:
    decision.validate(str(path))
    write_json(path, to_dict(decision))


def load_postprocessing(path: str | os.PathLike[str]) -> PostprocessingDecision:
    """Load and validate postprocessing.json; errors name the file and the key."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: postprocessing decision not found; run find_best_configuration first "
                           "or predict with --no-postprocessing")
    return from_dict(PostprocessingDecision, read_json(path, allow_nan=True), str(path))
