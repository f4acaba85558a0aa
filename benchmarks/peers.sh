#!/usr/bin/env bash
# Our training step and the two PyTorch peers, back to back on this machine, then one JSON
# summary line with the ratios (ours / peer, examples per second). The machine is shared and
# noisy: only ratios from one run are meaningful, so rerun it and quote each run's ratios.
#
#   benchmarks/peers.sh                          # base shapes: batch 8, text 36, 36+1 regions
#   ROUNDS=2 benchmarks/peers.sh                 # alternate ours/ref/hf twice, report medians
#   OURS_ARGS="--config.model.dtype=bfloat16" benchmarks/peers.sh
#
# Environment:
#   PYTHON            our venv's python            (default .venv/bin/python of this repo)
#   PEER_PYTHON       the peers' torch venv python  (required: a venv with torch + transformers)
#   INTERBERT_REF_DIR unpacked black4321/InterBERT (required; never committed)
#   PEERS_DIR         the peer scripts              (default ../shared/peers beside the repo)
#   BATCH, STEPS      batch size and timed steps per run (default 8 and 5)
#   ROUNDS            how many times to run the three back to back (default 1)
#   OURS_ARGS         extra flags for benchmarks/train_step.py (e.g. --config.KEY=VALUE)
#   OUT               directory for the raw JSON lines (default: a temp dir)
set -euo pipefail

if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
  sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'
  exit 0
fi

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
: "${PEER_PYTHON:?set PEER_PYTHON to the python of a venv with torch and transformers}"
: "${INTERBERT_REF_DIR:?set INTERBERT_REF_DIR to an unpacked black4321/InterBERT tree}"
export INTERBERT_REF_DIR
PEERS_DIR="${PEERS_DIR:-$ROOT/../shared/peers}"
BATCH="${BATCH:-8}"
STEPS="${STEPS:-5}"
ROUNDS="${ROUNDS:-1}"
OURS_ARGS="${OURS_ARGS:-}"
OUT="${OUT:-$(mktemp -d)}"
mkdir -p "$OUT"

for f in "$PYTHON" "$PEER_PYTHON"; do
  [[ -x "$f" ]] || { echo "peers.sh: $f not found (see $PEERS_DIR/README.md)" >&2; exit 2; }
done
[[ -d "$INTERBERT_REF_DIR/bertmodel" ]] || {
  echo "peers.sh: INTERBERT_REF_DIR=$INTERBERT_REF_DIR has no bertmodel/ (unpack black4321/InterBERT)" >&2
  exit 2; }

last_json() { grep '^{' "$1" | tail -n 1; }

for round in $(seq 1 "$ROUNDS"); do
  echo "round $round/$ROUNDS: load $(cut -d' ' -f1-3 /proc/loadavg)" >&2
  # shellcheck disable=SC2086
  JAX_PLATFORMS=cpu "$PYTHON" "$ROOT/benchmarks/train_step.py" \
      --config="$ROOT/configs/pretrain.py:base" --batch="$BATCH" --steps="$STEPS" $OURS_ARGS \
      > "$OUT/ours_$round.log" 2>&1 || { cat "$OUT/ours_$round.log" >&2; exit 1; }
  last_json "$OUT/ours_$round.log" | tee -a "$OUT/ours.jsonl" >&2
  "$PEER_PYTHON" "$PEERS_DIR/reference_interbert_step.py" --batch "$BATCH" --steps "$STEPS" \
      > "$OUT/ref_$round.log" 2>&1 || { cat "$OUT/ref_$round.log" >&2; exit 1; }
  last_json "$OUT/ref_$round.log" | tee -a "$OUT/ref.jsonl" >&2
  "$PEER_PYTHON" "$PEERS_DIR/hf_visualbert_step.py" --size base --batch "$BATCH" \
      --text-len 36 --regions 36 --steps "$STEPS" \
      > "$OUT/hf_$round.log" 2>&1 || { cat "$OUT/hf_$round.log" >&2; exit 1; }
  last_json "$OUT/hf_$round.log" | tee -a "$OUT/hf.jsonl" >&2
done

"$PYTHON" - "$OUT" <<'EOF'
import json, os, statistics, sys
out = sys.argv[1]
load = lambda name: [json.loads(l) for l in open(os.path.join(out, name)) if l.strip()]
ours, ref, hf = load("ours.jsonl"), load("ref.jsonl"), load("hf.jsonl")
eps = lambda rows: [r["examples_per_s"] for r in rows]
per_round = [dict(ours=o["examples_per_s"], reference=r["examples_per_s"],
                  hf_visualbert=h["examples_per_s"],
                  vs_reference=round(o["examples_per_s"] / r["examples_per_s"], 2),
                  vs_hf_visualbert=round(o["examples_per_s"] / h["examples_per_s"], 2),
                  loadavg=o.get("loadavg_before"))
             for o, r, h in zip(ours, ref, hf)]
med = lambda xs: round(statistics.median(xs), 3)
print(json.dumps(dict(
    batch=ours[0]["batch"], dtype=ours[0]["dtype"], msm_positions=ours[0]["msm_positions"],
    ours_examples_per_s=med(eps(ours)), reference_examples_per_s=med(eps(ref)),
    hf_visualbert_examples_per_s=med(eps(hf)),
    ratio_vs_reference=med([p["vs_reference"] for p in per_round]),
    ratio_vs_hf_visualbert=med([p["vs_hf_visualbert"] for p in per_round]),
    ours_mfu=med([o["mfu"] for o in ours]), ours_peak_gflops=med([o["peak_gflops"] for o in ours]),
    rounds=per_round, raw_dir=out)))
EOF
