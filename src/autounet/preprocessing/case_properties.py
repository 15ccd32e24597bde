"""Per-case metadata written beside each preprocessed case (`<case>.json`).

It holds everything needed to map a prediction made on the preprocessed grid back onto the
original file's grid: original geometry, the transposition, the crop box and the spacings.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from autounet.errors import PlansError
from autounet.io.atomic import read_json, write_json
from autounet.io.geometry import Geometry
from autounet.io.json_schema import from_dict, to_dict


@dataclass
class CaseProperties:
    """Geometry bookkeeping of one case. Shapes and boxes are in transposed array order."""

    case_id: str
    geometry: Geometry
    shape_before_crop: list[int]
    bbox: list[list[int]]
    shape_after_crop: list[int]
    spacing: list[float]
    target_spacing: list[float]
    shape_after_resample: list[int]

    def validate(self, where: str) -> None:
        if len(self.bbox) != 3 or any(len(b) != 2 or b[0] > b[1] for b in self.bbox):
            raise PlansError(f"{where}.bbox: needs 3 [start, stop) pairs, got {self.bbox}")
        for key in ("shape_before_crop", "shape_after_crop", "spacing", "target_spacing", "shape_after_resample"):
            if len(getattr(self, key)) != 3:
                raise PlansError(f"{where}.{key}: needs 3 entries")


def load_case_properties(path: str | Path) -> CaseProperties:
    return from_dict(CaseProperties, read_json(path), str(path))


def save_case_properties(props: CaseProperties, path: str | Path) -> None:
    write_json(path, to_dict(props))
