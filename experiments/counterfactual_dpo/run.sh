#!/usr/bin/env bash
# Miniature counterfactual DPO on SmolLM2-135M-Instruct (2 CPU cores): two behaviours it follows when told
# (brief answers; not naming people) x three variants, and instruction negation (ignore "answer in one short
# sentence"); each run evaluated on the held-out prompts. Writes under experiments/counterfactual_dpo/runs/.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=experiments/counterfactual_dpo/runs
BIN=.venv/bin
run() {  # name, overrides...
  local name=$1; shift
  [ -f "$ROOT/$name/eval/eval.json" ] && return 0  # finished earlier: keep it
  $BIN/alignlab-train experiment=counterfactual_dpo "$@" paths.output_dir=$ROOT/$name trainer.enable_progress_bar=false
  $BIN/alignlab-eval policy_path=$ROOT/$name paths.output_dir=$ROOT/$name/eval generate.num_prompts=17 \
    sampling.max_new_tokens=80
}
for behavior in ${BEHAVIORS:-brief no_names french}; do
  for variant in ${VARIANTS:-contrastive enc dis}; do
    run ${behavior}_${variant} behavior=$behavior data.variant=$variant
  done
done
run ignore_brevity_instruction_negation behavior=ignore_brevity data.variant=instruction_negation
# Only half of the encouraged answers are French: keep the pairs the measure orders correctly.
run french_enc_filtered behavior=french data.variant=enc data.filter_by_measure=true
$BIN/python experiments/counterfactual_dpo/report.py $ROOT
# The generic comparison tool over the same folders (table as Markdown and CSV, bar charts).
$BIN/alignlab-compare $ROOT --by behavior,data.variant,data.filter_by_measure --out experiments/counterfactual_dpo/compare \
  --metrics eval/behavior/policy/behavior_rate,eval/behavior/reference/behavior_rate,eval/behavior/policy/mean_length,eval/capability/policy/correct
