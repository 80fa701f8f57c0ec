#!/bin/bash
# run a command with background sweeps paused (SIGSTOP), resume them after
PIDS=$(pgrep -f "^[^ ]*python[^ ]* .*(raftlm experiment|raftlm train|benchmarks/)" | grep -v $$ | tr '\n' ' ')
[ -n "$PIDS" ] && kill -STOP $PIDS
trap '[ -n "$PIDS" ] && kill -CONT $PIDS' EXIT
"$@"
