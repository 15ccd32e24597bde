"""Stage orchestration for `autounet plan_and_preprocess`: check, fingerprint, plan, preprocess.

Each stage reads the previous stage's files: the fingerprint is reused unless `clean`, the
plans are always recomputed from the fingerprint (cheap, and they must follow the memory
target given now), preprocessing skips cases already finished.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from typing import TYPE_CHECKING

from autounet.core.system import case_memory_budget
from autounet.core.workspace import Workspace
from autounet.errors import AutounetError
from autounet.io.atomic import write_json

if TYPE_CHECKING:
    from autounet.planners.plans import Plans
    from autounet.task.fingerprint import Fingerprint

log = logging.getLogger(__name__)

DEFAULT_GPU_MEMORY_GB = 8.0


@dataclass
class PlanAndPreprocessResult:
    task: str
    preprocessed_dir: Path
    configurations: list[str]
    preprocessed: list[str]
    plans_path: Path
    plans_name: str


def default_gpu_memory_gb() -> tuple[float, str]:
    """Memory of the CUDA GPU present, else 8 GB; returns the value and where it came from.

    Importing torch costs seconds, so it is only asked when an NVIDIA driver is present.
    """
    if not Path("/proc/driver/nvidia").exists() and shutil.which("nvidia-smi") is None:
        return DEFAULT_GPU_MEMORY_GB, "default (no CUDA GPU found)"
    try:
        import torch

        if torch.cuda.is_available():
            total = torch.cuda.get_device_properties(0).total_memory / 1e9
            return round(total, 1), f"CUDA device 0 ({torch.cuda.get_device_name(0)})"
    except Exception:  # noqa: BLE001 - no torch/CUDA means the default applies
        pass
    return DEFAULT_GPU_MEMORY_GB, "default (no CUDA GPU found)"


def plan_and_preprocess(
    workspace: Workspace,
    task_name: str,
    num_workers: int | None = None,
    gpu_memory_gb: float | None = None,
    plan_only: bool = False,
    clean: bool = False,
    configurations: list[str] | None = None,
    planner: str = "default",
    show_progress: bool = True,
    memory_gb: float | None = None,
    accept_label_geometry: bool = False,
    nifti_transform: str | None = None,
    plans_name: str | None = None,
    transfer_plans_from: str | None = None,
    transfer_plans_name: str = "default",
) -> PlanAndPreprocessResult:
    """Check, fingerprint, plan (with a named planner, or TaskA's plans transferred) and preprocess a task.

    The plans are stored as `plans.json` (default planner) or `plans__<name>.json`; the name is
    the planner's, `from-<TaskA>` for transferred plans, or `plans_name`.
    """
    from autounet.task.dataset import find_task, load_task
    from autounet.task.fingerprint import extract_fingerprint, load_fingerprint, save_fingerprint
    from autounet.task.integrity import verify_task
    from autounet.core.parallel import default_num_workers
    from autounet.planners.plans import check_plans_name
    from autounet.preprocessing.preprocessor import preprocess_task

    _check_planner_options(planner, transfer_plans_from, gpu_memory_gb)
    task_dir = find_task(task_name, workspace)
    task = load_task(task_dir)
    source = _transfer_source(workspace, transfer_plans_from, transfer_plans_name, task.name)
    name = check_plans_name(plans_name or (f"from-{source.task}" if source is not None else planner),
                            "--plans-name")
    workers = default_num_workers(per_worker_gb=2.0) if num_workers is None else num_workers
    case_bytes = case_memory_budget(memory_gb, workers)
    log.info("memory budget: %.2f GiB per case (shared by %d worker(s))", case_bytes / 1024**3, max(1, workers))
    log.info("task %s (%s layout) at %s: %d training cases, %d channel(s), labels %s",
             task.name, task.layout, task_dir, len(task.training), len(task.channel_names),
             ", ".join(f"{v}={k}" for k, v in sorted(task.labels.items(), key=lambda kv: kv[1])))

    log.info("checking dataset integrity ...")
    verify_task(task, num_workers=workers, show_progress=show_progress, max_read_bytes=case_bytes,
                accept_label_geometry=accept_label_geometry, nifti_transform=nifti_transform)

    out = workspace.preprocessed(task.name)
    fp_path = out / "fingerprint.json"
    if clean and out.exists():
        log.info("--clean: removing %s", out)
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "dataset.json", task.to_json_dict())

    if fp_path.is_file():
        log.info("reusing fingerprint %s (pass --clean to recompute)", fp_path)
        fingerprint = load_fingerprint(fp_path)
    else:
        log.info("extracting fingerprint with %d worker(s) ...", workers)
        fingerprint = extract_fingerprint(task, num_workers=workers, show_progress=show_progress,
                                          max_read_bytes=case_bytes, nifti_transform=nifti_transform)
        save_fingerprint(fingerprint, fp_path)

    plans, plans_path = _plan(fingerprint, out, name, source, planner, gpu_memory_gb)
    planned = list(plans.configurations)
    log.info("planned configurations: %s -> %s", ", ".join(planned), plans_path)

    done: list[str] = []
    if not plan_only:
        wanted = configurations or planned
        unknown = [c for c in wanted if c not in plans.configurations]
        if unknown:
            from autounet.errors import PlansError

            raise PlansError(f"{plans_path}: configuration(s) {unknown} not planned; planned: {planned}")
        preprocess_task(workspace, task, plans, wanted, num_workers=workers, clean=clean,
                        show_progress=show_progress, max_bytes=case_bytes, nifti_transform=nifti_transform)
        done = wanted
        log.info("preprocessed %s into %s", ", ".join(wanted), out)
    return PlanAndPreprocessResult(task.name, out, planned, done, plans_path, name)


def _check_planner_options(planner: str, transfer_plans_from: str | None, gpu_memory_gb: float | None) -> None:
    """Refuse an unknown planner, and planner options beside --transfer-plans-from, before any work."""
    from autounet.planners.presets import planner_preset

    planner_preset(planner)
    if transfer_plans_from is not None and (planner != "default" or gpu_memory_gb is not None):
        raise AutounetError("--transfer-plans-from takes the network, patch and batch of the other task's plans; "
                            "leave out --planner and --gpu-memory (plan that task with them instead)")


def _plan(fingerprint: Fingerprint, out: Path, name: str, source: Plans | None, planner: str,
          gpu_memory_gb: float | None) -> tuple[Plans, Path]:
    """Plan (or transfer `source`'s plans), choose the preprocessed folders, save as plans[__name].json."""
    from autounet.planners.plans import plans_file_name, save_plans
    from autounet.preprocessing.data_folders import assign_data_identifiers

    if source is not None:
        from autounet.planners.transfer import transfer_plans

        plans = transfer_plans(source, fingerprint, name)
        log.info("plans transferred from %s ('%s' plans): its topology, patch, batch and spacing", source.task,
                 source.name)
    else:
        plans = _plan_with_preset(fingerprint, planner, gpu_memory_gb, name)
    for configuration, why in assign_data_identifiers(plans, out).items():
        plans.configuration(configuration).reasons["data"] = why
    plans_path = out / plans_file_name(name)
    save_plans(plans, plans_path)
    return plans, plans_path


def _plan_with_preset(fingerprint: Fingerprint, planner: str, gpu_memory_gb: float | None, name: str) -> Plans:
    """Plan with a named planner; --gpu-memory overrides the preset's target, as the reference allows."""
    from autounet.planners.experiment_planner import plan_experiment
    from autounet.planners.presets import planner_preset

    preset = planner_preset(planner)
    if gpu_memory_gb is not None:
        source = "--gpu-memory"
    elif preset.gpu_memory_gb is not None:
        gpu_memory_gb, source = preset.gpu_memory_gb, f"the {planner} preset"
    else:
        gpu_memory_gb, source = default_gpu_memory_gb()
    log.info("planning for %.1f GB of GPU memory (%s)%s", gpu_memory_gb, source,
             "; to plan for the GPU that will train, pass --gpu-memory GB (e.g. --gpu-memory 24)"
             if source.startswith("default") else "")
    plans = plan_experiment(fingerprint, gpu_memory_gb=gpu_memory_gb, architecture=preset.architecture,
                            batch_size_cap_fraction=preset.batch_cap_fraction)
    plans.name = name
    plans.reasons["planner"] = f"{planner}: {preset.description}; planned for {gpu_memory_gb:g} GB ({source})"
    return plans


def _transfer_source(workspace: Workspace, source_task: str | None, source_plans: str, target: str) -> Plans | None:
    """The plans to transfer (`--transfer-plans-from TaskA`), or None."""
    if source_task is None:
        return None
    from autounet.core.task_names import find_task_name
    from autounet.planners.plans import load_named_plans

    name = find_task_name(source_task, workspace, require_preprocessed=True)
    if name == target:
        raise AutounetError(f"--transfer-plans-from: {name} is the task being planned; name another task")
    return load_named_plans(workspace.preprocessed(name), source_plans)
