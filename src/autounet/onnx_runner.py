"""Reference runner for models exported by `autounet export_onnx`: onnxruntime, numpy, scipy and
SimpleITK only, no torch.

    python -m autounet.onnx_runner -i IMAGE_OR_FOLDER -o OUT --model EXPORTED_DIR

It does what `autounet predict` does, step by step as inference.json describes it: transpose, crop to the nonzero box, normalize, resample to the target spacing,
slide the network over the case (Gaussian-weighted tiles, mirrored views, folds averaged),
resample the outputs back, argmax (or threshold the regions), paste into the uncropped grid,
transpose back and apply the connected-component postprocessing exported with the model
(`postprocessing.json`, where find_best_configuration chose one). Preprocessing and the mapping back reuse autounet's own torch-free
functions, so a difference to `autounet predict` can only come from the network itself.

Python use: `predict_with_onnx(inputs, output_dir, model_dir)`.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.special import expit

from autounet.errors import AutounetError, ImageReadError, shorten_message
from autounet.inference.export import argmax_class_by_class, smallest_label_dtype
from autounet.inference.onnx_contract import (
    POSTPROCESSING_JSON,
    InferenceContract,
    load_contract,
    require_onnxruntime,
)
from autounet.inference.tiling import compute_steps, mirror_subsets, tile_weights
from autounet.io.geometry import Geometry
from autounet.io.images import count_nonfinite, file_ending, read_channels, read_image, write_label
from autounet.postprocessing.rule import PostprocessingDecision, apply_postprocessing, load_postprocessing
from autounet.preprocessing.cropping import crop_to_nonzero, paste_into
from autounet.preprocessing.normalization import normalize
from autounet.preprocessing.resampling import compute_new_shape, resample_data, resample_probabilities
from autounet.task.prediction_inputs import list_prediction_inputs
from autounet.task.labels import regions_to_labels

log = logging.getLogger("autounet.onnx_runner")


@dataclass
class _Grid:
    """Where the preprocessed case came from: what the way back to the input grid needs."""

    shape_before_crop: list[int]
    bbox: list[list[int]]
    shape_after_crop: list[int]
    spacing: list[float]
    target_spacing: list[float]


class OnnxModel:
    """The exported folds of one model, loaded once, ready to predict cases."""

    def __init__(self, model_dir: str | Path, use_mirroring: bool = True, threads: int | None = None) -> None:
        ort = require_onnxruntime()
        self.model_dir = Path(model_dir)
        self.contract = load_contract(self.model_dir)
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
            options.inter_op_num_threads = 1
        self.sessions = []
        for fold in self.contract.folds:
            path = self.model_dir / fold.file
            if not path.is_file():
                raise AutounetError(f"{path}: fold {fold.fold}'s ONNX file named in inference.json is missing")
            self.sessions.append(ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]))
        self.mirror_axes = list(self.contract.mirror_axes) if use_mirroring else []

    def preprocess(self, image: np.ndarray, geometry: Geometry) -> tuple[np.ndarray, _Grid]:
        """(C, Z, Y, X) as read -> network input on the target grid, as `preprocess_case` does."""
        c = self.contract
        if image.ndim != 4 or image.shape[0] != len(c.channels):
            raise AutounetError(f"image of shape {image.shape}: the model expects {len(c.channels)} channel(s) "
                                f"({', '.join(ch.name for ch in c.channels)})")
        forward = list(c.transpose_forward)
        data = np.asarray(image, dtype=np.float32).transpose([0] + [a + 1 for a in forward])
        spacing = [float(geometry.spacing_zyx[a]) for a in forward]
        shape_before_crop = [int(n) for n in data.shape[1:]]
        data, inside, bbox = crop_to_nonzero(data)
        shape_after_crop = [int(n) for n in data.shape[1:]]
        properties = {str(i): ch.intensity_properties for i, ch in enumerate(c.channels)
                      if ch.intensity_properties is not None}
        data = normalize(data, inside >= 0, [ch.normalization for ch in c.channels],
                         [ch.use_mask_for_norm for ch in c.channels], properties)
        two_d = c.dims == 2
        target = [spacing[0], *c.spacing] if two_d else list(c.spacing)
        new_shape = compute_new_shape(shape_after_crop, spacing, target)
        rs = c.resampling
        data = resample_data(data, new_shape, spacing, target, order=rs.order_data, order_z=rs.order_z,
                             threshold=rs.anisotropy_threshold, force_separate_axis=0 if two_d else None)
        return data, _Grid(shape_before_crop, bbox, shape_after_crop, spacing, target)

    def _forward(self, tiles: np.ndarray, sigmoid: bool) -> np.ndarray:
        """Mean output over folds and mirrored views of tiles (n, C, *patch) -> (n, K, *patch)."""
        subsets = mirror_subsets(self.mirror_axes)
        n = tiles.shape[0]
        views = np.concatenate([np.flip(tiles, [a + 2 for a in s]) if s else tiles for s in subsets])
        views = np.ascontiguousarray(views, dtype=np.float32)
        total = np.zeros((n, self.contract.num_outputs, *tiles.shape[2:]), dtype=np.float32)
        for session in self.sessions:
            out = session.run([self.contract.output_name], {self.contract.input_name: views})[0]
            for i, s in enumerate(subsets):
                part = out[i * n:(i + 1) * n]
                part = np.flip(part, [a + 2 for a in s]) if s else part
                total += expit(part) if sigmoid else part
        return total / np.float32(len(subsets) * len(self.sessions))

    def sliding_window(self, data: np.ndarray) -> np.ndarray:
        """Outputs (K, *spatial) float32 of a preprocessed case (C, *spatial), like `sliding_window_logits`:
        logits for a softmax model, mean sigmoid probabilities for a region model."""
        c = self.contract
        patch = tuple(int(p) for p in c.patch_size)
        spatial = tuple(data.shape[1:])
        slice_axis = len(spatial) == len(patch) + 1  # a 2D network over the slices of a 3D case
        tile_shape = ((1,) if slice_axis else ()) + patch
        lead = len(spatial) - len(patch)
        target = spatial[:lead] + tuple(max(s, p) for s, p in zip(spatial[lead:], patch))
        pad_before = [(t - s) // 2 for s, t in zip(spatial, target)]
        x = np.pad(data, [(0, 0)] + [(b, t - s - b) for s, t, b in zip(spatial, target, pad_before)])
        g = c.gaussian
        weight = tile_weights(patch, True, g.sigma_scale, g.value_scaling, g.floor).reshape(tile_shape)
        steps = ([list(range(target[0]))] + compute_steps(target[1:], patch, c.step_size) if slice_axis
                 else compute_steps(target, patch, c.step_size))
        corners = list(itertools.product(*steps))
        batch = 1 if len(patch) == 3 else max(1, 16 // len(mirror_subsets(self.mirror_axes)))
        sigmoid = c.output_activation == "sigmoid"
        out_sum = np.zeros((c.num_outputs, *target), dtype=np.float32)
        weight_sum = np.zeros(target, dtype=np.float32)
        for start in range(0, len(corners), batch):
            boxes = [tuple(slice(o, o + t) for o, t in zip(corner, tile_shape))
                     for corner in corners[start:start + batch]]
            tiles = np.stack([x[(slice(None),) + box] for box in boxes])
            if slice_axis:
                tiles = tiles[:, :, 0]
            out = self._forward(tiles, sigmoid)
            if slice_axis:
                out = out[:, :, None]
            out = out * weight
            for i, box in enumerate(boxes):
                out_sum[(slice(None),) + box] += out[i]
                weight_sum[box] += weight
        crop = tuple(slice(b, b + s) for b, s in zip(pad_before, spatial))
        return out_sum[(slice(None),) + crop] / weight_sum[crop]

    def to_input_grid(self, outputs: np.ndarray, grid: _Grid) -> np.ndarray:
        """Network outputs on the preprocessed grid -> label map (Z, Y, X) on the input grid."""
        c = self.contract
        rs = c.resampling

        def resample(channels: np.ndarray) -> np.ndarray:
            if list(channels.shape[1:]) == grid.shape_after_crop:
                return np.asarray(channels, dtype=np.float32)
            return resample_probabilities(channels, grid.shape_after_crop, grid.target_spacing, grid.spacing,
                                          order=rs.order_probabilities, order_z=rs.order_z,
                                          threshold=rs.anisotropy_threshold,
                                          force_separate_axis=0 if c.dims == 2 else None, torch_linear=False)

        dtype = smallest_label_dtype(c.label_values)
        if c.regions:
            masks = np.stack([resample(outputs[r:r + 1])[0] > 0.5 for r in range(len(c.regions))])
            seg = regions_to_labels(masks, c.regions_class_order or [], dtype=dtype)
        else:
            seg = np.asarray(c.label_values)[argmax_class_by_class(outputs, resample)].astype(dtype)
        seg = paste_into(grid.shape_before_crop, grid.bbox, seg, fill=0)
        return np.ascontiguousarray(seg.transpose(c.transpose_backward))

    def predict_case(self, image: np.ndarray, geometry: Geometry) -> np.ndarray:
        """Label map (Z, Y, X) on the grid of `image` (C, Z, Y, X)."""
        data, grid = self.preprocess(image, geometry)
        seg = self.to_input_grid(self.sliding_window(data), grid)
        if tuple(seg.shape) != tuple(geometry.shape):
            raise AutounetError(f"label map shape {seg.shape} differs from the input's {geometry.shape}")
        return seg


def _read_case(paths: Sequence[Path], contract: InferenceContract) -> tuple[np.ndarray, Geometry]:
    image, geometry = read_image(paths[0]) if len(paths) == 1 else read_channels(list(paths))
    if geometry.is_2d and contract.dims == 3:
        raise ImageReadError(paths[0], f"is a 2D image, but {contract.configuration} was trained on 3D images")
    for i, path in enumerate(paths):
        bad = count_nonfinite(path, image if len(paths) == 1 else image[i:i + 1])
        if bad:
            raise ImageReadError(path, f"contains {bad} NaN/inf voxel(s); replace them (e.g. with 0) and re-export")
    return image, geometry


def predict_with_onnx(inputs: str | Path, output_dir: str | Path, model_dir: str | Path,
                      use_mirroring: bool = True, threads: int | None = None, postprocess: bool = True) -> list[Path]:
    """Predict one image file or every case of a folder with an exported model; returns the label maps.

    `inputs` takes the layouts `autounet predict` takes (one 4D file per case, or `<case>_0000`
    channel files); each label map is `<output_dir>/<case><ending>` on its input's grid.
    `use_mirroring=False` skips test-time mirroring (8x fewer network runs in 3D, slightly
    different results); `threads` caps onnxruntime's CPU threads; `postprocess=False` skips the exported
    connected-component postprocessing.
    """
    model = OnnxModel(model_dir, use_mirroring=use_mirroring, threads=threads)
    decision = _postprocessing(Path(model_dir)) if postprocess else None
    inputs, output_dir = Path(inputs), Path(output_dir)
    in_folder = inputs if inputs.is_dir() else inputs.parent
    if output_dir.exists() and (not output_dir.is_dir() or output_dir.resolve() == in_folder.resolve()):
        raise AutounetError(f"{output_dir}: is the input folder or a file; choose another -o")
    cases = sorted(list_prediction_inputs(inputs, len(model.contract.channels)), key=lambda c: c.case_id)
    written = []
    for case in cases:
        start = time.perf_counter()
        images = [Path(p) for p in case.images]
        image, geometry = _read_case(images, model.contract)
        out = output_dir / (case.case_id + (file_ending(images[0].name) or ".nii.gz"))
        seg = model.predict_case(image, geometry)
        write_label(seg if decision is None else apply_postprocessing(seg, decision), geometry, out)
        written.append(out)
        log.info("%s -> %s (%.1f s)", case.case_id, out, time.perf_counter() - start)
    return written


def _postprocessing(model_dir: Path) -> PostprocessingDecision | None:
    path = model_dir / POSTPROCESSING_JSON
    if not path.is_file():
        return None
    decision = load_postprocessing(path)
    log.info("postprocessing: %s", decision.describe())
    return decision


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m autounet.onnx_runner",
                                     description="Predict label maps with a model exported by `autounet export_onnx` "
                                                 "(onnxruntime, no torch).")
    parser.add_argument("-i", "--input", required=True, help="one image file or a folder of cases")
    parser.add_argument("-o", "--output", required=True, help="output folder for the label maps")
    parser.add_argument("--model", required=True, help="the folder written by export_onnx (inference.json)")
    parser.add_argument("--disable-tta", action="store_true", help="no test-time mirroring (8x faster in 3D)")
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime CPU threads (default: all cores)")
    parser.add_argument("--no-postprocessing", action="store_true",
                        help="skip the connected-component postprocessing exported with the model")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    try:
        written = predict_with_onnx(args.input, args.output, args.model, use_mirroring=not args.disable_tta,
                                    threads=args.threads, postprocess=not args.no_postprocessing)
    except AutounetError as exc:
        print(f"error: {shorten_message(str(exc))}", file=sys.stderr)
        return 2
    print(f"{len(written)} label map(s) written to {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
