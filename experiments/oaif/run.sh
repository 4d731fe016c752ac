#!/usr/bin/env bash
# OAIF on SmolLM2-135M-Instruct (2 CPU cores): the runs listed in experiments/oaif/runs.txt (`<name> <command>
# <overrides...>`: alignlab-<command>; what each does is said there), one after another, then report.py, which
# rebuilds results.md and the plots from the runs' committed per-prompt records. Resumable (see
# experiments/run_each.sh): a finished run (summary.json, or pairs.jsonl for sampled pairs) is kept; an unfinished
# one starts again in a fresh folder. Each run's wall time, as this script runs it, goes to runs/wall_times.txt.
# BIN: where the alignlab commands are.
set -euo pipefail
cd "$(dirname "$0")/../.."
source experiments/run_each.sh
ROOT=experiments/oaif/runs
BIN=${BIN:-.venv/bin}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}

one_run() {  # <name> <command> <overrides...>
  local name=$1 command=$2
  shift 2
  # Training runs keep their records, metrics and summary, not the weights (no checkpoint, no saved policy). The
  # initial model's answers the monitor compares with come from reference_answers/ (committed: sampled once, by
  # online_seed0 on 2026-12-06), so that a run on another machine compares with the very same answers rather than
  # a resample, whose last-bit differences can change a few of them.
  local extra=()
  if [ "$command" = train ]; then
    extra=(trainer.enable_progress_bar=false +trainer.enable_checkpointing=false save_policy=false "~callbacks.checkpoint"
           callbacks.win_rate.reference_cache=experiments/oaif/reference_answers)
  fi
  "$BIN/alignlab-$command" "$@" paths.output_dir="$ROOT/$name" "${extra[@]}"
}

run_each experiments/oaif/runs.txt "$ROOT" "summary.json|pairs.jsonl" one_run
"$BIN/python" experiments/oaif/report.py "$ROOT"
