#!/bin/bash
# Train the five folds of a configuration side by side on a Slurm cluster: one array task per fold,
# each on one GPU. The workspace must be on a file system every node sees (set AUTOUNET_HOME, or
# pass --workspace DIR among the extra options).
#
#   sbatch scripts/slurm_folds.sh Task01 3d_fullres            # folds 0-4
#   sbatch --array=0,3 scripts/slurm_folds.sh Task01 3d_fullres --epochs 250
#
# Extra options go to `autounet train` unchanged. Each task's output goes to
# autounet-<job>_<fold>.out; a requeued task (preemption, node failure) continues its fold with
# --resume. When every fold has finished: `autounet find_best_configuration <task>`.
#
# Adjust the resources to your cluster (some sites want --gres=gpu:1 instead of --gpus=1).
#SBATCH --job-name=autounet-folds
#SBATCH --array=0-4
#SBATCH --gpus=1
#SBATCH --cpus-per-task=8
#SBATCH --mem=64G
#SBATCH --time=72:00:00
#SBATCH --requeue
#SBATCH --output=autounet-%A_%a.out

set -euo pipefail

if [[ $# -lt 1 || -z "${SLURM_ARRAY_TASK_ID:-}" ]]; then
    echo "usage: sbatch scripts/slurm_folds.sh TASK [CONFIGURATION] [train options...]" >&2
    exit 2
fi
TASK=$1
CONFIG=${2:-3d_fullres}
shift $(( $# >= 2 ? 2 : 1 ))

RESUME=()
if [[ "${SLURM_RESTART_COUNT:-0}" -gt 0 ]]; then
    RESUME=(--resume)
fi

echo "fold ${SLURM_ARRAY_TASK_ID} of ${TASK} ${CONFIG} on $(hostname), GPU ${CUDA_VISIBLE_DEVICES:-none}"
exec autounet train "$CONFIG" fold "$SLURM_ARRAY_TASK_ID" -t "$TASK" ${RESUME[@]+"${RESUME[@]}"} "$@"
