#!/bin/bash
# Speed of the miniature's PPO step under two compute settings, side by side on one 4-GPU machine
# (one call, ~8 minutes): the same primed models, 5 conditions x 3 seeds per side, ~7-8 runs per
# GPU as in the full run.
#   bash experiments/mini_speed_probe.sh OUT_DIR                       # --ppo-micro 32 vs 128
#   A="--ppo-micro 32" B="--ppo-micro 64" STEPS=40 bash experiments/mini_speed_probe.sh OUT_DIR
# Side A (GPUs 0-1, folder /tmp/spA) makes the base, the priming and the checks, then runs PPO.
# Side B (GPUs 2-3, /tmp/spB) starts from a copy of A's base and priming, with its own flags.
# The micro-batch changes only the summation order of the token-mean loss (ppo.py
# minibatch_step), not what is computed. Each side's per-run medians of every phase go to
# OUT_DIR/times_{A,B}.csv; its mini.log goes beside them.
set -u
OUT=${1:?usage: bash experiments/mini_speed_probe.sh OUT_DIR}; mkdir -p "$OUT"
A=${A:---ppo-micro 32}; B=${B:---ppo-micro 128}; STEPS=${STEPS:-40}; LIM=${LIM:-560}
T0=$(date +%s); export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name --format=csv,noheader | sort | uniq -c | tee "$OUT/gpu.txt"
REF=${REF:-$([ -f ref/llama_results.csv ] && echo ref/llama_results.csv || echo study:llama_results)}
common="--conditions base all_strategies only_backtracking backtracking_verification empty_cot --seeds 0 1 2
        --jobs 8 --ppo-steps $STEPS --eval-every $STEPS --reference $REF"
python3 mini.py --out /tmp/spA --gpus 0 1 $common $A > "$OUT/mini_A.log" 2>&1 &
while [ ! -d /tmp/spA/runs ]; do sleep 2; [ $(( $(date +%s) - T0 )) -gt 450 ] && break; done
echo "A's PPO began at $(( $(date +%s) - T0 ))s" | tee "$OUT/times.txt"
mkdir -p /tmp/spB && (cd /tmp/spA && tar cf - --exclude=runs --exclude=mini_settings.json --exclude=mini.log .) \
  | (cd /tmp/spB && tar xf -)
python3 mini.py --out /tmp/spB --gpus 2 3 $common $B > "$OUT/mini_B.log" 2>&1 &
while [ $(( $(date +%s) - T0 )) -lt "$LIM" ] && pgrep -f "mini.py --out /tmp/sp" > /dev/null; do sleep 5; done
echo "stopped at $(( $(date +%s) - T0 ))s" | tee -a "$OUT/times.txt"
pkill -TERM -f "mini.py --out /tmp/sp"; sleep 3
for x in A B; do python3 - "$x" "$OUT" <<'PY'
import csv, glob, json, statistics, sys
x, out = sys.argv[1:]
ph = ["generate", "old_logp", "ref_logp", "values", "actor_update", "critic_update", "step"]
with open(f"{out}/times_{x}.csv", "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["run", "steps"] + ph)
    for p in sorted(glob.glob(f"/tmp/sp{x}/runs/*/ppo/metrics.jsonl")):
        rows = [r for r in map(json.loads, open(p)) if "time/step" in r and r["step"] >= 3]
        if rows:
            w.writerow([p.split("/")[-3], rows[-1]["step"]]
                       + [round(statistics.median(r.get(f"time/{k}", 0) for r in rows), 3) for k in ph])
PY
done
head -50 "$OUT"/times_*.csv
