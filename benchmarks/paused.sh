#!/bin/bash
# run a command with background sweeps paused (SIGSTOP), resume them after; a sweep already stopped by
# hand (state T) is left stopped. The sweep drivers (sweep_queue.sh, background_sweep.sh) are stopped first,
# so none starts a new sweep process (its next sweep, a report) while the command runs. Each pause is logged
# (start and end, epoch seconds, and the pids) in benchmarks/work/pauses.log of the checkout it runs in: a
# paused sweep's wall-clock minutes include it, and a script can take it out.
running() {  # pids matching the pattern, not this shell, not already stopped
  for pid in $(pgrep -f "$1" | grep -vx $$); do
    [ "$(ps -o state= -p "$pid" 2>/dev/null | tr -d ' ')" = "T" ] || echo "$pid"
  done
}
DRIVERS=$(running "benchmarks/(sweep_queue|background_sweep)\.sh" | tr '\n' ' ')
[ -n "$DRIVERS" ] && kill -STOP $DRIVERS
PIDS="$(running "^[^ ]*python[^ ]* .*(raftlm experiment|raftlm train|benchmarks/)" | tr '\n' ' ')$DRIVERS"
LOG="$(git rev-parse --show-toplevel 2>/dev/null || echo /tmp)/benchmarks/work/pauses.log"
START=$(date +%s.%N)
[ -n "$PIDS" ] && kill -STOP $PIDS
trap '[ -n "${PIDS// }" ] && kill -CONT $PIDS && mkdir -p "$(dirname "$LOG")" && echo "$START $(date +%s.%N) $PIDS" >>"$LOG"' EXIT
# the command runs as a child this shell waits for, so that a signal to this shell (`timeout 60 paused ...`,
# Ctrl+C, a kill) is passed on to it and the sweeps resume: a shell in a foreground wait would act on the
# signal only once the command ended (a `timeout` around a server left the sweeps stopped for good)
"$@" &
CHILD=$!
trap 'kill -TERM $CHILD 2>/dev/null; wait $CHILD; exit 143' TERM INT HUP
wait $CHILD
