#!/bin/bash
# The full miniature (`python mini.py`, every visible GPU) on a lent machine, watched by calls of at
# most 10 minutes:
#   bash experiments/mini_full.sh OUT_DIR [mini.py flags ...]
#   DEADLINE=1500 bash experiments/mini_full.sh OUT_DIR --ppo-steps 100   # PPO's length set by speed
# The first call on a machine starts mini.py into $MINI_DIR (default /tmp/mini-full) in a process
# session of its own (setsid), so it outlives the call and runs on until it ends or the machine goes
# back. Every call, the first too, waits for it up to $LIMIT seconds (default 560), then packs what
# exists into OUT_DIR: mini.log, results.md/json, checks.md/json, the figures and seed-mean CSVs,
# and one archive of every stage's log. Call again on the same machine (before it goes back idle)
# to keep watching; a fresh machine starts over. Where runs must stop early, mini.py resumes
# (finished stages are skipped, ppo.py --resume continues from its last checkpoint).
# DEADLINE (seconds after the first call began) sets PPO's length by measured speed alone, never by
# any result: from the moment every run is past step 5 (all priming done), the driver times each
# run over its next $PROBE - 5 steps (default PROBE 30: one validation included) and restarts
# mini.py with the largest --ppo-steps (a multiple of 25, more than the run's own) whose runs end
# $TAIL seconds (default 150, for the behavior counts and the report) before the deadline; each
# run continues from its last checkpoint (mini.py: a larger --ppo-steps extends every run). It
# needs every run side by side (job slots >= runs); otherwise the length stays as asked.
# The study's table: $REF (default ref/llama_results.csv if present, else study:llama_results,
# which needs the network).
set -u
W=${MINI_DIR:-/tmp/mini-full}

driver() {   # the background job: mini.py, restarted once with PPO's length by speed if DEADLINE is set
  local t0 pid n
  t0=$(cat "$W/t0")
  python3 mini.py --out "$W" --reference "$REF" "$@" >> "$W/mini.log" 2>&1 &
  pid=$!
  if [ -n "${DEADLINE:-}" ]; then
    n=$(python3 - "$W" "$t0" "$DEADLINE" "${PROBE:-30}" "${TAIL:-150}" "$pid" <<'PY'
import glob, json, os, re, sys, time
w, t0, deadline, probe, tail, pid = sys.argv[1], *map(float, sys.argv[2:6]), int(sys.argv[6])
if probe <= 5:
    sys.exit("mini_full.sh: PROBE must be > 5 (the timing starts once every run is past step 5)")
def steps():   # each run's last logged step
    out = {}
    for p in glob.glob(f"{w}/runs/*/ppo/metrics.jsonl"):
        with open(p) as f:
            done = [json.loads(x)["step"] for x in f if x.strip().endswith("}")]
        out[p] = done[-1] if done else -1
    return out
n_runs, asked, t5, at5 = None, None, None, None
while True:
    try:
        os.kill(pid, 0)
    except OSError:
        sys.exit(0)                                  # mini.py ended: nothing to restart
    if n_runs is None and os.path.exists(f"{w}/mini.log"):
        m = re.search(r"mini: (\d+) conditions x (\d+) seeds", open(f"{w}/mini.log").read())
        n_runs = m and int(m[1]) * int(m[2])
    if asked is None and os.path.exists(f"{w}/mini_settings.json"):   # the run's own --ppo-steps
        asked = json.load(open(f"{w}/mini_settings.json"))["ppo_steps"]
    now, cur = time.time(), steps()
    if not (n_runs and asked and len(cur) == n_runs and min(cur.values()) >= 5):
        time.sleep(1)
        continue
    if t5 is None:       # every run is in PPO from here on: no priming shares the GPUs any more
        t5, at5 = now, cur
    if all(cur[p] - at5[p] >= probe - 5 for p in cur):
        left = t0 + deadline - tail - now - 60       # 60 s: the restart and each run's reload
        rate = {p: (now - t5) / (cur[p] - at5[p]) for p in cur}
        n = max(asked, int(min(cur[p] + left / (1.1 * rate[p]) for p in cur) // 25 * 25))
        print(f"slowest run: {max(rate.values()):.2f} s a step over the last {now - t5:.0f} s (wall clock); "
              f"{left:.0f} s left for PPO -> --ppo-steps {n}", file=sys.stderr)
        print(n if n > asked else "")
        sys.exit(0)
    time.sleep(1)
PY
    )
    if [ -n "$n" ]; then
      echo "PPO's length by speed: --ppo-steps $n ($(( $(date +%s) - t0 ))s)" | tee -a "$W/calls.log" >> "$W/mini.log"
      kill -TERM "$pid"; wait "$pid"
      python3 mini.py --out "$W" --reference "$REF" "$@" --ppo-steps "$n" >> "$W/mini.log" 2>&1 &
      pid=$!
    fi
  fi
  wait "$pid"
  echo $? > "$W/driver.rc"
}

if [ "${1:-}" = "--driver" ]; then shift; driver "$@"; exit; fi
OUT=${1:-/tmp/mini-out}; shift || true
LIMIT=${LIMIT:-560}
export REF=${REF:-$([ -f ref/llama_results.csv ] && echo ref/llama_results.csv || echo study:llama_results)}
export PYTHONUNBUFFERED=1 MINI_DIR="$W"
mkdir -p "$OUT" "$W"
T0=$(date +%s)
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null | sort | uniq -c
if [ ! -f "$W/t0" ]; then
  echo "$T0" > "$W/t0"
  echo "started at $(date -u +%H:%M:%S) into $W: mini.py $* ${DEADLINE:+(DEADLINE ${DEADLINE}s)}" | tee -a "$W/calls.log"
  setsid nohup bash "$0" --driver "$@" > "$W/driver.log" 2>&1 < /dev/null &
else
  echo "call at $(date -u +%H:%M:%S): watching the run begun $(( T0 - $(cat "$W/t0") ))s ago" | tee -a "$W/calls.log"
fi
while [ ! -f "$W/driver.rc" ] && [ $(( $(date +%s) - T0 )) -lt "$LIMIT" ]; do sleep 5; done
if [ -f "$W/driver.rc" ]; then
  echo "mini.py exit $(cat "$W/driver.rc") after $(( $(date +%s) - $(cat "$W/t0") ))s" | tee -a "$W/calls.log"
else
  echo "still running after $(( $(date +%s) - $(cat "$W/t0") ))s: call again" | tee -a "$W/calls.log"
fi
grep -E "finished, |Manipulation checks|checks (FAIL|pass)|mini done|length by speed" "$W/mini.log" | tail -n 25
tail -n 3 "$W/driver.log"
cp "$W/mini.log" "$W/calls.log" "$OUT/" 2>/dev/null
for f in results.md results.json checks.md checks.json; do [ -f "$W/$f" ] && cp "$W/$f" "$OUT/"; done
(cd "$W" && tar czf "$OUT/mini_files.tgz" --ignore-failed-read figures results base/*.json base/*.log \
   primed/*/sft.log runs/*/ppo.log runs/*/classify.log runs/*/ppo/metrics.jsonl runs/*/ppo/classify/steps.csv \
   data/priming/summary.json data/priming/behavior_means.json driver.log 2>/dev/null)
ls -la "$OUT"
exit 0
