#!/usr/bin/env bash
# Run several long sweeps one after another in the background (2 cores: one sweep at a time), each through
# benchmarks/background_sweep.sh (its worktree, its resume, its commits of finished cells); a session that
# ends stops them all, and the same command resumes the queue where it stopped (finished sweeps skip
# their cells in a few seconds).
#
#   nohup benchmarks/sweep_queue.sh sweeps/ema-lever.yaml sweeps/lr-default.yaml >/dev/null 2>&1 &
set -uo pipefail
[ $# -gt 0 ] || { echo "usage: benchmarks/sweep_queue.sh SWEEP.yaml [SWEEP.yaml ...]" >&2; exit 2; }
cd "$(git rev-parse --show-toplevel)"
for sweep in "$@"; do
  [ -f "$sweep" ] || { echo "sweep_queue: no $sweep" >&2; exit 2; }
done
for sweep in "$@"; do
  echo "$(date) sweep_queue: $sweep"
  benchmarks/background_sweep.sh "$sweep" || echo "$(date) sweep_queue: $sweep ended with exit $?"
done
