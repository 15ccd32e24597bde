"""`autounet export_onnx`: a trained run as one ONNX file per fold plus `inference.json`.

The ONNX files hold only the network (eval mode, full-resolution output, no deep
supervision), on the configuration's fixed patch size with a dynamic batch axis. Everything
around it, preprocessing, sliding window, mirroring, fold averaging and the mapping back to
the input grid, is described by `inference.json` (`inference.onnx_contract`) and done by the
runner (`autounet.onnx_runner` is the reference one). Each exported file is checked with
`onnx.checker` and compared with the PyTorch network on random patches.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from autounet import __version__
from autounet.core.run_layout import FOLD_PREFIX, configuration_of_run
from autounet.core.workspace import Workspace
from autounet.errors import AutounetError
from autounet.inference.onnx_contract import (
    POSTPROCESSING_JSON,
    INPUT_NAME,
    MIN_OPSET,
    ONNX_EXTRA,
    OUTPUT_NAME,
    ChannelSpec,
    FoldModel,
    InferenceContract,
    save_contract,
)
from autounet.io.atomic import atomic_path
from autounet.planners.plans import Plans, load_plans

log = logging.getLogger(__name__)

DEFAULT_OPSET = 17
#: The TorchScript exporter (no extra packages needed, unlike torch's dynamo exporter) goes up to opset 20.
MAX_OPSET = 20
VERIFY_BATCH = 2
#: Largest |ONNX - PyTorch| logit difference on random patches before the export warns.
VERIFY_TOLERANCE = 1e-3


def require_onnx() -> tuple[Any, Any]:
    """The `onnx` and `onnxruntime` modules, or an AutounetError naming the extra."""
    try:
        import onnx
        import onnxruntime
    except ImportError as exc:
        raise AutounetError(f"ONNX export and prediction {ONNX_EXTRA} (missing: {exc.name})") from None
    return onnx, onnxruntime


@dataclass
class OnnxExport:
    """What `export_onnx` wrote: the contract file, one ONNX file per fold, and each file's
    largest |ONNX - PyTorch| logit difference on random patches."""

    contract: Path
    files: dict[str, Path]
    max_abs_diff: dict[str, float]


class _FullResolution(nn.Module):
    """The network's full-resolution logits, also for a network that returns a list of heads."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.network(x)
        return out[0] if isinstance(out, (list, tuple)) else out


def resolve_run_dir(workspace: Workspace, run: str | None, task: str | None, configuration: str | None,
                    checkpoint: str = "final") -> Path:
    """The run folder given, else the one `autounet predict -t TASK -c CONFIGURATION` would use."""
    if run is not None:
        path = Path(run)
        if not (path / "plans.json").is_file():
            raise AutounetError(f"{path}: not a run folder (no plans.json); give <workspace>/results/<task>/<run>")
        return path
    from autounet.inference.model_choice import choose_model

    choice = choose_model(workspace, task, configuration, checkpoint=checkpoint, postprocess=False)
    if len(choice.run_dirs) != 1:
        raise AutounetError(f"task {choice.task}: the chosen model ensembles {len(choice.run_dirs)} runs; export "
                            f"one run folder at a time (or pass -c CONFIGURATION)")
    return choice.run_dirs[0]


def contract_from_plans(plans: Plans, configuration: str, mirror_axes: Sequence[int], folds: Sequence[FoldModel],
                        opset: int, step_size: float = 0.5) -> InferenceContract:
    """inference.json's content for `configuration` of `plans`."""
    cfg = plans.configuration(configuration)
    channels = [ChannelSpec(name=plans.channel_names[str(c)], normalization=cfg.normalization[c],
                            use_mask_for_norm=cfg.use_mask_for_norm[c],
                            intensity_properties=plans.foreground_intensity_properties.get(str(c)))
                for c in range(plans.num_channels)]
    return InferenceContract(
        autounet_version=__version__, opset=opset, task=plans.task, configuration=configuration, channels=channels,
        labels=dict(plans.labels), transpose_forward=list(plans.transpose_forward),
        transpose_backward=list(plans.transpose_backward), spacing=[float(s) for s in cfg.spacing],
        patch_size=[int(p) for p in cfg.patch_size], mirror_axes=[int(a) for a in mirror_axes], folds=list(folds),
        resampling=cfg.resampling, step_size=step_size, regions=plans.regions,
        regions_class_order=plans.regions_class_order,
        output_activation="sigmoid" if plans.has_regions else "softmax")


def export_network(network: nn.Module, path: Path, input_shape: Sequence[int], opset: int = DEFAULT_OPSET) -> None:
    """Write `network` (eval, full resolution) as ONNX for inputs (batch, *input_shape), batch dynamic."""
    onnx, _ = require_onnx()
    network.eval()
    if hasattr(network, "deep_supervision"):
        network.deep_supervision = False
    example = torch.zeros((1, *[int(s) for s in input_shape]), dtype=torch.float32)
    with atomic_path(path) as tmp, warnings.catch_warnings(), torch.no_grad():
        # The TorchScript exporter needs no extra packages; it warns that it is the legacy one, that
        # shape checks are traced as constants (the patch size is fixed) and about instance norm's
        # running statistics (autounet's instance norms keep none).
        warnings.simplefilter("ignore")
        torch.onnx.export(_FullResolution(network), (example,), str(tmp), dynamo=False, opset_version=opset,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
        try:
            onnx.checker.check_model(onnx.load(str(tmp)), full_check=True)
        except onnx.checker.ValidationError as exc:
            raise AutounetError(f"{path}: the exported model fails onnx.checker ({str(exc).splitlines()[0]})") from None


def onnx_torch_difference(network: nn.Module, path: Path, input_shape: Sequence[int], batch: int = VERIFY_BATCH,
                          seed: int = 0) -> float:
    """Largest |ONNX - PyTorch| logit difference on `batch` random normal patches."""
    _, ort = require_onnx()
    x = np.random.default_rng(seed).standard_normal((batch, *input_shape)).astype(np.float32)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]
    with torch.no_grad():
        want = _FullResolution(network.eval())(torch.from_numpy(x)).float().numpy()
    if got.shape != want.shape:
        raise AutounetError(f"{path}: ONNX output shape {got.shape} differs from PyTorch's {want.shape}")
    return float(np.abs(got - want).max())


def export_onnx(run_dir: str | Path, output_dir: str | Path, folds: Sequence[int | str] | None = None,
                checkpoint: str = "final", opset: int = DEFAULT_OPSET) -> OnnxExport:
    """Export the trained folds of `run_dir` (all by default) and inference.json into `output_dir`."""
    from autounet.inference.predictor import Predictor

    require_onnx()
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise AutounetError(f"--opset {opset}: choose an ONNX opset within {MIN_OPSET}..{MAX_OPSET}")
    run_dir, output_dir = Path(run_dir), Path(output_dir)
    plans = load_plans(run_dir / "plans.json")
    configuration = configuration_of_run(run_dir)
    if plans.configuration(configuration).previous_stage:
        raise AutounetError(f"{run_dir}: a cascade stage needs its first stage's prediction as input; export a "
                            f"3d_fullres, 3d_lowres or 2d run instead")
    if output_dir.exists() and not output_dir.is_dir():
        raise AutounetError(f"{output_dir}: exists and is a file; choose another -o (a folder)")
    if plans.configuration(configuration).window_arithmetic != "autounet":
        log.warning("%s: predicted with %s window sums (an imported nnU-Net model); the ONNX runner sums in fp32, "
                    "so voxels where two classes nearly tie may differ from nnU-Net's and autounet's output",
                    run_dir, plans.configuration(configuration).window_arithmetic)
    predictor = Predictor.from_run_folder(run_dir, folds, checkpoint, device="cpu", use_mirroring=True,
                                          precision="fp32")
    input_shape = (plans.num_channels, *predictor.cfg.patch_size)
    files: dict[str, Path] = {}
    diffs: dict[str, float] = {}
    for fold, network in zip(predictor.folds, predictor.networks):
        path = output_dir / f"{FOLD_PREFIX}{fold}.onnx"
        export_network(network, path, input_shape, opset)
        files[fold], diffs[fold] = path, onnx_torch_difference(network, path, input_shape)
        log.debug("fold %s -> %s (max |ONNX - PyTorch| %.2g on random patches)", fold, path, diffs[fold])
        if diffs[fold] > VERIFY_TOLERANCE:
            log.warning("fold %s: ONNX and PyTorch logits differ by up to %.2g; check the export", fold, diffs[fold])
    contract = contract_from_plans(plans, configuration, predictor.mirror_axes,
                                   [FoldModel(fold=f, file=p.name) for f, p in files.items()], opset,
                                   predictor.step_size)
    _copy_postprocessing(run_dir, output_dir)
    return OnnxExport(contract=save_contract(contract, output_dir), files=files, max_abs_diff=diffs)


def _copy_postprocessing(run_dir: Path, output_dir: Path) -> None:
    """The run's connected-component decision (find_best_configuration's) beside the ONNX files, for the runner."""
    from autounet.postprocessing.rule import load_postprocessing, save_postprocessing

    source = run_dir / POSTPROCESSING_JSON
    if source.is_file():
        decision = load_postprocessing(source)
        save_postprocessing(decision, output_dir / POSTPROCESSING_JSON)
        log.info("postprocessing: %s (from %s)", decision.describe(), source)
    else:
        (output_dir / POSTPROCESSING_JSON).unlink(missing_ok=True)
        log.info("no postprocessing decision in %s (run find_best_configuration first to carry one over)", run_dir)
