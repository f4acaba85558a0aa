#!/usr/bin/env bash
# InterBERT pretraining as NPROC processes on this machine, through jax.distributed.
#
# Usage:
#   launch/local.sh NPROC [--dry_run] [python -m interbert_jax.main flags]
#   launch/local.sh 2 --config=configs/pretrain.py:tiny --workdir=workdirs/tiny_2proc
#
# The user-facing form of tests/test_multiprocess.py: each process is one "host" with
# DEVICES_PER_PROCESS CPU devices; they meet through a coordinator on 127.0.0.1 and run the
# CPU collectives over gloo, so the run takes the same path as a TPU pod or a GPU cluster
# (each process reads batch_size / NPROC rows, process 0 writes metrics.jsonl and
# config.json, every process writes its checkpoint shards). Process 0 logs to this
# terminal, process i > 0 to LOG_DIR/process_i.log. Ctrl-C / SIGTERM is passed to every
# process (each saves a checkpoint and exits 0); re-running the command resumes. If one
# process fails the others are stopped and the exit code is the failed one's.
#
# Variables: DEVICES_PER_PROCESS (default 1), PORT (coordinator port, default a free one),
# PYTHON (default python3), LOG_DIR (default ${TMPDIR:-/tmp}/interbert_local.<pid>),
# JAX_PLATFORMS (default cpu). --dry_run prints the NPROC commands instead.
set -euo pipefail

if (( BASH_VERSINFO[0] < 5 || (BASH_VERSINFO[0] == 5 && BASH_VERSINFO[1] < 1) )); then
  echo "launch/local.sh: needs bash >= 5.1 (wait -n -p); this is ${BASH_VERSION}" >&2
  exit 2
fi
if [[ $# -lt 1 || ! "$1" =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: launch/local.sh NPROC [--dry_run] [python -m interbert_jax.main flags]" >&2
  exit 2
fi
NPROC=$1
shift
DRY_RUN=0
FLAGS=()
for arg in "$@"; do
  if [[ "${arg}" == "--dry_run" ]]; then DRY_RUN=1; else FLAGS+=("${arg}"); fi
done

PYTHON=${PYTHON:-python3}
DEVICES=${DEVICES_PER_PROCESS:-1}
PORT=${PORT:-$("${PYTHON}" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
LOG_DIR=${LOG_DIR:-${TMPDIR:-/tmp}/interbert_local.$$}
XLA=${XLA_FLAGS:-}
[[ "${XLA}" == *xla_force_host_platform_device_count* ]] || \
  XLA="--xla_force_host_platform_device_count=${DEVICES} ${XLA}"

command_of() {   # the full command line of process $1
  printf '%s\0' env "JAX_PLATFORMS=${JAX_PLATFORMS:-cpu}" \
    "JAX_CPU_COLLECTIVES_IMPLEMENTATION=gloo" "JAX_COORDINATOR_ADDRESS=127.0.0.1:${PORT}" \
    "JAX_NUM_PROCESSES=${NPROC}" "JAX_PROCESS_ID=$1" "XLA_FLAGS=${XLA% }" \
    "${PYTHON}" -m interbert_jax.main --distributed=true ${FLAGS[@]+"${FLAGS[@]}"}
}

if (( DRY_RUN )); then
  for ((i = 0; i < NPROC; i++)); do
    mapfile -d '' cmd < <(command_of "${i}")
    printf '%q ' "${cmd[@]}"
    (( i == 0 )) && printf '&\n' || printf '> %q 2>&1 &\n' "${LOG_DIR}/process_${i}.log"
  done
  exit 0
fi

mkdir -p "${LOG_DIR}"
PIDS=()
for ((i = 0; i < NPROC; i++)); do
  mapfile -d '' cmd < <(command_of "${i}")
  if (( i == 0 )); then
    "${cmd[@]}" &
  else
    "${cmd[@]}" > "${LOG_DIR}/process_${i}.log" 2>&1 &
    echo "local.sh: process ${i} of ${NPROC} logs to ${LOG_DIR}/process_${i}.log" >&2
  fi
  PIDS+=($!)
done
SIGNALLED=0
trap 'SIGNALLED=1; kill -TERM "${PIDS[@]}" 2>/dev/null || true' INT TERM

# Reap the processes as they end (wait -n -p: bash >= 5.1), naming the first that fails.
declare -A INDEX
for i in "${!PIDS[@]}"; do INDEX[${PIDS[$i]}]=$i; done
RUNNING=("${PIDS[@]}")
STATUS=0
while (( ${#RUNNING[@]} > 0 )); do
  rc=0
  done_pid=
  wait -n -p done_pid "${RUNNING[@]}" || rc=$?
  if [[ -z "${done_pid}" ]]; then
    (( rc > 128 )) && continue      # wait itself was interrupted by the trap
    echo "local.sh: wait failed (${rc}); stopping the processes" >&2
    kill -TERM "${RUNNING[@]}" 2>/dev/null || true
    exit 1
  fi
  left=()
  for p in "${RUNNING[@]}"; do [[ "${p}" == "${done_pid}" ]] || left+=("${p}"); done
  RUNNING=(${left[@]+"${left[@]}"})
  i=${INDEX[${done_pid}]}
  if (( rc != 0 && STATUS == 0 )); then
    STATUS=${rc}
    where="this terminal"
    (( i > 0 )) && where="${LOG_DIR}/process_${i}.log"
    echo "local.sh: process ${i} of ${NPROC} (pid ${done_pid}) exited with ${rc}" \
      "(its log: ${where}); stopping the others" >&2
    (( ${#RUNNING[@]} > 0 )) && kill -TERM "${RUNNING[@]}" 2>/dev/null || true
  fi
done
exit "${STATUS}"
