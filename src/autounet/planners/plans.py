"""The plans: every decision the planner took, as typed dataclasses stored in plans.json.

Axis conventions: all per-axis lists of a configuration (spacing, patch_size, median_shape,
kernel sizes, strides) are in the *transposed* array order, i.e. after applying
`Plans.transpose_forward` to the (z, y, x) axes of the raw arrays. A 2D configuration
has 2 entries (the two in-plane axes) and slices along transposed axis 0.

Segmentations are stored and predicted as class *indices* 0..K-1; `Plans.label_values[i]`
is the label value written to disk for index i, so non-contiguous label ids round-trip.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from math import prod
from pathlib import Path

from autounet.errors import PlansError
from autounet.io.atomic import read_json, write_json
from autounet.io.json_schema import from_dict, to_dict
from autounet.networks.description import NetworkPlan
from autounet.planners.spacing import ANISOTROPY_THRESHOLD
from autounet.task.fingerprint import IntensityProperties
from autounet.task.labels import Region

PLANS_VERSION = 1
CONFIGURATION_NAMES = ("2d", "3d_fullres", "3d_lowres", "3d_cascade_fullres")
NORMALIZATION_SCHEMES = ("ct", "zscore", "none", "rescale_0_1")
#: How a region model's outputs are combined over mirrorings, folds and tiles: "probabilities" (autounet:
#: mean of the sigmoids) or "logits" (nnU-Net, kept for imported models: mean logits, resampled back, then
#: the sigmoid).
REGION_AVERAGING = ("probabilities", "logits")
#: Sliding-window arithmetic: "autounet" (tile weights: the Gaussian floored at 1e-3 of its peak; sums in
#: fp32, or fp16 for very large cases) or "nnunet_fp16" (nnU-Net 2.8.1's, kept for imported models: the
#: Gaussian rounded to fp16 with its zeros replaced by the smallest weight, each fold's logits summed and
#: divided in fp16, folds averaged in fp16, resampled logits rounded to fp16 - so near-ties resolve alike).
WINDOW_ARITHMETIC = ("autounet", "nnunet_fp16")
# Bounds a plans.json must respect (hand edits beyond them are refused on load, not at training time).
MAX_PATCH_EDGE = 4096
MAX_BATCH_SIZE = 4096
MAX_BATCH_VOXELS = 2**31  # one float32 channel of such a batch is already 8 GiB
#: the plans `autounet plan_and_preprocess` writes without --planner, stored as plans.json
DEFAULT_PLANS_NAME = "default"
_PLANS_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,47}")
_PLANS_FILE = re.compile(r"plans__(.+)\.json")


@dataclass
class ResamplingPlan:
    """Interpolation orders; the coarse axis of anisotropic data is resampled separately."""

    order_data: int = 3
    order_seg: int = 1
    order_probabilities: int = 1
    order_z: int = 0
    anisotropy_threshold: float = ANISOTROPY_THRESHOLD


@dataclass
class ConfigurationPlan:
    name: str
    data_identifier: str
    spacing: list[float]
    patch_size: list[int]
    batch_size: int
    median_shape: list[int]
    network: NetworkPlan
    normalization: list[str]
    use_mask_for_norm: list[bool]
    batch_dice: bool
    estimated_memory_bytes: int
    resampling: ResamplingPlan = field(default_factory=ResamplingPlan)
    previous_stage: str | None = None
    next_stage: str | None = None
    mirror_axes: list[int] | None = None
    reasons: dict[str, str] = field(default_factory=dict)
    window_arithmetic: str = WINDOW_ARITHMETIC[0]

    @property
    def dims(self) -> int:
        return len(self.patch_size)

    def validate(self, where: str) -> None:
        if self.dims not in (2, 3):
            raise PlansError(f"{where}.patch_size: needs 2 or 3 entries, got {self.patch_size}")
        for key in ("spacing", "median_shape"):
            if len(getattr(self, key)) != self.dims:
                raise PlansError(f"{where}.{key}: needs {self.dims} entries like patch_size")
        if self.network.dims != self.dims:
            raise PlansError(f"{where}.network.kernel_sizes: {self.network.dims}D kernels for a {self.dims}D patch")
        if any(not 1 <= p <= MAX_PATCH_EDGE for p in self.patch_size):
            raise PlansError(f"{where}.patch_size: each side must be within 1..{MAX_PATCH_EDGE} voxels, "
                             f"got {self.patch_size}; re-plan")
        if not 1 <= self.batch_size <= MAX_BATCH_SIZE:
            raise PlansError(f"{where}.batch_size: must be within 1..{MAX_BATCH_SIZE}, got {self.batch_size}; re-plan")
        voxels = self.batch_size * prod(self.patch_size)
        if voxels > MAX_BATCH_VOXELS:
            raise PlansError(f"{where}: batch_size {self.batch_size} x patch {self.patch_size} is {voxels:.3g} voxels "
                             f"per batch, more than {MAX_BATCH_VOXELS:.3g}; re-plan")
        if any(s <= 0 for s in self.spacing):
            raise PlansError(f"{where}.spacing: must be positive, got {self.spacing}")
        total = self.network.total_stride()
        bad = [a for a in range(self.dims) if self.patch_size[a] % total[a]]
        if bad:
            raise PlansError(
                f"{where}.patch_size: {self.patch_size} is not divisible by the network's total "
                f"downsampling {total} on axis {bad}; use multiples of {total} or re-plan"
            )
        for i, scheme in enumerate(self.normalization):
            if scheme not in NORMALIZATION_SCHEMES:
                raise PlansError(f"{where}.normalization[{i}]: unknown scheme '{scheme}', use one of {NORMALIZATION_SCHEMES}")
        if len(self.use_mask_for_norm) != len(self.normalization):
            raise PlansError(f"{where}.use_mask_for_norm: needs one entry per channel")
        if self.window_arithmetic not in WINDOW_ARITHMETIC:
            raise PlansError(f"{where}.window_arithmetic: '{self.window_arithmetic}' is not one of {WINDOW_ARITHMETIC}")


@dataclass
class Plans:
    task: str
    channel_names: dict[str, str]
    labels: dict[str, int]
    transpose_forward: list[int]
    transpose_backward: list[int]
    original_median_spacing: list[float]  # untransposed (z, y, x)
    original_median_shape: list[int]  # untransposed (z, y, x)
    foreground_intensity_properties: dict[str, IntensityProperties]
    gpu_memory_target_gb: float
    configurations: dict[str, ConfigurationPlan]
    version: int = PLANS_VERSION
    is_2d_data: bool = False
    reasons: dict[str, str] = field(default_factory=dict)
    regions: list[Region] | None = None
    regions_class_order: list[int] | None = None
    ignore_label: int | None = None
    region_averaging: str = REGION_AVERAGING[0]
    #: which plans of the task these are: `default` (plans.json), a preset (`resenc-l`) or a user's name
    name: str = DEFAULT_PLANS_NAME

    @property
    def num_channels(self) -> int:
        return len(self.channel_names)

    @property
    def has_regions(self) -> bool:
        return bool(self.regions)

    @property
    def sigmoid_per_view(self) -> bool:
        """Whether prediction averages sigmoid probabilities (a region model of autounet's own)."""
        return self.has_regions and self.region_averaging == "probabilities"

    @property
    def num_outputs(self) -> int:
        """Network output channels: one sigmoid per region, else one softmax channel per class."""
        return len(self.regions) if self.regions else self.num_classes

    @property
    def output_names(self) -> list[str]:
        """Foreground output names in channel order: the regions, or the classes after background."""
        if self.regions:
            return [r.name for r in self.regions]
        return [name for name, _ in sorted(self.labels.items(), key=lambda kv: kv[1])][1:]

    @property
    def region_values(self) -> list[list[int]]:
        return [list(r.values) for r in self.regions or []]

    @property
    def evaluation_targets(self) -> list[int | tuple[int, ...]]:
        """What evaluation, model choice and postprocessing score: the regions, or the foreground labels."""
        if self.regions:
            return [tuple(r.values) for r in self.regions]
        return list(self.label_values[1:])

    @property
    def ignore_index(self) -> int | None:
        """The ignore label's class index in preprocessed targets (right after the label values); None without one."""
        return len(self.label_values) if self.ignore_label is not None else None

    @property
    def annotated_label_values(self) -> list[int]:
        """The label values and, last, the ignore value: what preprocessing maps to indices 0..K."""
        return self.label_values + ([self.ignore_label] if self.ignore_label is not None else [])

    @property
    def label_values(self) -> list[int]:
        """Label values in index order (index 0 = background)."""
        return sorted(self.labels.values())

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def configuration(self, name: str) -> ConfigurationPlan:
        if name not in self.configurations:
            raise PlansError(
                f"plans.json: configuration '{name}' is not planned for task {self.task}; "
                f"planned: {sorted(self.configurations)}"
            )
        return self.configurations[name]

    def preprocessing_key(self, configuration: str) -> str:
        """Hash of everything that shapes a configuration's preprocessed arrays (grid, normalization,
        label mapping): plans with equal keys can share one preprocessed folder."""
        cfg = self.configuration(configuration)
        content = {
            "transpose_forward": self.transpose_forward, "spacing": cfg.spacing, "normalization": cfg.normalization,
            "use_mask_for_norm": cfg.use_mask_for_norm, "resampling": to_dict(cfg.resampling),
            "intensities": {k: to_dict(v) for k, v in sorted(self.foreground_intensity_properties.items())},
            "labels": self.annotated_label_values, "regions": self.region_values,
        }
        return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]

    def content_hash(self) -> str:
        """Hash of the decisions (not the reasons or the memory estimates): equal hashes train the same model."""
        data = to_dict(self)
        data.pop("reasons", None)
        for cfg in data["configurations"].values():
            cfg.pop("reasons", None)
            cfg.pop("estimated_memory_bytes", None)
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]

    def validate(self, where: str) -> None:
        check_plans_name(self.name, f"{where}.name")
        if self.version != PLANS_VERSION:
            raise PlansError(f"{where}.version: {self.version} is not supported (expected {PLANS_VERSION}); re-plan")
        if sorted(self.transpose_forward) != [0, 1, 2]:
            raise PlansError(f"{where}.transpose_forward: must be a permutation of [0, 1, 2]")
        back = [self.transpose_forward.index(i) for i in range(3)]
        if back != self.transpose_backward:
            raise PlansError(f"{where}.transpose_backward: must invert transpose_forward (expected {back})")
        if 0 not in self.labels.values():
            raise PlansError(f"{where}.labels: needs a background label with value 0")
        if self.ignore_label is not None and self.ignore_label <= max(self.labels.values()):
            raise PlansError(f"{where}.ignore_label: must be above every label value ({max(self.labels.values())})")
        if self.region_averaging not in REGION_AVERAGING:
            raise PlansError(f"{where}.region_averaging: '{self.region_averaging}' is not one of {REGION_AVERAGING}")
        if self.regions is not None:
            if not self.regions or len(self.regions_class_order or []) != len(self.regions):
                raise PlansError(f"{where}.regions_class_order: needs one entry per region ({len(self.regions)})")
            for i, region in enumerate(self.regions):
                if not region.values or set(region.values) - set(self.label_values) or 0 in region.values:
                    raise PlansError(f"{where}.regions[{i}].values: must be foreground label values of "
                                     f"{self.label_values}, got {region.values}")
        for name, cfg in self.configurations.items():
            if cfg.name != name:
                raise PlansError(f"{where}.configurations.{name}.name: is '{cfg.name}', must equal its key")
            if len(cfg.normalization) != self.num_channels:
                raise PlansError(f"{where}.configurations.{name}.normalization: needs {self.num_channels} entries")
            for ref in (cfg.previous_stage, cfg.next_stage):
                if ref is not None and ref not in self.configurations:
                    raise PlansError(f"{where}.configurations.{name}: refers to unknown configuration '{ref}'")


def check_plans_name(name: str, where: str = "--plans") -> str:
    """A plans name becomes part of file and run-folder names: letters, digits, `_.-`, at most 48."""
    if not isinstance(name, str) or not _PLANS_NAME.fullmatch(name):
        raise PlansError(f"{where}: plans name '{name}' must be 1-48 letters, digits, '_', '.' or '-', "
                         f"starting with a letter or digit")
    return name


def plans_file_name(name: str = DEFAULT_PLANS_NAME) -> str:
    """`plans.json` for the default plans, `plans__<name>.json` for presets and transferred plans."""
    check_plans_name(name)
    return "plans.json" if name == DEFAULT_PLANS_NAME else f"plans__{name}.json"


def available_plans(preprocessed_dir: str | Path) -> list[str]:
    """Names of the plans stored in a task's preprocessed folder, the default first."""
    folder = Path(preprocessed_dir)
    names = [m.group(1) for p in folder.glob("plans__*.json") if (m := _PLANS_FILE.fullmatch(p.name))]
    return ([DEFAULT_PLANS_NAME] if (folder / "plans.json").is_file() else []) + sorted(names)


def load_named_plans(preprocessed_dir: str | Path, name: str = DEFAULT_PLANS_NAME) -> Plans:
    """The plans called `name` of a task; the error lists the plans that exist and how to make others."""
    path = Path(preprocessed_dir) / plans_file_name(name)
    if not path.is_file() and available_plans(preprocessed_dir):
        have = ", ".join(available_plans(preprocessed_dir))
        raise PlansError(f"{path}: no plans named '{name}' for this task (plans: {have}); choose one with --plans, "
                         f"or write them with `autounet plan_and_preprocess {Path(preprocessed_dir).name}`")
    plans = load_plans(path)
    if plans.name != name:
        raise PlansError(f"{path}.name: is '{plans.name}', expected '{name}'; re-plan")
    return plans


def load_plans(path: str | Path) -> Plans:
    """Load and validate plans.json; errors name the file and the key."""
    path = Path(path)
    if not path.is_file():
        raise PlansError(f"{path}: plans not found; run `autounet plan_and_preprocess <task>` first")
    return from_dict(Plans, read_json(path), str(path))


def save_plans(plans: Plans, path: str | Path) -> None:
    plans.validate(str(path))
    write_json(path, to_dict(plans))
