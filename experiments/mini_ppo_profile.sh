#!/bin/bash
# Where a miniature PPO step spends its time on one GPU (mini.py's PPO settings, a random-init
# base: every response runs to the 480-token budget, the worst case). Three cases: one process
# alone, nine side by side (mini.py's --jobs on a GPU), one alone with micro-batches of 128.
#   bash experiments/mini_ppo_profile.sh OUT_DIR
set -u
OUT=${1:-/tmp/prof}
W=/tmp/profw
export PYTHONUNBUFFERED=1
mkdir -p "$OUT" "$W"
T0=$(date +%s)
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 mini.py --make-base --out "$W" --base-docs 10 > /dev/null
python3 countdown.py --out "$W/cd" --n-train 7300 --n-test 256 --sizes 3 --num-min 1 --num-max 24 \
  --target-min 10 --target-max 25 > /dev/null 2>&1
ppo() {  # $1: out name, then extra flags
  local name=$1; shift
  python3 ppo.py --model "$W/base/init" --data "$W/cd" --out "$W/$name" --condition all_strategies --steps 3 \
    --prompts-per-step 64 --samples-per-prompt 4 --max-response-len 480 --actor-lr 2e-5 --critic-lr 1e-4 \
    --mini-batch-prompts 32 --micro-batch 32 --eval-every 0 --save-every 0 --no-save-final --no-grad-ckpt \
    --device cuda --dtype bf16 --overwrite "$@" > "$W/$name.log" 2>&1
}
t=$(date +%s); timeout 80 bash -c "$(declare -f ppo); W=$W; ppo one"; echo "one alone: $(( $(date +%s) - t ))s"
t=$(date +%s)
for i in 1 2 3 4 5 6 7 8 9; do timeout 110 bash -c "$(declare -f ppo); W=$W; ppo nine$i --seed $i" & done; wait
echo "nine side by side: $(( $(date +%s) - t ))s"
t=$(date +%s); timeout 50 bash -c "$(declare -f ppo); W=$W; ppo micro128 --micro-batch 128"; echo "micro 128 alone: $(( $(date +%s) - t ))s"
python3 - "$W" <<'EOF'
import json, sys, glob, os
w = sys.argv[1]
for name in ["one", "nine1", "nine5", "micro128"]:
    path = os.path.join(w, name, "metrics.jsonl")
    if not os.path.exists(path):
        print(name, "no metrics:", open(os.path.join(w, name + ".log")).read()[-1500:]); continue
    for m in map(json.loads, open(path)):
        t = {k[5:]: round(v, 2) for k, v in m.items() if k.startswith("time/")}
        print(name, "step", m.get("step"), "len", round(m.get("response_length/mean", 0)), t)
EOF
tar czf "$OUT/profile.tgz" -C "$W" one.log nine1.log micro128.log one/metrics.jsonl nine1/metrics.jsonl \
  nine5/metrics.jsonl micro128/metrics.jsonl 2>/dev/null
echo "total $(( $(date +%s) - T0 ))s"
