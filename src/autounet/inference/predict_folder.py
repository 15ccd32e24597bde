"""`autounet predict`: every case of a folder (or one file) through the chosen model.

Outputs land beside nothing the user gave: one label map per case with the input case's
file name, on the input's exact grid, written atomically, plus `predict_info.json` saying
which model, folds and postprocessing made them. A failing case is logged by name and the
others continue; the report lists the failures so the CLI can exit non-zero.
"""

from __future__ import annotations

import errno
import logging
import os
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from autounet.errors import AutounetError
from autounet.inference.export import save_prediction
from autounet.inference.export import labels_from_probabilities, probability_meaning
from autounet.inference.export import save_probabilities as write_probabilities
from autounet.inference.model_choice import ModelChoice, choose_model
from autounet.core.progress import Progress
from autounet.core.run_layout import trained_folds
from autounet.inference.predictor import Predictor
from autounet.inference.presets import DEFAULT_PRESET, get_preset, resolve_prediction_settings
from autounet.io.atomic import write_json
from autounet.core.system import case_memory_budget, cpu_threads
from autounet.core.workspace import Workspace
from autounet.planners.plans import load_plans
from autounet.postprocessing.rule import PostprocessingDecision, apply_postprocessing, load_postprocessing
from autounet.task.dataset import CaseFiles
from autounet.task.prediction_inputs import list_prediction_inputs

log = logging.getLogger(__name__)

INFO_FILE = "predict_info.json"
DICOM_SEG = "dicom-seg"
OUTPUT_FORMATS = ("nifti", DICOM_SEG)


@dataclass
class PredictionReport:
    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    choice: ModelChoice | None = None


def output_name(case_id: str, first_image: Path, output_format: str = "nifti") -> str:
    """Case id plus the input's file ending: `la_003_0000.nii.gz` -> `la_003.nii.gz`; a DICOM series
    (no ending) gives `.nii.gz`, DICOM-SEG output `.dcm`."""
    from autounet.io.images import file_ending

    if output_format == DICOM_SEG:
        return case_id + ".dcm"
    return case_id + (file_ending(first_image.name) or ".nii.gz")


def _check_output_format(output_format: str, cases: list[CaseFiles]) -> None:
    """DICOM-SEG output references the input series, so every input must be one (checked before any model loads)."""
    from autounet.io.dicom import check_seg_source, is_series_reference, require_dicom_extra
    from autounet.io.images import file_ending

    if output_format not in OUTPUT_FORMATS:
        raise AutounetError(f"--output-format must be one of {', '.join(OUTPUT_FORMATS)}, got {output_format!r}")
    if output_format != DICOM_SEG:
        return
    for case in cases:
        first = case.images[0]
        if file_ending(first) is not None or not is_series_reference(first):
            raise AutounetError(f"{first}: --output-format dicom-seg needs DICOM series as input (a DICOM-SEG "
                                f"references its source slices); use the default nifti output for this input")
        check_seg_source(first)
    require_dicom_extra()


def shard(items: Sequence, num_parts: int, part_id: int) -> list:
    """Every num_parts-th item starting at part_id (cases are sorted first by the caller)."""
    if num_parts < 1 or not 0 <= part_id < num_parts:
        raise AutounetError(f"--part-id must be in 0..{num_parts - 1} and --num-parts at least 1 "
                            f"(got part {part_id} of {num_parts})")
    return list(items)[part_id::num_parts]


def _same_folder(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


def _versions() -> dict[str, str]:
    import SimpleITK
    import torch

    import autounet

    return {"autounet": getattr(autounet, "__version__", "unknown"), "torch": torch.__version__,
            "numpy": np.__version__, "SimpleITK": SimpleITK.Version_VersionString(),
            "python": platform.python_version()}


def _ensemble(predictors: list[Predictor], paths: list[Path], case_id: str,
              want_probabilities: bool) -> tuple[np.ndarray, np.ndarray | None, object]:
    """One model: its own output. Several: mean of their probabilities on the original grid."""
    if len(predictors) == 1:
        return predictors[0].predict_case_files(paths, want_probabilities, case_id=case_id)
    total, geometry = None, None
    for p in predictors:
        _, probs, geometry = p.predict_case_files(paths, True, case_id=case_id)
        total = probs.astype(np.float32) if total is None else total + probs
    assert total is not None
    total /= len(predictors)
    seg = labels_from_probabilities(total, *probability_meaning(predictors[0].plans))
    return seg, (total.astype(np.float16) if want_probabilities else None), geometry


def predict_folder(
    workspace: Workspace,
    input_path: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    task: str | None = None,
    configuration: str | None = None,
    folds: Sequence[int | str] | None = None,
    checkpoint: str = "final",
    use_mirroring: bool | None = None,
    step_size: float | None = None,
    save_probabilities: bool = False,
    postprocess: bool = True,
    device: str = "auto",
    resume: bool = False,
    num_parts: int = 1,
    part_id: int = 0,
    show_progress: bool = True,
    cwd: Path | None = None,
    precision: str = "auto",
    threads: int | None = None,
    preset: str = DEFAULT_PRESET,
    memory_gb: float | None = None,
    nifti_transform: str | None = None,
    output_format: str = "nifti",
) -> PredictionReport:
    """Predict every case of `input_path` into `output_dir`; see the module docstring.

    `use_mirroring`, `step_size` and `folds` left as None come from `preset`
    (`inference.presets`: accurate = every fold, mirroring, step 0.5). A case is read and
    predicted within 80% of `memory_gb` (default: the available RAM), or refused by name.
    `output_format` 'dicom-seg' writes `<case>.dcm` DICOM Segmentations (DICOM series inputs only).
    """

    input_path, output_dir = Path(input_path), Path(output_dir)
    in_folder = input_path if input_path.is_dir() else input_path.parent
    if _same_folder(in_folder, output_dir):
        raise AutounetError(f"{output_dir}: the output folder is the input folder; predictions would mix with "
                            f"the images - choose another -o")
    if output_dir.exists() and not output_dir.is_dir():
        raise AutounetError(f"{output_dir}: exists and is a file, not a folder; choose another -o (a folder)")
    get_preset(preset)
    if step_size is not None and not 0 < step_size <= 1:
        raise AutounetError(f"--step-size must be in (0, 1], got {step_size}")
    choice = choose_model(workspace, task, configuration, cwd=cwd, checkpoint=checkpoint, postprocess=postprocess)
    others = [set(trained_folds(d, checkpoint)) for d in choice.run_dirs[1:]]
    common = [f for f in trained_folds(choice.run_dirs[0], checkpoint) if all(f in o for o in others)]
    use_mirroring, step_size, folds = resolve_prediction_settings(
        preset, use_mirroring, step_size, None if folds is None else [str(f) for f in folds], common)
    decision = None
    if choice.postprocessing is not None:
        decision = load_postprocessing(choice.postprocessing)
    # The inputs are checked before any checkpoint is loaded: a wrong folder or a missing channel
    # is reported at once, and without needing the trained weights.
    num_channels = load_plans(choice.run_dirs[0] / "plans.json").num_channels
    cases = sorted(list_prediction_inputs(input_path, num_channels), key=lambda c: c.case_id)
    cases = shard(cases, num_parts, part_id)
    _check_output_format(output_format, cases)
    case_bytes = case_memory_budget(memory_gb, workers=1)  # cases are predicted one at a time
    predictors = [Predictor.from_run_folder(d, folds, checkpoint, device, use_mirroring, step_size, precision,
                                            case_bytes, nifti_transform) for d in choice.run_dirs]
    if predictors[0].device.type == "cpu":
        n_threads, why = cpu_threads(threads)
        torch.set_num_threads(n_threads)
        log.info("CPU threads for the network: %d (%s)", n_threads, why)
    used_folds = {p.run_dir.name: p.folds for p in predictors if p.run_dir is not None}
    log.info("model: %s", "; ".join(choice.reason))
    log.info("using %s (preset %s); folds %s; %s checkpoint; mirroring %s; step size %g; postprocessing: %s",
             ", ".join(d.name for d in choice.run_dirs), preset, used_folds, checkpoint,
             "on" if use_mirroring else "off", step_size, decision.describe() if decision else "none")

    output_dir.mkdir(parents=True, exist_ok=True)
    info = _prediction_info(choice, predictors, used_folds, checkpoint, preset, bool(use_mirroring), step_size,
                            decision, num_parts, part_id)
    write_json(output_dir / INFO_FILE, {**info, "output_format": output_format})

    report = PredictionReport(choice=choice)
    _predict_cases(cases, predictors, output_dir, decision, save_probabilities, resume, show_progress, report,
                   output_format)
    return report


def _predict_cases(cases: list[CaseFiles], predictors: list[Predictor], output_dir: Path,
                   decision: PostprocessingDecision | None, save_probabilities: bool, resume: bool,
                   show_progress: bool, report: PredictionReport, output_format: str = "nifti") -> None:
    """Predict case after case into `report`; a failing case is recorded and the others go on."""
    progress = Progress(len(cases), "predict", unit="case", enabled=show_progress)
    for case in cases:
        progress.update(1, case.case_id)
        out = output_dir / output_name(case.case_id, case.images[0], output_format)
        if resume and out.is_file() and (not save_probabilities or (output_dir / f"{case.case_id}.npz").is_file()):
            report.skipped.append(case.case_id)
            continue
        start = time.perf_counter()
        try:
            _predict_case(predictors, case, out, decision, save_probabilities, output_format)
        except AutounetError as exc:
            log.error("%s: %s", case.case_id, exc)
            report.failed[case.case_id] = str(exc)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                progress.close()
                raise AutounetError(
                    f"{output_dir}: no space left on device while writing {case.case_id}; free disk space and "
                    f"rerun with --continue ({len(report.written)} finished prediction(s) are kept)") from None
            log.exception("%s: prediction failed", case.case_id)
            report.failed[case.case_id] = f"{type(exc).__name__}: {exc}"
        except (RuntimeError, ValueError, MemoryError) as exc:
            log.exception("%s: prediction failed", case.case_id)
            report.failed[case.case_id] = f"{type(exc).__name__}: {exc}"
        else:
            report.written.append(case.case_id)
            log.info("%s -> %s (%.1f s)", case.case_id, out.name, time.perf_counter() - start)
    progress.close()
    if report.failed:
        log.error("%d case(s) failed: %s", len(report.failed), ", ".join(report.failed))


def _predict_case(predictors: list[Predictor], case: CaseFiles, out: Path, decision: PostprocessingDecision | None,
                  save_probabilities: bool, output_format: str = "nifti") -> None:
    """Predict one case (ensembling the predictors), postprocess it and write it (and its probabilities)."""
    seg, probs, geometry = _ensemble(predictors, list(case.images), case.case_id, save_probabilities)
    if decision is not None:
        seg = apply_postprocessing(seg, decision)
    if probs is not None:
        values, regions = probability_meaning(predictors[0].plans)
        write_probabilities(probs, values, out.parent / f"{case.case_id}.npz", regions=regions)
    if output_format == DICOM_SEG:
        from autounet.io.dicom import write_dicom_seg

        names = {value: name for name, value in predictors[0].plans.labels.items()}
        write_dicom_seg(seg, case.images[0], names, out, _versions()["autounet"])
    else:
        save_prediction(seg, geometry, out)


def _prediction_info(choice: ModelChoice, predictors: list[Predictor], used_folds: dict[str, list[str]],
                     checkpoint: str, preset: str, use_mirroring: bool, step_size: float,
                     decision: PostprocessingDecision | None, num_parts: int, part_id: int) -> dict[str, Any]:
    """predict_info.json: which model, settings and versions made the predictions of this folder."""
    return {
        "task": choice.task,
        "configuration": choice.configuration,
        "run_dirs": [str(d) for d in choice.run_dirs],
        "folds": used_folds,
        "checkpoint": checkpoint,
        "preset": preset,
        "mirroring": use_mirroring,
        "mirror_axes": {p.run_dir.name: p.mirror_axes for p in predictors if p.run_dir is not None},
        "step_size": step_size,
        "postprocessing": str(choice.postprocessing) if choice.postprocessing else None,
        "postprocessing_steps": decision.describe() if decision else "none",
        "reason": choice.reason,
        "device": str(predictors[0].device),
        "precision": predictors[0].precision,
        "threads": torch.get_num_threads() if predictors[0].device.type == "cpu" else None,
        "num_parts": num_parts,
        "part_id": part_id,
        "versions": _versions(),
    }
