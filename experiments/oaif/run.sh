#!/usr/bin/env bash
# Miniature OAIF reproduction on SmolLM2-135M-Instruct (2 CPU cores). Writes under experiments/oaif/runs/.
#  1. online vs offline, same prompts, annotator and number of updates, seeds 0 and 1 (SEEDS to change);
#  2. length control: the rule annotator with three instructions (helpful, helpful_short, helpful_very_short).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=experiments/oaif/runs
BIN=.venv/bin
COMMON=(trainer.enable_progress_bar=false)
for seed in ${SEEDS:-0 1}; do
  $BIN/alignlab-train experiment=oaif seed=$seed paths.output_dir=$ROOT/online_seed$seed "${COMMON[@]}"
  for split in train val; do
    $BIN/alignlab-generate judge=llm_pointwise data.max_new_tokens=64 data.temperature=0.9 seed=$seed \
      split=$split output=$ROOT/offline_pairs_seed${seed}_$split.jsonl
  done
  $BIN/alignlab-train experiment=oaif_offline seed=$seed data.path=$ROOT/offline_pairs_seed${seed}_train.jsonl \
    data.val_path=$ROOT/offline_pairs_seed${seed}_val.jsonl paths.output_dir=$ROOT/offline_seed$seed "${COMMON[@]}"
done
for instruction in ${INSTRUCTIONS:-helpful helpful_short helpful_very_short}; do
  $BIN/alignlab-train experiment=oaif judge=rule judge.instruction=$instruction \
    paths.output_dir=$ROOT/length_$instruction "${COMMON[@]}"
done
