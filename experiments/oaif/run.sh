#!/usr/bin/env bash
# OAIF on SmolLM2-135M-Instruct (2 CPU cores): the runs listed in experiments/oaif/runs.txt (what each does is said
# there), one after another, then report.py, which rebuilds results.md and the plots from the runs' committed
# per-prompt records. Resumable: a finished run is kept; an unfinished one starts again in a fresh folder. Each
# run's wall time, as this script runs it, goes to runs/wall_times.txt. BIN: where the alignlab commands are.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=experiments/oaif/runs
BIN=${BIN:-.venv/bin}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
started=0
while read -r name command overrides; do
  [[ -z $name || $name == \#* ]] && continue
  if [ -f "$ROOT/$name/summary.json" ] || [ -f "$ROOT/$name/pairs.jsonl" ]; then
    echo "== $name: finished earlier, kept"
    continue
  fi
  # An interrupted run leaves a folder a new run must not mix with (alignlab-train refuses one with results).
  [ -d "$ROOT/$name" ] && mv "$ROOT/$name" "$ROOT/$name.interrupted.$(date +%s)"
  echo "== $name: alignlab-$command ${overrides//\$ROOT/$ROOT}"
  # Training runs keep their records, metrics and summary, not the weights (no checkpoint, no saved policy).
  extra=(); [ "$command" = train ] && extra=(trainer.enable_progress_bar=false +trainer.enable_checkpointing=false save_policy=false "~callbacks.checkpoint")
  start=$SECONDS started=1
  # shellcheck disable=SC2086  # the overrides are words
  "$BIN/alignlab-$command" ${overrides//\$ROOT/$ROOT} paths.output_dir="$ROOT/$name" "${extra[@]}" </dev/null
  echo "== $name: $((SECONDS - start)) s" | tee -a "$ROOT/wall_times.txt"
done < experiments/oaif/runs.txt
[ "$started" = 1 ] && echo "== run.sh, all runs it started: $SECONDS s" | tee -a "$ROOT/wall_times.txt"
"$BIN/python" experiments/oaif/report.py "$ROOT"
