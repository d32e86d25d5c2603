#!/bin/bash
# Third calibration of the miniature (docs/mini/calibration3.md): which priming keeps the
# manipulation checks passing? Candidates share one base (made by the first, then copied), each runs
# `mini.py --checks-only --seeds 0` (priming + every condition's validation before PPO), side by
# side on one GPU. Every candidate uses the step-by-step closing check of symbolic.py.
#   bash experiments/mini_calibration3.sh OUT_DIR [NAME=FLAGS ...]   (none: round 1's A-D)
#   bash experiments/mini_calibration3.sh /tmp/cal E="--priming-n 2000 --sft-steps 600" F="--sft-lr 1e-3"
set -u
OUT=${1:-/tmp/cal3}
W=/tmp/cal3w
export PYTHONUNBUFFERED=1
mkdir -p "$OUT" "$W"
T0=$(date +%s)
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
# candidates: NAME=FLAGS arguments after OUT_DIR (the first makes the base); the defaults are round 1's
declare -A ARGS
NAMES=()
shift || true
[ $# = 0 ] && set -- "A=" "B=--sft-lr 2e-4" "C=--priming-n 2000" "D=--priming-n 2000 --sft-lr 2e-4"
for kv in "$@"; do NAMES+=("${kv%%=*}"); ARGS[${kv%%=*}]="${kv#*=}"; done
echo "candidates: $(for n in "${NAMES[@]}"; do printf '%s=[%s] ' "$n" "${ARGS[$n]}"; done)"
run() { python3 mini.py --out "$W/$1" --checks-only --seeds 0 --jobs 5 ${ARGS[$1]} > "$OUT/cal_$1.log" 2>&1; }
FIRST=${NAMES[0]}
run $FIRST &
PIDS=($!)
# the others start once the first's base and its arithmetic check exist (copied: the same base for all)
while [ ! -f "$W/$FIRST/base/arithmetic.json" ]; do
  sleep 3
  [ $(( $(date +%s) - T0 )) -gt 400 ] && { echo "no base after 400 s"; break; }
done
echo "base ready at $(( $(date +%s) - T0 ))s"
for c in "${NAMES[@]:1}"; do
  mkdir -p "$W/$c/data"
  cp -r "$W/$FIRST/base" "$W/$c/"
  cp "$W/$FIRST/data/pretrain.jsonl" "$W/$c/data/"   # the tasks are remade (--n-train may differ)
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
# one archive per candidate (the device returns few files): its log, checks, priming logs, samples
for c in "${NAMES[@]}"; do
  cp "$OUT/cal_$c.log" "$W/$c/cal.log"
  (cd "$W/$c" && tar czf "$OUT/cal_$c.tgz" --ignore-failed-read cal.log checks.md checks.json base/arithmetic.json \
     base/sft.log primed/*/sft.log checks/*/ppo/val/step_000000.jsonl data/priming/summary.json 2>/dev/null)
  rm "$OUT/cal_$c.log"
  grep -E "of [0-9]+ checks|checks pass" "$W/$c/checks.md" | sed "s/^/$c: /" | cut -c1-400
done
