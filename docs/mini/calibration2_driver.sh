#!/bin/bash
# Calibration of the miniature: base pretraining + priming of all eight conditions + the checks
# (PPO's step-0 validation; each PPO run is stopped once it has written it), two candidates side by side on one GPU.
# (Run as `--set ppo_steps=1 base_docs=100000 ...`; written here with the flags that replaced --set.)
export PYTHONUNBUFFERED=1
T0=$(date +%s)
BIG='{"hidden_size":512,"intermediate_size":1408,"num_hidden_layers":8,"num_attention_heads":8,"num_key_value_heads":4}'
CONDS="base all_strategies only_backtracking backtracking_verification backtracking_subgoal backtracking_backward empty_cot dots no_positive"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
declare -A PID DONE
for c in r0 r5; do
  r=0; [ $c = r5 ] && r=0.5
  python3 mini.py --out /tmp/cal-$c --seeds 0 --ppo-steps 1 --base-docs 100000 --base-size "$BIG" --base-restate $r > $OUT/cal_$c.log 2>&1 &
  PID[$c]=$!
done
while true; do
  now=$(( $(date +%s) - T0 ))
  for c in r0 r5; do
    [ -n "${DONE[$c]}" ] && continue
    n=0
    for k in $CONDS; do
      f=/tmp/cal-$c/runs/$k-s0/ppo/val/step_000000.jsonl
      if [ -f $f ]; then
        n=$((n+1))
        for p in $(ps -eo pid=,args= | awk -v o="/tmp/cal-$c/runs/$k-s0/ppo" '/ppo\.py/ && index($0, o) {print $1}'); do kill -TERM $p 2>/dev/null; done
      fi
    done
    if [ $n = 9 ]; then
      DONE[$c]=$now; echo "$c: all step-0 validations at ${now}s"
      r=0; [ $c = r5 ] && r=0.5
      python3 -c "import mini; a, s = mini.parse_args(['--out', '/tmp/cal-$c', '--seeds', '0', '--base-docs', '100000', '--base-size', '$BIG', '--base-restate', '$r']); print(mini.run_checks(s, mini.paths(s)))" > $OUT/checks_$c.md 2>&1
      kill -TERM ${PID[$c]}
    fi
  done
  if [ -n "${DONE[r0]}" ] && [ -n "${DONE[r5]}" ]; then break; fi
  if [ $now -gt 435 ]; then echo "deadline at ${now}s"; break; fi
  if [ $((now % 30)) -lt 2 ]; then echo "[$now s] $(nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader)"; fi
  sleep 2
done
sleep 2
for c in r0 r5; do
  d=/tmp/cal-$c
  (cd $d && tar czf $OUT/cal_$c.tgz --ignore-failed-read checks.md checks.json base/arithmetic.json base/base.json base/sft.log base/arithmetic.log \
     primed/*/sft.log runs/*/ppo/val/step_000000.jsonl runs/*/ppo.log data/priming/behavior_means.json 2>/dev/null)
done
ls -la $OUT
echo "total ${now}s"
