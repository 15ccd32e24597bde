"""The `autounet` command line: parses arguments and calls the library. Nothing else lives here.

Every command accepts `--workspace DIR` (else $AUTOUNET_HOME, else ~/autounet). Errors a user
can fix are printed as one line, `error: ...`, with exit code 2.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import sys
from collections.abc import Callable, Sequence

from autounet import __version__
from autounet.commands import handlers as h
from autounet.errors import AutounetError, shorten_message
from autounet.inference.presets import DEFAULT_PRESET, PRESETS
from autounet.io.nifti_header import NIFTI_TRANSFORMS
from autounet.networks.precision import PRECISIONS
from autounet.planners.presets import PLANNERS

log = logging.getLogger("autounet")

CONFIGURATIONS = ("2d", "3d_fullres", "3d_lowres", "3d_cascade_fullres")
PRECISION_HELP = ("numeric precision of the network: auto = fp16 autocast on CUDA, bf16 autocast on CPUs with "
                  "native bfloat16 (AVX512_BF16/AMX, 2-2.5x faster), else fp32")
NIFTI_TRANSFORM_HELP = ("which transform of a NIfTI header to trust where its qform and sform disagree (by "
                        "default such a file is refused)")
THREADS_HELP = "CPU threads for the network (default: all cores; 1 on a machine busy with other work)"
_FORMATTER = functools.partial(argparse.HelpFormatter, width=100)


def parse_folds(words: Sequence[str], fold: str | None, folds: str | None) -> list[int | str]:
    """`fold 0`, `0`, `fold all`, `--fold 3`, `--folds 0-4` or `--folds 0,2` -> list of folds."""
    given = [w for w in words if w != "fold"]
    sources = [s for s in (given and " ".join(given), fold, folds) if s]
    if len(sources) > 1:
        raise AutounetError("give the fold once: `fold 0`, `--fold 0` or `--folds 0-4`")
    if not sources:
        raise AutounetError("which fold? e.g. `autounet train 3d_fullres fold 0` (0-4, or `all`)")
    text = str(sources[0]).strip()
    if len(given) > 1:
        raise AutounetError(f"unexpected words after the configuration: {' '.join(words)}; use `fold N`")
    if text == "all":
        return ["all"]
    out: list[int | str] = []
    for part in text.split(","):
        part = part.strip()
        if "-" in part:
            lo, _, hi = part.partition("-")
            if not (lo.isdigit() and hi.isdigit()) or int(lo) > int(hi):
                raise AutounetError(f"invalid fold range '{part}'; use e.g. 0-4")
            out.extend(range(int(lo), int(hi) + 1))
        elif part.isdigit():
            out.append(int(part))
        elif part == "all":
            out.append("all")
        else:
            raise AutounetError(f"invalid fold '{part}'; use 0-4 or `all`")
    return out


def _train(args: argparse.Namespace) -> int:
    """The fold words (`fold 0`, `--folds 0-4`) are parsed here; the handler gets a list."""
    args.fold_list = parse_folds(args.fold_words, args.fold, args.folds)
    return h.cmd_train(args)


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="autounet", formatter_class=_FORMATTER,
        description="Self-configuring medical image segmentation: plan, preprocess, train, predict, evaluate.",
    )
    parser.add_argument("--version", action="version", version=f"autounet {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--workspace", metavar="DIR", default=None,
                        help="workspace root (default: $AUTOUNET_HOME, else ~/autounet)")
    parser.add_argument("-v", "--verbose", action="store_true", default=False, help="debug logging")
    common.add_argument("--workspace", metavar="DIR", default=argparse.SUPPRESS,
                        help="workspace root (default: $AUTOUNET_HOME, else ~/autounet)")
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    def add(name: str, fn: Callable[[argparse.Namespace], int], help_text: str,
            aliases: Sequence[str] = ()) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[common], help=help_text, description=help_text, aliases=list(aliases),
                           formatter_class=_FORMATTER)
        p.set_defaults(func=fn)
        return p

    add("doctor", h.cmd_doctor, "show paths, versions, devices, RAM, disk and /dev/shm")

    p = add("demo-data", h.cmd_demo_data, "write a small synthetic MSD-layout demo task", aliases=["demo_data"])
    p.add_argument("directory", help="folder to write the task into (e.g. <workspace>/raw)")
    p.add_argument("--2d", dest="two_d", action="store_true", help="the 2D demo task")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--regions", action="store_true",
                   help="declare overlapping regions (organ with lesion, lesion) for region-based training")
    p.add_argument("--sparse", type=int, default=0, metavar="N",
                   help="annotate only every N-th slice of the training labels; the rest gets the ignore label")
    p.add_argument("--name", default=None, help="task folder name (default: Task01_Demo, or Task02_Demo2D)")

    p = add("plan_and_preprocess", h.cmd_plan_and_preprocess,
            "check a task, fingerprint it, plan configurations and preprocess them",
            aliases=["plan-and-preprocess"])
    p.add_argument("task", help="Task01, 1, Task01_BrainTumour, Dataset001_BrainTumour or a path")
    p.add_argument("-np", "--num-workers", type=int, default=None,
                   help="worker processes (default: from CPU cores and free RAM)")
    p.add_argument("--gpu-memory", type=float, default=None, metavar="GB",
                   help="GPU memory target for planning (default: the CUDA GPU present, else 8)")
    p.add_argument("--memory-gb", type=float, default=None, metavar="GB",
                   help="RAM that reading and preprocessing may use, shared by the workers (default: the available "
                        "RAM); a case that needs more is refused by name before it is read")
    p.add_argument("--accept-label-geometry", action="store_true",
                   help="accept labels whose origin or direction differ from their image's (the image's grid is used)")
    p.add_argument("--nifti-transform", choices=NIFTI_TRANSFORMS, default=None, help=NIFTI_TRANSFORM_HELP)
    p.add_argument("--plan-only", action="store_true", help="stop after writing plans.json")
    p.add_argument("--clean", action="store_true", help="recompute fingerprint and preprocessed data")
    p.add_argument("-c", "--configurations", nargs="+", choices=CONFIGURATIONS[:3], default=None,
                   help="configurations to preprocess (default: all planned)")
    p.add_argument("--planner", default="default", choices=list(PLANNERS),
                   help="default: plain U-Net; resenc: residual encoder, default memory target; resenc-m/-l/-xl: "
                        "the reference's ResEnc presets (8/24/40 GB, stored as plans__resenc-m.json ...)")
    p.add_argument("--plans-name", default=None, metavar="NAME",
                   help="store the plans under this name (default: the planner's, or from-<TASK> when transferred)")
    p.add_argument("--transfer-plans-from", default=None, metavar="TASK",
                   help="plan with another preprocessed task's topology, patch, batch and spacing, so that its "
                        "checkpoints load into every layer (train --init-from)")
    p.add_argument("--transfer-plans", default="default", metavar="NAME",
                   help="which plans of --transfer-plans-from to transfer (default: its default plans)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")

    p = add("plans", h.cmd_plans, "print a summary table of a task's plans")
    p.add_argument("task")
    p.add_argument("--plans", default="default", metavar="NAME", help="which plans (default, resenc-l, ...)")

    p = add("train", _train, "train one or more folds of a configuration")
    p.add_argument("configuration", choices=CONFIGURATIONS)
    p.add_argument("fold_words", nargs="*", metavar="fold N",
                   help="`fold 0`, `0`, `fold all`")
    p.add_argument("--fold", default=None, help="fold number or `all`")
    p.add_argument("--folds", default=None, help="several folds, e.g. 0-4 or 0,2")
    p.add_argument("-t", "--task", default=None, help="task (default: the only preprocessed task)")
    p.add_argument("--epochs", type=int, default=1000)
    p.add_argument("--iters-per-epoch", type=int, default=250)
    p.add_argument("--tensorboard", action="store_true",
                   help="also log the per-epoch metrics for TensorBoard in fold_N/tensorboard (needs autounet[tensorboard])")
    p.add_argument("--val-iters", type=int, default=None,
                   help="validation patches per epoch (default: a fifth of --iters-per-epoch, at most 50)")
    p.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu", "mps"])
    p.add_argument("--workers", type=int, default=None,
                   help="data-loading processes (default: from CPU cores and RAM; 0 = main process)")
    p.add_argument("--threads", type=int, default=None, help=THREADS_HELP)
    p.add_argument("--precision", default="auto", choices=PRECISIONS, help=PRECISION_HELP)
    p.add_argument("--resume", action="store_true", help="continue an interrupted run exactly")
    p.add_argument("--init-from", default=None, metavar="CHECKPOINT", help="start from pretrained weights")
    p.add_argument("--network", default=None,
                   help="network name from the registry or a user class as pkg.module:Class")
    p.add_argument("--plans", default="default", metavar="NAME",
                   help="which plans of the task to train (default; resenc-m/-l/-xl; from-<TASK>; a --plans-name)")
    p.add_argument("--blocks", default=None, metavar="LIST",
                   help="optional blocks instead of the plans' own, comma-separated (se, attention_gate) or `none`; "
                        "the run gets its own folder, and shared layers start from identical weights")
    p.add_argument("--save-probabilities", action="store_true",
                   help="keep validation softmax (for find_best_configuration ensembles)")
    p.add_argument("--seed", type=int, default=12345)
    p.add_argument("--skip-validation", action="store_true",
                   help="skip predicting the validation cases at the end of the fold (no CV results)")
    p.add_argument("--disable-tta", action="store_true",
                   help="no test-time mirroring when predicting the validation cases (about 8x faster in 3D)")
    side = p.add_mutually_exclusive_group()
    side.add_argument("--gpus", default=None, metavar="IDS",
                      help="train the folds side by side, one process per GPU at a time, e.g. --gpus 0,1,2,3; "
                           "each fold's output goes to fold_N/fanout.log")
    side.add_argument("--parallel-folds", type=int, default=None, metavar="N",
                      help="train N folds side by side as CPU processes, sharing the cores (--threads, --workers)")

    p = add("predict", h.cmd_predict, "predict a folder of images (or one file) with a trained model")
    p.add_argument("-i", "--input", required=True,
                   help="folder of cases (either layout, or DICOM series: one sub-folder each or side by side) or "
                        "one image file")
    p.add_argument("-o", "--output", required=True, help="output folder (must differ from the input)")
    p.add_argument("-t", "--task", default=None)
    p.add_argument("-c", "--configuration", default=None)
    p.add_argument("-f", "--folds", nargs="+", default=None, help="folds to ensemble (default: all trained)")
    p.add_argument("--checkpoint", choices=["final", "best", "latest"], default="final")
    p.add_argument("--preset", choices=list(PRESETS), default=DEFAULT_PRESET,
                   help="accurate: every fold + mirroring (the reference method); balanced: every fold, no "
                        "mirroring (8x fewer forwards in 3D); fast: first fold only, no mirroring")
    p.add_argument("--disable-tta", action="store_true", help="no test-time mirroring (about 8x faster in 3D)")
    p.add_argument("--step-size", type=float, default=None, help="window step as a fraction of the patch (0.5)")
    p.add_argument("--save-probabilities", action="store_true")
    p.add_argument("--no-postprocessing", action="store_true")
    p.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu", "mps"])
    p.add_argument("--precision", default="auto", choices=PRECISIONS, help=PRECISION_HELP)
    p.add_argument("--threads", type=int, default=None, help=THREADS_HELP)
    p.add_argument("--continue", dest="resume", action="store_true", help="skip cases already written")
    p.add_argument("--num-parts", type=int, default=1)
    p.add_argument("--part-id", type=int, default=0)
    p.add_argument("--memory-gb", type=float, default=None, metavar="GB",
                   help="RAM one case may use while it is predicted (default: the available RAM); a case that needs "
                        "more is refused by name")
    p.add_argument("--nifti-transform", choices=NIFTI_TRANSFORMS, default=None, help=NIFTI_TRANSFORM_HELP)
    p.add_argument("--output-format", choices=["nifti", "dicom-seg"], default="nifti",
                   help="nifti: <case>.nii.gz label maps (default); dicom-seg: a DICOM Segmentation <case>.dcm "
                        "referencing each DICOM input series (needs autounet[dicom])")

    p = add("postprocess", h.cmd_postprocess, "apply the chosen connected-component postprocessing")
    p.add_argument("-i", "--input", required=True)
    p.add_argument("-o", "--output", required=True)
    p.add_argument("-t", "--task", default=None)
    p.add_argument("-c", "--configuration", default=None)
    p.add_argument("--decision", default=None, help="postprocessing.json (default: the task's chosen one)")
    p.add_argument("-np", "--num-workers", type=int, default=0)

    p = add("evaluate", h.cmd_evaluate, "Dice/IoU (and optionally HD95, NSD) of predictions against references")
    p.add_argument("-ref", "--ref", required=True, help="folder of reference label maps")
    p.add_argument("-pred", "--pred", required=True, help="folder of predicted label maps")
    p.add_argument("-t", "--task", default=None, help="take label names from this task")
    p.add_argument("--labels", type=int, nargs="+", default=None, help="label values to evaluate")
    p.add_argument("--metrics", default="dice", help="comma list: dice,hd95,nsd:TOL_MM")
    p.add_argument("-np", "--num-workers", type=int, default=0)

    p = add("find_best_configuration", h.cmd_find_best,
            "evaluate cross-validation of every trained configuration (and pairs), choose the best",
            aliases=["find-best-configuration"])
    p.add_argument("task")
    p.add_argument("-c", "--configurations", nargs="+", default=None)
    p.add_argument("--no-ensembles", action="store_true")
    p.add_argument("-np", "--num-workers", type=int, default=0)

    p = add("compare", h.cmd_compare,
            "two runs' cross-validation Dice side by side, with the paired per-case difference and its spread")
    p.add_argument("run_a", metavar="RUN_A", help="run folder (results/<task>/<run>) or run name with -t")
    p.add_argument("run_b", metavar="RUN_B")
    p.add_argument("-t", "--task", default=None, help="the task, where the runs are given by name")

    p = add("ensemble", h.cmd_ensemble, "average saved probabilities of several prediction folders")
    p.add_argument("-i", "--input", nargs="+", required=True)
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--save-probabilities", action="store_true")

    p = add("demo", h.cmd_demo, "run the whole pipeline on the demo task (CPU, minutes) and write a report")
    p.add_argument("--2d", dest="two_d", action="store_true", help="use the 2D demo task")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default: a CPU-sized budget)")
    p.add_argument("--iters-per-epoch", type=int, default=None)
    p.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu", "mps"])
    p.add_argument("--workers", type=int, default=None)

    p = add("report", h.cmd_report, "write a self-contained HTML report of a task")
    p.add_argument("task")
    p.add_argument("-o", "--output", default=None, help="HTML file (default: <workspace>/results/<task>/report.html)")

    p = add("overlay", h.cmd_overlay, "draw an image with a label map outlined, for checking data")
    p.add_argument("-i", "--image", required=True)
    p.add_argument("-s", "--seg", required=True)
    p.add_argument("-o", "--output", required=True, help="PNG file")
    p.add_argument("--second", default=None, help="a second label map drawn beside the first")

    p = add("export_model", h.cmd_export_model, "write a task's trained model as a zip with checksums",
            aliases=["export-model"])
    p.add_argument("task")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--runs", nargs="+", default=None, help="run folders to include (default: all trained)")
    p.add_argument("-f", "--folds", nargs="+", default=None)
    p.add_argument("--checkpoint", choices=["final", "best"], default="final")

    p = add("export_onnx", h.cmd_export_onnx,
            "write a trained run as one ONNX file per fold plus inference.json, for `python -m "
            "autounet.onnx_runner` or any ONNX runtime (needs autounet[onnx])", aliases=["export-onnx"])
    p.add_argument("run", nargs="?", default=None,
                   help="run folder <workspace>/results/<task>/<run> (default: the model -t/-c choose, as predict)")
    p.add_argument("-o", "--output", required=True, help="folder for the ONNX files and inference.json")
    p.add_argument("-t", "--task", default=None)
    p.add_argument("-c", "--configuration", default=None)
    p.add_argument("-f", "--folds", nargs="+", default=None, help="folds to export (default: all trained)")
    p.add_argument("--checkpoint", choices=["final", "best"], default="final")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset version")

    p = add("install_model", h.cmd_install_model, "check and install a model exported with export_model",
            aliases=["install-model"])
    p.add_argument("archive")
    p.add_argument("--overwrite", action="store_true")

    p = add("import_nnunet", h.cmd_import_nnunet, "install a trained nnU-Net v2 model (results folder or "
            "exported zip) as an autounet run", aliases=["import-nnunet"])
    p.add_argument("path", help="<Trainer>__<Plans>__<configuration> folder, a DatasetXXX_Name folder of them, "
                                "or a zip from nnUNetv2_export_model_to_zip")
    p.add_argument("--checkpoint", choices=["final", "best"], default="final",
                   help="which nnU-Net checkpoint of each fold to import")
    p.add_argument("--overwrite", action="store_true", help="replace a run imported before")

    return parser


def command_reference() -> str:
    """Markdown of every command's --help, for the README (a test keeps them in sync)."""
    parser = build_parser()
    parts = ["```text", parser.format_help().rstrip(), "```"]
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))  # noqa: SLF001
    seen: set[int] = set()
    for name, sp in sub.choices.items():
        if id(sp) in seen:
            continue
        seen.add(id(sp))
        parts += ["", f"### autounet {name}", "", "```text", sp.format_help().rstrip(), "```"]
    return "\n".join(parts) + "\n"


def _configure_logging(verbose: bool) -> None:
    root = logging.getLogger()
    if not any(getattr(h, "_autounet", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler._autounet = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for noisy in ("matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(getattr(args, "verbose", False))
    try:
        return int(args.func(args) or 0)
    except AutounetError as exc:
        message = shorten_message(str(exc))
        print(f"error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
