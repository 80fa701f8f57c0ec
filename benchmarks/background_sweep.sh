#!/usr/bin/env bash
# Run (or resume) a long `raftlm experiment` sweep in the background from a git worktree pinned to a
# commit, and commit its finished cells into this checkout as they land.
#
#   nohup benchmarks/background_sweep.sh sweeps/table3-converged.yaml >/dev/null 2>&1 &
#
# - The worktree (default: ../wt-<sweep name> beside this checkout) is made at HEAD when missing; it
#   carries the committed cells, so the sweep skips them and starts at the first unfinished one (an
#   interrupted run resumes from its last checkpoint while the worktree's runs/ survives).
# - The sweep starts unless it already runs there; its log is <worktree>.log.
# - Every EVERY seconds (default 240) and once after the sweep ends: when the worktree has more cells
#   than this checkout (or this checkout's results folder holds a stopped sync's uncommitted files),
#   copy cells/, predictions/, results.{csv,json}, sweep.yaml and the curves of finished runs, rerun
#   `raftlm report` and (when README.md and docs/ have no uncommitted edits) `benchmarks/docs.py --write`,
#   and commit the results folder and those pages only (other staged work is left alone). Its own log:
#   <worktree>.sync.log.
# - This checkout's results folder is the worktree's copy: a hand edit there (a cell deleted or changed)
#   is overwritten by the next sync; edit the worktree's, or stop the sync first.
# Needs this checkout's .venv (make venv). Timing anything else meanwhile: benchmarks/paused.sh.
set -euo pipefail
SWEEP=${1:?usage: benchmarks/background_sweep.sh SWEEP.yaml [WORKTREE]}
MAIN=$(git rev-parse --show-toplevel)
WT=${2:-$(dirname "$MAIN")/wt-$(basename "$SWEEP" .yaml)}
EVERY=${EVERY:-240}
PY="$MAIN/.venv/bin/python"
OUT=$(sed -n 's/^output_dir: *//p' "$MAIN/$SWEEP" | tr -d '"'"'")
[ -n "$OUT" ] || { echo "background_sweep: $SWEEP has no output_dir line" >&2; exit 2; }
[ -x "$PY" ] || { echo "background_sweep: no $PY: run make venv first" >&2; exit 2; }

if [ ! -d "$WT" ]; then
  git -C "$MAIN" worktree add --detach "$WT" HEAD
fi
running() { pgrep -f "raftlm experiment $SWEEP" >/dev/null; }
if ! running; then
  (cd "$WT" && nohup env PYTHONPATH="$WT/src" "$PY" -m raftlm experiment "$SWEEP" >>"$WT.log" 2>&1 &)
  sleep 5
fi

count() { find "$1/cells" -name '*.json' 2>/dev/null | wc -l; }
sync_once() {
  local src="$WT/$OUT" dst="$MAIN/$OUT" n
  n=$(count "$src")
  # a sync stopped between its copy and its commit (a kill, the session's end) left the results folder
  # uncommitted: finish it now, or it would wait for the next cell (and the docs, for a clean tree)
  [ "$n" -gt "$(count "$dst")" ] || [ -n "$(git -C "$MAIN" status --porcelain -- "$OUT")" ] || return 0
  mkdir -p "$dst/cells" "$dst/predictions" "$dst/curves"
  cp "$src"/cells/*.json "$dst/cells/"
  [ -d "$src/predictions" ] && cp "$src"/predictions/* "$dst/predictions/" 2>/dev/null || true
  for f in results.csv results.json sweep.yaml; do [ -f "$src/$f" ] && cp "$src/$f" "$dst/$f"; done
  for c in "$src"/curves/*.jsonl; do  # a curve is final once one of its run's cells is written
    [ -e "$c" ] || continue
    if compgen -G "$src/cells/$(basename "$c" .jsonl)--*.json" >/dev/null; then cp "$c" "$dst/curves/"; fi
  done
  (cd "$MAIN" && "$PY" -m raftlm report "$OUT" >/dev/null)
  git -C "$MAIN" add -A -- "$OUT"
  local pages=()
  # the docs quote the results (benchmarks/docs.py): rewrite them too, unless someone is editing them
  if git -C "$MAIN" diff --quiet -- README.md docs && git -C "$MAIN" diff --cached --quiet -- README.md docs; then
    (cd "$MAIN" && "$PY" benchmarks/docs.py --write >/dev/null) && pages=(README.md docs)
  fi
  local new
  new=$(git -C "$MAIN" diff --cached --name-only --diff-filter=A -- "$OUT/cells" | sed 's#.*/##; s#\.json$##' | tr '\n' ' ')
  git -C "$MAIN" commit -q -m "$(basename "$OUT"): $n cells (new: ${new:-none})" -- "$OUT" "${pages[@]}" && echo "$(date) committed $n cells"
}

while running; do
  sleep "$EVERY"
  sync_once >>"$WT.sync.log" 2>&1 || echo "$(date) sync failed" >>"$WT.sync.log"
done
sync_once >>"$WT.sync.log" 2>&1
