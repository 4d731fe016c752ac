#!/usr/bin/env bash
# Miniature OPO on SmolLM2-135M-Instruct (2 CPU cores) with the bundled Quillhaven bylaws: the runs listed in
# experiments/opo/runs.txt (`<name> <command> <overrides...>`: alignlab-<command>; what each does is said there),
# then report.py, which rebuilds results.md and results.png from the runs' per-question records. Resumable (see
# experiments/run_each.sh): a finished run (its results.json, or report.json for opo-questions) is kept; an
# unfinished one starts again. BIN: where the alignlab commands are (default .venv/bin).
set -euo pipefail
cd "$(dirname "$0")/../.."
source experiments/run_each.sh
ROOT=experiments/opo/runs
BIN=${BIN:-.venv/bin}

one_run() {  # <name> <command> <overrides...>
  local name=$1 command=$2
  shift 2
  "$BIN/alignlab-$command" "$@" paths.output_dir="$ROOT/$name"
}

run_each experiments/opo/runs.txt "$ROOT" "results.json|report.json" one_run
"$BIN/python" experiments/opo/report.py "$ROOT"
