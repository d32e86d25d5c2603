#!/bin/bash
# PPO actor learning-rate probe for the miniature (docs/mini/lr_probe/), one GPU, one call:
#   LIM=560 bash experiments/mini_lr_probe.sh OUT_DIR
# all_strategies seed 0, 250 steps, --ppo-actor-lr 1e-4 (folder /tmp/pA: base, priming, checks,
# PPO) and 3e-4 (/tmp/pB: a copy of pA's base and priming, its own PPO) side by side; each
# run's metrics.jsonl is copied to OUT_DIR every 15 s, and both stop at LIM seconds.
set -u
OUT=${1:?usage: bash experiments/mini_lr_probe.sh OUT_DIR}; mkdir -p "$OUT"; A=/tmp/pA; B=/tmp/pB; T0=$(date +%s); export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name --format=csv,noheader > $OUT/gpu.txt
REF=${REF:-$([ -f ref/llama_results.csv ] && echo ref/llama_results.csv || echo study:llama_results)}
common="--conditions all_strategies --seeds 0 --ppo-steps 250 --reference $REF"
python3 mini.py --out $A $common --ppo-actor-lr 1e-4 > $OUT/mini_A.log 2>&1 &
while [ ! -d $A/runs ]; do sleep 2; [ $(( $(date +%s) - T0 )) -gt 450 ] && break; done
echo "A's PPO started at $(( $(date +%s) - T0 ))s" | tee $OUT/times.txt
mkdir -p $B && (cd $A && tar cf - --exclude=runs --exclude=mini_settings.json --exclude=mini.log .) | (cd $B && tar xf -)
python3 mini.py --out $B $common --ppo-actor-lr 3e-4 > $OUT/mini_B.log 2>&1 &
save() { for x in A B; do cp /tmp/p$x/runs/all_strategies-s0/ppo/metrics.jsonl $OUT/metrics_$x.jsonl 2>/dev/null; done; }
while [ $(( $(date +%s) - T0 )) -lt ${LIM:-540} ]; do sleep 15; save; done
echo "stopped at $(( $(date +%s) - T0 ))s" | tee -a $OUT/times.txt
save
cp $A/checks.md $OUT/ 2>/dev/null
pkill -TERM -f mini.py; sleep 3
