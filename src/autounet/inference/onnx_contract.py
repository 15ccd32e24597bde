"""`inference.json`: everything a runner needs besides the ONNX files to predict like autounet.

`autounet export_onnx` writes it beside one ONNX file per fold; `autounet.onnx_runner` (and
any runner in another language) reads it. It spells out what autounet otherwise takes from
plans.json and the checkpoints: the channels and their normalization, the transposition,
the target spacing, the tiling (patch, step, Gaussian), the mirror axes, the labels or
regions and the resampling orders. Loading validates every key with bounds, so a hand edit
that would silently change predictions is refused by name. No torch here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autounet.errors import AutounetError, PlansError
from autounet.inference.gaussian import DEFAULT_SIGMA_SCALE, DEFAULT_VALUE_SCALING
from autounet.inference.tiling import WEIGHT_FLOOR
from autounet.io.atomic import read_json, write_json
from autounet.io.json_schema import from_dict, to_dict
from autounet.planners.plans import NORMALIZATION_SCHEMES, ResamplingPlan
from autounet.task.fingerprint import IntensityProperties
from autounet.task.labels import Region

INFERENCE_JSON = "inference.json"
#: the run's connected-component decision, copied beside the ONNX files where it has one
POSTPROCESSING_JSON = "postprocessing.json"
CONTRACT_VERSION = 1
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
MIN_OPSET = 13
ONNX_EXTRA = "needs the optional extra: pip install 'autounet[onnx]'"


def require_onnxruntime() -> Any:
    """The `onnxruntime` module, or an AutounetError naming the extra that provides it."""
    try:
        import onnxruntime
    except ImportError:
        raise AutounetError(f"ONNX prediction {ONNX_EXTRA} (onnxruntime is not installed)") from None
    return onnxruntime


@dataclass
class ChannelSpec:
    """One input channel: its name, normalization scheme and (for "ct") the dataset statistics."""

    name: str
    normalization: str
    use_mask_for_norm: bool
    intensity_properties: IntensityProperties | None = None


@dataclass
class GaussianSpec:
    """Tile weighting: sigma = patch * sigma_scale, peak value_scaling, floored at floor * peak."""

    sigma_scale: float = DEFAULT_SIGMA_SCALE
    value_scaling: float = DEFAULT_VALUE_SCALING
    floor: float = WEIGHT_FLOOR


@dataclass
class FoldModel:
    """One fold's ONNX file, relative to the folder of inference.json."""

    fold: str
    file: str


@dataclass
class InferenceContract:
    """The typed content of inference.json (see the module docstring)."""

    autounet_version: str
    opset: int
    task: str
    configuration: str
    channels: list[ChannelSpec]
    labels: dict[str, int]
    transpose_forward: list[int]
    transpose_backward: list[int]
    spacing: list[float]
    """Target spacing in transposed axis order; a 2D configuration has the two in-plane axes."""
    patch_size: list[int]
    mirror_axes: list[int]
    folds: list[FoldModel]
    resampling: ResamplingPlan = field(default_factory=ResamplingPlan)
    step_size: float = 0.5
    gaussian: GaussianSpec = field(default_factory=GaussianSpec)
    regions: list[Region] | None = None
    regions_class_order: list[int] | None = None
    input_name: str = INPUT_NAME
    output_name: str = OUTPUT_NAME
    output_activation: str = "softmax"
    """"softmax": one logit per class (argmax); "sigmoid": one logit per region (threshold 0.5)."""
    format_version: int = CONTRACT_VERSION

    @property
    def dims(self) -> int:
        return len(self.patch_size)

    @property
    def label_values(self) -> list[int]:
        return sorted(self.labels.values())

    @property
    def num_outputs(self) -> int:
        return len(self.regions) if self.regions else len(self.labels)

    def validate(self, where: str) -> None:
        if self.format_version != CONTRACT_VERSION:
            raise PlansError(f"{where}.format_version: {self.format_version} is not supported (expected "
                             f"{CONTRACT_VERSION}); export the model again with this autounet")
        if self.opset < MIN_OPSET:
            raise PlansError(f"{where}.opset: {self.opset} is below {MIN_OPSET}")
        if not self.channels:
            raise PlansError(f"{where}.channels: needs at least one channel")
        for i, ch in enumerate(self.channels):
            if ch.normalization not in NORMALIZATION_SCHEMES:
                raise PlansError(f"{where}.channels[{i}].normalization: unknown scheme '{ch.normalization}', use "
                                 f"one of {list(NORMALIZATION_SCHEMES)}")
            if ch.normalization == "ct" and ch.intensity_properties is None:
                raise PlansError(f"{where}.channels[{i}].intensity_properties: needed by 'ct' normalization")
        if sorted(self.transpose_forward) != [0, 1, 2]:
            raise PlansError(f"{where}.transpose_forward: must be a permutation of [0, 1, 2]")
        back = [self.transpose_forward.index(i) for i in range(3)]
        if back != self.transpose_backward:
            raise PlansError(f"{where}.transpose_backward: must invert transpose_forward (expected {back})")
        if self.dims not in (2, 3) or any(not 1 <= p <= 4096 for p in self.patch_size):
            raise PlansError(f"{where}.patch_size: needs 2 or 3 sides within 1..4096, got {self.patch_size}")
        if len(self.spacing) != self.dims or any(s <= 0 for s in self.spacing):
            raise PlansError(f"{where}.spacing: needs {self.dims} positive values like patch_size")
        if any(not 0 <= a < self.dims for a in self.mirror_axes):
            raise PlansError(f"{where}.mirror_axes: must be axes 0..{self.dims - 1} of the patch")
        if not 0 < self.step_size <= 1:
            raise PlansError(f"{where}.step_size: must be in (0, 1], got {self.step_size}")
        if self.gaussian.sigma_scale <= 0 or self.gaussian.value_scaling <= 0 or not 0 <= self.gaussian.floor < 1:
            raise PlansError(f"{where}.gaussian: sigma_scale and value_scaling must be positive, floor in [0, 1)")
        self._validate_outputs(where)

    def _validate_outputs(self, where: str) -> None:
        if 0 not in self.labels.values() or len(set(self.labels.values())) != len(self.labels):
            raise PlansError(f"{where}.labels: needs distinct values with a background of 0")
        expected = "sigmoid" if self.regions else "softmax"
        if self.output_activation != expected:
            raise PlansError(f"{where}.output_activation: must be '{expected}' for a model "
                             f"{'with' if self.regions else 'without'} regions")
        if self.regions is not None:
            if not self.regions or len(self.regions_class_order or []) != len(self.regions):
                raise PlansError(f"{where}.regions_class_order: needs one entry per region ({len(self.regions)})")
            for i, region in enumerate(self.regions):
                if not region.values or set(region.values) - set(self.labels.values()) or 0 in region.values:
                    raise PlansError(f"{where}.regions[{i}].values: must be foreground label values")
        if not self.folds:
            raise PlansError(f"{where}.folds: needs at least one fold's ONNX file")
        for i, fold in enumerate(self.folds):
            if Path(fold.file).name != fold.file or not fold.file.endswith(".onnx"):
                raise PlansError(f"{where}.folds[{i}].file: must be a plain .onnx file name beside inference.json")


def load_contract(model_dir: str | Path) -> InferenceContract:
    """Read and validate `<model_dir>/inference.json`; errors name the file and the key."""
    path = Path(model_dir) / INFERENCE_JSON
    if not path.is_file():
        raise PlansError(f"{path}: not found; give the folder written by `autounet export_onnx`")
    return from_dict(InferenceContract, read_json(path), str(path))


def save_contract(contract: InferenceContract, model_dir: str | Path) -> Path:
    """Validate and write `<model_dir>/inference.json` atomically."""
    path = Path(model_dir) / INFERENCE_JSON
    contract.validate(str(path))
    write_json(path, to_dict(contract))
    return path
