#!/usr/bin/env bash
# DPO family on SmolLM2-135M-Instruct (2 CPU cores): the runs listed in experiments/dpo_family/runs.txt (`<name>
# <overrides...>`; what each does is said there), one after another, each trained and evaluated, then report.py,
# which rebuilds results.md and results.png from the runs' committed per-prompt records. Resumable (see
# experiments/run_each.sh): a run with eval/eval.json is kept; an unfinished one starts again in a fresh folder.
# Each run's wall time (training plus evaluation), as this script runs it, goes to runs/wall_times.txt.
# BIN: where the alignlab commands are.
set -euo pipefail
cd "$(dirname "$0")/../.."
source experiments/run_each.sh
ROOT=experiments/dpo_family/runs
BIN=${BIN:-.venv/bin}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}

EXPERIMENT=dpo_family
# Answers sampled with the packed decode loop (alignlab/sampling/packed.py: the distribution of `generate`; 1.61-2.04x
# its speed at batches 4-16 in benchmarks/results/bench_sampling.txt, batch 32 not measured), reference answers too.
# The reference's answers come from reference_answers/ (committed: sampled on 2026-12-06 by hinge_b0.5_seed0's
# evaluation), so every later run, on any machine, compares with the very same 400 answers.
EVAL=(generate.num_prompts=100 generate.n_samples=4 sampling.batch_size=32 sampling.max_new_tokens=64
      sampling.backend=packed generate.reference_cache=experiments/dpo_family/reference_answers)

run_each experiments/dpo_family/runs.txt "$ROOT" "eval/eval.json" train_then_eval
"$BIN/python" experiments/dpo_family/report.py "$ROOT"
