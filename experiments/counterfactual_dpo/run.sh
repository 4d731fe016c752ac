#!/usr/bin/env bash
# Counterfactual DPO on SmolLM2-135M-Instruct (2 CPU cores): the base model's behaviour check (measure_behaviors.py),
# then the runs listed in experiments/counterfactual_dpo/runs.txt (`<name> <overrides...>`; what each does is said
# there), one after another, each trained and evaluated, then report.py, which rebuilds results.md and the plot
# from the runs' committed per-prompt records. Resumable (see experiments/run_each.sh): a run with eval/eval.json
# is kept; an unfinished one starts again in a fresh folder. Each run's wall time (training plus evaluation), as
# this script runs it, goes to runs/wall_times.txt. BIN: where the alignlab commands are.
set -euo pipefail
cd "$(dirname "$0")/../.."
source experiments/run_each.sh
HERE=experiments/counterfactual_dpo
ROOT=$HERE/runs
BIN=${BIN:-.venv/bin}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}

EXPERIMENT=counterfactual_dpo
# The answers the pairs are made of (data.cache_dir) and the base model's answers the evaluation measures
# (generate.reference_cache) are kept in committed folders, so that every run, on any machine, trains on and is
# compared with the very same answers (a machine's own cache would resample them, and last-bit differences of the
# arithmetic change a few draws). Filled by the first run that needs each file (seed 1's, 2026-12-07).
TRAIN_EXTRA=(data.cache_dir=$HERE/answers)
EVAL=(generate.num_prompts=100 sampling.batch_size=32 sampling.max_new_tokens=80
      generate.reference_cache=$HERE/reference_answers)

[ -f $HERE/behaviors/behaviors.md ] || "$BIN/python" $HERE/measure_behaviors.py $HERE/behaviors
run_each $HERE/runs.txt "$ROOT" "eval/eval.json" train_then_eval
"$BIN/python" $HERE/report.py "$ROOT"
