#!/bin/bash
# run a command with background sweeps paused (SIGSTOP), resume them after; a sweep already stopped by
# hand (state T) is left stopped
PIDS=""
for pid in $(pgrep -f "^[^ ]*python[^ ]* .*(raftlm experiment|raftlm train|benchmarks/)" | grep -v $$); do
  [ "$(ps -o state= -p "$pid" 2>/dev/null | tr -d ' ')" = "T" ] || PIDS="$PIDS $pid"
done
[ -n "$PIDS" ] && kill -STOP $PIDS
trap '[ -n "$PIDS" ] && kill -CONT $PIDS' EXIT
"$@"
