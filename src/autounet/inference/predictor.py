"""Load a trained run once and predict cases: from files, from arrays, or preprocessed.

A run folder (`results/<task>/<run_name>/`) is self-contained: plans.json plus one
checkpoint per fold. The predictor keeps one network per fold and averages their logits
per tile (see `sliding_window_logits`), which equals nnU-Net's fold ensembling by
averaging full-volume logits. A `3d_cascade_fullres` run first predicts the case with the
`3d_lowres` run of the same task and stacks a one-hot of that result onto the image.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from autounet.core.run_layout import CHECKPOINT_FILES, FOLD_PREFIX, configuration_of_run, fold_name, trained_folds
from autounet.errors import AutounetError, CheckpointError, ImageReadError
from autounet.preprocessing.cascade import cascade_input, next_stage_segmentation
from autounet.inference.export import logits_to_segmentation_on_original_grid
from autounet.inference.memory import estimate_prediction_memory_bytes
from autounet.inference.sliding_window import mirror_subsets, sliding_window_logits
from autounet.io.geometry import Geometry
from autounet.networks.precision import resolve_precision
from autounet.planners.plans import Plans, ResamplingPlan, load_plans

log = logging.getLogger(__name__)

PREDICTION_COPIES = 3
"""Float32 arrays of the case's size per class at the peak of prediction: the summed logits, their
softmax and the probabilities resampled back to the input grid."""


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """'auto' picks CUDA, then Apple MPS, then the CPU."""
    if str(device) != "auto":
        dev = torch.device(device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise AutounetError("--device cuda was requested but no CUDA device is available; use --device cpu")
        return dev
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def previous_stage_segmentation(logits: torch.Tensor | np.ndarray, target_shape: Sequence[int],
                                spacing: Sequence[float] | None = None,
                                target_spacing: Sequence[float] | None = None,
                                resampling: ResamplingPlan | None = None) -> np.ndarray:
    """Low-resolution logits on the next stage's preprocessed grid, as int16 class indices.

    The very mapping the training-time export for the cascade uses
    (`preprocessing.cascade.next_stage_segmentation`), so the cascade sees the same input.
    """
    return next_stage_segmentation(logits, target_shape, spacing, target_spacing, resampling)


class Predictor:
    """A trained run, ready to predict.

    Example (a run folder from `autounet train`, an image array with its spacing):

    >>> from autounet.inference.predictor import Predictor
    >>> predictor = Predictor.from_run_folder(run_dir, device="cpu")
    >>> seg = predictor.predict_array(image, spacing=(3.0, 1.0, 1.0))
    >>> seg.shape == image.shape
    True
    >>> seg, probs = predictor.predict_array(image, spacing=(3.0, 1.0, 1.0), return_probabilities=True)
    >>> probs.shape == (len(predictor.plans.label_values), *image.shape)
    True
    """

    def __init__(self, plans: Plans, configuration: str, networks: Sequence[nn.Module], folds: Sequence[str],
                 mirror_axes: Sequence[int], device: torch.device, step_size: float = 0.5,
                 run_dir: Path | None = None, previous_stage: Predictor | None = None,
                 precision: str = "auto", max_case_bytes: int | None = None,
                 nifti_transform: str | None = None) -> None:
        if not networks:
            raise ValueError("a predictor needs at least one network")
        self.plans = plans
        self.configuration = configuration
        self.cfg = plans.configuration(configuration)
        self.networks = list(networks)
        self.folds = list(folds)
        self.mirror_axes = list(mirror_axes)
        self.device = device
        self.step_size = step_size
        self.run_dir = run_dir
        self.previous_stage = previous_stage
        self.precision = resolve_precision(precision, device)
        self.max_case_bytes = max_case_bytes
        """Memory one case may use (None: no limit); a case that needs more is refused before the work."""
        self.nifti_transform = nifti_transform
        if self.cfg.previous_stage and previous_stage is None:
            raise AutounetError(f"{configuration} needs a {self.cfg.previous_stage} predictor for its first stage")

    @classmethod
    def from_run_folder(cls, run_dir: str | os.PathLike[str], folds: Sequence[int | str] | None = None,
                        checkpoint: str = "final", device: str | torch.device = "auto", use_mirroring: bool = True,
                        step_size: float = 0.5, precision: str = "auto", max_case_bytes: int | None = None,
                        nifti_transform: str | None = None) -> Predictor:
        """Load plans.json and the folds' checkpoints of a run folder (all trained folds by default)."""
        from autounet.networks.registry import build_network
        from autounet.core.checkpoint import load_checkpoint

        run_dir = Path(run_dir)
        if not run_dir.is_dir():
            raise AutounetError(f"{run_dir}: run folder not found; train a model first or pass the right -c")
        plans = load_plans(run_dir / "plans.json")
        configuration = configuration_of_run(run_dir)
        cfg = plans.configuration(configuration)
        available = trained_folds(run_dir, checkpoint)
        wanted = available if folds is None else [fold_name(f) for f in folds]
        if not wanted:
            raise CheckpointError(f"{run_dir}: no fold has {CHECKPOINT_FILES[checkpoint]}; finish training or pass "
                                  f"--checkpoint latest")
        missing = [f for f in wanted if f not in available]
        if missing:
            raise CheckpointError(f"{run_dir}: fold(s) {missing} have no {CHECKPOINT_FILES[checkpoint]} "
                                  f"(trained: {available or 'none'}); choose others with -f")
        dev = resolve_device(device)
        in_channels = plans.num_channels + (plans.num_classes - 1 if cfg.previous_stage else 0)
        networks, mirror_axes = [], None
        for fold in wanted:
            path = run_dir / f"{FOLD_PREFIX}{fold}" / CHECKPOINT_FILES[checkpoint]
            state = load_checkpoint(path, map_location="cpu")
            if state["configuration"] != configuration:
                raise CheckpointError(f"{path}: trained for {state['configuration']}, but its run folder is "
                                      f"{configuration}; the run folder was renamed or mixed up")
            net = build_network(state["network_name"], cfg.network, in_channels, plans.num_outputs,
                                deep_supervision=True)
            try:
                net.load_state_dict(state["network"])
            except RuntimeError as exc:
                raise CheckpointError(f"{path}: weights do not fit network '{state['network_name']}' of the plans "
                                      f"({str(exc).splitlines()[0]}); the plans were changed after training") from None
            net.deep_supervision = False
            networks.append(net.to(dev).eval())
            mirror_axes = [int(a) for a in state["mirror_axes"]] if mirror_axes is None else mirror_axes
        previous = None
        if cfg.previous_stage:
            from autounet.inference.model_choice import pick_run

            prev_dir, _ = pick_run(run_dir.parent, cfg.previous_stage, checkpoint, prefer_suffix=_suffix(run_dir))
            log.info("cascade: first stage %s from %s", cfg.previous_stage, prev_dir)
            previous = cls.from_run_folder(prev_dir, None, checkpoint, dev, use_mirroring, step_size, precision,
                                           max_case_bytes, nifti_transform)
        axes = (mirror_axes or []) if use_mirroring else []
        predictor = cls(plans, configuration, networks, wanted, axes, dev, step_size, run_dir, previous, precision,
                        max_case_bytes, nifti_transform)
        log.info("loaded %s folds %s (%s checkpoint) on %s (%s); mirroring on axes %s", run_dir.name, wanted,
                 checkpoint, dev, predictor.precision, axes or "none")
        return predictor

    # ------------------------------------------------------------------------------------------

    def estimate_memory(self, data_shape: Sequence[int]) -> str:
        """Human-readable memory estimate of predicting a preprocessed case of spatial `data_shape`."""
        size_fn = getattr(self.networks[0], "feature_map_size", None)
        feature_map = None
        if callable(size_fn):
            try:
                feature_map = int(size_fn(list(self.cfg.patch_size)))
            except Exception:  # an estimate only
                feature_map = None
        params = sum(p.numel() for p in self.networks[0].parameters())
        in_ch = self.plans.num_channels + (self.plans.num_classes - 1 if self.previous_stage else 0)
        est = estimate_prediction_memory_bytes(data_shape, self.plans.num_outputs, self.cfg.patch_size, in_ch,
                                               feature_map, len(mirror_subsets(self.mirror_axes)), params,
                                               len(self.networks))
        return est.describe()

    def predict_preprocessed(self, data: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Fold-averaged logits (K, z, y, x) float32 (CPU) of a preprocessed case (C, z, y, x); for a region
        model the averaged sigmoid probabilities (R, z, y, x), or its logits with `region_averaging` "logits".

        With `window_arithmetic` "nnunet_fp16" each fold runs its own sliding window and the folds are
        averaged in fp16, as nnU-Net does; otherwise the folds are averaged per tile."""
        def window(networks: Sequence[nn.Module]) -> torch.Tensor:
            return sliding_window_logits(networks, data, self.cfg.patch_size, self.plans.num_outputs,
                                         step_size=self.step_size, mirror_axes=self.mirror_axes, device=self.device,
                                         precision=self.precision, sigmoid=self.plans.sigmoid_per_view,
                                         window_arithmetic=self.cfg.window_arithmetic)

        if self.cfg.window_arithmetic != "nnunet_fp16" or len(self.networks) == 1:
            return window(self.networks)
        total = window(self.networks[:1]).half()
        for net in self.networks[1:]:
            total += window([net]).half()
        return (total / len(self.networks)).float()

    def _network_input(self, image: np.ndarray, geometry: Geometry, case_id: str):
        from autounet.preprocessing.preprocessor import preprocess_case

        data, _, props, _ = preprocess_case(image, None, geometry, self.plans, self.configuration, case_id=case_id,
                                            max_bytes=self.max_case_bytes)
        if self.previous_stage is not None:
            prev = self.previous_stage
            prev_data, prev_props = prev._network_input(image, geometry, case_id)
            log.info("%s: first stage %s (folds %s)", case_id or "case", prev.configuration, prev.folds)
            prev_seg = previous_stage_segmentation(prev.predict_preprocessed(prev_data), data.shape[1:],
                                                   prev_props.target_spacing, props.target_spacing,
                                                   prev.cfg.resampling)
            data = cascade_input(data, prev_seg, self.plans.num_classes)
        return data, props

    def predict_case(self, image: np.ndarray, geometry: Geometry, return_probabilities: bool = False,
                     case_id: str = "") -> tuple[np.ndarray, np.ndarray | None]:
        """Label map (Z, Y, X) with label values on the input grid (+ probabilities (K, Z, Y, X) float16)."""
        data, props = self._network_input(image, geometry, case_id)
        self._check_prediction_budget(data.shape[1:], case_id)
        log.debug("%s: preprocessed shape %s, estimated prediction memory %s", case_id or "case",
                 list(data.shape[1:]), self.estimate_memory(data.shape[1:]))
        logits = self.predict_preprocessed(data)
        return logits_to_segmentation_on_original_grid(logits, props, self.plans, self.configuration,
                                                       return_probabilities=return_probabilities)

    def _check_prediction_budget(self, shape: Sequence[int], case_id: str) -> None:
        """Refuse a case whose logits (and their softmax and resampling back) would not fit in memory."""
        need = int(np.prod(shape, dtype=np.float64)) * self.plans.num_outputs * 4 * PREDICTION_COPIES
        if self.max_case_bytes is not None and need > self.max_case_bytes:
            raise AutounetError(
                f"case {case_id or '?'}: predicting {list(shape)} voxels with {self.plans.num_outputs} outputs needs "
                f"about {need / 1024**3:.1f} GiB, more than the {self.max_case_bytes / 1024**3:.2f} GiB available; "
                f"check the spacing in its header or free memory")

    def predict_case_files(self, paths: Sequence[str | os.PathLike[str]], return_probabilities: bool = False,
                           case_id: str = "") -> tuple[np.ndarray, np.ndarray | None, Geometry]:
        """Read one 4D file or one file per channel and predict it: (seg, probabilities or None, geometry).

        NaN/inf voxels are refused (naming the file): SimpleITK reads them from NIfTI as 0, so the
        case would otherwise be predicted silently from data that is not what the user exported.
        """
        from autounet.io.images import count_nonfinite, read_channels, read_image

        image, geometry = (read_image(paths[0], self.max_case_bytes, self.nifti_transform) if len(paths) == 1 else
                           read_channels(list(paths), self.max_case_bytes, self.nifti_transform))
        if geometry.is_2d and self.cfg.dims == 3 and not self.plans.is_2d_data:
            raise ImageReadError(paths[0], f"is a 2D image, but {self.configuration} was trained on 3D images; give "
                                           f"the 3D volume (or predict with a 2d model)")
        per_file = [image] if len(paths) == 1 else [image[i:i + 1] for i in range(len(paths))]
        for path, data in zip(paths, per_file):
            bad = count_nonfinite(path, data)
            if bad:
                raise ImageReadError(path, f"contains {bad} NaN/inf voxel(s); replace them (e.g. with 0) and re-export")
        seg, probs = self.predict_case(image, geometry, return_probabilities, case_id=case_id)
        return seg, probs, geometry

    def predict_array(self, image: np.ndarray, spacing: Sequence[float],
                      direction: Sequence[float] | None = None, origin: Sequence[float] | None = None,
                      return_probabilities: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Predict an in-memory image (C, Z, Y, X) or (Z, Y, X) with its spacing in (z, y, x) order.

        `direction` (9 values, row-major) and `origin` follow SimpleITK's (x, y, z) convention;
        they do not change the prediction and default to identity and zero. Returns the label
        map (Z, Y, X) holding label values, or (label map, probabilities (K, Z, Y, X) float16).
        """
        image = np.asarray(image)
        if image.ndim == 3:
            image = image[None]
        if image.ndim != 4:
            raise AutounetError(f"predict_array needs an image (C, Z, Y, X) or (Z, Y, X), got shape {image.shape}")
        if len(spacing) != 3 or any(float(s) <= 0 for s in spacing):
            raise AutounetError(f"spacing must be three positive values in (z, y, x) order, got {list(spacing)}")
        z, y, x = (float(s) for s in spacing)
        geometry = Geometry(spacing=(x, y, z), origin=tuple(float(v) for v in (origin or (0.0, 0.0, 0.0))),
                            direction=tuple(float(v) for v in (direction or np.eye(3).ravel())),
                            shape=tuple(int(s) for s in image.shape[1:]), is_2d=1 in image.shape[1:])
        seg, probs = self.predict_case(image.astype(np.float32, copy=False), geometry, return_probabilities)
        if return_probabilities:
            assert probs is not None
            return seg, probs
        return seg


def _suffix(run_dir: Path) -> str:
    name = Path(run_dir).name
    return name.split("__", 1)[1] if "__" in name else ""
