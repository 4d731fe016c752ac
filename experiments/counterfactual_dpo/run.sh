#!/usr/bin/env bash
# Counterfactual DPO on SmolLM2-135M-Instruct (2 CPU cores): the base model's behaviour check (measure_behaviors.py),
# then the runs listed in experiments/counterfactual_dpo/runs.txt (what each does is said there), one after another,
# each trained and evaluated, then report.py, which rebuilds results.md and the plot from the runs' committed
# per-prompt records. Resumable: a finished run is kept; an unfinished one starts again in a fresh folder. Each
# run's wall time (training plus evaluation), as this script runs it, goes to runs/wall_times.txt.
# BIN: where the alignlab commands are.
set -euo pipefail
cd "$(dirname "$0")/../.."
HERE=experiments/counterfactual_dpo
ROOT=$HERE/runs
BIN=${BIN:-.venv/bin}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
mkdir -p "$ROOT"
[ -f $HERE/behaviors/behaviors.md ] || "$BIN/python" $HERE/measure_behaviors.py $HERE/behaviors
started=0
while read -r name overrides; do
  [[ -z $name || $name == \#* ]] && continue
  if [ -f "$ROOT/$name/eval/eval.json" ]; then
    echo "== $name: finished earlier, kept"
    continue
  fi
  # An interrupted run leaves a folder a new run must not mix with (alignlab-train refuses one with results).
  [ -d "$ROOT/$name" ] && mv "$ROOT/$name" "$ROOT/$name.interrupted.$(date +%s)"
  echo "== $name: alignlab-train experiment=counterfactual_dpo $overrides"
  start=$SECONDS started=1
  # shellcheck disable=SC2086  # the overrides are words
  "$BIN/alignlab-train" experiment=counterfactual_dpo $overrides paths.output_dir="$ROOT/$name" \
    trainer.enable_progress_bar=false +trainer.enable_checkpointing=false "~callbacks.checkpoint" </dev/null
  "$BIN/alignlab-eval" policy_path="$ROOT/$name" paths.output_dir="$ROOT/$name/eval" generate.num_prompts=100 sampling.batch_size=32 \
    sampling.max_new_tokens=80 </dev/null
  rm -rf "$ROOT/$name/policy"  # the weights (540 MB) are not kept: the records say what they did
  echo "== $name: $((SECONDS - start)) s" | tee -a "$ROOT/wall_times.txt"
done < $HERE/runs.txt
[ "$started" = 1 ] && echo "== run.sh, all runs it started: $SECONDS s" | tee -a "$ROOT/wall_times.txt"
"$BIN/python" $HERE/report.py "$ROOT"
