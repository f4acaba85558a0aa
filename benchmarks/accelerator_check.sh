#!/usr/bin/env bash
# The first thing to run on a new GPU / TPU host (or any machine): devices, the bf16 `base`
# train step with MFU against the chip's datasheet peak, the input pipeline at the same
# batch, a kill -9 + resume with equal losses, retrieval scoring. One JSON line on stdout
# (ok: true | false; exit 0 when every part passed); under 8 minutes on one accelerator, a
# few minutes on a 2-core CPU (tiny model, fewer steps). benchmarks/accelerator_check.py
# says what each part runs.
#
#   bash benchmarks/accelerator_check.sh            # PYTHON=.venv/bin/python by default
#   bash benchmarks/accelerator_check.sh --small    # the CPU form, also on an accelerator
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$([[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python3)}
exec "${PYTHON}" benchmarks/accelerator_check.py "$@"
