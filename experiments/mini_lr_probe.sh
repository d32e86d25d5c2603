#!/bin/bash
# Two PPO settings for the miniature side by side on one GPU, one call (docs/mini/lr_probe/):
#   LIM=560 bash experiments/mini_lr_probe.sh OUT_DIR                  # actor lr 1e-4 vs 3e-4
#   A="--ppo-prompts 256" B="--ppo-prompts 256 --ppo-actor-lr 4e-5" STEPS=150 bash experiments/mini_lr_probe.sh OUT_DIR
# $COND (default all_strategies) seed 0, $STEPS PPO steps (default 250): side A (folder /tmp/pA:
# base, priming, checks, PPO) with flags $A (default --ppo-actor-lr 1e-4), side B (/tmp/pB: a
# copy of A's base and priming, its own PPO) with $B (default --ppo-actor-lr 3e-4). Each run's
# metrics.jsonl is copied to OUT_DIR every 15 s, and both stop at LIM seconds. B reuses A's base
# and priming: give it PPO flags only.
set -u
OUT=${1:?usage: bash experiments/mini_lr_probe.sh OUT_DIR}; mkdir -p "$OUT"; DA=/tmp/pA; DB=/tmp/pB; T0=$(date +%s); export PYTHONUNBUFFERED=1
A=${A:---ppo-actor-lr 1e-4}; B=${B:---ppo-actor-lr 3e-4}; COND=${COND:-all_strategies}
nvidia-smi --query-gpu=name --format=csv,noheader > $OUT/gpu.txt
REF=${REF:-$([ -f ref/llama_results.csv ] && echo ref/llama_results.csv || echo study:llama_results)}
common="--conditions $COND --seeds 0 --ppo-steps ${STEPS:-250} --reference $REF"
echo "A: $A | B: $B | $common" > $OUT/flags.txt
python3 mini.py --out $DA $common $A > $OUT/mini_A.log 2>&1 &
while [ ! -d $DA/runs ]; do sleep 2; [ $(( $(date +%s) - T0 )) -gt 450 ] && break; done
echo "A's PPO started at $(( $(date +%s) - T0 ))s" | tee $OUT/times.txt
mkdir -p $DB && (cd $DA && tar cf - --exclude=runs --exclude=mini_settings.json --exclude=mini.log .) | (cd $DB && tar xf -)
python3 mini.py --out $DB $common $B > $OUT/mini_B.log 2>&1 &
save() { for x in A B; do cp /tmp/p$x/runs/$COND-s0/ppo/metrics.jsonl $OUT/metrics_$x.jsonl 2>/dev/null; done; }
while [ $(( $(date +%s) - T0 )) -lt ${LIM:-540} ]; do sleep 15; save; done
echo "stopped at $(( $(date +%s) - T0 ))s" | tee -a $OUT/times.txt
save
cp $DA/checks.md $OUT/ 2>/dev/null
pkill -TERM -f mini.py; sleep 3
