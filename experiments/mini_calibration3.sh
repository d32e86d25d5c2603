#!/bin/bash
# Third calibration of the miniature (docs/mini/calibration3.md): which priming keeps the
# manipulation checks passing? Candidates A-D share one base (made by A, then copied), each runs
# `mini.py --checks-only --seeds 0` (priming + every condition's validation before PPO), side by
# side on one GPU. Every candidate uses the step-by-step closing check of symbolic.py.
#   bash experiments/mini_calibration3.sh OUT_DIR
set -u
OUT=${1:-${OUT:-/tmp/cal3}}
W=/tmp/cal3w
export PYTHONUNBUFFERED=1
mkdir -p "$OUT" "$W"
T0=$(date +%s)
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
declare -A ARGS=(
  [A]=""                                    # today's priming: 1,000 traces, 300 x 32, lr 5e-4 (~10 epochs)
  [B]="--sft-lr 2e-4"                       # the same at 2/5 of the learning rate
  [C]="--priming-n 2000"                    # twice the traces (~5 epochs)
  [D]="--priming-n 2000 --sft-lr 2e-4"      # both
)
run() { python3 mini.py --out "$W/$1" --checks-only --seeds 0 --jobs 5 ${ARGS[$1]} > "$OUT/cal_$1.log" 2>&1; }
run A &
PIDS=($!)
# the others start once A's base and its arithmetic check exist (copied: the same base for all)
while [ ! -f "$W/A/base/arithmetic.json" ]; do
  sleep 3
  [ $(( $(date +%s) - T0 )) -gt 400 ] && { echo "no base after 400 s"; break; }
done
echo "base ready at $(( $(date +%s) - T0 ))s"
for c in B C D; do
  mkdir -p "$W/$c/data"
  cp -r "$W/A/base" "$W/$c/"
  cp -r "$W/A/data/countdown" "$W/A/data/pretrain.jsonl" "$W/$c/data/"
  run $c &
  PIDS+=($!)
done
while [ $(( $(date +%s) - T0 )) -lt 560 ]; do
  alive=0
  for p in "${PIDS[@]}"; do kill -0 $p 2>/dev/null && alive=1; done
  [ $alive = 0 ] && break
  sleep 5
done
echo "total $(( $(date +%s) - T0 ))s"
for c in A B C D; do
  cp "$W/$c/checks.md" "$OUT/checks_$c.md" 2>/dev/null || echo "$c: no checks.md"
  cp "$W/$c/checks.json" "$OUT/checks_$c.json" 2>/dev/null
  (cd "$W/$c" && tar czf "$OUT/cal_$c.tgz" --ignore-failed-read base/arithmetic.json base/sft.log \
     primed/*/sft.log checks/*/ppo/val/step_000000.jsonl data/priming/summary.json 2>/dev/null)
done
