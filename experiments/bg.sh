#!/bin/bash
# Run a long command on a lent machine across calls of at most 10 minutes:
#   bash experiments/bg.sh OUT_DIR 'command ...'      # first call: starts it; every call: waits, copies
# The first call on a machine starts the command in a process session of its own (setsid) with
# its output in $BG_DIR/run.log (default /tmp/bg), so it outlives the call; every call (the first
# too) waits up to $LIMIT seconds (default 560) for it to end, then copies $BG_DIR (small files
# only, under 20 MB each) into OUT_DIR. Call again on the same machine, before it goes back
# idle, to keep watching; the command is not started twice.
set -u
W=${BG_DIR:-/tmp/bg}; OUT=${1:?usage: bash experiments/bg.sh OUT_DIR 'command'}; CMD=${2:-}
mkdir -p "$W" "$OUT"; T0=$(date +%s)
if [ ! -f "$W/t0" ]; then
  [ -n "$CMD" ] || { echo "bg.sh: nothing running in $W and no command given" >&2; exit 2; }
  echo "$T0" > "$W/t0"; echo "$CMD" > "$W/cmd"
  setsid nohup bash -c 'bash -c "$1" > "$2/run.log" 2>&1; echo $? > "$2/rc"' _ "$CMD" "$W" < /dev/null > /dev/null 2>&1 &
  echo "started at $(date -u +%H:%M:%S): $CMD"
else
  echo "watching the command begun $(( T0 - $(cat "$W/t0") ))s ago: $(cat "$W/cmd")"
fi
while [ ! -f "$W/rc" ] && [ $(( $(date +%s) - T0 )) -lt "${LIMIT:-560}" ]; do sleep 5; done
if [ -f "$W/rc" ]; then echo "ended, exit $(cat "$W/rc"), after $(( $(date +%s) - $(cat "$W/t0") ))s"
else echo "still running after $(( $(date +%s) - $(cat "$W/t0") ))s: call again"; fi
(cd "$W" && find . -type f -size -20M -print0 | tar cf - --null -T - 2>/dev/null) | (cd "$OUT" && tar xf -)
tail -n 15 "$W/run.log"
exit 0
