#!/bin/bash
# The full miniature (`python mini.py`, every visible GPU) in device calls of at most 10 minutes:
#   bash experiments/mini_full.sh OUT_DIR [mini.py flags ...]
# Each call runs mini.py into $MINI_DIR (default /tmp/mini-full) for at most $LIMIT seconds
# (default 540), then stops it with SIGTERM (mini.py stops its jobs; finished stages and PPO
# checkpoints stay) and packs what exists into OUT_DIR: mini.log, results.md/json, checks.md/json,
# the figures and seed-mean CSVs, and one archive of every stage's log. Calling it again on the
# same machine resumes where the last call stopped (mini.py skips finished stages, ppo.py
# --resume continues from its last checkpoint); a fresh machine starts over.
# The study's table: $REF (default ref/llama_results.csv if present, else study:llama_results,
# which needs the network).
set -u
OUT=${1:-/tmp/mini-out}; shift || true
W=${MINI_DIR:-/tmp/mini-full}
LIMIT=${LIMIT:-540}
REF=${REF:-$([ -f ref/llama_results.csv ] && echo ref/llama_results.csv || echo study:llama_results)}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT" "$W"
T0=$(date +%s)
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null | sort | uniq -c
echo "call at $(date -u +%H:%M:%S), into $W, limit ${LIMIT}s" | tee -a "$W/calls.log"
timeout -s TERM -k 30 "$LIMIT" python3 mini.py --out "$W" --reference "$REF" "$@" >> "$W/mini.log" 2>&1
rc=$?
echo "mini.py exit $rc after $(( $(date +%s) - T0 ))s ($([ $rc = 124 ] && echo 'stopped at the limit: call again' || echo finished))" \
  | tee -a "$W/calls.log"
grep -E "finished, |Manipulation checks|checks (FAIL|pass)|mini done" "$W/mini.log" | tail -n 25
cp "$W/mini.log" "$W/calls.log" "$OUT/" 2>/dev/null
for f in results.md results.json checks.md checks.json; do [ -f "$W/$f" ] && cp "$W/$f" "$OUT/"; done
(cd "$W" && tar czf "$OUT/mini_files.tgz" --ignore-failed-read figures results base/*.json base/*.log \
   primed/*/sft.log runs/*/ppo.log runs/*/classify.log runs/*/ppo/metrics.jsonl runs/*/ppo/classify/steps.csv \
   data/priming/summary.json data/priming/behavior_means.json 2>/dev/null)
ls -la "$OUT"
exit 0
