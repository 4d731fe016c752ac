#!/usr/bin/env bash
# Miniature OPO on SmolLM2-135M-Instruct (2 CPU cores) with the bundled Quillhaven bylaws: the runs listed in
# experiments/opo/runs.txt (what each does is said there), then report.py, which rebuilds results.md and
# results.png from the runs' per-question records. Resumable: a finished run is kept; an unfinished one starts
# again. BIN: where the alignlab commands are (default .venv/bin).
set -euo pipefail
set -f  # overrides hold brackets ("ks=[1,2]"): no filename expansion
cd "$(dirname "$0")/../.."
ROOT=experiments/opo/runs
BIN=${BIN:-.venv/bin}
started=0
while read -r name config overrides; do
  [[ -z $name || $name == \#* ]] && continue
  if [ -f "$ROOT/$name/results.json" ] || [ -f "$ROOT/$name/report.json" ]; then
    echo "== $name: finished earlier, kept"
    continue
  fi
  echo "== $name: alignlab-$config ${overrides//\$ROOT/$ROOT}"
  start=$SECONDS started=1
  # shellcheck disable=SC2086  # the overrides are words
  "$BIN/alignlab-$config" ${overrides//\$ROOT/$ROOT} paths.output_dir="$ROOT/$name" </dev/null
  echo "== $name: $((SECONDS - start)) s" | tee -a "$ROOT/wall_times.txt"
done < experiments/opo/runs.txt
[ "$started" = 1 ] && echo "== run.sh, all runs it started: $SECONDS s" | tee -a "$ROOT/wall_times.txt"
"$BIN/python" experiments/opo/report.py "$ROOT"
