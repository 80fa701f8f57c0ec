#!/bin/bash
# run a command with background sweeps paused (SIGSTOP), resume them after; a sweep already stopped by
# hand (state T) is left stopped. Each pause is logged (start and end, epoch seconds, and the pids) in
# benchmarks/work/pauses.log of the checkout it runs in: a paused sweep's wall-clock minutes include it, and a script can take it out.
PIDS=""
for pid in $(pgrep -f "^[^ ]*python[^ ]* .*(raftlm experiment|raftlm train|benchmarks/)" | grep -v $$); do
  [ "$(ps -o state= -p "$pid" 2>/dev/null | tr -d ' ')" = "T" ] || PIDS="$PIDS $pid"
done
LOG="$(git rev-parse --show-toplevel 2>/dev/null || echo /tmp)/benchmarks/work/pauses.log"
START=$(date +%s.%N)
[ -n "$PIDS" ] && kill -STOP $PIDS
trap '[ -n "$PIDS" ] && kill -CONT $PIDS && mkdir -p "$(dirname "$LOG")" && echo "$START $(date +%s.%N)$PIDS" >>"$LOG"' EXIT
"$@"
